"""Deprecated location: HellaSwag moved to evaluation/hellaswag.py. ``utils.hellaswag.evaluate_hellaswag`` (a
public entry point) and the rest stay importable from here."""

from evaluation.hellaswag import *  # noqa: F403
from evaluation.hellaswag import HELLASWAG_CONVENTIONS, evaluate_hellaswag, load_hellaswag  # noqa: F401
