"""What pruning/wanda.py and pruning/sweep.py share: the model, data and calibration flags, and ``Setup``, the
evaluation setup (evaluation/report.py) with the calibration windows and the pruning step."""

from __future__ import annotations

from pathlib import Path

from evaluation.evaluator import Evaluation, add_val_args
from pruning.masks import block_linears, skip_reason
from pruning.methods import GROUPS, PRUNERS
from utils.cli import UserError, add_model_source_args, add_runtime_args, positive_int
from utils.loader import find_shards, sample_windows


def add_setup_args(ap) -> None:
    """Model, data, calibration, val loss, device: the flags wanda.py and sweep.py share."""
    add_model_source_args(ap, "GPT checkpoint of this repository (dense or already pruned)")
    ap.add_argument("--data", help="token shard directory (*_train_*.npy, *_val_*.npy; default: the directory the "
                                   "checkpoint was trained on, else data/edu_fineweb10B, else the builtin corpus)")
    ap.add_argument("--calib-samples", type=positive_int, default=128, help="calibration windows (default 128)")
    ap.add_argument("--calib-len", type=positive_int, default=None,
                    help="calibration and val window length (default block_size)")
    ap.add_argument("--calib-batch", type=positive_int, default=8, help="sequences per forward while pruning")
    add_val_args(ap, micro_batch=8)
    add_runtime_args(ap, seed=1337)


def check_setup(args) -> None:
    """Checks that need no model, before any work."""
    if args.ckpt and not Path(args.ckpt).is_file():
        raise UserError(f"checkpoint not found: {args.ckpt}")
    if args.data is not None:  # else the checkpoint's own data, found once the model is loaded
        find_shards(args.data, "train")  # UserError when the directory or its train shards are missing
        if args.val_batches != 0:
            find_shards(args.data, "val")


class Setup(Evaluation):
    """The evaluation setup (evaluation/report.py) with the calibration windows of the pruning methods."""

    def __init__(self, args, note=print):
        super().__init__(args, note)
        seq_len = args.calib_len or self.model.config.block_size
        self.use_val(args.data, "val", args.val_batches, args.micro_batch, seq_len, "--calib-len")
        self.calib = sample_windows(self.eval["data"], "train", args.calib_samples, seq_len, args.seed,
                                    vocab_size=self.model.config.vocab_size)
        self.calib_settings = {"calib_samples": args.calib_samples, "calib_len": seq_len,
                               "calib_batch": args.calib_batch, "seed": args.seed}

    def settings(self, method: str, sparsity: float, nm) -> dict:
        return {"method": method, "sparsity": nm[0] / nm[1] if nm else sparsity, "nm": list(nm) if nm else None,
                **self.calib_settings, "eval": self.eval}

    def check_prunable(self, method: str, sparsity: float, nm) -> None:
        """A UserError when a nonzero sparsity would leave every layer dense (e.g. --nm 2:3, no width % 3)."""
        if nm is None and sparsity == 0:
            return
        linears = [layer for block in block_linears(self.model) for _, layer in block]
        if all(skip_reason(layer, sparsity, nm, GROUPS[method]) for layer in linears):
            widths = sorted({layer.in_features for layer in linears})
            what = f"{nm[0]}:{nm[1]}" if nm else f"sparsity {sparsity:g}"
            raise UserError(f"{what} prunes no layer of this model (input widths {widths}); nothing to do")

    def prune(self, method: str, sparsity: float, nm, dense: dict, dense_s: float = 0.0) -> tuple[dict, dict]:
        """Prune ``self.model`` in place and evaluate it: (report, pruning result)."""
        kwargs = {"batch_size": self.calib_settings["calib_batch"]} if method == "wanda" else {}
        result = PRUNERS[method](self.model, self.calib, sparsity=sparsity, nm=nm, progress=self.progress, **kwargs)
        after, after_s = self.evaluate()
        report = self.pruning_report(self.settings(method, sparsity, nm), result, dense, after,
                                     {"eval_before_s": dense_s, "eval_after_s": after_s})
        return report, result
