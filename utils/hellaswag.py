"""HellaSwag validation accuracy of a GPT (SPEC section 4).

Each example is scored as 4 rows: context tokens + tokens of (" " + ending). The loss is taken over
the ending tokens only; ``acc`` picks the ending with the lowest summed loss, ``acc_norm`` (the
headline number) the lowest mean loss per token.

Two scorers give the same counts:

* the batched one (``evaluate_hellaswag``): several examples per forward, right padding, examples
  sorted by length to cut the padding, and the LM head applied only at the positions that predict
  an ending token (most positions are context, and the head is the widest matmul of the model);
* the reference one (``per_example=True``): one example (4 rows) per forward, full logits, fp32 —
  what build-nanogpt and the original NdGPT-2 did. Tests and bench/bench_hellaswag.py compare them.

Files: the original rowanz ``hellaswag_val.jsonl`` or the llama.cpp-derived jsonl in
``../shared/data/hellaswag/`` (its ctx carries an ``activity_label: `` prefix that we drop).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.checkpoint import unwrap
from utils.cli import UserError
from utils.tokenizer import get_encoding

REPO = Path(__file__).resolve().parents[1]
HELLASWAG_VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
LOCAL_VAL = REPO / "data" / "hellaswag" / "hellaswag_val.jsonl"
SHARED_VAL = REPO.parent / "shared" / "data" / "hellaswag" / "hellaswag_val_llamacpp_derived.jsonl"
SHARED_HINT = "../shared/data/hellaswag/hellaswag_val_llamacpp_derived.jsonl"


# ----------------------------------------------------------------------------- files

def load_hellaswag(path, limit: int | None = None) -> list[dict]:
    """``[{"ctx": str, "endings": [4 str], "label": int}, ...]`` from a HellaSwag jsonl file
    (the first ``limit`` examples if given). Any malformed line is a UserError naming file:line."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise UserError(f"limit must be >= 1, got {limit}")
    if not path.is_file():
        raise UserError(f"HellaSwag file not found: {path}")
    examples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if limit is not None and len(examples) >= limit:
                break
            if line.strip():
                examples.append(_parse_record(line, f"{path}:{lineno}"))
    if not examples:
        raise UserError(f"{path} holds no HellaSwag examples")
    return examples


def _parse_record(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg})") from e
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object")
    missing = [k for k in ("ctx", "endings", "label") if k not in record]
    if missing:
        raise UserError(f"{where}: missing field(s) {', '.join(missing)}")
    ctx, endings, label = record["ctx"], record["endings"], record["label"]
    if not isinstance(ctx, str):
        raise UserError(f"{where}: ctx must be a string")
    if not isinstance(endings, list) or len(endings) != 4 or not all(isinstance(e, str) for e in endings):
        raise UserError(f"{where}: endings must be a list of 4 strings")
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 3:
        raise UserError(f"{where}: label must be 0..3, got {record['label']!r}")
    if "activity_label" not in record:
        # llama.cpp-derived file: ctx is "activity_label: ctx"
        _, sep, rest = ctx.partition(": ")
        ctx = rest if sep else ctx
    return {"ctx": ctx, "endings": endings, "label": label}


def download_hellaswag(out_dir="data/hellaswag", url: str = HELLASWAG_VAL_URL, force: bool = False,
                       progress: bool = True) -> Path:
    """Download the original validation jsonl into ``out_dir`` (temp file + rename, so an
    interrupted download never leaves a partial file); an existing file is kept unless ``force``."""
    out_dir = Path(out_dir)
    dest = out_dir / Path(url).name
    if dest.is_file() and not force:
        return dest
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            out_dir.mkdir(parents=True, exist_ok=True)  # only once the source answered
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                                            disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        with open(tmp, encoding="utf-8") as f:
            _parse_record(f.readline(), f"{url}:1")  # refuse an HTML error page
        os.replace(tmp, dest)
    except urllib.error.HTTPError as e:
        raise UserError(f"cannot download {url}: HTTP {e.code}") from e
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise UserError(f"no network; pass --hellaswag PATH (e.g. {SHARED_HINT}) "
                        f"[{type(e).__name__}: {getattr(e, 'reason', e)}]") from e
    except OSError as e:
        raise UserError(f"cannot write {dest}: {e.strerror or e}") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def default_hellaswag_path(path=None) -> Path:
    """``path`` if given (must exist); else data/hellaswag/hellaswag_val.jsonl; else the shared
    llama.cpp-derived copy; else download the original into data/hellaswag/."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"HellaSwag file not found: {path}")
        return path
    for candidate in (LOCAL_VAL, SHARED_VAL):
        if candidate.is_file():
            return candidate
    try:
        return download_hellaswag(LOCAL_VAL.parent)
    except UserError as e:
        raise UserError(f"no HellaSwag file at {LOCAL_VAL} or {SHARED_VAL}, and the download failed: "
                        f"{e}") from e


# ----------------------------------------------------------------------------- scoring

def encode_example(example: dict, block_size: int) -> list[tuple[list[int], int]]:
    """For each ending: (tokens of ctx + " " + ending cut to ``block_size`` from the left,
    number of leading context tokens left after the cut)."""
    enc = get_encoding()
    ctx = enc.encode_ordinary(example["ctx"])
    rows = []
    for ending in example["endings"]:
        tokens = ctx + enc.encode_ordinary(" " + ending)
        cut = max(0, len(tokens) - block_size)
        rows.append((tokens[cut:], max(0, len(ctx) - cut)))
    return rows


def _pad_rows(rows: list[tuple[list[int], int]], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(idx (R, T) right-padded, targets (R, T): the next token, scored (R, T) bool: position t
    predicts an ending token)."""
    T = max(len(tokens) for tokens, _ in rows)
    idx = torch.zeros(len(rows), T, dtype=torch.long)
    scored = torch.zeros(len(rows), T, dtype=torch.bool)
    for r, (tokens, n_ctx) in enumerate(rows):
        idx[r, :len(tokens)] = torch.tensor(tokens)
        # target t+1 is an ending token for t+1 >= n_ctx; position 0 predicts nothing
        scored[r, max(n_ctx, 1) - 1:len(tokens) - 1] = True
    targets = torch.roll(idx, -1, dims=1)
    return idx.to(device), targets.to(device), scored.to(device)


def _sum_and_mean(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    counts = counts.to(sums.dtype)
    sums = torch.where(counts > 0, sums, torch.inf)  # an ending with no scorable token never wins
    return sums.view(-1, 4), (sums / counts.clamp(min=1)).view(-1, 4)


def _score_batch(model, rows, device, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched scorer: hidden states of all rows, LM head only where an ending token is predicted."""
    idx, targets, scored = _pad_rows(rows, device)
    device_type = idx.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp and device_type in ("cuda", "cpu")):
        hidden = model.hidden_states(idx)
        logits = model.lm_head(hidden[scored])
    losses = F.cross_entropy(logits.float(), targets[scored], reduction="none")
    row_of = torch.arange(len(rows), device=idx.device).unsqueeze(1).expand_as(scored)[scored]
    sums = torch.zeros(len(rows), device=idx.device).index_add_(0, row_of, losses)
    return _sum_and_mean(sums, scored.sum(1))


def _score_one_example(model, rows, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference scorer for one example (4 rows): full logits, fp32, masked cross-entropy."""
    idx, targets, scored = _pad_rows(rows, device)
    logits, _ = model(idx)
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    losses = losses.view_as(targets)
    return _sum_and_mean((losses * scored).sum(1), scored.sum(1))


@torch.no_grad()
def score_examples(model, examples: list[dict], *, batch_size: int = 16, device="cpu", amp: bool = True,
                   per_example: bool = False, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed losses (N, 4), mean losses (N, 4)) of the endings of ``examples``, on the CPU.

    ``per_example=True`` runs the fp32 reference (one example per forward, full logits; ignores
    ``batch_size`` and ``amp``). The caller handles train/eval mode.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    model = unwrap(model)
    block_size = model.config.block_size
    encoded = [encode_example(ex, block_size) for ex in examples]
    sums, means = torch.empty(len(examples), 4), torch.empty(len(examples), 4)
    with tqdm(total=len(examples), desc="hellaswag", unit="ex", disable=not progress) as bar:
        if per_example:
            for i, rows in enumerate(encoded):
                s, m = _score_one_example(model, rows, device)
                sums[i], means[i] = s.cpu(), m.cpu()
                bar.update(1)
        else:
            # longest first: similar lengths share a batch (less padding), and a too-large
            # batch runs out of memory on the first step rather than the last
            order = sorted(range(len(encoded)), key=lambda i: -max(len(t) for t, _ in encoded[i]))
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                s, m = _score_batch(model, [row for i in chunk for row in encoded[i]], device, amp)
                sums[chunk], means[chunk] = s.cpu(), m.cpu()
                bar.update(len(chunk))
    return sums, means


def evaluate_hellaswag(model, path, *, limit: int | None = None, batch_size: int = 16, device="cpu",
                       amp: bool = True, rank: int = 0, world_size: int = 1, progress: bool = True,
                       per_example: bool = False) -> dict:
    """``{"acc", "acc_norm", "n"}`` of ``model`` (GPT, or a DDP / torch.compile wrapper of one).

    ``path`` is a jsonl file or an already loaded list of examples. With ``world_size > 1`` rank r
    scores examples r, r+W, ... and the counts are all-reduced when torch.distributed is initialised.
    ``amp`` = bf16 autocast on the device; ``per_example=True`` = the slow fp32 reference scorer.
    """
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} out of range for world_size {world_size}")
    examples = path if isinstance(path, list) else load_hellaswag(path, limit)
    examples = examples[:limit] if limit is not None else examples
    mine = examples[rank::world_size]
    raw = unwrap(model)
    was_training = raw.training
    raw.eval()
    try:
        sums, means = score_examples(raw, mine, batch_size=batch_size, device=device, amp=amp,
                                     per_example=per_example, progress=progress and rank == 0)
    finally:
        raw.train(was_training)
    labels = torch.tensor([ex["label"] for ex in mine], dtype=torch.long)
    correct = int((sums.argmin(1) == labels).sum()) if mine else 0
    correct_norm = int((means.argmin(1) == labels).sum()) if mine else 0
    counts = torch.tensor([correct, correct_norm, len(mine)], dtype=torch.long, device=device)
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    correct, correct_norm, n = counts.tolist()
    return {"acc": correct / max(n, 1), "acc_norm": correct_norm / max(n, 1), "n": n}


def load_hellaswag_if_found(path=None, limit: int | None = None, note=print) -> list[dict] | None:
    """The examples of ``path`` (a bad file is a UserError), or of the default copy; with no path and
    no copy found, ``note`` says why HellaSwag is skipped and None is returned."""
    if path is not None:
        return load_hellaswag(path, limit)
    try:
        return load_hellaswag(default_hellaswag_path(), limit)
    except UserError as e:
        note(f"note: HellaSwag skipped ({e})")
        return None
