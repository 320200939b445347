"""Train GPT-2 / NdGPT-2 from scratch, resumable bit-for-bit.

    python experiment/train_gpt.py                                  # CPU smoke run (200 steps, under a minute)
    python experiment/train_gpt.py --resume logs/gpt2-smoke/model_00100.pt   # continue (or rewind) that run
    torchrun --standalone --nproc_per_node=8 experiment/train_gpt.py --preset gpt2-124m --model ndgpt2

Every --eval-every steps and after the last step: val loss, 4 samples, HellaSwag (when a file is found)
and a checkpoint out-dir/model_NNNNN.pt; the last step writes model_{max_steps:05d}.pt (gpt2-124m:
model_19073.pt). The newest --full-checkpoints of them can be resumed exactly (optimizer, data position,
RNG); older ones are stripped to the model. out-dir/log.txt gets one line per event:
"{step} train {loss:.6f}", "{step} val {loss:.4f}", "{step} hella {acc_norm:.4f}".

A run directory belongs to one run: a second process writing into it fails at once (a lock); --resume
continues in the checkpoint's own directory; a rewind (--resume of an older checkpoint) moves the later
checkpoints into out-dir/abandoned/, so a plain --resume never picks them.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist
from tqdm import tqdm

from evaluation.hellaswag import evaluate_hellaswag, find_examples
from evaluation.loss import all_reduce_mean, evaluate_loss
from evaluation.sampling import sample_texts
from experiment.train_summary import flops_per_token, peak_flops, write_summary
from models.gpt2 import GPT
from models.gpt_kernels import use_cpu_kernels
from utils import rundir
from utils import train_config as tc
from utils.checkpoint import save_checkpoint, unwrap
from utils.cli import ArgumentParser, UserError, check_writable_dir, pick_device, positive_int, run_main, seed_int
from utils.identity import data_fingerprint, new_run_id
from utils.io import check_space
from utils.loader import ShardLoader, default_order
from utils.malloc import keep_freed_memory
from utils.precision import autocast, resolve_amp
from utils.runlog import append_lines, format_event
from utils.seed import get_rng_state, seed_everything, set_rng_state
from utils.shards import prepare_builtin_corpus
from utils.tokenizer import get_encoding
from utils.train_config import TRAIN_PRESETS

PROG = "train_gpt.py"
KILL_AFTER_STEP_ENV = "NDGPT2_KILL_AFTER_STEP"  # test hook: SIGKILL ourselves after logging this train step


class TrainingDiverged(Exception):
    pass


def parse_args(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a name of models.MODEL_NAMES (default gpt2; a resumed run: its own)")
    ap.add_argument("--preset", choices=sorted(TRAIN_PRESETS),
                    help="hyperparameter preset (default: gpt2-124m with CUDA, smoke without)")
    ap.add_argument("--data", help="token shard directory (smoke: the builtin corpus, prepared automatically; "
                    "gpt2-124m: data/edu_fineweb10B)")
    ap.add_argument("--allow-data-change", action="store_true", help="let --resume continue on other --data")
    ap.add_argument("--order", choices=("shards", "windows"), help="train data order: shards front to back, "
                    "or a seeded permutation of windows per epoch (default: the data's own, utils.loader)")
    ap.add_argument("--out-dir", help="run directory (default logs/<model>-<preset>; with --resume PATH: "
                    "PATH's directory)")
    ap.add_argument("--seed", type=seed_int, help="default 1337 (a resumed run keeps its own)")
    ap.add_argument("--resume", nargs="?", const="latest", metavar="PATH",
                    help="continue a run: from checkpoint PATH (an older one rewinds the run), or (no PATH) "
                    "from the newest resumable checkpoint in --out-dir; other flags keep the run's values")
    ap.add_argument("--overwrite", action="store_true",
                    help="start a new run in an --out-dir that holds one (deletes its log and checkpoints)")
    g = ap.add_argument_group("hyperparameters (default: from --preset; a resumed run: its own)")
    for name, kind, text in tc.HYPERPARAMETER_FLAGS:
        g.add_argument(tc.flag(name), type=kind, help=text)
    e = ap.add_argument_group("evaluation")
    e.add_argument("--hellaswag", help="HellaSwag jsonl (default: data/hellaswag or ../shared/data)")
    e.add_argument("--hellaswag-limit", type=positive_int, help="first N examples only (smoke default 50)")
    on_off = e.add_mutually_exclusive_group()
    on_off.add_argument("--no-hellaswag", dest="no_hellaswag", action="store_const", const=True,
                        help="skip HellaSwag (smoke default: on where a file is found)")
    on_off.add_argument("--with-hellaswag", dest="no_hellaswag", action="store_const", const=False,
                        help="evaluate HellaSwag (e.g. on a resumed run that had --no-hellaswag)")
    e.add_argument("--prompt", help='sample prompt (default "Hello, I\'m a language model,")')
    r = ap.add_argument_group("runtime")
    r.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: best available)")
    r.add_argument("--amp", action=argparse.BooleanOptionalAction,
                   help="bf16 autocast (default: utils/precision.py: on with CUDA; on the CPU only where bf16 "
                   "matmuls are at least as fast as fp32)")
    r.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile (default: on with CUDA)")
    r.add_argument("--threads", type=positive_int, help="torch CPU threads per process")
    return ap.parse_args(argv)


def setup_distributed(device: str | None):
    """(ddp, rank, world, device). torchrun sets RANK/LOCAL_RANK/WORLD_SIZE."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        if torch.cuda.is_available() and (device is None or device.startswith("cuda")):
            torch.cuda.set_device(f"cuda:{local_rank}")
            dist.init_process_group(backend="nccl")
            return True, rank, world, f"cuda:{local_rank}"
        dist.init_process_group(backend="gloo")
        return True, rank, world, "cpu"
    return False, 0, 1, pick_device(device)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ddp, rank, world, device = setup_distributed(args.device)
    try:
        train(args, ddp, rank, world, device)
    finally:
        if ddp and dist.is_initialized():
            dist.destroy_process_group()


def evaluate(step: int, model, val_loader, val_steps: int, hellaswag, enc, prompt: str, device: str, amp: bool,
             rank: int, world: int, out: Path, say) -> float:
    """Val loss, HellaSwag and 4 samples at ``step``, which rank 0 appends to out-dir's log.txt and samples.txt;
    returns the val loss. ``model`` may be compiled or DDP-wrapped."""
    val_loss = evaluate_loss(model, val_loader, val_steps, device, amp, world)
    say(f"step {step:5d} | val loss {val_loss:.4f}")
    lines = [format_event(step, "val", val_loss)]
    if hellaswag is not None:
        result = evaluate_hellaswag(unwrap(model), hellaswag, device=device, amp=amp, rank=rank, world_size=world,
                                    progress=False)
        say(f"step {step:5d} | hellaswag acc_norm {result['acc_norm']:.4f} (acc {result['acc']:.4f}, "
            f"n={result['n']})")
        lines.append(format_event(step, "hella", result["acc_norm"]))
    prompt_len = len(enc.encode(prompt)) if prompt else 1
    texts = sample_texts(unwrap(model), enc, prompt, 4, max(1, 32 - prompt_len), top_k=50, seed=42 + rank,
                         device=device, amp=amp)
    if rank == 0:
        append_lines(out / "log.txt", lines)
        for i, text in enumerate(texts):
            say(f"sample {i}: {text!r}")
        append_lines(out / "samples.txt", [f"=== step {step} ==="] + [f"[{i}] {text}" for i, text in enumerate(texts)])
    return val_loss


def train(args, ddp: bool, rank: int, world: int, device: str) -> None:
    master, device_type = rank == 0, torch.device(device).type
    say = tqdm.write if master else (lambda msg: None)
    warn = (lambda msg: print(f"{PROG}: {msg}", file=sys.stderr)) if master else (lambda msg: None)
    if device_type == "cpu":
        keep_freed_memory()  # steps stop page-faulting their buffers back in (utils/malloc.py)

    # ---- the run config; everything below is checked before the run directory is touched
    cfg, model_config, out, resume_from, ckpt = tc.settle(vars(args), device_type == "cuda", warn)
    enc = get_encoding()
    special = sorted(t for t in enc.special_tokens_set if t in cfg.prompt)
    if special:  # the samples encode the prompt as plain text, where tiktoken refuses these
        raise UserError(f"--prompt {cfg.prompt!r} contains the special token(s) {', '.join(special)}; remove them")
    check_writable_dir(out, "--out-dir")
    grad_accum = tc.grad_accum_steps(cfg, world)
    if tc.same_path(cfg.data, tc.BUILTIN_DATA):
        if master:
            prepare_builtin_corpus(str(tc.BUILTIN_DATA))
        if ddp:
            dist.barrier()
    if not Path(cfg.data).is_dir():
        raise UserError(f"data directory not found: {cfg.data}")
    cfg = replace(cfg, order=cfg.order or default_order(cfg.data))
    data_id = data_fingerprint(cfg.data)  # checkpoints name their data by content (checked on resume)
    run_id = (ckpt or {}).get("run_id") or new_run_id()  # a new run (--overwrite included) gets a new id
    loader_args = dict(rank=rank, world_size=world, seed=cfg.seed, vocab_size=model_config.vocab_size)
    train_loader = ShardLoader(cfg.data, "train", cfg.micro_batch, cfg.seq_len, order=cfg.order, **loader_args)
    val_loader = ShardLoader(cfg.data, "val", cfg.micro_batch, cfg.seq_len, shuffle=False, **loader_args)
    val_steps = tc.val_steps(cfg, world)
    if val_steps > val_loader.steps_per_epoch:  # the loader would wrap: tokens counted twice
        raise UserError(f"--val-tokens {cfg.val_tokens:,} asks for {val_steps} val steps of {world} x "
                        f"{cfg.micro_batch} x {cfg.seq_len}, but {cfg.data} holds {val_loader.steps_per_epoch}; "
                        "ask for fewer")
    hellaswag = None if cfg.no_hellaswag else find_examples(cfg.hellaswag, cfg.hellaswag_limit, device, note=say,
                                                            conventions=("seed",))[0]

    # ---- model, optimizer, state
    seed_everything(cfg.seed)
    if device_type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32
    raw_model = GPT(model_config).to(device)
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, cfg.lr, betas=(0.9, 0.95), eps=1e-8,
                                               device_type=device_type)
    start_step, time_before = 0, {"train": 0.0, "wall": 0.0}  # seconds spent by earlier sessions of the run
    if ckpt is not None:
        try:
            raw_model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            train_loader.load_state_dict(ckpt["data_state"])
            set_rng_state(ckpt["rng"])
            time_before = {"train": float(ckpt.get("train_time", 0.0)), "wall": float(ckpt.get("wall_time", 0.0))}
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:  # a damaged or hand-edited file
            raise UserError(f"{resume_from} cannot be resumed: its saved state is malformed "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from e
        start_step = ckpt["step"]
        del ckpt
    if master:  # a full checkpoint (weights + AdamW's two moments) must fit before hours of training
        weights = sum(p.numel() * p.element_size() for p in raw_model.parameters())
        check_space(rundir.checkpoint_path(out, cfg.max_steps), 3 * weights, "the checkpoint")
    run_info = {"model": cfg.model, "preset": cfg.preset, "run_id": run_id, "config": model_config.to_dict(),
                "train_config": asdict(cfg)}
    lock = rundir.claim(out, run_info, resume_from, start_step, args.overwrite, say) if master else None
    if resume_from is not None:
        say(f"resumed from {resume_from} at step {start_step}")
    if ddp:
        dist.barrier()

    amp = resolve_amp(device, cfg.amp)
    compile_model = device_type == "cuda" if cfg.compile is None else cfg.compile
    model = torch.compile(raw_model) if compile_model else raw_model
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[int(device.split(":")[1])] if device_type == "cuda" else None)
    if device_type == "cpu" and not compile_model:  # eager CPU only: under torch.compile the plain loss is traced
        use_cpu_kernels(raw_model)  # after DDP, which would expect a sparse gradient from a sparse embedding
    n_params = raw_model.num_params()
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in raw_model.state_dict().values()}
    model_mb = sum(storages.values()) / 2**20  # the tied head shares the embedding's storage
    say(f"{cfg.model} ({cfg.preset}): {n_params:,} params | {world} process(es) on {device} | batch "
        f"{cfg.total_batch:,} tokens = {cfg.micro_batch} x {cfg.seq_len} x {grad_accum} accum x {world} | "
        f"{cfg.max_steps} steps | val {val_steps * cfg.micro_batch * cfg.seq_len * world:,} tokens | order "
        f"{cfg.order} | amp {amp} | compile {compile_model} | out {out}")
    say(f"checkpoints every {cfg.eval_every} steps, the last model_{cfg.max_steps:05d}.pt: ~{model_mb:,.0f} MB each, "
        f"~{3 * model_mb:,.0f} MB for the newest {cfg.full_checkpoints or 'all'} (with the AdamW state)")

    kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "-1"))
    train_time, wall_start = 0.0, time.time()
    step_seconds = []  # this session's steps: the summary times the first one (compilation) apart
    bar = tqdm(total=cfg.max_steps, initial=min(start_step, cfg.max_steps), desc="train", unit="step",
               disable=not master, dynamic_ncols=True)
    for step in range(start_step, cfg.max_steps + 1):
        last = step == cfg.max_steps
        if (step % cfg.eval_every == 0 or last) and not (resume_from and step == start_step):  # resumed: done
            val_loss = evaluate(step, model, val_loader, val_steps, hellaswag, enc, cfg.prompt, device, amp, rank,
                                world, out, say)
            if master:  # a checkpoint with everything --resume needs, then the policy for the older ones
                save_checkpoint(rundir.checkpoint_path(out, step), raw_model, kind="gpt", model_name=cfg.model,
                                optimizer=optimizer.state_dict(), step=step, val_loss=val_loss, run_id=run_id,
                                data_id=data_id,
                                data_state=train_loader.state_dict(), rng=get_rng_state(), train_config=asdict(cfg),
                                train_time=time_before["train"] + train_time,
                                wall_time=time_before["wall"] + time.time() - wall_start)
                rundir.apply_policy(out, cfg.keep_checkpoints, cfg.full_checkpoints)
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
            with autocast(device, amp):
                _, loss = model(x, y)
            loss = loss / grad_accum
            loss_accum += loss.detach()
            loss.backward()
        train_loss = all_reduce_mean(loss_accum, world).item()
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip or float("inf")).item()
        if not (math.isfinite(train_loss) and math.isfinite(norm)):
            raise TrainingDiverged(f"non-finite {'grad norm' if math.isfinite(train_loss) else 'loss'} "
                                   f"at step {step} (loss {train_loss}, grad norm {norm}); "
                                   "stopped without saving; lower --lr or resume from an earlier checkpoint")
        lr = tc.cosine_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        if device_type == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
        train_time += dt
        step_seconds.append(dt)
        if master:
            append_lines(out / "log.txt", [format_event(step, "train", train_loss)])
        say(f"step {step:5d} | loss {train_loss:.6f} | lr {lr:.4e} | norm {norm:.4f} | "
            f"dt {dt * 1000:.2f}ms | tok/sec {cfg.total_batch / dt:,.0f}")
        bar.update(1)
        if step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()

    if master:  # ---- final and best values against GPT-2 / GPT-3
        table = write_summary(
            out, model=cfg.model, preset=cfg.preset, params=n_params, tokens_per_step=cfg.total_batch,
            hellaswag_n=len(hellaswag) if hellaswag is not None else None,
            step_seconds=step_seconds,
            train_time=time_before["train"] + train_time, wall_time=time_before["wall"] + time.time() - wall_start,
            final_checkpoint=rundir.checkpoint_path(out, cfg.max_steps).name,
            flops_per_token=flops_per_token(n_params, model_config.n_layer, model_config.n_embd, cfg.seq_len),
            peak=peak_flops(device, world))
        tqdm.write("\n" + table)
    del lock  # the run directory's lock is held until here


def cli() -> None:
    try:
        run_main(main, PROG)
    except TrainingDiverged as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    cli()
