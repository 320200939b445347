"""Measure what Wanda's scores weigh: outlier input features and uneven feature norms, per pruned layer.

    python pruning/outliers.py --ckpt logs/mini/runs/ndgpt2-s1/model_00160.pt --data data/prose --seed 0 \\
        --calib-len 256 --json outliers.json --md outliers.md

Wanda scores W_ij by |W_ij| * ||X_j||_2. It beats magnitude pruning where a few input features X_j are
far larger than the rest, the outlier features of large language models (LLM.int8, arXiv 2208.07339,
calls a feature an outlier where its magnitude reaches 6). For every Linear that Wanda prunes (the
Linears inside the blocks; NdLinear factors through their literal path; factors with fewer than 3 inputs
stay dense and are left out), with X that layer's input over the calibration tokens (rows: tokens, or
tokens x copies for an NdLinear factor; columns: its d input features), this reports:

  share abs > 6     the share of features j whose largest |X_nj| exceeds 6;
  share abs > 6 sd  the share of features j whose largest |X_nj| exceeds 6 sd, where sd is the standard
                    deviation of all entries of X (about their mean);
  norm max/median   max_j ||X_j||_2 / median_j ||X_j||_2, the spread of Wanda's feature norms.
The last row sums the layers up: the mean of each share, the largest |x|, the median of the norm ratios.

The calibration windows are wanda.py's (--calib-samples windows of --calib-len train tokens drawn with
--seed; sweep.py in the studies uses --seed 0). The model is measured as the checkpoint holds it, in
fp32 as Wanda's calibration pass runs; each block sees the output of the model's own block before it
(Wanda, pruning block by block, sees the pruned one). The report names the checkpoint by path, step,
run and weights fingerprint, and the data by fingerprint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn
from tqdm import tqdm

from evaluation.evaluator import default_data
from models.ndlinear import literal_path
from pruning.masks import block_linears, skip_reason
from utils.checkpoint import load_gpt, training_of
from utils.cli import ArgumentParser, UserError, check_output_path, pick_device, positive_int, run_main, seed_int
from utils.identity import data_fingerprint, weights_fingerprint
from utils.io import atomic_write, atomic_write_json, fmt, markdown_table, text_table
from utils.loader import find_shards, sample_windows

PROG = "outliers.py"
THRESHOLD = 6.0  # LLM.int8's outlier magnitude, and the number of standard deviations
HEADERS = ["layer", "inputs", "sd", "max abs", "share abs > 6", "share abs > 6 sd", "norm max/median"]


class FeatureStats:
    """Running statistics of one layer's input features: sum, sum of squares and largest |x| per feature."""

    def __init__(self, features: int, device):
        self.rows = 0
        self.sum = torch.zeros(features, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros_like(self.sum)
        self.max_abs = torch.zeros_like(self.sum)

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.sum.numel()).float()
        self.rows += x.size(0)
        self.sum.add_(x.sum(0))
        self.sumsq.add_((x * x).sum(0))
        torch.maximum(self.max_abs, x.abs().amax(0).double(), out=self.max_abs)

    def result(self) -> dict:
        n = self.rows * self.sum.numel()
        mean = self.sum.sum() / n
        sd = float((self.sumsq.sum() / n - mean * mean).clamp_min(0).sqrt())
        norms = self.sumsq.sqrt()  # Wanda's ||X_j||_2
        median = float(norms.quantile(0.5))
        return {"inputs": self.sum.numel(), "rows": self.rows, "sd": sd, "max_abs": float(self.max_abs.max()),
                "share_abs_gt_6": float((self.max_abs > THRESHOLD).double().mean()),
                "share_sd_gt_6": float((self.max_abs > THRESHOLD * sd).double().mean()),
                "norm_max": float(norms.max()), "norm_median": median,
                "norm_max_over_median": float(norms.max()) / median if median > 0 else None}


def pruned_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The Linears Wanda prunes at unstructured 50%, in block order, with their full names."""
    return [(name, layer) for block in block_linears(model) for name, layer in block
            if skip_reason(layer, 0.5, None) is None]


@torch.no_grad()
def measure_outliers(model: nn.Module, calib_tokens: torch.Tensor, batch_size: int = 8,
                     progress: bool = False) -> list[dict]:
    """One entry per pruned layer: its name and the statistics above over ``calib_tokens`` (N x T), fed through
    the dense blocks ``batch_size`` sequences at a time."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    layers = pruned_layers(model)
    stats = {layer: FeatureStats(layer.in_features, device) for _, layer in layers}
    handles = [layer.register_forward_hook(lambda m, inputs, output: stats[m].add(inputs[0])) for _, layer in layers]
    try:
        with literal_path(model):  # a hook on an NdLinear factor sees what the factor multiplies
            for idx in tqdm(calib_tokens.split(batch_size), desc="outliers", unit="batch", disable=not progress):
                x = model.embed(idx.to(device))
                for block in model.transformer.h:
                    x = block(x)
    finally:
        for handle in handles:
            handle.remove()
    model.train(was_training)
    return [{"name": name, **stats[layer].result()} for name, layer in layers]


def summarize(layers: list[dict]) -> dict:
    """Over the pruned layers: mean shares, how many layers hold any outlier, the norm spread."""
    ratios = sorted(e["norm_max_over_median"] for e in layers if e["norm_max_over_median"] is not None)
    return {"layers": len(layers),
            "mean_share_abs_gt_6": sum(e["share_abs_gt_6"] for e in layers) / len(layers),
            "mean_share_sd_gt_6": sum(e["share_sd_gt_6"] for e in layers) / len(layers),
            "layers_with_abs_gt_6": sum(e["share_abs_gt_6"] > 0 for e in layers),
            "layers_with_sd_gt_6": sum(e["share_sd_gt_6"] > 0 for e in layers),
            "max_abs": max(e["max_abs"] for e in layers),
            "norm_max_over_median_max": ratios[-1] if ratios else None,
            "norm_max_over_median_median": float(torch.tensor(ratios).quantile(0.5)) if ratios else None}


def table_rows(report: dict) -> list[list[str]]:
    rows = [[e["name"].removeprefix("transformer."), str(e["inputs"]), f"{e['sd']:.3f}", f"{e['max_abs']:.2f}",
             f"{e['share_abs_gt_6']:.2%}", f"{e['share_sd_gt_6']:.2%}", fmt(e["norm_max_over_median"], ".2f")]
            for e in report["layers"]]
    s = report["summary"]
    rows.append([f"all {s['layers']} layers (mean shares, median ratio)", "", "", f"{s['max_abs']:.2f}",
                 f"{s['mean_share_abs_gt_6']:.2%}", f"{s['mean_share_sd_gt_6']:.2%}",
                 fmt(s["norm_max_over_median_median"], ".2f")])
    return rows


def describe(report: dict) -> str:
    s, c = report["settings"], report["checkpoint"]
    return (f"{c['model']} step {c['step']} ({c['source']}, weights {c['fingerprint']}): {s['calib_samples']} "
            f"windows of {s['calib_len']} train tokens of {s['data']} (seed {s['seed']}, data {s['data_id']})")


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="GPT checkpoint of this repository (train_gpt.py or wanda.py)")
    ap.add_argument("--data", help="token shard directory; its train split gives the windows (default: the data "
                                   "the model was trained on, as wanda.py calibrates)")
    ap.add_argument("--calib-samples", type=positive_int, default=128, help="calibration windows (default 128)")
    ap.add_argument("--calib-len", type=positive_int, help="window length (default: the model's block size)")
    ap.add_argument("--calib-batch", type=positive_int, default=8, help="windows per forward (default 8)")
    ap.add_argument("--seed", type=seed_int, default=1337, help="window draw, as wanda.py's --seed (default 1337)")
    ap.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: best available); always fp32")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--md", help="write the markdown table here")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --json / --md")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    for flag in ("json", "md"):
        check_output_path(getattr(args, flag), f"--{flag}", force=args.force, inputs=(args.ckpt,))
    if args.json and args.md and Path(args.json).resolve() == Path(args.md).resolve():
        raise UserError("--json and --md must be different files")
    if args.data:
        find_shards(args.data, "train")  # a missing directory or split fails before the model loads
    device = pick_device(args.device)
    model, ckpt = load_gpt(args.ckpt, device)
    args.data = args.data or default_data(training_of(ckpt)["trained_on"])
    seq_len = args.calib_len or model.config.block_size
    if seq_len > model.config.block_size:
        raise UserError(f"--calib-len {seq_len} exceeds the model's block size {model.config.block_size}")
    calib = sample_windows(args.data, "train", args.calib_samples, seq_len, args.seed,
                           vocab_size=model.config.vocab_size)
    layers = measure_outliers(model.float(), calib, args.calib_batch, progress=True)
    if not layers:
        raise UserError(f"{args.ckpt}: no layer of this model is one Wanda prunes")
    report = {
        "kind": "outliers", "version": 1,
        "checkpoint": {"model": ckpt["model_name"], "source": str(args.ckpt), "step": ckpt.get("step"),
                       "fingerprint": ckpt.get("fingerprint") or weights_fingerprint(model.state_dict()),
                       "run_id": ckpt.get("run_id"), **training_of(ckpt),
                       "pruning": ckpt.get("pruning", {}).get("method")},
        "settings": {"data": str(args.data), "data_id": data_fingerprint(args.data), "split": "train",
                     "calib_samples": args.calib_samples, "calib_len": seq_len, "calib_batch": args.calib_batch,
                     "seed": args.seed, "device": device.split(":")[0], "dtype": "float32",
                     "threshold": THRESHOLD},
        "summary": summarize(layers), "layers": layers}
    print(f"{describe(report)}\n\n{text_table(HEADERS, table_rows(report))}")
    if args.json:
        atomic_write_json(args.json, report)
        print(f"report: {args.json}")
    if args.md:
        atomic_write(args.md, f"{describe(report)}\n\n{markdown_table(HEADERS, table_rows(report))}\n")
        print(f"table: {args.md}")


if __name__ == "__main__":
    run_main(main, PROG)
