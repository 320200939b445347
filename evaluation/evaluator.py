"""The evaluation setup test_gpt.py, wanda.py and sweep.py share: their flags (one vocabulary), the model of
--ckpt / --hf with the identity of what is measured, the val loss and HellaSwag settings, and the reports of
evaluation/report.py's schema."""

from __future__ import annotations

import math
import time
from pathlib import Path

from evaluation.hellaswag import CPU_HELLASWAG_LIMIT, evaluate_hellaswag, find_examples
from evaluation.loss import evaluate_loss
from evaluation.report import CONVENTIONS, VERSION, check_same, pass_summary, read_report
from utils.checkpoint import load_any_gpt, load_gpt, training_of
from utils.cli import REPO, UserError, nonneg_int, pick_device, positive_int
from utils.hf_export import read_provenance
from utils.identity import data_fingerprint, examples_fingerprint, weights_fingerprint
from utils.loader import ShardLoader
from utils.params import count_params
from utils.precision import machine, resolve_amp
from utils.seed import seed_everything
from utils.shards import prepare_builtin_corpus

DEFAULT_VAL_BATCHES = 20  # test_gpt.py, wanda.py and sweep.py --val-batches


def add_hellaswag_args(ap, default_on: bool = True) -> None:
    """--hellaswag FILE, --hellaswag-limit (alias --limit), --with-hellaswag / --no-hellaswag (every script
    takes both; the default is per script), --hellaswag-convention."""
    ap.add_argument("--hellaswag", help="HellaSwag jsonl (default: data/hellaswag, else ../shared/data)")
    ap.add_argument("--hellaswag-limit", "--limit", dest="limit", type=nonneg_int, default=None,
                    help=f"first N HellaSwag examples; 0 = all (default: all on CUDA, the first "
                         f"{CPU_HELLASWAG_LIMIT:,} on other devices; --limit is the older spelling)")
    on_off = ap.add_mutually_exclusive_group()
    on_off.add_argument("--no-hellaswag", dest="no_hellaswag", action="store_true", default=not default_on,
                        help="skip HellaSwag" + ("" if default_on else " (the default here: slow)"))
    on_off.add_argument("--with-hellaswag", dest="no_hellaswag", action="store_false",
                        help="also evaluate HellaSwag" + ("" if not default_on else " (the default here)"))
    ap.add_argument("--hellaswag-convention", choices=("seed", "lm-eval", "both"), default="both",
                    help="seed: no activity label, acc_norm per token (the training-log number); lm-eval: "
                         "label kept, acc_norm per character, as lm-evaluation-harness computes it; default both")


def add_val_args(ap, micro_batch: int) -> None:
    """How much val loss: --val-batches N micro-batches of --micro-batch sequences (the older spellings
    --batches and --val-batch-size still work)."""
    ap.add_argument("--val-batches", "--batches", dest="val_batches", type=nonneg_int,
                    help=f"val micro-batches for the loss (default {DEFAULT_VAL_BATCHES}, or all the split holds "
                         "where that is fewer; 0 to skip)")
    ap.add_argument("--micro-batch", "--val-batch-size", dest="micro_batch", type=positive_int, default=micro_batch,
                    help=f"sequences per val micro-batch (default {micro_batch})")


def conventions_of(flag: str) -> tuple[str, ...]:
    return CONVENTIONS if flag == "both" else (flag,)


def load_hellaswag_examples(args, device: str, note=print):
    """(examples, resolved path, limit) that the flags ask for (evaluation.hellaswag.find_examples), loaded
    and checked before any long work; (None, None, None) with --no-hellaswag."""
    if args.no_hellaswag:
        return None, None, None
    return find_examples(args.hellaswag, args.limit, device, note=note,
                         conventions=conventions_of(args.hellaswag_convention))


def default_data(trained_on: str | None) -> str:
    """The directory the model was trained on, else data/edu_fineweb10B, else the builtin corpus."""
    for candidate in (trained_on, REPO / "data" / "edu_fineweb10B"):
        if candidate and Path(candidate).is_dir():
            return str(candidate)
    return str(prepare_builtin_corpus(REPO / "data" / "builtin"))


class Evaluation:
    """What test_gpt.py, wanda.py and sweep.py do before evaluating: device, precision, seed, the HellaSwag
    examples the flags ask for (before the model: a bad file fails fast), the model of --ckpt / --hf with its
    report header {"model", "source", "step", "trained_on"}; then ``use_val`` sets the val loss up."""

    progress = True

    def __init__(self, args, note=print):
        self.note = note
        self.device = pick_device(args.device)
        self.amp = resolve_amp(self.device, args.amp)
        seed_everything(args.seed)
        self.examples, self.hellaswag_path, self.limit = load_hellaswag_examples(args, self.device, note=note)
        self.conventions = conventions_of(args.hellaswag_convention) if self.examples else ()
        if args.ckpt is not None:
            self.model, c = load_gpt(args.ckpt, self.device)
            training, source = training_of(c), str(args.ckpt)
        else:
            self.model, _ = load_any_gpt(None, args.hf, self.device)
            c = read_provenance(args.hf)  # what export_hf.py recorded; {} for a hub model
            c.setdefault("model_name", "gpt2" if self.model.config.mlp == "dense" else "ndgpt2")  # else: the family
            training, source = training_of(c), f"hf:{args.hf}"
        # a pruned checkpoint pruned again keeps the record of every pass
        self.pruned_before = [*c.get("earlier_pruning", []), c["pruning"]] if "pruning" in c else []
        self.header = {"model": c.get("model_name", "gpt2"), "source": source, "step": c.get("step"),
                       **training, "fingerprint": weights_fingerprint(self.model.state_dict()),
                       "run_id": c.get("run_id"), "pruning": [pass_summary(p) for p in self.pruned_before],
                       "parent": c.get("parent")}

    def use_val(self, data, split: str, batches: int | None, batch_size: int, seq_len: int, seq_len_flag: str) -> None:
        """The val loader (none when ``batches`` is 0) and ``self.eval``, everything the numbers of an evaluation
        block depend on. ``data`` None: ``default_data``. ``batches`` None: DEFAULT_VAL_BATCHES, or all the
        split holds where that is fewer (a note says so); a number given is never cut, nor read twice."""

        block_size, vocab = self.model.config.block_size, self.model.config.vocab_size
        if seq_len > block_size:
            raise UserError(f"{seq_len_flag} {seq_len} exceeds the model's block size {block_size}")
        data = data or default_data(self.header["trained_on"])
        self.val_loader = (ShardLoader(data, split, batch_size, seq_len, shuffle=False, vocab_size=vocab)
                           if batches != 0 else None)
        if batches is None:
            batches = min(DEFAULT_VAL_BATCHES, self.val_loader.steps_per_epoch)
            if batches < DEFAULT_VAL_BATCHES:
                self.note(f"note: the '{split}' split of {data} holds {batches} val batches of {batch_size} x "
                          f"{seq_len} tokens; using them all (default {DEFAULT_VAL_BATCHES})")
        self.val_batches = batches
        if batches and batches > self.val_loader.steps_per_epoch:  # the loader would wrap: tokens counted twice
            raise UserError(f"{batches} val batches of {batch_size} x {seq_len} tokens asked for, but the "
                            f"'{split}' split of {data} holds {self.val_loader.steps_per_epoch}; ask for fewer")
        self.eval = {"data": str(data), "data_id": data_fingerprint(data), "split": split, "val_batches": batches,
                     "val_batch_size": batch_size, "seq_len": seq_len, "hellaswag": self.hellaswag_path,
                     "hellaswag_id": examples_fingerprint(self.examples), "hellaswag_limit": self.limit,
                     "conventions": list(self.conventions), "amp": bool(self.amp),
                     "device": str(self.device).split(":")[0]}

    def evaluate(self) -> tuple[dict, float]:
        """(the evaluation block of the model as it is now, seconds): parameter counts, val loss (the loader
        is reset first: the same tokens every call), HellaSwag in each convention."""

        t0, model = time.perf_counter(), self.model
        counts = count_params(model)
        block = {"params_total": counts["total"], "params_nonzero": counts["nonzero"], "val_loss": None,
                 "perplexity": None, "val_tokens": 0, "hellaswag": {}}
        was_training = model.training
        if self.val_loader is not None:
            loss = evaluate_loss(model, self.val_loader, self.val_batches, self.device, self.amp)
            block.update(val_loss=loss, perplexity=math.exp(min(loss, 700)),
                         val_tokens=self.val_batches * self.val_loader.B * self.val_loader.T)
        for convention in self.conventions:
            r = evaluate_hellaswag(model, self.examples, device=self.device, amp=self.amp, progress=self.progress,
                                   convention=convention)
            block["hellaswag"][convention] = {"acc": r["acc"], "acc_norm": r["acc_norm"], "n": r["n"]}
        model.train(was_training)
        return block, time.perf_counter() - t0

    def reusable_dense(self, path) -> dict:
        """The dense block of report ``path`` if it measured this model (its fingerprint) with these eval
        settings; a UserError naming the difference otherwise."""
        report = read_report(path)
        check_same(report, self.header["fingerprint"], {"eval": self.eval}, path, only=("eval",))
        return report["metrics"] if report["kind"] == "eval" else report["before"]

    def eval_report(self, seed: int, metrics: dict, seconds: float) -> dict:
        return {"kind": "eval", "version": VERSION, **self.header, "settings": {"seed": seed, "eval": self.eval},
                "metrics": metrics, "timings": {"eval_s": seconds}, "machine": machine(self.device)}

    def pruning_report(self, settings: dict, result: dict, before: dict, after: dict, timings: dict) -> dict:
        """``result`` is what pruning.wanda's prune functions return."""
        summary = {k: v for k, v in result.items() if k not in ("layers", "seconds")}
        return {"kind": "pruning", "version": VERSION, **self.header, "settings": settings, "pruning": summary,
                "before": before, "after": after, "timings": {"prune_s": result["seconds"], **timings},
                "machine": machine(self.device), "layers": result["layers"]}
