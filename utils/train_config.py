"""The run config of experiment/train_gpt.py: every hyperparameter in one dataclass (a field and its flag in
one place), the presets as instances of it, the run settled once from the flags (``settle``), the lr
schedule and the batch arithmetic.

A checkpoint stores ``asdict(config)``; ``--resume`` rebuilds the config from it and applies only the
flags given again. The fields marked frozen (FROZEN_ON_RESUME) define the model and the token stream and
cannot change. The run-control flags (RunControl: where to write, what to resume, which device) are no
part of the config.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from utils import rundir
from utils.checkpoint import config_from_dict, gpt_config_from_dict
from utils.cli import REPO, UserError, nonneg_float, nonneg_int, positive_float, positive_int
from utils.identity import data_fingerprint
from utils.loader import default_order
from utils.shards import prepare_builtin_corpus, read_manifest
from utils.tokenizer import get_encoding

if TYPE_CHECKING:
    from models import GPTConfig
    from utils.runtime import Runtime

BUILTIN_DATA = REPO / "data" / "builtin"


def hyperparameter(default, kind, help: str | None = None, *, frozen: bool = False):
    """A TrainConfig field with its flag among train_gpt.py's hyperparameters: --name-with-dashes, argparse
    ``type=kind`` and ``help``; ``frozen``: it cannot change on resume."""
    return field(default=default, metadata={"type": kind, "help": help, "frozen": frozen})


def frozen_field(default):
    """A TrainConfig field that cannot change on resume (its flag is written out in train_gpt.py)."""
    return field(default=default, metadata={"frozen": True})


@dataclass(frozen=True)
class TrainConfig:
    # the model: a name of models.MODEL_NAMES; sizes None = the model's own (GPT-2 124M: 12/12/768/1024)
    model: str = frozen_field("gpt2")
    n_layer: int | None = hyperparameter(None, positive_int, frozen=True)
    n_head: int | None = hyperparameter(None, positive_int, frozen=True)
    n_embd: int | None = hyperparameter(None, positive_int, frozen=True)
    block_size: int | None = hyperparameter(None, positive_int, "the model's context length (smoke 64, gpt2-124m "
                                            "1024)", frozen=True)
    # the token stream
    preset: str = frozen_field("gpt2-124m")
    data: str | None = None  # token shard directory; None = the builtin corpus (prepared on first use)
    order: str | None = frozen_field(None)  # "shards" | "windows"; None = utils.loader.default_order(data)
    seed: int = frozen_field(1337)
    micro_batch: int = hyperparameter(64, positive_int, "sequences per forward per process", frozen=True)
    seq_len: int = hyperparameter(1024, positive_int, "tokens per sequence (T), at most the model's block size",
                                  frozen=True)
    total_batch: int | None = hyperparameter(  # None = two micro-batches of one process
        524_288, positive_int, "tokens per optimizer step (gradient accumulation fills it)", frozen=True)
    # optimisation (GPT-3 small, as in build-nanogpt)
    max_steps: int = hyperparameter(19_073, positive_int)
    warmup_steps: int = hyperparameter(715, nonneg_int)
    lr: float = hyperparameter(6e-4, positive_float, "max learning rate")
    min_lr: float = hyperparameter(6e-5, nonneg_float)
    weight_decay: float = hyperparameter(0.1, nonneg_float)
    grad_clip: float = hyperparameter(1.0, nonneg_float, "max grad norm (0 = no clipping)")
    # evaluation and checkpoints
    eval_every: int = hyperparameter(250, positive_int)
    val_tokens: int = hyperparameter(  # per evaluation, over all processes (build-nanogpt's 10,485,760)
        20 * 64 * 1024 * 8, positive_int, "val tokens per evaluation over all processes, whatever their number "
                                          "(smoke 5,120; gpt2-124m 10,485,760)")
    hellaswag: str | None = None  # jsonl; None = data/hellaswag or ../shared/data when found
    hellaswag_limit: int | None = None
    no_hellaswag: bool = False
    prompt: str = "Hello, I'm a language model,"
    keep_checkpoints: int = hyperparameter(0, nonneg_int, "keep only the newest K checkpoints (0 = keep all)")
    full_checkpoints: int = hyperparameter(2, nonneg_int, "the newest K checkpoints keep the optimizer/data/RNG "
                                                          "state --resume needs, older ones only the model (default "
                                                          "2; 0 = all)")
    # runtime choices a resume keeps (None = the device's default: utils.precision; compile on CUDA)
    amp: bool | None = None
    compile: bool | None = None


TRAIN_PRESETS = {
    "gpt2-124m": TrainConfig(preset="gpt2-124m", data=str(REPO / "data" / "edu_fineweb10B")),
    # a tiny GPT 200 steps on the builtin corpus: under a CPU-minute, evaluations included
    "smoke": TrainConfig(preset="smoke", n_layer=2, n_head=2, n_embd=64, block_size=64, micro_batch=4,
                         seq_len=64, total_batch=None, max_steps=200, warmup_steps=20, lr=3e-3, min_lr=3e-4,
                         eval_every=50, val_tokens=20 * 4 * 64, hellaswag_limit=50),
}
FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
MODEL_SHAPE = ("n_layer", "n_head", "n_embd", "block_size")
FROZEN_ON_RESUME = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("frozen"))


@dataclass(frozen=True)
class RunControl:
    """train_gpt.py's flags that say where and how to run, not what to train: no part of the config."""
    out_dir: str | None = None
    resume: str | None = None  # a checkpoint path, or "latest" (the newest resumable one in the out-dir)
    overwrite: bool = False
    allow_data_change: bool = False
    device: str | None = None
    threads: int | None = None


def split_flags(args: dict) -> tuple[dict, RunControl]:
    """(the config flags, the run-control flags) of train_gpt.py's parsed arguments."""
    control = {f.name for f in dataclasses.fields(RunControl)}
    return ({k: v for k, v in args.items() if k not in control},
            RunControl(**{k: v for k, v in args.items() if k in control}))


def add_hyperparameter_flags(group) -> None:
    """A flag for every ``hyperparameter`` field of TrainConfig, and --val-batches, the older spelling of
    --val-tokens."""
    for f in dataclasses.fields(TrainConfig):
        if "type" in f.metadata:
            group.add_argument(flag(f.name), type=f.metadata["type"], help=f.metadata["help"])
    group.add_argument("--val-batches", type=positive_int,
                       help="older spelling of --val-tokens: N x micro-batch x seq-len tokens")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def from_flags(flags: dict, base: TrainConfig) -> TrainConfig:
    """``base`` with every flag that was given (not None) applied; ``val_batches`` (micro-batches of one
    process) is the older spelling of ``val_tokens``."""
    cfg = replace(base, **{k: v for k, v in flags.items() if k in FIELDS and v is not None})
    if flags.get("val_batches") is not None:
        if flags.get("val_tokens") is not None:
            raise UserError("give --val-tokens or --val-batches, not both")
        cfg = replace(cfg, val_tokens=flags["val_batches"] * cfg.micro_batch * cfg.seq_len)
    if cfg.total_batch is None:
        cfg = replace(cfg, total_batch=2 * cfg.micro_batch * cfg.seq_len)
    return cfg


def for_resume(saved: TrainConfig, flags: dict, allow_data_change: bool, warn,
               data_id: str | None = None) -> TrainConfig:
    """The saved config with the flags given again; a change of FROZEN_ON_RESUME is a UserError, and so is
    other data without ``allow_data_change``: by content where the checkpoint has its data's fingerprint
    ``data_id`` (a directory rebuilt in place is other data), else by path and manifest."""
    for name in FROZEN_ON_RESUME:
        if flags.get(name) is not None and flags[name] != getattr(saved, name):
            raise UserError(f"{flag(name)} cannot change on resume (the run has {getattr(saved, name)!r}); "
                            "start a new run in another --out-dir instead")
    data = flags.get("data") or saved.data
    if data_id is not None and data is not None and Path(data).is_dir():
        now = data_fingerprint(data)
        changed = now != data_id and f"the data in {data} (fingerprint {now}) is not what the run was trained on " \
                                     f"({data_id})"
    else:
        changed = flags.get("data") is not None and not same_data(flags["data"], saved.data) and \
            f"the run was trained on {saved.data}, not on {flags['data']}"
    if changed:
        if not allow_data_change:
            raise UserError(f"{changed}; pass --allow-data-change to continue on it anyway")
        warn(f"warning: continuing on other data: {changed}")
    return from_flags(flags, saved)


def same_path(a, b) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def same_data(a, b) -> bool:
    """The same directory, or a moved/copied one: both finished with the same settings and shards."""
    if same_path(a, b):
        return True
    ma, mb = read_manifest(a), read_manifest(b) if b is not None else None
    return ma is not None and ma == mb


def from_train_args(args: dict, model_config: dict) -> TrainConfig:
    """Convert the ``train_args`` (argparse namespace) of a checkpoint written before TrainConfig."""
    try:
        values = {k: args[k] for k in FIELDS if k in args and k not in MODEL_SHAPE and k != "order"}
        values["val_tokens"] = args["val_batches"] * args["micro_batch"] * args["seq_len"]
    except (KeyError, TypeError) as e:
        raise UserError(f"old-format checkpoint: cannot convert its train_args to a TrainConfig ({e})") from e
    shape = {k: model_config[k] for k in MODEL_SHAPE}
    return TrainConfig(**values, **shape, order="shards")  # the only data order before TrainConfig


def from_checkpoint(ckpt: dict, where) -> TrainConfig:
    saved = ckpt.get("train_config")
    if isinstance(saved, dict):  # a field it lacks (added since) takes its default
        return config_from_dict(TrainConfig, saved, where, "train_config", defaults=True)
    if isinstance(ckpt.get("train_args"), dict):
        return from_train_args(ckpt["train_args"], ckpt["config"])
    raise UserError(f"{where} has no train_config (nor old-format train_args); it cannot be resumed")


def model_config(cfg: TrainConfig):
    """The GPTConfig of the run: the model's preset with the sizes the config sets."""
    from models import model_config as build

    try:
        return build(cfg.model, **{k: getattr(cfg, k) for k in MODEL_SHAPE if getattr(cfg, k) is not None})
    except ValueError as e:
        raise UserError(str(e)) from e


def check(cfg: TrainConfig, model) -> None:
    """Cross-field rules the flag types cannot see (each flag's own range is checked by argparse); ``model``:
    the run's GPTConfig."""
    if cfg.min_lr > cfg.lr:
        raise UserError(f"--min-lr ({cfg.min_lr}) must not exceed --lr ({cfg.lr})")
    if cfg.seq_len > model.block_size:
        raise UserError(f"--seq-len {cfg.seq_len} exceeds the model's block size {model.block_size}; "
                        f"pass --block-size {cfg.seq_len} to train a model with a longer context")
    special = sorted(t for t in get_encoding().special_tokens_set if t in cfg.prompt)
    if special:  # the samples encode the prompt as plain text, where tiktoken refuses these
        raise UserError(f"--prompt {cfg.prompt!r} contains the special token(s) {', '.join(special)}; remove them")


@dataclass(frozen=True)
class Run:
    """One training run as train_gpt.py's flags describe it, settled once (``settle``)."""
    config: TrainConfig  # complete: the data's resolved path, the data order and the model's sizes filled in
    model: GPTConfig
    rundir: rundir.RunDir  # its directory, and the checkpoint a resumed run continues from (until restored)
    data_id: str  # the data's fingerprint: checkpoints name their data by content
    grad_accum: int  # micro-steps per optimizer step for this number of processes

    @property
    def out_dir(self) -> Path:
        return self.rundir.out

    @property
    def resume_from(self) -> Path | None:
        return self.rundir.resume_from


def settle(flags: dict, control: RunControl, rt: Runtime) -> Run:
    """The run train_gpt.py's flags describe, decided once: a new run (a preset with the flags given) or a
    resumed one (its checkpoint's config with the flags given again), its out-dir (rundir.locate: the resume
    rules), its data (the builtin corpus prepared on first use) and data order, every rule checked before the
    run directory is touched. The checkpoint is read once, here."""
    preset = TRAIN_PRESETS[flags["preset"] or ("gpt2-124m" if rt.device_type == "cuda" else "smoke")]
    default_out = REPO / "logs" / f"{flags['model'] or preset.model}-{preset.preset}"
    out, path, ckpt = rundir.locate(rundir.GPT, control.resume, control.out_dir, default_out, control.overwrite,
                                    rt.warn)
    if ckpt is None:
        cfg = from_flags(flags, preset)
        model = model_config(cfg)
    else:
        cfg = resumed_config(ckpt, path, flags, control.allow_data_change, rt.warn)
        model = gpt_config_from_dict(ckpt["config"], path)
    check(cfg, model)
    grad_accum = grad_accum_steps(cfg, rt.world)
    data = prepare_data(cfg.data, rt)
    cfg = replace(cfg, data=data, order=cfg.order or default_order(data), **{k: getattr(model, k) for k in MODEL_SHAPE})
    run_dir = rundir.RunDir(out, rundir.GPT, path, ckpt, keep=cfg.keep_checkpoints, full=cfg.full_checkpoints,
                            writer=rt.master)
    return Run(cfg, model, run_dir, data_fingerprint(data), grad_accum)


def resumed_config(ckpt: dict, path: Path, flags: dict, allow_data_change: bool, warn) -> TrainConfig:
    """The config of the run that checkpoint ``path`` continues, with the flags given again (``for_resume``)."""
    if type(ckpt["step"]) is not int:
        raise UserError(f"{path}: malformed step {ckpt['step']!r}; it cannot be resumed")
    cfg = for_resume(from_checkpoint(ckpt, path), flags, allow_data_change, warn, data_id=ckpt.get("data_id"))
    if cfg.max_steps < ckpt["step"]:
        raise UserError(f"--max-steps {cfg.max_steps} is before the checkpoint's step {ckpt['step']}")
    return cfg


def prepare_data(data: str | None, rt: Runtime) -> str:
    """The resolved path of the run's token shards (None: the builtin corpus, which the first process
    prepares on first use while the others wait)."""
    data = str(Path(data or BUILTIN_DATA).resolve())
    if same_path(data, BUILTIN_DATA):
        if rt.master:
            prepare_builtin_corpus(str(BUILTIN_DATA))
        rt.barrier()
    if not Path(data).is_dir():
        raise UserError(f"data directory not found: {data}")
    return data


def grad_accum_steps(cfg: TrainConfig, world: int) -> int:
    """Micro-steps per optimizer step so that ``total_batch`` tokens are seen for ``world`` processes."""
    per_micro_step = cfg.micro_batch * cfg.seq_len * world
    if cfg.total_batch % per_micro_step:
        raise UserError(f"--total-batch {cfg.total_batch} is not a multiple of micro-batch x seq-len x "
                        f"processes = {cfg.micro_batch} x {cfg.seq_len} x {world} = {per_micro_step}")
    return cfg.total_batch // per_micro_step


def val_steps(cfg: TrainConfig, world: int) -> int:
    """Val micro-batches per process: at least ``val_tokens`` over all processes, whatever their number."""
    return max(1, math.ceil(cfg.val_tokens / (cfg.micro_batch * cfg.seq_len * world)))


def cosine_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup to ``max_lr`` over ``warmup_steps``, cosine decay to ``min_lr`` at ``max_steps``,
    then ``min_lr``."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    ratio = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)
