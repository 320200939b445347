"""Train GPT-2 / NdGPT-2 from scratch (SPEC sections 3-4), resumable bit-for-bit.

    python experiment/train_gpt.py                                 # CPU smoke run (200 steps, a few min)
    python experiment/train_gpt.py --model ndgpt2 --resume         # continue logs/ndgpt2-smoke
    torchrun --standalone --nproc_per_node=8 experiment/train_gpt.py --preset gpt2-124m --model ndgpt2

Every --eval-every steps and after the last step: val loss, 4 samples, HellaSwag (when a file is
found) and a checkpoint out-dir/model_NNNNN.pt holding everything needed to continue exactly
(model, optimizer, step, data position, RNG). out-dir/log.txt gets one line per event:
"{step} train {loss:.6f}", "{step} val {loss:.4f}", "{step} hella {acc_norm:.4f}".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist
from tqdm import tqdm

from models import MODEL_NAMES, model_config
from models.gpt2 import GPT
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.cli import UserError, check_positive, pick_device, run_main
from utils.evaluation import all_reduce_mean, evaluate_loss, sample_texts
from utils.malloc import keep_freed_memory
from utils.params import count_params
from utils.seed import get_rng_state, seed_everything, set_rng_state
from utils.tokenizer import get_encoding
from utils.training import (
    PRESETS,
    REPO,
    checkpoint_path,
    cosine_lr,
    read_log,
    run_checkpoints,
    summary_table,
    truncate_log,
    truncate_samples,
)

PROG = "train_gpt.py"
KILL_AFTER_STEP_ENV = "NDGPT2_KILL_AFTER_STEP"  # test hook: SIGKILL ourselves after logging this train step


# options a resumed run takes from its checkpoint unless given again on the command line
INHERITED = ("preset", "data", "seed", "max_steps", "warmup_steps", "eval_every", "micro_batch", "seq_len",
             "total_batch", "lr", "min_lr", "weight_decay", "grad_clip", "val_batches", "n_layer", "n_head",
             "n_embd", "hellaswag", "hellaswag_limit")


class TrainingDiverged(Exception):
    pass


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help=f"one of {', '.join(MODEL_NAMES)} (default gpt2, or the "
                    "model of the checkpoint given to --resume)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="hyperparameter preset (default: gpt2-124m with CUDA, smoke without)")
    ap.add_argument("--data", default=None, help="token shard directory (smoke: the builtin corpus, prepared "
                    "automatically; gpt2-124m: data/edu_fineweb10B)")
    ap.add_argument("--out-dir", default=None, help="run directory (default logs/<model>-<preset>)")
    ap.add_argument("--seed", type=int, default=None, help="default 1337 (a resumed run keeps its own)")
    ap.add_argument("--resume", nargs="?", const="latest", default=None, metavar="PATH",
                    help="continue a run: from PATH, or (no PATH) the newest valid checkpoint in --out-dir")
    ap.add_argument("--overwrite", action="store_true",
                    help="start a new run in an --out-dir that already holds one "
                    "(deletes its log and checkpoints)")
    g = ap.add_argument_group("hyperparameters (default: from --preset)")
    g.add_argument("--max-steps", type=int)
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--eval-every", type=int)
    g.add_argument("--micro-batch", type=int, help="sequences per forward per process")
    g.add_argument("--seq-len", type=int, help="tokens per sequence (T)")
    g.add_argument("--total-batch", type=int, help="tokens per optimizer step (grad accumulation fills it)")
    g.add_argument("--lr", type=float, help="max learning rate")
    g.add_argument("--min-lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--grad-clip", type=float, help="max grad norm (0 = no clipping)")
    g.add_argument("--val-batches", type=int, help="val micro-batches per evaluation (over all processes)")
    g.add_argument("--n-layer", type=int)
    g.add_argument("--n-head", type=int)
    g.add_argument("--n-embd", type=int)
    g.add_argument("--keep-checkpoints", type=int, default=0,
                   help="keep only the newest K checkpoints (0 = keep all)")
    e = ap.add_argument_group("evaluation")
    e.add_argument("--hellaswag", default=None,
                   help="HellaSwag jsonl (default: data/hellaswag or ../shared/data)")
    e.add_argument("--hellaswag-limit", type=int, default=None,
                   help="first N examples only (smoke default 50)")
    e.add_argument("--no-hellaswag", action="store_true")
    e.add_argument("--prompt", default="Hello, I'm a language model,")
    r = ap.add_argument_group("runtime")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: best available)")
    r.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on with CUDA, off on CPU)")
    r.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on with CUDA)")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    return ap.parse_args(argv)


def resolve_args(args: argparse.Namespace, cuda: bool) -> argparse.Namespace:
    """Fill every unset hyperparameter from the preset and validate."""
    args.preset = args.preset or ("gpt2-124m" if cuda else "smoke")
    preset = PRESETS[args.preset]
    for key in ("micro_batch", "seq_len", "total_batch", "max_steps", "warmup_steps", "lr", "min_lr",
                "weight_decay", "grad_clip", "eval_every", "val_batches", "hellaswag_limit"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.data is None and preset["data"] is not None:
        args.data = preset["data"]
    check_positive(max_steps=args.max_steps, eval_every=args.eval_every, micro_batch=args.micro_batch,
                   seq_len=args.seq_len, total_batch=args.total_batch, lr=args.lr,
                   val_batches=args.val_batches,
                   n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, threads=args.threads,
                   hellaswag_limit=args.hellaswag_limit)
    for name in ("warmup_steps", "min_lr", "weight_decay", "grad_clip", "keep_checkpoints"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.min_lr > args.lr:
        raise UserError(f"--min-lr ({args.min_lr}) must not exceed --lr ({args.lr})")
    return args


def build_config(args):
    """GPTConfig of the run: the model preset, scaled by the training preset and --n-layer/-head/-embd."""
    overrides = dict(PRESETS[args.preset]["model"])
    for key in ("n_layer", "n_head", "n_embd"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    overrides["block_size"] = max(overrides.get("block_size", 1024), args.seq_len)
    try:
        return model_config(args.model, **overrides)
    except ValueError as e:
        raise UserError(str(e)) from e


def find_resume_checkpoint(args) -> dict | None:
    """The checkpoint dict to resume from, or None for a fresh run."""
    if args.resume is None:
        return None
    if args.resume != "latest":
        ckpt = load_checkpoint(args.resume, expect_kind="gpt")
        ckpt["_path"] = str(args.resume)
    else:
        candidates = run_checkpoints(args.out_dir)
        if not candidates:
            raise UserError(f"--resume: no checkpoint model_NNNNN.pt in {args.out_dir}")
        ckpt = None
        for path in candidates:
            try:
                ckpt = load_checkpoint(path, expect_kind="gpt")
                ckpt["_path"] = str(path)
                break
            except UserError as e:
                print(f"{PROG}: warning: skipping unreadable checkpoint: {e}", file=sys.stderr)
        if ckpt is None:
            raise UserError(f"--resume: no valid checkpoint in {args.out_dir} "
                            f"(all {len(candidates)} corrupt)")
    for key in ("optimizer", "data_state", "step"):
        if key not in ckpt:
            raise UserError(f"{ckpt['_path']} is not a training checkpoint (no {key!r}); "
                            "it can be evaluated but not resumed")
    return ckpt


def check_out_dir(args, config, resuming: bool) -> None:
    """Refuse to mix two runs in one directory."""
    out = Path(args.out_dir)
    run_file = out / "run.json"
    existing = run_checkpoints(out)
    if resuming:
        return
    if not (run_file.is_file() or existing or (out / "log.txt").is_file()):
        return
    if args.overwrite:
        return
    what = "a run"
    if run_file.is_file():
        try:
            info = json.loads(run_file.read_text())
            what = f"a run of {info.get('model')} (preset {info.get('preset')})"
            if info.get("model") != args.model or info.get("config") != config.to_dict():
                what += f", not this {args.model} config"
        except (OSError, json.JSONDecodeError):
            pass
    raise UserError(f"{out} already holds {what}; pass --resume to continue it, --overwrite to replace it, "
                    "or choose another --out-dir")


def setup_distributed(args):
    """(ddp, rank, local_rank, world, device). torchrun sets RANK/LOCAL_RANK/WORLD_SIZE."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        if torch.cuda.is_available() and (args.device is None or args.device.startswith("cuda")):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl")
        else:
            device = "cpu"
            dist.init_process_group(backend="gloo")
        return True, rank, local_rank, world, device
    return False, 0, 0, 1, pick_device(args.device)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ddp, rank, local_rank, world, device = setup_distributed(args)
    try:
        train(args, ddp, rank, world, device)
    finally:
        if ddp and dist.is_initialized():
            dist.destroy_process_group()


def train(args, ddp: bool, rank: int, world: int, device: str) -> None:
    master = rank == 0
    device_type = torch.device(device).type
    if device_type == "cpu":
        keep_freed_memory()  # steps stop page-faulting their buffers back in (utils/malloc.py)

    def say(msg: str) -> None:
        if master:
            tqdm.write(msg)

    # ---- configuration, run directory, resume point
    if args.resume not in (None, "latest") and args.model is None:
        args.model = load_checkpoint(args.resume, expect_kind="gpt").get("model_name")
    args.model = args.model or "gpt2"
    if args.model not in MODEL_NAMES:
        raise UserError(f"unknown model {args.model!r}; choose one of: {', '.join(MODEL_NAMES)}")
    default_preset = "gpt2-124m" if device_type == "cuda" else "smoke"
    args.out_dir = args.out_dir or str(REPO / "logs" / f"{args.model}-{args.preset or default_preset}")
    ckpt = find_resume_checkpoint(args)
    if ckpt is not None:  # options not given now continue as the run was started
        for key, value in (ckpt.get("train_args") or {}).items():
            if key in INHERITED and getattr(args, key, None) is None:
                setattr(args, key, value)
    args = resolve_args(args, cuda=device_type == "cuda")
    args.seed = 1337 if args.seed is None else args.seed
    if args.amp is None:
        args.amp = device_type == "cuda"
    if args.compile is None:
        args.compile = device_type == "cuda"
    config = build_config(args)
    if ckpt is not None:
        if ckpt.get("model_name") != args.model or ckpt.get("config") != config.to_dict():
            raise UserError(f"{ckpt['_path']} is a {ckpt.get('model_name')} checkpoint with another config; "
                            f"it cannot resume a {args.model} run with these options "
                            "(same --model/--preset/--seq-len/--n-* needed)")
    check_out_dir(args, config, resuming=ckpt is not None)

    tokens_per_micro = args.micro_batch * args.seq_len * world
    if args.total_batch is None:
        args.total_batch = 2 * args.micro_batch * args.seq_len  # smoke: two micro-batches
    if args.total_batch % tokens_per_micro:
        raise UserError(f"--total-batch {args.total_batch} is not a multiple of micro-batch x seq-len x "
                        f"processes = {tokens_per_micro}")
    grad_accum = args.total_batch // tokens_per_micro

    # ---- data (imported here: utils.loader/shards are optional until a run needs them)
    from utils.loader import ShardLoader
    if args.data is None:
        from utils.shards import prepare_builtin_corpus
        if master:
            prepare_builtin_corpus(str(REPO / "data" / "builtin"))
        if ddp:
            dist.barrier()
        args.data = str(REPO / "data" / "builtin")
    if not Path(args.data).is_dir():
        raise UserError(f"data directory not found: {args.data}")
    train_loader = ShardLoader(args.data, "train", args.micro_batch, args.seq_len, rank=rank,
                               world_size=world, seed=args.seed)
    val_loader = ShardLoader(args.data, "val", args.micro_batch, args.seq_len, rank=rank, world_size=world,
                             seed=args.seed, shuffle=False)
    val_steps = max(1, args.val_batches // world)

    hellaswag = None
    if not args.no_hellaswag:
        from utils.hellaswag import evaluate_hellaswag, load_hellaswag_if_found
        hellaswag = load_hellaswag_if_found(args.hellaswag, args.hellaswag_limit, note=say)  # bad file: error now

    # ---- model, optimizer, state
    seed_everything(args.seed)
    if device_type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32
    raw_model = GPT(config).to(device)
    optimizer = raw_model.configure_optimizers(args.weight_decay, args.lr, betas=(0.9, 0.95), eps=1e-8,
                                               device_type=device_type)
    resumed = ckpt is not None
    start_step, history = 0, {"val": [], "hella": []}
    time_before = {"train": 0.0, "wall": 0.0}  # seconds spent by earlier sessions of this run
    out = Path(args.out_dir)
    log_file, samples_file = out / "log.txt", out / "samples.txt"
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        train_loader.load_state_dict(ckpt["data_state"])
        set_rng_state(ckpt["rng"])
        start_step = int(ckpt["step"])
        time_before = {"train": float(ckpt.get("train_time", 0.0)), "wall": float(ckpt.get("wall_time", 0.0))}
        history = ckpt.get("history", history)
        say(f"resumed from {ckpt['_path']} at step {start_step}")
        if master:
            truncate_log(log_file, start_step)
            truncate_samples(samples_file, start_step)
        del ckpt
    elif master:
        out.mkdir(parents=True, exist_ok=True)
        if args.overwrite:
            for path in run_checkpoints(out) + [log_file, samples_file, out / "summary.json"]:
                path.unlink(missing_ok=True)
        log_file.write_text("")
        (out / "run.json").write_text(json.dumps(
            {"model": args.model, "preset": args.preset, "config": config.to_dict(), "args": vars(args)},
            indent=2) + "\n")
    if ddp:
        dist.barrier()

    model = torch.compile(raw_model) if args.compile else raw_model
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[int(device.split(":")[1])] if device_type == "cuda" else None)
    amp = torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=args.amp)
    enc = get_encoding()
    n_params = count_params(raw_model)["total"]
    if master:
        say(f"{args.model} ({args.preset}): {n_params:,} params | {world} process(es) on {device} | "
            f"batch {args.total_batch:,} tokens = {args.micro_batch} x {args.seq_len} x {grad_accum} accum x "
            f"{world} | {args.max_steps} steps | amp {args.amp} | compile {args.compile} | out {out}")

    def log(line: str) -> None:
        if master:
            with open(log_file, "a") as f:
                f.write(line + "\n")

    def evaluate(step: int) -> None:
        val_loss = evaluate_loss(model, val_loader, val_steps, device, args.amp, world)
        say(f"step {step:5d} | val loss {val_loss:.4f}")
        log(f"{step} val {val_loss:.4f}")
        history["val"].append((step, val_loss))
        if hellaswag is not None:
            result = evaluate_hellaswag(raw_model, hellaswag, device=device, amp=args.amp, rank=rank,
                                        world_size=world, progress=False)
            say(f"step {step:5d} | hellaswag acc_norm {result['acc_norm']:.4f} (acc {result['acc']:.4f}, "
                f"n={result['n']})")
            log(f"{step} hella {result['acc_norm']:.4f}")
            history["hella"].append((step, result["acc_norm"], result["n"]))
        prompt_len = len(enc.encode(args.prompt)) if args.prompt else 1
        texts = sample_texts(raw_model, enc, args.prompt, 4, max(1, 32 - prompt_len), top_k=50,
                             seed=42 + rank, device=device, amp=args.amp)
        if master:
            with open(samples_file, "a") as f:
                f.write(f"=== step {step} ===\n")
                for i, text in enumerate(texts):
                    say(f"sample {i}: {text!r}")
                    f.write(f"[{i}] {text}\n")
        if master:
            save_checkpoint(checkpoint_path(out, step), raw_model, kind="gpt", model_name=args.model,
                            optimizer=optimizer.state_dict(), step=step, val_loss=val_loss,
                            data_state=train_loader.state_dict(), rng=get_rng_state(), train_args=vars(args),
                            train_time=time_before["train"] + train_time,
                            wall_time=time_before["wall"] + time.time() - wall_start, history=history)
            if args.keep_checkpoints:
                for old in run_checkpoints(out)[args.keep_checkpoints:]:
                    old.unlink(missing_ok=True)

    kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "-1"))
    train_time, tokens_this_session = 0.0, 0
    wall_start = time.time()
    bar = tqdm(total=args.max_steps, initial=min(start_step, args.max_steps), desc="train", unit="step",
               disable=not master, dynamic_ncols=True)
    for step in range(start_step, args.max_steps + 1):
        last = step == args.max_steps
        resumed_here = resumed and step == start_step  # its evaluation is already in the checkpoint
        if (step % args.eval_every == 0 or last) and not resumed_here:
            evaluate(step)
        if last:
            break
        t0 = time.time()
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_accum = torch.zeros((), device=device)
        for micro_step in range(grad_accum):
            x, y = train_loader.next_batch()
            x, y = x.to(device), y.to(device)
            if ddp:
                model.require_backward_grad_sync = micro_step == grad_accum - 1
            with amp:
                _, loss = model(x, y)
            loss = loss / grad_accum
            loss_accum += loss.detach()
            loss.backward()
        loss_accum = all_reduce_mean(loss_accum, world)
        norm = torch.nn.utils.clip_grad_norm_(
            raw_model.parameters(), args.grad_clip if args.grad_clip > 0 else float("inf"))
        if not (math.isfinite(loss_accum.item()) and math.isfinite(norm.item())):
            what = "loss" if not math.isfinite(loss_accum.item()) else "grad norm"
            raise TrainingDiverged(f"non-finite {what} "
                                   f"at step {step} (loss {loss_accum.item()}, grad norm {norm.item()}); "
                                   f"stopped without saving; lower --lr or resume from an earlier checkpoint")
        lr = cosine_lr(step, args.lr, args.min_lr, args.warmup_steps, args.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        if device_type == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
        train_time += dt
        tokens_this_session += args.total_batch
        log(f"{step} train {loss_accum.item():.6f}")
        say(f"step {step:5d} | loss {loss_accum.item():.6f} | lr {lr:.4e} | norm {norm.item():.4f} | "
            f"dt {dt * 1000:.2f}ms | tok/sec {args.total_batch / dt:,.0f}")
        bar.update(1)
        if step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()

    # ---- statistics against GPT-2 / GPT-3
    if master:
        finish(args, out, n_params, history, tokens_this_session / train_time if train_time > 0 else None,
               train_time=time_before["train"] + train_time,
               wall_time=time_before["wall"] + time.time() - wall_start)


def finish(args, out: Path, n_params: int, history: dict, tokens_per_sec: float | None, *, train_time: float,
           wall_time: float) -> None:
    """Print the statistics table against GPT-2 / GPT-3 and write out-dir/summary.json."""
    events = read_log(out / "log.txt")
    val = [(s, v) for s, k, v in events if k == "val"]
    hella = [(s, v) for s, k, v in events if k == "hella"]
    best_val_step, best_val = min(val, key=lambda sv: sv[1]) if val else (None, None)
    final_step, final_val = val[-1] if val else (None, None)
    tokens_seen = final_step * args.total_batch if final_step is not None else 0
    stats = {
        "model": args.model, "preset": args.preset, "params": n_params,
        "final_step": final_step, "final_val_loss": final_val,
        "best_val_loss": best_val, "best_val_step": best_val_step,
        "best_hellaswag": max((v for _, v in hella), default=None),
        "hellaswag_n": history["hella"][-1][2] if history["hella"] else None,
        "tokens_seen": tokens_seen,
        "tokens_per_sec": tokens_seen / max(train_time, 1e-9) if tokens_per_sec is None else tokens_per_sec,
        "train_time_s": train_time, "wall_time_s": wall_time,
    }
    table = summary_table(stats)
    tqdm.write("\n" + table)
    (out / "summary.json").write_text(json.dumps({**stats, "table": table.splitlines()}, indent=2) + "\n")


def cli() -> None:
    def guarded():
        try:
            main()
        except TrainingDiverged as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            sys.exit(3)
    run_main(guarded, PROG)


if __name__ == "__main__":
    cli()
