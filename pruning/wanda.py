"""Wanda pruning (arXiv 2306.11695) and the magnitude baseline for every GPT of this repository.

    python pruning/wanda.py --ckpt logs/run/model_19072.pt --data data/edu_fineweb10B --out pruned.pt
    python pruning/wanda.py --hf gpt2 --data data/edu_fineweb10B --nm 2:4 --method magnitude --no-hellaswag

Wanda scores every weight of a Linear by S_ij = |W_ij| * ||X_j||_2, where X_j is the j-th input
feature of that layer over all calibration tokens, and zeros the lowest scores of each output row:
int(in * sparsity) of them, or with N:M the N lowest of every M consecutive inputs. It runs block by
block: the calibration activations go through the already pruned blocks 0..k-1, the input norms of
every Linear of block k are gathered with forward hooks in one pass of the dense block, the block is
pruned, and the pruned block produces the inputs of block k+1. Only the Linears inside the blocks
are pruned (never embeddings, LayerNorms, biases or the tied head); kept weights are unchanged.

NdLinear (NdGPT-2's MLP): each factor ``align_layers[i]`` is scored with the norms of its own input
(the tensor with mode i moved last). Factors too small to prune (1 -> 2, 2 -> 1, or fewer inputs
than M) stay dense and the report says so.

Magnitude baseline: S_ij = |W_ij|, same per-output-row comparison groups, no calibration.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn
from tqdm import tqdm

from utils.checkpoint import load_any_gpt, load_gpt, save_checkpoint
from utils.cli import UserError, add_model_source_args, pick_device, run_main
from utils.evaluation import evaluate_loss
from utils.hellaswag import default_hellaswag_path, evaluate_hellaswag
from utils.loader import ShardLoader, find_shards, sample_windows
from utils.params import count_params
from utils.seed import seed_everything

# Below this many inputs a Linear is one of NdLinear's mode-mixing factors (1 -> 2, 2 -> 1): zeroing
# one of its inputs would delete a whole branch of the layer, not a redundant weight.
MIN_PRUNABLE_INPUTS = 3


# ----------------------------------------------------------------------------- the algorithm

def check_pruning_args(sparsity: float, nm: tuple[int, int] | None) -> None:
    if nm is not None:
        n, m = nm
        if m <= 0 or n <= 0 or n >= m:
            raise ValueError(f"N:M must satisfy 0 < N < M, got {n}:{m}")
    elif not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")


def parse_nm(text: str) -> tuple[int, int]:
    """'2:4' -> (2, 4); ValueError for anything else, or unless 0 < N < M."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"N:M must look like 2:4, got {text!r}")
    nm = (int(parts[0]), int(parts[1]))
    check_pruning_args(0.5, nm)
    return nm


def block_linears(model: nn.Module) -> list[list[tuple[str, nn.Linear]]]:
    """Per block, every nn.Linear inside it (NdLinear factors included) with its full name."""
    return [[(f"transformer.h.{i}.{name}", m) for name, m in block.named_modules()
             if isinstance(m, nn.Linear)] for i, block in enumerate(model.transformer.h)]


def skip_reason(layer: nn.Linear, sparsity: float, nm: tuple[int, int] | None) -> str | None:
    """Why ``layer`` stays dense, or None when it is pruned."""
    d = layer.in_features
    if nm is not None:
        n, m = nm
        if d < m:
            return f"too small: {d} inputs < M={m}"
        if d % m:
            return f"{d} inputs not a multiple of M={m}"
    elif int(d * sparsity) == 0:
        return "sparsity 0" if sparsity == 0 else f"too small: int({d} x {sparsity:g}) = 0 weights per row"
    if d < MIN_PRUNABLE_INPUTS:
        return f"too small: {d} inputs (mode-mixing factor, pruning would remove a whole branch)"
    return None


def prune_mask(score: torch.Tensor, sparsity: float, nm: tuple[int, int] | None) -> torch.Tensor:
    """Boolean mask (True = zero this weight) of the lowest scores of each output row."""
    out_dim, in_dim = score.shape
    if nm is not None:
        n, m = nm
        groups = score.view(out_dim, in_dim // m, m)
        lowest = torch.topk(groups, n, dim=-1, largest=False).indices
        return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True).view(out_dim, in_dim)
    # topk is ~2x faster than a full sort; among exactly tied scores it picks any (the count is exact)
    lowest = torch.topk(score, int(in_dim * sparsity), dim=-1, largest=False).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, lowest, True)


def _layer_entry(name: str, layer: nn.Linear, reason: str | None) -> dict:
    w = layer.weight
    return {"name": name, "shape": list(w.shape), "pruned": reason is None, "reason": reason,
            "sparsity": 1.0 - int(w.count_nonzero()) / w.numel()}


def _prune_layer(layer: nn.Linear, score: torch.Tensor, sparsity: float, nm) -> None:
    layer.weight.masked_fill_(prune_mask(score, sparsity, nm), 0.0)


def _report(method: str, sparsity: float, nm, layers: list[dict], seconds: float, **extra) -> dict:
    pruned = [e for e in layers if e["pruned"]]
    zeros = sum(e["sparsity"] * math.prod(e["shape"]) for e in pruned)
    size = sum(math.prod(e["shape"]) for e in pruned)
    return {"method": method, "sparsity": nm[0] / nm[1] if nm else sparsity, "nm": list(nm) if nm else None,
            "pruned_layers": len(pruned), "skipped_layers": len(layers) - len(pruned),
            "pruned_layers_sparsity": zeros / size if size else 0.0, "seconds": seconds, **extra,
            "layers": layers}


def _embed(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(idx.size(1), device=idx.device)
    return model.transformer.wte(idx) + model.transformer.wpe(pos)


def _attach_norm_hooks(targets: list[tuple[str, nn.Linear]]):
    """Forward hooks accumulating the per-input-feature sum of squares of each target's input.
    One hook per Linear; on an NdLinear factor it also switches NdLinear to its literal
    mode-by-mode path, so the hook sees exactly the tensor that factor multiplies."""
    sumsq = {name: torch.zeros(layer.in_features, dtype=torch.float64, device=layer.weight.device)
             for name, layer in targets}

    def gather(acc: torch.Tensor):
        def hook(module, inputs, output):
            x = inputs[0].detach().reshape(-1, module.in_features).float()
            acc.add_((x * x).sum(0))
        return hook

    handles = [layer.register_forward_hook(gather(sumsq[name])) for name, layer in targets]
    return sumsq, handles


@torch.no_grad()
def prune_wanda(model: nn.Module, calib_tokens: torch.Tensor, sparsity: float = 0.5,
                nm: tuple[int, int] | None = None, progress: bool = True, batch_size: int = 8) -> dict:
    """Prune ``model`` in place with Wanda on ``calib_tokens`` (LongTensor N x T); returns the report.

    Only one block's activations (N x T x C) are held at a time; they are processed ``batch_size``
    sequences at a time.
    """
    check_pruning_args(sparsity, nm)
    if calib_tokens.dim() != 2 or calib_tokens.numel() == 0:
        raise ValueError(f"calib_tokens must be a non-empty N x T tensor, got {tuple(calib_tokens.shape)}")
    if calib_tokens.size(1) > model.config.block_size:
        raise ValueError(f"calibration length {calib_tokens.size(1)} exceeds block_size "
                         f"{model.config.block_size}")
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    xs = [_embed(model, idx.to(device)) for idx in calib_tokens.split(batch_size)]  # block 0 inputs
    layers = []
    for block, linears in zip(tqdm(model.transformer.h, desc="wanda", unit="block", disable=not progress),
                              block_linears(model)):
        reasons = {name: skip_reason(layer, sparsity, nm) for name, layer in linears}
        targets = [(name, layer) for name, layer in linears if reasons[name] is None]
        sumsq, handles = _attach_norm_hooks(targets)
        try:
            if targets:
                for x in xs:
                    block(x)
        finally:
            for h in handles:
                h.remove()
        for name, layer in targets:
            norm = sumsq[name].sqrt().to(layer.weight.dtype)
            _prune_layer(layer, layer.weight.abs() * norm, sparsity, nm)
        layers += [_layer_entry(name, layer, reasons[name]) for name, layer in linears]
        for i, x in enumerate(xs):  # inputs of the next block, through the pruned one
            xs[i] = block(x)
    model.train(was_training)
    return _report("wanda", sparsity, nm, layers, time.perf_counter() - t0,
                   calib_samples=calib_tokens.size(0), calib_len=calib_tokens.size(1))


@torch.no_grad()
def prune_magnitude(model: nn.Module, calib_tokens: torch.Tensor | None = None, sparsity: float = 0.5,
                    nm: tuple[int, int] | None = None, progress: bool = False) -> dict:
    """The baseline: zero the smallest |W_ij| of each output row (same groups as Wanda, per layer).
    ``calib_tokens`` is accepted for a common interface and not used."""
    check_pruning_args(sparsity, nm)
    t0 = time.perf_counter()
    layers = []
    for linears in tqdm(block_linears(model), desc="magnitude", unit="block", disable=not progress):
        for name, layer in linears:
            reason = skip_reason(layer, sparsity, nm)
            if reason is None:
                _prune_layer(layer, layer.weight.abs(), sparsity, nm)
            layers.append(_layer_entry(name, layer, reason))
    return _report("magnitude", sparsity, nm, layers, time.perf_counter() - t0)


PRUNERS = {"wanda": prune_wanda, "magnitude": prune_magnitude}


# ----------------------------------------------------------------------------- command line

def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_summary(before: dict, after: dict, report: dict) -> None:
    print(f"\n{report['method']} pruning, "
          + (f"{report['nm'][0]}:{report['nm'][1]}" if report["nm"] else f"sparsity {report['sparsity']:g}")
          + f", {report['pruned_layers']} layers pruned, {report['skipped_layers']} left dense")
    print(f"{'':18}{'before':>16}{'after':>16}")
    rows = [("total params", "total", ",d"), ("nonzero params", "nonzero", ",d"),
            ("val loss", "val_loss", ".4f"), ("perplexity", "ppl", ".2f"),
            ("HellaSwag acc_norm", "hellaswag_acc_norm", ".4f")]
    for label, key, spec in rows:
        print(f"{label:18}{_fmt(before[key], spec):>16}{_fmt(after[key], spec):>16}")
    print("\nper-layer sparsity")
    width = max(len(e["name"]) for e in report["layers"])
    for e in report["layers"]:
        shape = "x".join(map(str, e["shape"]))
        note = "" if e["pruned"] else f"  dense: {e['reason']}"
        print(f"  {e['name']:<{width}} {shape:>11} {e['sparsity']:7.2%}{note}")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="wanda.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source_args(ap, "GPT checkpoint of this repository (dense or already pruned)")
    ap.add_argument("--data", required=True, help="token shard directory (*_train_*.npy, *_val_*.npy)")
    ap.add_argument("--method", choices=sorted(PRUNERS), default="wanda")
    ap.add_argument("--sparsity", type=float, default=None, help="unstructured, per row (default 0.5)")
    ap.add_argument("--nm", help="N:M semi-structured sparsity instead, e.g. 2:4 or 4:8")
    ap.add_argument("--calib-samples", type=int, default=128, help="calibration windows (default 128)")
    ap.add_argument("--calib-len", type=int, default=None, help="window length (default block_size)")
    ap.add_argument("--calib-batch", type=int, default=8, help="sequences per forward while pruning")
    ap.add_argument("--val-batches", type=int, default=20, help="val batches for the loss (0 to skip)")
    ap.add_argument("--val-batch-size", type=int, default=8)
    ap.add_argument("--hellaswag", help="HellaSwag jsonl (default: data/hellaswag, else the shared copy)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N HellaSwag examples")
    ap.add_argument("--no-hellaswag", action="store_true", help="skip HellaSwag")
    ap.add_argument("--out", help="write the pruned checkpoint here")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --out")
    ap.add_argument("--json", help="write the report (params, losses, per-layer sparsity, timings) here")
    ap.add_argument("--before-json", metavar="REPORT",
                    help="reuse the dense 'before' metrics of an earlier report of the same checkpoint and "
                         "evaluation settings instead of recomputing them")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    ap.add_argument("--seed", type=int, default=1337, help="seed of the calibration windows")
    return ap.parse_args(argv)


def validate(args) -> None:
    """Every check that needs no model, before any work is done."""
    if args.nm is not None and args.sparsity is not None:
        raise UserError("give either --sparsity or --nm, not both (N:M sets the sparsity to N/M)")
    args.sparsity = 0.5 if args.sparsity is None else args.sparsity
    try:
        args.nm = parse_nm(args.nm) if args.nm is not None else None
        check_pruning_args(args.sparsity, args.nm)
    except ValueError as e:
        raise UserError(str(e)) from e
    for flag in ("calib_samples", "calib_batch", "val_batch_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.val_batches < 0 or (args.limit is not None and args.limit < 1) or (args.calib_len or 1) < 1:
        raise UserError("--val-batches must be >= 0, --limit and --calib-len >= 1")
    if args.ckpt and not Path(args.ckpt).is_file():
        raise UserError(f"checkpoint not found: {args.ckpt}")
    for flag in ("out", "json"):
        path = getattr(args, flag)
        if path is None:
            continue
        if args.ckpt and Path(path).resolve() == Path(args.ckpt).resolve():
            raise UserError(f"--{flag} {path} is the input checkpoint; choose another path")
        if Path(path).exists() and not args.force:
            raise UserError(f"--{flag} {path} exists; pass --force to overwrite it")
    if args.out and args.json and Path(args.out).resolve() == Path(args.json).resolve():
        raise UserError("--out and --json must be different files")
    find_shards(args.data, "train")  # UserError when the directory or its train shards are missing
    if args.val_batches:
        find_shards(args.data, "val")
    if not args.no_hellaswag:
        args.hellaswag = default_hellaswag_path(args.hellaswag)


def load_model(args, device: str):
    """(model, checkpoint fields to carry over, model name)."""
    if args.ckpt:
        model, ckpt = load_gpt(args.ckpt, device)
        return model, {"step": ckpt.get("step")}, ckpt.get("model_name", "gpt2")
    model, _ = load_any_gpt(None, args.hf, device)
    return model, {}, "gpt2"


def evaluate(model, val_loader: ShardLoader | None, args, device: str) -> dict:
    """Params, val loss (the loader restarts each time: the same batches before and after) and HellaSwag."""
    t0 = time.perf_counter()
    counts = count_params(model)
    loss = evaluate_loss(model, val_loader, args.val_batches, device) if val_loader else None
    acc = None
    if not args.no_hellaswag:
        acc = evaluate_hellaswag(model, args.hellaswag, limit=args.limit, device=device)["acc_norm"]
    return {"total": counts["total"], "nonzero": counts["nonzero"], "val_loss": loss,
            "ppl": None if loss is None else math.exp(loss), "hellaswag_acc_norm": acc,
            "seconds": time.perf_counter() - t0}


def reused_before(args) -> dict:
    """The 'before' block of --before-json, if it was measured on the same model and evaluation."""
    try:
        earlier = json.loads(Path(args.before_json).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"--before-json {args.before_json}: cannot read it ({e})") from e
    same = {"source": args.ckpt or f"hf:{args.hf}", "val_batches": args.val_batches,
            "val_batch_size": args.val_batch_size, "hellaswag_limit": args.limit}
    differs = [k for k, v in same.items() if earlier.get(k) != v]
    if args.no_hellaswag != (earlier.get("before", {}).get("hellaswag_acc_norm") is None):
        differs.append("hellaswag")
    if differs or "before" not in earlier:
        raise UserError(f"--before-json {args.before_json} was measured with other settings ({', '.join(differs)})")
    return earlier["before"]


def main(argv=None) -> None:
    args = parse_args(argv)
    validate(args)
    seed_everything(args.seed)
    device = pick_device(args.device)
    model, carried, model_name = load_model(args, device)
    block_size = model.config.block_size
    seq_len = args.calib_len or block_size
    if seq_len > block_size:
        raise UserError(f"--calib-len {seq_len} exceeds the model's block_size {block_size}")
    data = Path(args.data)
    calib = sample_windows(data, "train", args.calib_samples, seq_len, args.seed)
    if int(calib.max()) >= model.config.vocab_size:
        raise UserError(f"the data holds token ids >= the model's vocab_size {model.config.vocab_size}")
    val_loader = ShardLoader(data, "val", args.val_batch_size, seq_len) if args.val_batches else None

    before = reused_before(args) if args.before_json else evaluate(model, val_loader, args, device)
    prune = PRUNERS[args.method]
    report = prune(model, calib, sparsity=args.sparsity, nm=args.nm, progress=True,
                   **({"batch_size": args.calib_batch} if args.method == "wanda" else {}))
    after = evaluate(model, val_loader, args, device)

    report.update(model_name=model_name, source=args.ckpt or f"hf:{args.hf}", seed=args.seed,
                  calib_samples=args.calib_samples, calib_len=seq_len,
                  val_batches=args.val_batches, val_batch_size=args.val_batch_size,
                  hellaswag_limit=args.limit)
    print_summary(before, after, report)
    if args.out:
        save_checkpoint(args.out, model, kind="gpt", model_name=model_name, **carried,
                        val_loss=after["val_loss"], pruning=report)
        print(f"pruned checkpoint: {args.out}")
    if args.json:
        full = {**{k: v for k, v in report.items() if k != "layers"}, "before": before, "after": after,
                "timings": {"prune_s": report["seconds"], "eval_before_s": before["seconds"],
                            "eval_after_s": after["seconds"]}, "layers": report["layers"]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(full, indent=2) + "\n")
        print(f"report: {args.json}")


if __name__ == "__main__":
    run_main(main, "wanda.py")
