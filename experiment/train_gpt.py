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
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tiktoken
import torch
from tqdm import tqdm

from evaluation.hellaswag import evaluate_hellaswag, find_examples
from evaluation.loss import all_reduce_mean, evaluate_loss
from evaluation.sampling import sample_texts
from experiment.train_summary import flops_per_token, peak_flops, write_summary
from models.gpt2 import GPT
from models.gpt_kernels import use_cpu_kernels
from utils import runtime
from utils import train_config as tc
from utils.checkpoint import unwrap
from utils.cli import ArgumentParser, UserError, positive_int, run_main, seed_int
from utils.io import check_space
from utils.loader import ShardLoader
from utils.malloc import keep_freed_memory
from utils.precision import autocast, machine
from utils.runlog import append_lines, format_event
from utils.runtime import Runtime
from utils.seed import seed_everything
from utils.tokenizer import get_encoding
from utils.train_config import TRAIN_PRESETS

PROG = "train_gpt.py"


class TrainingDiverged(Exception):
    pass


def parse_args(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a name of models.MODEL_NAMES (default gpt2; a resumed run: its own)")
    ap.add_argument("--preset", choices=sorted(TRAIN_PRESETS),
                    help="hyperparameter preset (default: gpt2-124m with CUDA, smoke without)")
    ap.add_argument("--data", help="token shard directory (smoke: the builtin corpus, prepared automatically; "
                    "gpt2-124m: data/edu_fineweb10B)")
    ap.add_argument("--order", choices=("shards", "windows"), help="train data order: shards front to back, "
                    "or a seeded permutation of windows per epoch (default: the data's own, utils.loader)")
    ap.add_argument("--seed", type=seed_int, help="default 1337 (a resumed run keeps its own)")
    c = ap.add_argument_group("run control (no part of the run's config)")
    c.add_argument("--out-dir", help="run directory (default logs/<model>-<preset>; with --resume PATH: "
                   "PATH's directory)")
    c.add_argument("--resume", nargs="?", const="latest", metavar="PATH",
                   help="continue a run: from checkpoint PATH (an older one rewinds the run), or (no PATH) "
                   "from the newest resumable checkpoint in --out-dir; other flags keep the run's values")
    c.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out-dir that holds one (deletes its log and checkpoints)")
    c.add_argument("--allow-data-change", action="store_true", help="let --resume continue on other --data")
    tc.add_hyperparameter_flags(ap.add_argument_group("hyperparameters (default: from --preset; a resumed run: "
                                                      "its own)"))
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


def main(argv=None) -> None:
    flags, control = tc.split_flags(vars(parse_args(argv)))
    if control.threads:
        torch.set_num_threads(control.threads)
    rt = runtime.start(control.device, PROG)
    try:
        train(flags, control, rt)
    finally:
        runtime.stop(rt)


@dataclass(frozen=True)
class Data:
    """What the loop reads: this process's train and val loaders, the val steps per evaluation, the HellaSwag
    examples (None: skipped), and the tokenizer and prompt of the samples."""
    train: ShardLoader
    val: ShardLoader
    val_steps: int
    hellaswag: list | None
    enc: tiktoken.Encoding
    prompt: str


def train(flags: dict, control: tc.RunControl, rt: Runtime) -> None:
    """build-nanogpt's loop: the setup; then per step an evaluation and a checkpoint where one is due, and one
    optimizer step; then the summary. A resumed run continues bit for bit."""
    if rt.device_type == "cpu":
        keep_freed_memory()  # steps stop page-faulting their buffers back in (utils/malloc.py)
    run = tc.settle(flags, control, rt)  # every flag checked; nothing written yet
    rt, cfg, rundir = rt.with_amp(run.config.amp), run.config, run.rundir
    data = open_data(cfg, run.model, rt)
    raw_model, optimizer, time_before = build_model(run, data.train, rt)
    claim(run, raw_model, control.overwrite, rt)
    model, compiled = wrap(raw_model, cfg, rt)
    say_banner(run, raw_model, data, compiled, rt)

    start, resumed = rundir.start, rundir.resume_from is not None
    train_time, wall_start = 0.0, time.time()
    step_seconds = []  # this session's steps: the summary times the first one (compilation) apart
    bar = tqdm(total=cfg.max_steps, initial=min(start, cfg.max_steps), desc="train", unit="step",
               disable=not rt.master, dynamic_ncols=True)
    for step in range(start, cfg.max_steps + 1):
        last = step == cfg.max_steps
        if (step % cfg.eval_every == 0 or last) and not (resumed and step == start):  # resumed: done before
            val_loss = evaluate(step, model, data, run.out_dir, rt)
            rundir.save(step, model_name=cfg.model, val_loss=val_loss, data_id=run.data_id, train_config=asdict(cfg),
                        train_time=time_before["train"] + train_time,
                        wall_time=time_before["wall"] + time.time() - wall_start)
        if last:
            break
        t0 = time.time()
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_accum = torch.zeros((), device=rt.device)
        for micro_step in range(run.grad_accum):
            x, y = data.train.next_batch()
            x, y = x.to(rt.device), y.to(rt.device)
            if rt.ddp:
                model.require_backward_grad_sync = micro_step == run.grad_accum - 1
            with autocast(rt.device, rt.amp):
                _, loss = model(x, y)
            loss = loss / run.grad_accum
            loss_accum += loss.detach()
            loss.backward()
        train_loss = all_reduce_mean(loss_accum, rt.world).item()
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip or float("inf")).item()
        if not (math.isfinite(train_loss) and math.isfinite(norm)):
            raise TrainingDiverged(f"non-finite {'grad norm' if math.isfinite(train_loss) else 'loss'} "
                                   f"at step {step} (loss {train_loss}, grad norm {norm}); "
                                   "stopped without saving; lower --lr or resume from an earlier checkpoint")
        lr = tc.cosine_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        if rt.device_type == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
        train_time += dt
        step_seconds.append(dt)
        if rt.master:
            append_lines(run.out_dir / "log.txt", [format_event(step, "train", train_loss)])
        rt.say(f"step {step:5d} | loss {train_loss:.6f} | lr {lr:.4e} | norm {norm:.4f} | "
               f"dt {dt * 1000:.2f}ms | tok/sec {cfg.total_batch / dt:,.0f}")
        bar.update(1)
    bar.close()

    if rt.master:
        summarize(run, raw_model, data, step_seconds, time_before["train"] + train_time,
                  time_before["wall"] + time.time() - wall_start, rt)
    rundir.release()


# ----------------------------------------------------------------------------- setup

def open_data(cfg: tc.TrainConfig, model_config, rt: Runtime) -> Data:
    """This process's loaders (its rank's share of each batch), the val steps that give --val-tokens without
    reading a batch twice, and the HellaSwag examples (where a file is found)."""
    loader_args = dict(rank=rt.rank, world_size=rt.world, seed=cfg.seed, vocab_size=model_config.vocab_size)
    train_loader = ShardLoader(cfg.data, "train", cfg.micro_batch, cfg.seq_len, order=cfg.order, **loader_args)
    val_loader = ShardLoader(cfg.data, "val", cfg.micro_batch, cfg.seq_len, shuffle=False, **loader_args)
    val_steps = tc.val_steps(cfg, rt.world)
    if val_steps > val_loader.steps_per_epoch:  # the loader would wrap: tokens counted twice
        raise UserError(f"--val-tokens {cfg.val_tokens:,} asks for {val_steps} val steps of {rt.world} x "
                        f"{cfg.micro_batch} x {cfg.seq_len}, but {cfg.data} holds {val_loader.steps_per_epoch}; "
                        "ask for fewer")
    hellaswag = None if cfg.no_hellaswag else find_examples(cfg.hellaswag, cfg.hellaswag_limit, rt.device,
                                                            note=rt.say, conventions=("seed",))[0]
    return Data(train_loader, val_loader, val_steps, hellaswag, get_encoding(), cfg.prompt)


def build_model(run: tc.Run, train_loader: ShardLoader, rt: Runtime):
    """(the seeded GPT, its AdamW, the seconds {"train", "wall"} of the run's earlier sessions), restored with
    the data position and the RNGs from the checkpoint a resumed run continues."""
    cfg = run.config
    seed_everything(cfg.seed)
    if rt.device_type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32
    model = GPT(run.model).to(rt.device)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, betas=(0.9, 0.95), eps=1e-8,
                                           device_type=rt.device_type)
    saved = run.rundir.restore(model, optimizer, train_loader)  # {} for a new run
    try:
        time_before = {"train": float(saved.get("train_time", 0.0)), "wall": float(saved.get("wall_time", 0.0))}
    except (TypeError, ValueError) as e:
        raise UserError(f"{run.resume_from} cannot be resumed: its saved state is malformed ({e})") from e
    return model, optimizer, time_before


def claim(run: tc.Run, raw_model: GPT, overwrite: bool, rt: Runtime) -> None:
    """Make the run directory this run's (rank 0, while the others wait): room for a checkpoint, the lock, the
    lineage (a rewind sets the later checkpoints aside)."""
    cfg = run.config
    if rt.master:  # a full checkpoint (weights + AdamW's two moments) must fit before hours of training
        weights = sum(p.numel() * p.element_size() for p in raw_model.parameters())
        check_space(run.rundir.path(cfg.max_steps), 3 * weights, "the checkpoint")
    run.rundir.claim({"model": cfg.model, "preset": cfg.preset, "config": run.model.to_dict(),
                      "train_config": asdict(cfg), "data_id": run.data_id}, overwrite, rt.say)
    if run.resume_from is not None:
        rt.say(f"resumed from {run.resume_from} at step {run.rundir.start}")
    rt.barrier()


def wrap(raw_model: GPT, cfg: tc.TrainConfig, rt: Runtime):
    """(the model the loop calls, whether it is compiled): torch.compile (default: on CUDA) and DDP as the run
    asks; an eager CPU run gets the CPU kernels (models/gpt_kernels.py)."""
    compiled = rt.device_type == "cuda" if cfg.compile is None else cfg.compile
    model = torch.compile(raw_model) if compiled else raw_model
    if rt.ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[int(rt.device.split(":")[1])] if rt.device_type == "cuda" else None)
    if rt.device_type == "cpu" and not compiled:  # eager CPU only: under torch.compile the plain loss is traced
        use_cpu_kernels(raw_model)  # after DDP, which would expect a sparse gradient from a sparse embedding
    return model, compiled


def say_banner(run: tc.Run, raw_model: GPT, data: Data, compiled: bool, rt: Runtime) -> None:
    cfg = run.config
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in raw_model.state_dict().values()}
    model_mb = sum(storages.values()) / 2**20  # the tied head shares the embedding's storage
    rt.say(f"{cfg.model} ({cfg.preset}): {raw_model.num_params():,} params | {rt.world} process(es) on {rt.device} | "
           f"batch {cfg.total_batch:,} tokens = {cfg.micro_batch} x {cfg.seq_len} x {run.grad_accum} accum x "
           f"{rt.world} | {cfg.max_steps} steps | val {data.val_steps * cfg.micro_batch * cfg.seq_len * rt.world:,} "
           f"tokens | order {cfg.order} | amp {rt.amp} | compile {compiled} | out {run.out_dir}")
    rt.say(f"checkpoints every {cfg.eval_every} steps, the last model_{cfg.max_steps:05d}.pt: ~{model_mb:,.0f} MB "
           f"each, ~{3 * model_mb:,.0f} MB for the newest {cfg.full_checkpoints or 'all'} (with the AdamW state)")


# ----------------------------------------------------------------------------- evaluation and summary

def evaluate(step: int, model, data: Data, out: Path, rt: Runtime) -> float:
    """Val loss, HellaSwag and 4 samples at ``step``, which rank 0 appends to out-dir's log.txt and samples.txt;
    returns the val loss. ``model`` may be compiled or DDP-wrapped."""
    val_loss = evaluate_loss(model, data.val, data.val_steps, rt.device, rt.amp, rt.world)
    rt.say(f"step {step:5d} | val loss {val_loss:.4f}")
    lines = [format_event(step, "val", val_loss)]
    if data.hellaswag is not None:
        result = evaluate_hellaswag(unwrap(model), data.hellaswag, device=rt.device, amp=rt.amp, rank=rt.rank,
                                    world_size=rt.world, progress=False)
        rt.say(f"step {step:5d} | hellaswag acc_norm {result['acc_norm']:.4f} (acc {result['acc']:.4f}, "
               f"n={result['n']})")
        lines.append(format_event(step, "hella", result["acc_norm"]))
    texts = samples(unwrap(model), data, rt)
    if rt.master:
        append_lines(out / "log.txt", lines)
        for i, text in enumerate(texts):
            rt.say(f"sample {i}: {text!r}")
        append_lines(out / "samples.txt", [f"=== step {step} ==="] + [f"[{i}] {text}" for i, text in enumerate(texts)])
    return val_loss


def samples(model: GPT, data: Data, rt: Runtime) -> list[str]:
    """4 continuations of the prompt, 32 tokens with it, top-k 50, seeded per rank."""
    prompt_len = len(data.enc.encode(data.prompt)) if data.prompt else 1
    return sample_texts(model, data.enc, data.prompt, 4, max(1, 32 - prompt_len), top_k=50, seed=42 + rt.rank,
                        device=rt.device, amp=rt.amp)


def summarize(run: tc.Run, raw_model: GPT, data: Data, step_seconds: list[float], train_time: float,
              wall_time: float, rt: Runtime) -> None:
    """Final and best values against GPT-2 / GPT-3: summary.json and its table."""
    cfg, n_params = run.config, raw_model.num_params()
    table = write_summary(
        run.out_dir, model=cfg.model, preset=cfg.preset, params=n_params, tokens_per_step=cfg.total_batch,
        hellaswag_n=len(data.hellaswag) if data.hellaswag is not None else None, step_seconds=step_seconds,
        train_time=train_time, wall_time=wall_time, final_checkpoint=run.rundir.path(cfg.max_steps).name,
        flops_per_token=flops_per_token(n_params, run.model.n_layer, run.model.n_embd, cfg.seq_len),
        peak=peak_flops(rt.device, rt.world), machine=machine(rt.device))
    tqdm.write("\n" + table)


def cli() -> None:
    try:
        run_main(main, PROG)
    except TrainingDiverged as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    cli()
