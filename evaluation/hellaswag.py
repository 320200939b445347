"""HellaSwag validation accuracy of a GPT, in two named conventions.

Each example is 4 rows, context + " " + ending; a row's score is the summed loss (negative log-likelihood)
of its ending tokens, and ``acc`` picks the ending with the lowest sum. The conventions differ in the
context and in ``acc_norm``:

* ``"seed"`` (build-nanogpt's and the original NdGPT-2's; the training-log number): the context without
  its ``activity_label: `` prefix; ``acc_norm`` picks the lowest loss per ending token.
* ``"lm-eval"`` (lm-evaluation-harness's ``hellaswag`` task, what leaderboards publish): the context
  ``"activity_label: ctx"`` with lm-eval's preprocessing, context + ending encoded as one string and split
  at the context's token count (lm-eval's ``_encode_pair``); ``acc_norm`` picks the highest
  log-likelihood per character of the ending (``len(ending)`` without the leading space, as lm-eval's
  ``acc_norm``; the UTF-8 byte count differs only for the few non-ASCII endings).

Rows longer than the block size L follow lm-eval's truncation in both conventions: keep the last L + 1
tokens of context + ending; the model reads the first L of them and is scored on the ending tokens among
the last L. (HellaSwag's longest row is 151 tokens, so at L >= 151 nothing is cut.)

Batched scorer: examples sorted by length, right padding, the LM head only where an ending token is
predicted; ``per_example=True`` is the fp32 reference (one example per forward, full logits). Files: the
original rowanz ``hellaswag_val.jsonl`` (activity_label, ctx_a, ctx_b, ctx, endings, label) or the
llama.cpp-derived jsonl in ``../shared/data/hellaswag/`` (ctx = "activity_label: ctx", brackets removed, but
ctx_b not capitalized as lm-eval's task does: its lm-eval numbers are close to, not equal to, the official).
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.checkpoint import unwrap
from utils.cli import REPO, UserError
from utils.io import atomic_write
from utils.precision import autocast, resolve_amp
from utils.tokenizer import get_encoding

HELLASWAG_VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
LOCAL_VAL = REPO / "data" / "hellaswag" / "hellaswag_val.jsonl"
SHARED_DATA = Path(os.environ.get("NDGPT2_SHARED_DATA", REPO.parent / "shared" / "data"))  # as tests and scripts
SHARED_VAL = SHARED_DATA / "hellaswag" / "hellaswag_val_llamacpp_derived.jsonl"
SHARED_HINT = "../shared/data/hellaswag/hellaswag_val_llamacpp_derived.jsonl"
HELLASWAG_CONVENTIONS = ("seed", "lm-eval")
CPU_HELLASWAG_LIMIT = 1000  # the default subset off CUDA (all 10,042 take ~30 min for a small model on 2 cores)


# ----------------------------------------------------------------------------- files

def load_hellaswag(path, limit: int | None = None) -> list[dict]:
    """``[{"ctx", "endings", "label", "query", "choices"}, ...]`` from a HellaSwag jsonl file (the first
    ``limit`` examples if given): ctx/endings as the seed scores them, query/choices as lm-eval does.
    Any malformed line is a UserError naming file:line."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise UserError(f"limit must be >= 1, got {limit}")
    if not path.is_file():
        raise UserError(f"HellaSwag file not found{' (a directory)' if path.is_dir() else ''}: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from e
    return parse_jsonl(data, path, limit)


def parse_jsonl(data: bytes, where, limit: int | None = None) -> list[dict]:
    """The examples of jsonl ``data`` (blank lines skipped; lines end at "\\n" only, as a JSON string may hold
    U+2028); a line that is not UTF-8 or not a HellaSwag record is a UserError naming where:line."""
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        bad_line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{where}:{bad_line}: not UTF-8 text") from None
    examples, seen, repeated = [], {}, []
    for lineno, line in enumerate(lines, start=1):
        if limit is not None and len(examples) >= limit:
            break
        if line.strip():
            example = _parse_record(line, f"{where}:{lineno}")
            ind = example.pop("ind")
            if ind is not None and seen.setdefault(ind, lineno) != lineno:
                repeated.append(f"{ind!r} (lines {seen[ind]} and {lineno})")
            examples.append(example)
    if not examples:
        raise UserError(f"{where} holds no HellaSwag examples")
    if repeated:  # each is still scored: a file may hold a deliberate duplicate, but it counts twice
        print(f"warning: {where}: {len(repeated)} example(s) share an 'ind' and each is counted: "
              f"{', '.join(repeated[:3])}{' ...' if len(repeated) > 3 else ''}", file=sys.stderr)
    return examples


def lm_eval_preprocess(text: str) -> str:
    """lm-eval's hellaswag ``preprocess``: WikiHow's bracket artifacts removed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


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
    empty = [i for i, e in enumerate(endings) if not e.strip()]
    if empty:  # scored as one " " token, an empty ending would win acc
        raise UserError(f"{where}: ending(s) {', '.join(map(str, empty))} are empty")
    if isinstance(label, str) and label.strip().isdecimal():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 3:
        raise UserError(f"{where}: label must be 0..3, got {record['label']!r}")
    if "activity_label" in record:  # rowanz's original: build lm-eval's query as its process_docs does
        parts = record.get("ctx_a"), record.get("ctx_b")
        raw = f"{parts[0]} {parts[1].capitalize()}" if all(isinstance(p, str) for p in parts) else ctx
        query = lm_eval_preprocess(f"{record['activity_label']}: {raw}")
        choices = [lm_eval_preprocess(e) for e in endings]
    else:  # llama.cpp-derived file: ctx is "activity_label: ctx", already preprocessed
        query, choices = ctx, endings
        _, sep, rest = ctx.partition(": ")
        ctx = rest if sep else ctx
    ind = record.get("ind")
    return {"ctx": ctx, "endings": endings, "label": label, "query": query, "choices": choices,
            "ind": ind if isinstance(ind, (int, str)) and not isinstance(ind, bool) else None}


def download_hellaswag(out_dir="data/hellaswag", url: str = HELLASWAG_VAL_URL, force: bool = False,
                       progress: bool = True) -> Path:
    """Download (or, for a file:// URL, copy) the validation jsonl into ``out_dir``; an existing file is
    kept unless ``force``. The bytes are read whole (~11 MB) and every line validated (an HTML error page or a
    cut-off record is refused) before ``atomic_write`` puts them in place: a failure leaves nothing behind."""
    dest = Path(out_dir) / LOCAL_VAL.name  # whatever the source's name: where the evaluators look
    if dest.is_file() and not force:
        return dest
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            data = bytearray()
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    data += chunk
                    bar.update(len(chunk))
        parse_jsonl(bytes(data), url)  # every line, before writing
        atomic_write(dest, bytes(data))
    except (urllib.error.HTTPError, ValueError) as e:  # a status, or urlopen's "unknown url type"
        raise UserError(f"cannot download {url}: {f'HTTP {e.code}' if hasattr(e, 'code') else e}") from e
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        if url.startswith("file:"):
            raise UserError(f"cannot read {url}: {getattr(reason, 'strerror', None) or reason}") from e
        raise UserError(f"no network; pass --hellaswag PATH (e.g. {SHARED_HINT}) [{type(e).__name__}: {reason}]") from e
    except OSError as e:
        raise UserError(f"cannot write {dest}: {e.strerror or e}") from e
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


def find_examples(path=None, limit: int | None = None, device: str = "cpu", note=print,
                  conventions: tuple[str, ...] = HELLASWAG_CONVENTIONS):
    """The one HellaSwag locator and its one limit rule: (examples, resolved path, limit) of ``path`` (a bad or
    missing file is a UserError) or of the default copy (none found: ``note`` says why HellaSwag is skipped,
    and (None, None, None)). ``limit``: None = the device's default (all on CUDA, the first
    CPU_HELLASWAG_LIMIT elsewhere), 0 = all, N = the first N."""
    resolved = limit if limit is not None else (None if str(device).startswith("cuda") else CPU_HELLASWAG_LIMIT)
    resolved = resolved or None
    try:
        found = default_hellaswag_path(path)
    except UserError as e:
        if path is not None:
            raise
        note(f"note: HellaSwag skipped ({e})")
        return None, None, None
    examples = load_hellaswag(found, resolved)
    how = "all" if resolved is None else f"the first {len(examples):,}"
    default = " (the default on this device; --hellaswag-limit 0 for all)" if limit is None and resolved else ""
    note(f"HellaSwag: {how} examples of {found}{default}, conventions {', '.join(conventions)}")
    return examples, str(Path(found).resolve()), resolved


# ----------------------------------------------------------------------------- scoring

def encode_example(example: dict, block_size: int, convention: str = "seed") -> list[tuple[list[int], int]]:
    """For each ending: (the tokens kept of context + " " + ending, how many of them are context).
    Rows longer than ``block_size`` keep their last block_size + 1 tokens (lm-eval's truncation)."""
    enc = get_encoding()
    if convention == "seed":
        ctx = enc.encode_ordinary(example["ctx"])
        whole = [ctx + enc.encode_ordinary(" " + ending) for ending in example["endings"]]
    else:  # lm-eval's _encode_pair: trailing spaces of the context move to the continuation
        query = example.get("query", example["ctx"])
        ctx = enc.encode_ordinary(query.rstrip())
        whole = [enc.encode_ordinary(f"{query} {choice}") for choice in example.get("choices", example["endings"])]
    cuts = [max(0, len(tokens) - (block_size + 1)) for tokens in whole]
    return [(tokens[cut:], max(0, len(ctx) - cut)) for tokens, cut in zip(whole, cuts)]


def _pad_rows(rows: list[tuple[list[int], int]], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(idx (R, T): the tokens read, right-padded, targets (R, T): the next token, scored (R, T) bool:
    position t predicts an ending token). The last token of a row is a target only."""
    T = max(2, *(len(tokens) for tokens, _ in rows)) - 1
    idx = torch.zeros(len(rows), T + 1, dtype=torch.long)
    scored = torch.zeros(len(rows), T, dtype=torch.bool)
    for r, (tokens, n_ctx) in enumerate(rows):
        idx[r, :len(tokens)] = torch.tensor(tokens)
        scored[r, max(n_ctx, 1) - 1:len(tokens) - 1] = True  # target t+1 is an ending token
    return idx[:, :-1].to(device), idx[:, 1:].to(device), scored.to(device)


def _score_batch(model, rows, device, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched scorer: hidden states of all rows, LM head only where an ending token is predicted."""
    idx, targets, scored = _pad_rows(rows, device)
    with autocast(idx.device, amp):
        logits = model.lm_head(model.hidden_states(idx)[scored])
    losses = F.cross_entropy(logits.float(), targets[scored], reduction="none")
    row_of = torch.arange(len(rows), device=idx.device).unsqueeze(1).expand_as(scored)[scored]
    return torch.zeros(len(rows), device=idx.device).index_add_(0, row_of, losses), scored.sum(1)


def _score_one_example(model, rows, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference scorer for one example (4 rows): full logits, fp32, masked cross-entropy."""
    idx, targets, scored = _pad_rows(rows, device)
    logits, _ = model(idx)
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    return (losses.view_as(targets) * scored).sum(1), scored.sum(1)


@torch.no_grad()
def score_examples(model, examples: list[dict], *, batch_size: int = 16, device="cpu", amp: bool = False,
                   per_example: bool = False, progress: bool = False,
                   convention: str = "seed") -> tuple[torch.Tensor, torch.Tensor]:
    """(summed ending losses (N, 4), ending token counts (N, 4)) of ``examples``, on the CPU.

    ``per_example=True`` runs the fp32 reference (one example per forward, full logits; ignores
    ``batch_size`` and ``amp``). The caller handles train/eval mode.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    model = unwrap(model)
    encoded = [encode_example(ex, model.config.block_size, convention) for ex in examples]
    sums, counts = torch.empty(len(examples), 4), torch.empty(len(examples), 4, dtype=torch.long)
    # longest first: similar lengths share a batch (less padding), and a too-large
    # batch runs out of memory on the first step rather than the last
    order = sorted(range(len(encoded)), key=lambda i: -max(len(t) for t, _ in encoded[i]))
    step = 1 if per_example else batch_size
    with tqdm(total=len(examples), desc="hellaswag", unit="ex", disable=not progress) as bar:
        for start in range(0, len(order), step):
            chunk = order[start:start + step]
            rows = [row for i in chunk for row in encoded[i]]
            s, c = _score_one_example(model, rows, device) if per_example else _score_batch(model, rows, device, amp)
            sums[chunk], counts[chunk] = s.view(-1, 4).cpu(), c.view(-1, 4).cpu()
            bar.update(len(chunk))
    return sums, counts


def predictions(examples: list[dict], sums: torch.Tensor, counts: torch.Tensor,
                convention: str = "seed") -> tuple[torch.Tensor, torch.Tensor]:
    """(acc's choice, acc_norm's choice) per example: the lowest summed loss, and the lowest loss per
    ending token ("seed") or per character of the ending ("lm-eval"). An ending with no scored token
    never wins; ties go to the first ending, as numpy's argmax in lm-eval."""
    sums = torch.where(counts > 0, sums, torch.inf)
    if convention == "seed":
        norm = counts.clamp(min=1).to(sums.dtype)
    else:
        norm = torch.tensor([[max(len(c), 1) for c in ex.get("choices", ex["endings"])] for ex in examples],
                            dtype=sums.dtype).view(-1, 4)
    return sums.argmin(1), (sums / norm).argmin(1)


def evaluate_hellaswag(model, path_or_examples, *, limit: int | None = None, batch_size: int = 16,
                       device="cpu", amp: bool | None = None, rank: int = 0, world_size: int = 1,
                       progress: bool = True, convention: str = "seed", per_example: bool = False) -> dict:
    """``{"acc", "acc_norm", "n", "convention"}`` of ``model`` (GPT, or a DDP / torch.compile wrapper).

    ``path_or_examples`` is a jsonl file or a list from ``load_hellaswag``. ``convention`` is one of
    HELLASWAG_CONVENTIONS (see the module docstring). With ``world_size > 1`` rank r scores examples
    r, r+W, ... and the counts are all-reduced when torch.distributed is initialised. ``amp`` = bf16
    autocast (None: utils.precision's rule for ``device``); ``per_example=True`` = the fp32 reference.
    """
    if convention not in HELLASWAG_CONVENTIONS:
        raise UserError(f"unknown HellaSwag convention {convention!r}; choose {' or '.join(HELLASWAG_CONVENTIONS)}")
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} out of range for world_size {world_size}")
    examples = path_or_examples if isinstance(path_or_examples, list) else load_hellaswag(path_or_examples, limit)
    mine = examples[:limit][rank::world_size]  # limit None: all
    raw = unwrap(model)
    was_training = raw.training
    raw.eval()
    try:
        sums, counts = score_examples(raw, mine, batch_size=batch_size, device=device,
                                      amp=resolve_amp(device, amp), per_example=per_example,
                                      progress=progress and rank == 0, convention=convention)
    finally:
        raw.train(was_training)
    labels = torch.tensor([ex["label"] for ex in mine], dtype=torch.long)
    pred, pred_norm = predictions(mine, sums, counts, convention)
    totals = torch.tensor([int((pred == labels).sum()), int((pred_norm == labels).sum()), len(mine)],
                          dtype=torch.long, device=device)
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    correct, correct_norm, n = totals.tolist()
    return {"acc": correct / max(n, 1), "acc_norm": correct_norm / max(n, 1), "n": n, "convention": convention}
