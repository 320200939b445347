"""Tokenizer, token shards (data/fineweb.py, data/sources.py, utils/shards.py), shard loader (utils/loader.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import torch

from data import sources
from utils import loader as loader_mod
from utils import shards, tokenizer
from utils.cli import UserError
from utils.loader import ORDERS, ShardLoader, default_order, find_shards, sample_windows
from utils.tokenizer import EOT, get_encoding

BLOB = "https://openaipublic.blob.core.windows.net"
TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.\n\nNew paragraph!",
    "unicode: naïve café, Ελληνικά, русский, 日本語のテキスト, עברית",
    "emoji 🤖🚀 and a family 👨‍👩‍👧 and flags 🇫🇷",
    "whitespace   runs\t\t\ttabs\n\n\n\n   leading and trailing   ",
    "<|endoftext|> is plain text here, so is <|endoftext",
    "numbers 3.14159 1,000,000 0x1F and code: def f(x): return x**2  # ok",
    "",
    " ",
    "I'm you're they'll we've he'd it's DON'T",
]


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_equals_tiktoken_gpt2(shared_data, tmp_path, monkeypatch):
    cache = tmp_path / "tiktoken_cache"
    cache.mkdir()
    for name, url in (("vocab.bpe", f"{BLOB}/gpt-2/encodings/main/vocab.bpe"),
                      ("encoder.json", f"{BLOB}/gpt-2/encodings/main/encoder.json")):
        shutil.copy(shared_data / "gpt2_bpe" / name, cache / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    reference = tiktoken.get_encoding("gpt2")
    ours = get_encoding()
    for text in TEXTS:
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text), text
        assert ours.decode(ours.encode_ordinary(text)) == text
    assert EOT not in ours.encode_ordinary("<|endoftext|>")
    assert ours.encode("<|endoftext|>", allowed_special="all") == [EOT]
    assert ours.encode_ordinary("Hello world") == [15496, 995]
    assert ours.n_vocab == reference.n_vocab == 50257
    assert ours.eot_token == EOT == 50256


# ----------------------------------------------------------------------------- shards

def run_fineweb(repo_root, *args):
    return subprocess.run([sys.executable, "data/fineweb.py", *map(str, args)], cwd=repo_root,
                          capture_output=True, text=True, timeout=120)


def expected_tokens(docs):
    enc = get_encoding()
    return [t for doc in docs for t in [EOT] + enc.encode_ordinary(doc)]


def split_tokens(out_dir, split):
    return [int(t) for path in find_shards(out_dir, split) for t in np.load(path)]


def num_tokens(data_dir, split):
    return sum(len(np.load(p)) for p in find_shards(data_dir, split))


def make_inputs(tmp_path):
    """Two .txt documents and a .jsonl with three, in that document order."""
    docs = ["First file: a short essay about rivers.\nLine two.\n",
            "Second file with unicode café 🚀 and   spaces.",
            "jsonl doc one", "jsonl doc two <|endoftext|> stays text", "jsonl doc three, a bit longer " * 5]
    (tmp_path / "a.txt").write_text(docs[0])
    (tmp_path / "b.txt").write_text(docs[1])
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in
                                              enumerate(docs[2:])) + "\n")
    return [tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.jsonl"], docs


def test_shards_round_trip_whole_document_val(tmp_path):
    inputs, docs = make_inputs(tmp_path)
    out = tmp_path / "out"
    manifest = sources.build_from_files(inputs, out, prefix="t", shard_size=16, val_docs=2, seed=3)
    val_ids = manifest["settings"]["val_docs"]
    assert len(val_ids) == 2
    assert manifest["settings"]["val_docs"] == sorted(shards.pick_val_docs(len(docs), 3, val_docs=2))
    val_docs = [d for i, d in enumerate(docs) if i in val_ids]
    train_docs = [d for i, d in enumerate(docs) if i not in val_ids]
    # the val stream is exactly the held-out documents, whole, each after an EOT; the rest is train
    assert split_tokens(out, "val") == expected_tokens(val_docs)
    assert split_tokens(out, "train") == expected_tokens(train_docs)
    enc = get_encoding()
    decoded = enc.decode(split_tokens(out, "train")).split("<|endoftext|>")
    assert decoded[0] == "" and "".join(decoded[1:]) == "".join(train_docs)
    # fixed-size uint16 shards, documents straddling boundaries, global numbering with val first
    for split in ("val", "train"):
        paths = find_shards(out, split)
        assert all(np.load(p).dtype == np.uint16 for p in paths)
        assert all(len(np.load(p)) == 16 for p in paths[:-1]) and 0 < len(np.load(paths[-1])) <= 16
    numbers = [int(p.stem.rsplit("_", 1)[1]) for p in find_shards(out, "val") + find_shards(out, "train")]
    assert numbers == list(range(len(numbers)))
    assert manifest["val_tokens"] == num_tokens(out, "val")
    assert manifest["train_tokens"] == num_tokens(out, "train")
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_parquet_input(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [f"parquet row {i}: " + "words " * i for i in range(6)]
    pq.write_table(pa.table({"id": list(range(6)), "text": docs}), tmp_path / "p.parquet", row_group_size=4)
    manifest = sources.build_from_files([tmp_path / "p.parquet"], tmp_path / "out", shard_size=10, val_docs=2)
    val_ids = manifest["settings"]["val_docs"]
    assert split_tokens(tmp_path / "out", "val") == expected_tokens([docs[i] for i in val_ids])
    assert split_tokens(tmp_path / "out", "train") == \
        expected_tokens([d for i, d in enumerate(docs) if i not in val_ids])
    pq.write_table(pa.table({"content": docs}), tmp_path / "bad.parquet")
    with pytest.raises(UserError, match="no 'text' column"):
        sources.build_from_files([tmp_path / "bad.parquet"], tmp_path / "bad")


def test_max_tokens_and_val_fraction(tmp_path):
    inputs, docs = make_inputs(tmp_path)
    assert len(shards.pick_val_docs(5, 0, val_fraction=0.1)) == 1  # at least one document
    assert len(shards.pick_val_docs(20, 0, val_fraction=0.25)) == 5
    assert shards.pick_val_docs(20, 7) == shards.pick_val_docs(20, 7)
    whole = sources.build_from_files(inputs, tmp_path / "all", shard_size=1000, val_docs=1)
    cap = whole["val_tokens"] + 7  # the cap counts val (written first) and train together
    manifest = sources.build_from_files(inputs, tmp_path / "cap", shard_size=1000, val_docs=1, max_tokens=cap)
    assert manifest["train_tokens"] == 7
    full = split_tokens(tmp_path / "all", "val") + split_tokens(tmp_path / "all", "train")
    assert split_tokens(tmp_path / "cap", "val") + split_tokens(tmp_path / "cap", "train") == full[:cap]
    with pytest.raises(UserError, match="empty corpus"):  # nothing left for train
        sources.build_from_files(inputs, tmp_path / "none", shard_size=1000, val_docs=1, max_tokens=3)
    assert not (tmp_path / "none").exists()


def test_fineweb_layout_first_shard_is_val(tmp_path, monkeypatch):
    docs = [f"document number {i} " * (i + 1) for i in range(12)]
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda *a, **k: [{"text": d} for d in docs]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    manifest = sources.build_fineweb(tmp_path / "fw", shard_size=50, max_tokens=170)
    stream = expected_tokens(docs)[:170]
    assert split_tokens(tmp_path / "fw", "val") == stream[:50]  # shard 0 = the first shard_size tokens
    assert split_tokens(tmp_path / "fw", "train") == stream[50:]
    assert [s["file"] for s in manifest["shards"]][:2] == ["edufineweb_val_000000.npy",
                                                           "edufineweb_train_000001.npy"]

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'HuggingFaceFW/fineweb-edu' on the Hub\nsecond line")

    fake.load_dataset = offline
    with pytest.raises(UserError, match="cannot load HuggingFaceFW/fineweb-edu") as info:
        sources.build_fineweb(tmp_path / "fw_offline")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "fw_offline").exists()


def test_strip_gutenberg_markers():
    header = "The Project Gutenberg EBook of Foo\r\nlicence text\r\n\r\n"
    footer = "\r\nEnd of the Project Gutenberg EBook of Foo\r\n\r\n" \
             "*** END OF THIS PROJECT GUTENBERG EBOOK FOO ***\r\nlicence again\r\n"
    body = "CHAPTER I\r\n\r\nThe body of the book,\r\nwith CRLF lines.\r\n"
    start = "*** START OF THIS PROJECT GUTENBERG EBOOK FOO ***\r\n\r\n"
    modern = header + start + "Produced by X\r\n\r\n" + body + footer
    assert sources.strip_gutenberg(modern) == "Produced by X\n\n" + body.replace("\r\n", "\n")
    wrapped = header + "***START OF THE PROJECT GUTENBERG EBOOK A VERY LONG\r\nTITLE***\r\n" + body + \
        "***END OF THE PROJECT GUTENBERG EBOOK A VERY LONG\r\nTITLE***\r\nlicence"
    assert sources.strip_gutenberg(wrapped) == body.replace("\r\n", "\n")
    old = "old header\r\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\r\n\r\n" + body + \
        "\r\nEnd of The Project Gutenberg Etext of Foo\r\n"
    assert sources.strip_gutenberg(old) == body.replace("\r\n", "\n")
    assert sources.strip_gutenberg("no markers\r\nat all") == "no markers\nat all\n"


def test_strip_gutenberg_real_corpus(shared_data):
    for path in sorted((shared_data / "text_corpus").glob("*.txt")):
        raw = path.read_bytes().decode("utf-8")
        body = sources.strip_gutenberg(raw)
        assert "\r" not in body
        assert 0.5 * len(raw) < len(body) < len(raw) - 5000, path.name  # the boilerplate is 14-20 KB
        assert "SMALL PRINT" not in body and "PROJECT GUTENBERG EBOOK" not in body.upper(), path.name
        assert "END OF THE PROJECT" not in body.upper() and "END OF THIS PROJECT" not in body.upper()


def test_cli_builds_and_rerun_is_idempotent(repo_root, tmp_path):
    inputs, docs = make_inputs(tmp_path)
    out = tmp_path / "out"
    args = ["--input", *inputs, "--out-dir", out, "--prefix", "cli", "--shard-size", 20, "--val-docs", 1,
            "--workers", 2, "--seed", 1]
    first = run_fineweb(repo_root, *args)
    assert first.returncode == 0, first.stderr
    files = sorted(out.iterdir())
    assert any(p.name == "done.json" for p in files) and len(files) > 3
    mtimes = {p.name: p.stat().st_mtime_ns for p in files}
    val_ids = json.loads((out / "done.json").read_text())["settings"]["val_docs"]
    assert split_tokens(out, "val") == expected_tokens([docs[i] for i in val_ids])  # the pool keeps order

    again = run_fineweb(repo_root, *args)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in sorted(out.iterdir())} == mtimes

    changed = run_fineweb(repo_root, *args[:-2], "--seed", 2)  # other settings, same directory
    assert changed.returncode == 2 and "--overwrite" in changed.stderr
    assert {p.name: p.stat().st_mtime_ns for p in sorted(out.iterdir())} == mtimes

    other = [a if a != "cli" else "other" for a in args]  # another build would mix into the loader's glob
    for extra in ([], ["--overwrite"]):
        mixed = run_fineweb(repo_root, *other, *extra)
        assert mixed.returncode == 2 and "another build (prefix cli)" in mixed.stderr, mixed.stderr
        assert {p.name: p.stat().st_mtime_ns for p in sorted(out.iterdir())} == mtimes


@pytest.mark.parametrize("case", ["missing", "empty", "not_utf8", "jsonl_no_text", "empty_corpus", "twice"])
def test_cli_errors(repo_root, tmp_path, case):
    good = tmp_path / "good.txt"
    good.write_text("a perfectly fine document")
    bad = tmp_path / {"jsonl_no_text": "bad.jsonl", "empty_corpus": "bad.jsonl"}.get(case, "bad.txt")
    expect = {"missing": "does not exist", "empty": "is empty", "not_utf8": "not UTF-8",
              "jsonl_no_text": f"{bad}:2: no 'text'", "empty_corpus": "empty corpus", "twice": "is given twice"}[case]
    if case == "empty":
        bad.write_text("")
    elif case == "not_utf8":
        bad.write_bytes(b"caf\xe9 latin-1 bytes")
    elif case == "jsonl_no_text":
        bad.write_text('{"text": "ok"}\n{"content": "no text field"}\n')
    elif case == "empty_corpus":
        bad.write_text('{"text": ""}\n\n{"text": ""}\n')
        good.unlink()
    elif case == "twice":  # the same file by another path: one document would be in val and in train
        bad.symlink_to(good)
    out = tmp_path / "out"
    inputs = [bad] if case == "empty_corpus" else [good, bad]
    result = run_fineweb(repo_root, "--input", *inputs, "--out-dir", out, "--workers", 1)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fineweb.py: error:") and expect in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()  # no shard, no .tmp, no manifest, not even the directory


def test_cli_out_dir_that_is_a_file(repo_root, tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("a perfectly fine document")
    for out in (good, good / "sub"):
        result = run_fineweb(repo_root, "--input", good, good.with_name("x.txt"), "--out-dir", out)
        assert result.returncode == 2 and "is a file, not a directory" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and good.read_text() == "a perfectly fine document"


def test_concurrent_builds_take_turns(tmp_path):
    inputs, _ = make_inputs(tmp_path)
    results = []

    def build():
        results.append(sources.build_from_files(inputs, tmp_path / "out", shard_size=8, val_docs=1))

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["skipped"] for r in results) == [False, True, True]  # one builds, the others reuse it
    assert all(r["shards"] == results[0]["shards"] for r in results)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        sorted(["done.json"] + [s["file"] for s in results[0]["shards"]])


def test_failure_mid_build_leaves_no_shard(tmp_path, monkeypatch):
    inputs, _ = make_inputs(tmp_path)
    calls = []

    def tokenize(text):
        calls.append(text)
        return np.array([EOT, 70_000] if len(calls) == 4 else [EOT, 1, 2, 3])  # an id that does not fit uint16

    monkeypatch.setattr(tokenizer, "tokenize_document", tokenize)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="65536"):
        sources.build_from_files(inputs, out, shard_size=2, val_docs=1)
    assert len(calls) == 4
    assert not out.exists()  # the shards written before the error are removed, no .tmp left, no directory


def test_write_shards_takes_a_stream_of_texts_and_token_arrays(tmp_path):
    out = tmp_path / "out"
    settings = {"format": shards.MANIFEST_VERSION, "source": "test", "shard_size": 4, "prefix": "s"}
    splits = [("val", ["a val text"]), ("train", (d for d in [np.array([EOT, 1, 2, 3, 4]), "a train text"]))]
    manifest = shards.write_shards(out, settings, splits)
    assert split_tokens(out, "val") == expected_tokens(["a val text"])
    assert split_tokens(out, "train") == [EOT, 1, 2, 3, 4] + expected_tokens(["a train text"])
    assert manifest["skipped"] is False and json.loads((out / "done.json").read_text())["settings"] == settings
    assert shards.write_shards(out, settings, [("val", []), ("train", [])])["skipped"] is True  # same settings
    stale = out / ".s_val_000000.npy.999.tmp"  # left by a build that was killed
    stale.write_bytes(b"x")
    shards.write_shards(out, {**settings, "shard_size": 3}, splits[:1] + [("train", ["text"])], overwrite=True)
    assert not stale.exists()
    assert split_tokens(out, "train") == expected_tokens(["text"])


def test_default_order_per_source(tmp_path, corpus, monkeypatch):
    inputs, _ = make_inputs(tmp_path)
    files = tmp_path / "files"
    sources.build_from_files(inputs, files, shard_size=8, val_docs=1)
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda *a, **k: [{"text": f"web page {i} " * 9} for i in range(6)]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    fineweb = tmp_path / "fw"
    sources.build_fineweb(fineweb, shard_size=40)
    handmade = make_shards(tmp_path / "handmade")
    expected = {files: "windows", fineweb: "shards", corpus: "shards", handmade: "shards"}
    assert {d: default_order(d) for d in expected} == expected
    assert {d: ShardLoader(d, "train", 1, 4).order for d in expected} == expected  # order=None is the default


def test_builtin_corpus(tmp_path):
    out = shards.prepare_builtin_corpus(tmp_path / "builtin")
    assert num_tokens(out, "val") >= shards.BUILTIN_MIN_VAL_TOKENS
    enc = get_encoding()
    total = sum(len(enc.encode_ordinary(d)) + 1 for d in shards.builtin_documents())
    assert num_tokens(out, "train") + num_tokens(out, "val") == total
    assert len(find_shards(out, "train")) >= 2
    val = ShardLoader(out, "val", 4, 64)  # the smoke preset's evaluation: 20 batches of 4 x 64
    first = val.next_batch()
    for _ in range(19):
        val.next_batch()
    assert val.state_dict()["epoch"] == 0  # 20 val batches fit without wrapping around
    with pytest.raises(UserError, match="need 1000000"):  # a need the corpus cannot meet
        shards.build_builtin(out, min_val_tokens=10**6)
    val.reset()
    assert torch.equal(val.next_batch()[0], first[0])
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert shards.prepare_builtin_corpus(tmp_path / "builtin") == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


# ----------------------------------------------------------------------------- loader

SHARD_LENGTHS = [300, 40, 257, 400, 129]  # shard k holds k*10_000 + arange(len): its id and offset


def make_shards(root: Path, lengths=SHARD_LENGTHS, split="train") -> Path:
    root.mkdir(exist_ok=True)
    for k, n in enumerate(lengths):
        np.save(root / f"x_{split}_{k:06d}.npy", (k * 10_000 + np.arange(n)).astype(np.uint16))
    return root


def expected_epoch(lengths, order, step, B, T, rank=0):
    """The chunks one epoch yields: per shard, every full step from position 0."""
    chunks = []
    for k in order:
        pos = 0
        while pos + step + 1 <= lengths[k]:
            start = pos + rank * B * T
            chunks.append(k * 10_000 + np.arange(start, start + B * T + 1))
            pos += step
    return chunks


def test_loader_batches_match_tokens_and_skip_small_shards(tmp_path):
    data = make_shards(tmp_path / "d")
    B, T = 4, 16
    loader = ShardLoader(data, "train", B, T, shuffle=False)
    assert isinstance(loader.tokens, np.memmap)
    usable = [k for k, n in enumerate(SHARD_LENGTHS) if n >= B * T + 1]
    assert usable == [0, 2, 3, 4]  # the 40-token shard cannot hold one batch
    chunks = expected_epoch(SHARD_LENGTHS, usable, B * T, B, T)
    chunks += chunks[:3]  # and the next epoch starts over in the same order
    for chunk in chunks:
        x, y = loader.next_batch()
        assert x.dtype == torch.int64 and x.shape == (B, T) and y.shape == (B, T)
        assert torch.equal(x, torch.from_numpy(chunk[:-1]).view(B, T))
        assert torch.equal(y, torch.from_numpy(chunk[1:]).view(B, T))
    assert loader.state_dict()["epoch"] == 1


def test_loader_uses_mmap(tmp_path, monkeypatch):
    data = make_shards(tmp_path / "d")
    modes = []
    real_load = np.load

    def spy(*args, **kwargs):
        modes.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(loader_mod.np, "load", spy)
    loader = ShardLoader(data, "train", 2, 8)
    loader.next_batch()
    sample_windows(data, "train", 3, 8, seed=0)
    ShardLoader(data, "train", 2, 8, order="windows", vocab_size=50304).next_batch()
    assert modes and all(m == "r" for m in modes)


def test_two_ranks_see_what_one_rank_sees_in_two_steps(tmp_path):
    data = make_shards(tmp_path / "d", [1000])
    B, T = 2, 8
    single = ShardLoader(data, "train", B, T, shuffle=False)
    ranks = [ShardLoader(data, "train", B, T, rank=r, world_size=2, shuffle=False) for r in range(2)]
    for _ in range(5):
        one = [single.next_batch() for _ in range(2)]
        two = [loader.next_batch() for loader in ranks]
        for (x1, y1), (x2, y2) in zip(one, two):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    position = [{k: loader.state_dict()[k] for k in ("epoch", "shard", "pos")} for loader in [*ranks, single]]
    assert position[0] == position[1] == position[2]


@pytest.mark.parametrize("order", ["shards", "windows"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_steps_per_epoch_is_where_the_unshuffled_val_read_wraps(tmp_path, order, world):
    """What an evaluation may ask for without counting a batch twice: steps_per_epoch steps of every rank
    read distinct batches, and the next step repeats one (91 windows: not a multiple of 2 or 3)."""
    data = make_shards(tmp_path / "d", [300, 1000, 186], split="val")
    ranks = [ShardLoader(data, "val", 2, 8, rank=r, world_size=world, order=order) for r in range(world)]
    steps = ranks[0].steps_per_epoch
    assert steps > 0
    firsts = [int(loader.next_batch()[0][0, 0]) for _ in range(steps) for loader in ranks]
    assert len(set(firsts)) == len(firsts) == steps * world
    assert any(int(loader.next_batch()[0][0, 0]) in firsts for loader in ranks)


def test_world_size_shards_are_skipped_consistently(tmp_path):
    data = make_shards(tmp_path / "d", [100, 600])
    # one step of 2 ranks needs 2*4*16+1 = 129 tokens: only shard 1 fits, for both ranks
    ranks = [ShardLoader(data, "train", 4, 16, rank=r, world_size=2, shuffle=False) for r in range(2)]
    for r, loader in enumerate(ranks):
        chunks = expected_epoch([100, 600], [1], 2 * 64, 4, 16, rank=r)
        for chunk in chunks + chunks[:1]:
            assert torch.equal(loader.next_batch()[0], torch.from_numpy(chunk[:-1]).view(4, 16))


def test_state_round_trip_is_exact(tmp_path):
    data = make_shards(tmp_path / "d")
    loader = ShardLoader(data, "train", 2, 16, seed=5)
    for _ in range(40):  # 33 batches per epoch: crosses shards and an epoch boundary
        loader.next_batch()
    state = loader.state_dict()
    assert state["order"] == "shards" and state["epoch"] >= 1
    assert json.loads(json.dumps(state)) == state
    after = [loader.next_batch() for _ in range(30)]
    resumed = ShardLoader(data, "train", 2, 16, seed=5)
    resumed.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(after, [resumed.next_batch() for _ in range(30)]):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(UserError):
        resumed.load_state_dict({"epoch": 0, "shard": 99, "pos": 0})
    with pytest.raises(UserError):
        resumed.load_state_dict({"epoch": 0, "shard": 0, "pos": 10**6})
    with pytest.raises(UserError, match="on 1 process"):  # positions depend on the number of processes
        ShardLoader(data, "train", 2, 16, world_size=2).load_state_dict(state)
    old_state = {k: state[k] for k in ("epoch", "shard", "pos")}  # saved before orders existed
    resumed.load_state_dict(old_state)
    assert torch.equal(resumed.next_batch()[0], after[0][0])


def test_epoch_shuffle_is_deterministic(tmp_path):
    data = make_shards(tmp_path / "d", [200] * 6)
    a, b = ShardLoader(data, "train", 2, 16, seed=1), ShardLoader(data, "train", 2, 16, seed=1)
    orders = [a.shard_order(e) for e in range(6)]
    assert orders == [b.shard_order(e) for e in range(6)]
    assert all(sorted(o) == list(range(6)) for o in orders)
    assert len({tuple(o) for o in orders}) > 1  # a new permutation per epoch
    assert orders != [ShardLoader(data, "train", 2, 16, seed=2).shard_order(e) for e in range(6)]
    # what is read follows the drawn order, epoch after epoch
    per_shard = (200 - 1) // 32
    for epoch in range(2):
        for k in orders[epoch]:
            for _ in range(per_shard):
                assert int(a.next_batch()[0][0, 0]) // 10_000 == k
    assert ShardLoader(data, "train", 2, 16, shuffle=False).shard_order(3) == list(range(6))


def test_val_is_not_shuffled_and_errors(tmp_path):
    data = make_shards(tmp_path / "d", [100, 100, 100], split="val")
    val = ShardLoader(data, "val", 2, 8)
    assert val.shard_order(0) == val.shard_order(1) == [0, 1, 2]
    with pytest.raises(UserError, match="no 'train' shards"):
        ShardLoader(data, "train", 2, 8)
    with pytest.raises(UserError, match="does not exist"):
        ShardLoader(tmp_path / "nowhere", "val", 2, 8)
    with pytest.raises(UserError, match="holds one step"):
        ShardLoader(data, "val", 8, 16)
    with pytest.raises(UserError):
        ShardLoader(data, "val", 2, 8, rank=2, world_size=2)


def test_sample_windows(tmp_path):
    data = make_shards(tmp_path / "d")
    windows = sample_windows(data, "train", 64, 32, seed=0)
    assert windows.dtype == torch.int64 and windows.shape == (64, 32)
    assert torch.equal(windows, sample_windows(data, "train", 64, 32, seed=0))
    assert not torch.equal(windows, sample_windows(data, "train", 64, 32, seed=1))
    shard_ids = windows // 10_000
    offsets = windows % 10_000
    assert (shard_ids == shard_ids[:, :1]).all()  # a window never spans two shards
    assert (offsets.diff(dim=1) == 1).all()  # contiguous tokens
    assert (offsets[:, -1] < torch.tensor(SHARD_LENGTHS)[shard_ids[:, 0]]).all()
    assert len(set(shard_ids[:, 0].tolist())) >= 4  # drawn over the whole split
    with pytest.raises(UserError):
        sample_windows(data, "train", 4, 1000, seed=0)


def window_ids(loader: ShardLoader, n: int) -> list[tuple[int, int]]:
    """(shard, offset) of the next ``n`` batches, each checked to be one run of B*T+1 contiguous tokens."""
    ids = []
    for _ in range(n):
        x, y = loader.next_batch()
        tokens = torch.cat([x.flatten(), y.flatten()[-1:]])
        assert torch.equal(tokens, torch.arange(int(tokens[0]), int(tokens[0]) + len(tokens)))
        ids.append(divmod(int(tokens[0]), 10_000))
    return ids


def test_windows_each_seen_once_per_epoch_in_a_seeded_order(tmp_path):
    data = make_shards(tmp_path / "d")
    B, T = 2, 16
    every = sorted((k, j * B * T) for k, n in enumerate(SHARD_LENGTHS) for j in range((n - 1) // (B * T)))
    loader = ShardLoader(data, "train", B, T, seed=3, order="windows")
    assert loader.n_windows == len(every) and (1, 0) in every  # the 40-token shard holds one window
    epochs = [window_ids(loader, len(every)) for _ in range(2)]
    assert all(sorted(ids) == every for ids in epochs)  # each window once per epoch, across all shards
    assert epochs[0] != every  # not front to back
    assert epochs[1] != epochs[0]  # a new epoch reshuffles
    assert window_ids(ShardLoader(data, "train", B, T, seed=3, order="windows"), len(every)) == epochs[0]
    assert window_ids(ShardLoader(data, "train", B, T, seed=4, order="windows"), len(every)) != epochs[0]


@pytest.mark.parametrize("world", [2, 3])
def test_windows_k_ranks_see_what_one_rank_sees_in_k_steps(tmp_path, world):
    data = make_shards(tmp_path / "d", [100, 60, 97])
    B, T = 2, 8
    single = ShardLoader(data, "train", B, T, seed=1, order="windows")
    assert single.n_windows == 15  # not a multiple of 2 or 3: some steps straddle an epoch's end
    ranks = [ShardLoader(data, "train", B, T, rank=r, world_size=world, seed=1, order="windows")
             for r in range(world)]
    for _ in range(40 // world):  # more than two epochs
        one = [single.next_batch() for _ in range(world)]
        many = [loader.next_batch() for loader in ranks]
        for (x1, y1), (x2, y2) in zip(one, many):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_windows_state_round_trip_mid_epoch(tmp_path):
    data = make_shards(tmp_path / "d")
    loader = ShardLoader(data, "train", 2, 16, seed=5, order="windows")
    for _ in range(20):  # 34 windows per epoch: stop in the middle of epoch 0
        loader.next_batch()
    state = loader.state_dict()
    assert state["order"] == "windows" and json.loads(json.dumps(state)) == state
    after = [loader.next_batch() for _ in range(30)]  # on into epoch 1
    resumed = ShardLoader(data, "train", 2, 16, seed=5, order="windows")
    resumed.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(after, [resumed.next_batch() for _ in range(30)]):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    refusals = [(ShardLoader(data, "train", 2, 16, order="shards"), state, "order 'windows'"),
                (ShardLoader(data, "train", 2, 16, world_size=2, order="windows"), state, "on 1 process"),
                (ShardLoader(data, "train", 4, 16, order="windows"), state, "different data or batch shape"),
                (resumed, {"epoch": 0, "shard": 0, "pos": 0}, "order 'shards'")]  # a state saved before orders
    for other, bad_state, message in refusals:
        with pytest.raises(UserError, match=message) as info:
            other.load_state_dict(bad_state)
        assert "\n" not in str(info.value)


def test_val_windows_are_read_front_to_back(tmp_path):
    data = make_shards(tmp_path / "d", [100, 60, 97], split="val")
    val = ShardLoader(data, "val", 2, 8, order="windows")
    first = window_ids(val, 15)
    assert first == sorted(first)
    val.reset()
    assert window_ids(val, 15) == first
    by_shards = ShardLoader(data, "val", 2, 8, order="shards")
    assert window_ids(by_shards, 15) == first  # one process: both orders read the same val batches


def test_token_ids_are_checked_against_the_vocabulary(tmp_path):
    data = make_shards(tmp_path / "d")  # the largest id, 40128, is in shard 4
    for order in ORDERS:
        ShardLoader(data, "train", 2, 16, order=order, vocab_size=40_129)
    for load in (lambda: ShardLoader(data, "train", 2, 16, vocab_size=40_000),
                 lambda: sample_windows(data, "train", 64, 8, seed=0, vocab_size=40_000)):
        with pytest.raises(UserError) as info:
            load()
        message = str(info.value)
        assert "x_train_000004.npy" in message and "40000" in message and "\n" not in message
        assert "token id 40" in message  # the offending id, from shard 4 (ids 40000..40128)
    assert sample_windows(data, "train", 64, 8, seed=0, vocab_size=40_129).max() < 40_129


def test_lone_surrogates_are_replaced_as_encode_ordinary_does():
    """Scraped text can hold half an emoji (a lone surrogate after json.loads): tokenized, not a traceback."""
    text = "a cut emoji \ud83d here"
    assert tokenizer.tokenize_document(text).tolist() == [EOT] + get_encoding().encode_ordinary(text)
