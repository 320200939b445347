"""ViT / NdViT: parameter counts from the config, NdViT patch embedding, learning, data, CLI round trip."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import NdViT, ViT, ViTConfig, build_model, build_vit
from utils.checkpoint import save_checkpoint
from utils.cli import UserError
from utils.vision_data import (
    iterate_batches,
    load_image_data,
    load_vit,
    preprocess,
    synthetic_data,
    synthetic_split,
)

TINY = dict(image_size=16, patch_size=4, width=32, depth=2, heads=2, num_classes=10)


def linear_params(i, o):
    return i * o + o


def nd_params(dims_in, dims_out):
    return sum(linear_params(i, o) for i, o in zip(dims_in, dims_out))


def expected_vit(c: ViTConfig) -> int:
    D, H, S, p = c.width, int(c.width * c.mlp_ratio), (c.image_size // c.patch_size) ** 2 + 1, c.patch_size
    block = (2 * 2 * D + linear_params(D, 3 * D) + linear_params(D, D)
             + linear_params(D, H) + linear_params(H, D))
    return (linear_params(p * p * c.in_chans, D) + D + S * D + c.depth * block + 2 * D
            + linear_params(D, c.num_classes))


def expected_ndvit(c: ViTConfig) -> int:
    D, H, S, p = c.width, int(c.width * c.mlp_ratio), (c.image_size // c.patch_size) ** 2 + 1, c.patch_size
    block = (2 * 2 * D + nd_params((S, D), (S, 3 * D)) + nd_params((S, D), (S, D))
             + nd_params((S, D), (S, H)) + nd_params((S, H), (S, D)))
    return (nd_params((p, p, c.in_chans), (1, 1, D)) + D + S * D + c.depth * block + 2 * D
            + nd_params((1, D), (1, c.num_classes)))


@pytest.mark.parametrize("overrides", [{}, TINY, dict(TINY, mlp_ratio=0.5, num_classes=7)])
def test_parameter_counts_follow_the_config(overrides):
    vit, ndvit = build_vit("vit", **overrides), build_vit("ndvit", **overrides)
    assert type(vit) is ViT and type(ndvit) is NdViT
    assert vit.num_params() == expected_vit(vit.config)
    assert ndvit.num_params() == expected_ndvit(ndvit.config)
    if not overrides:  # ViT-S/16, 10 classes: timm's vit_small_patch16_224 (22.05M) less 990 head rows
        assert 21.6e6 < vit.num_params() < 21.7e6


@pytest.mark.parametrize("name", ["vit", "ndvit"])
def test_forward_shapes_and_input_check(name):
    model = build_vit(name, **TINY)
    logits = model(torch.randn(3, 3, 16, 16))
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    with pytest.raises(ValueError):
        model(torch.randn(3, 3, 20, 20))


def test_config_validation_and_names():
    with pytest.raises(ValueError):
        ViTConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError):
        ViTConfig(width=64, heads=5)
    with pytest.raises(ValueError):
        build_vit("resnet")
    assert ViTConfig(**build_vit("ndvit", **TINY).config.to_dict()) == ViTConfig(**TINY)


def test_ndvit_patch_embedding_is_its_definition():
    torch.manual_seed(0)
    c = ViTConfig(image_size=6, patch_size=3, in_chans=2, width=5, depth=1, heads=1)
    model = build_vit("ndvit", **c.to_dict())
    row, col, chan = model.patch_embed.proj.align_layers  # p -> 1, p -> 1, C -> width
    images = torch.randn(2, 2, 6, 6)
    got = model.patch_embed(images)
    assert got.shape == (2, 4, 5)
    for b in range(2):
        for r in range(2):
            for q in range(2):
                patch = images[b, :, 3 * r : 3 * r + 3, 3 * q : 3 * q + 3].permute(1, 2, 0)  # (i, j, c)
                t = torch.einsum("ijc,i->jc", patch, row.weight[0]) + row.bias  # mode 1, then its bias
                t = torch.einsum("jc,j->c", t, col.weight[0]) + col.bias
                want = chan.weight @ t + chan.bias
                torch.testing.assert_close(got[b, 2 * r + q], want, rtol=1e-5, atol=1e-6)


def test_dense_patch_embedding_reads_raster_patches():
    model = build_vit("vit", **TINY)
    images = torch.randn(1, 3, 16, 16)
    got = model.patch_embed(images)
    proj = model.patch_embed.proj
    patch = images[0, :, 4:8, 8:12]  # row 1, column 2 of a 4 x 4 grid -> token 6
    torch.testing.assert_close(got[0, 6], proj.weight @ patch.flatten() + proj.bias)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit", "ndvit"])
def test_a_few_steps_on_synthetic_data_reduce_the_loss(name):
    # NdViT (default NdLinear init) sits near ln(10) for ~15 steps before it learns, hence 25 steps at 5e-3
    torch.manual_seed(0)
    split = synthetic_split(128, seed=3)
    model = build_vit(name, image_size=32, patch_size=8, width=32, depth=1, heads=2)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    images, labels = next(iterate_batches(split, 128, 32))
    losses = []
    for _ in range(25):
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < min(losses[0], 2.2) - 0.2, losses  # below the ln(10) = 2.30 of guessing


def test_synthetic_data_is_deterministic_and_covers_all_classes():
    a, b, other = synthetic_split(200, seed=1), synthetic_split(200, seed=1), synthetic_split(200, seed=2)
    assert a.images.dtype == torch.uint8 and a.images.shape == (200, 3, 32, 32)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, other.images)
    assert set(a.labels.tolist()) == set(range(10))
    data = synthetic_data(50, 20)
    assert (len(data.train), len(data.test), data.num_classes) == (50, 20, 10)
    assert not torch.equal(data.train.images[:20], data.test.images)


def test_preprocess_resizes_and_normalizes():
    halves = torch.tensor([0, 255], dtype=torch.uint8).repeat_interleave(8)
    images = halves.view(1, 1, 1, 16).expand(2, 3, 16, 16)
    x = preprocess(images, 32)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == 1.0  # mean = std = 0.5
    torch.testing.assert_close(preprocess(images, 16)[0, 0, 0, :8], torch.full((8,), -1.0))


def test_cifar_python_batches_are_read_channel_first(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [("data_batch_1", 6), ("data_batch_2", 4), ("test_batch", 5)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        data[:, 1024] = 7  # first pixel of the green plane
        with open(root / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": list(range(n))}, f)
    for spec in (root, tmp_path):  # the directory itself or its parent
        data = load_image_data(str(spec))
        assert (len(data.train), len(data.test), data.num_classes) == (10, 5, 10)
        assert data.train.images.shape == (10, 3, 32, 32)
        assert (data.train.images[:, 1, 0, 0] == 7).all()
        assert data.test.labels.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(UserError):
        load_image_data(str(tmp_path / "missing"))
    with pytest.raises(UserError):
        load_image_data(str(tmp_path / "cifar-10-batches-py" / "data_batch_1"))
    good = (root / "test_batch").read_bytes()
    for batch, message in (({b"data": np.zeros((5, 100), np.uint8), b"labels": [0] * 5}, "ValueError"),
                           ({b"data": np.zeros((5, 3072), np.uint8), b"labels": [0, 1, 2, 3, 12]}, "outside 0..9"),
                           ({b"data": np.zeros((5, 3072), np.uint8), b"labels": [0, 1]}, "5 images but 2 labels")):
        (root / "test_batch").write_bytes(pickle.dumps(batch))
        with pytest.raises(UserError, match=message):
            load_image_data(str(root))
    (root / "test_batch").write_bytes(good)


def run(repo_root, script, *args):
    return subprocess.run([sys.executable, f"experiment/{script}", *args], cwd=repo_root, capture_output=True,
                          text=True, timeout=120)


SMALL_RUN = ["--synthetic-size", "128", "48", "--width", "16", "--depth", "1", "--heads", "2",
             "--batch-size", "64", "--device", "cpu"]


@pytest.mark.slow
def test_train_then_test_and_resume(repo_root, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    r = run(repo_root, "train_vit.py", "--model", "ndvit", "--epochs", "2", "--out-dir", str(full),
            *SMALL_RUN)
    assert r.returncode == 0, r.stderr
    assert (full / "model_001.pt").is_file() and (full / "model_002.pt").is_file()
    assert "top1" in (full / "log.txt").read_text()

    r = run(repo_root, "test_vit.py", "--ckpt", str(full / "model_002.pt"), "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    ckpt = torch.load(full / "model_002.pt", weights_only=True)
    assert report["model"] == "ndvit" and report["n"] == 48 and report["epoch"] == 2
    assert report["top1"] == pytest.approx(ckpt["test_top1"])  # same test split, rebuilt from the ckpt

    # 1 epoch + resume to 2 == 2 epochs straight
    assert run(repo_root, "train_vit.py", "--model", "ndvit", "--epochs", "1", "--out-dir", str(part),
               *SMALL_RUN).returncode == 0
    r = run(repo_root, "train_vit.py", "--epochs", "2", "--out-dir", str(part), "--resume", *SMALL_RUN)
    assert r.returncode == 0, r.stderr
    resumed = torch.load(part / "model_002.pt", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["step"] == ckpt["step"]
    for k, v in ckpt["model"].items():
        torch.testing.assert_close(resumed["model"][k], v)

    def epochs(log):
        return [int(line.split()[0]) for line in log.read_text().splitlines()]
    assert epochs(part / "log.txt") == [1] * 4 + [2] * 4  # one record per epoch across the resume

    # a resumed run never writes into another run's directory (only its lock file is touched) ...
    def files(directory):
        return {p.name: p.stat().st_mtime_ns for p in directory.iterdir() if p.name != ".lock"}
    before = files(full)
    r = run(repo_root, "train_vit.py", "--resume", str(part / "model_001.pt"), "--out-dir", str(full), *SMALL_RUN)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{full} already holds a run of ndvit (synthetic)" in r.stderr and f"continue in {part}" in r.stderr
    assert files(full) == before
    # ... continues in an empty one with the record up to its checkpoint ...
    r = run(repo_root, "train_vit.py", "--resume", str(part / "model_001.pt"), "--out-dir", str(tmp_path / "branch"),
            "--epochs", "2", *SMALL_RUN)
    assert r.returncode == 0, r.stderr
    assert epochs(tmp_path / "branch" / "log.txt") == [1] * 4 + [2] * 4
    assert sorted(p.name for p in (tmp_path / "branch").glob("*.pt")) == ["model_002.pt"]
    # ... and, by default, in its own directory, where an older checkpoint rewinds the run
    r = run(repo_root, "train_vit.py", "--resume", str(part / "model_001.pt"), "--epochs", "2", *SMALL_RUN)
    assert r.returncode == 0 and "rewound to epoch 1" in r.stdout, r.stderr
    assert sorted(p.name for p in part.glob("*.pt")) == ["model_001.pt", "model_002.pt"]
    assert [p.name for p in part.glob("abandoned/*/*.pt")] == ["model_002.pt"]
    assert epochs(part / "log.txt") == [1] * 4 + [2] * 4


@pytest.mark.slow
def test_cli_errors_are_one_line(repo_root, tmp_path):
    gpt_ckpt = tmp_path / "gpt.pt"
    gpt = build_model("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=64)
    save_checkpoint(gpt_ckpt, gpt, kind="gpt", model_name="gpt2", step=0)
    r = run(repo_root, "test_vit.py", "--ckpt", str(gpt_ckpt))
    assert r.returncode == 2 and "expected a 'vit' model" in r.stderr and "Traceback" not in r.stderr

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    r = run(repo_root, "train_vit.py", "--resume", str(corrupt), "--out-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and "corrupt" in r.stderr and "Traceback" not in r.stderr
    assert corrupt.read_bytes() == b"not a checkpoint at all"

    r = run(repo_root, "train_vit.py", "--data", str(tmp_path / "no_such_dir"),
            "--out-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()  # nothing written on bad input


def test_in_process_errors(tmp_path):
    from experiment import test_vit, train_vit

    with pytest.raises(UserError, match="patch"):
        train_vit.main(["--image-size", "30", "--out-dir", str(tmp_path / "a"), "--synthetic-size", "8", "8"])
    existing = tmp_path / "b" / "model_001.pt"
    existing.parent.mkdir()
    existing.write_bytes(b"user file")
    with pytest.raises(UserError, match="already holds checkpoints"):
        train_vit.main(["--out-dir", str(existing.parent), "--synthetic-size", "8", "8"])
    assert existing.read_bytes() == b"user file"
    with pytest.raises(UserError, match="not found"):
        test_vit.main(["--ckpt", str(tmp_path / "missing.pt")])
    with pytest.raises(UserError, match="corrupt"):
        load_vit(existing)
    for flags, message in ((["--lr", "nan"], "finite"), (["--lr", "-1e-4"], "must be > 0"),
                           (["--epochs", "0"], "must be >= 1"), (["--synthetic-size", "8", "0"], "must be >= 1")):
        with pytest.raises(UserError, match=message):
            train_vit.main([*flags, "--out-dir", str(tmp_path / "c")])
    with pytest.raises(UserError, match="must be >= 1"):
        test_vit.main(["--ckpt", str(existing), "--batch-size", "0"])
    for flags, message in ((["--seed", "-1"], "must be >= 0"), (["--seed", str(2**64)], "must be < 2\\*\\*64"),
                           (["--device", "meta"], "not supported")):
        with pytest.raises(UserError, match=message):
            train_vit.main([*flags, "--out-dir", str(tmp_path / "c"), "--synthetic-size", "8", "8"])
    with pytest.raises(UserError, match="is a file"):
        train_vit.main(["--out-dir", str(existing / "sub"), "--synthetic-size", "8", "8"])
    with pytest.raises(UserError, match="is a file"):
        train_vit.main(["--out-dir", str(existing), "--synthetic-size", "8", "8"])
    assert not (tmp_path / "c").exists()

    vit = build_vit("vit", image_size=8, patch_size=4, width=8, depth=1, heads=2, num_classes=10)
    for field, value in (("epoch", None), ("optimizer", "adam"), ("step", 1.5)):
        broken = tmp_path / "broken" / f"model_00{len(field)}.pt"
        broken.parent.mkdir(exist_ok=True)
        save_checkpoint(broken, vit, kind="vit", model_name="vit", epoch=1, step=1, optimizer={}, data="synthetic")
        ckpt = torch.load(broken, weights_only=True)
        ckpt[field] = value
        torch.save(ckpt, broken)
        with pytest.raises(UserError, match=f"not a checkpoint train_vit.py can resume: {field} missing"):
            train_vit.main(["--resume", str(broken), "--synthetic-size", "8", "8"])


TINY_RUN = ["--synthetic-size", "16", "8", "--width", "16", "--depth", "1", "--heads", "2", "--batch-size", "8",
            "--device", "cpu"]


def _epochs(out) -> list[int]:
    return [int(line.split()[0]) for line in (out / "log.txt").read_text().splitlines()]


def _dead_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()


def test_run_directory_is_train_gpts(tmp_path, capsys):
    """train_vit.py's run directory is utils/rundir.py's, with train_gpt.py's guarantees: a run id in run.json
    and every checkpoint, the lock, a plain --resume past a corrupt newest checkpoint (which a rewind sets
    aside), a dead writer's temp file removed and a live one's kept."""
    from experiment import train_vit
    from utils import rundir

    out = tmp_path / "run"
    train_vit.main([*TINY_RUN, "--epochs", "2", "--out-dir", str(out)])
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    assert [torch.load(p, weights_only=True)["run_id"] for p in sorted(out.glob("model_*.pt"))] == [run_id] * 2

    held = rundir.lock(out)  # another process writing into the run
    busy = re.escape(f"{out} is in use by another training process (PID {os.getpid()})")
    try:
        with pytest.raises(UserError, match=busy):
            train_vit.main([*TINY_RUN, "--epochs", "3", "--out-dir", str(out), "--resume"])
    finally:
        held.close()

    newest = out / "model_002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    stale, live = out / f".model_003.pt.{_dead_pid()}.tmp", out / f".x.pt.{os.getpid()}.tmp"
    stale.write_bytes(b"partial")
    live.write_bytes(b"in flight")
    capsys.readouterr()
    train_vit.main([*TINY_RUN, "--epochs", "3", "--out-dir", str(out), "--resume"])
    printed = capsys.readouterr()
    assert "skipping unreadable checkpoint" in printed.err and f"resumed from {out / 'model_001.pt'}" in printed.out
    assert "rewound to epoch 1" in printed.out and [p.name for p in out.glob("abandoned/*/*.pt")] == ["model_002.pt"]
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in out.glob("model_*.pt")) == ["model_001.pt", "model_002.pt", "model_003.pt"]
    assert _epochs(out) == [1] * 4 + [2] * 4 + [3] * 4
    assert {torch.load(p, weights_only=True)["run_id"] for p in out.glob("model_*.pt")} == {run_id}


def test_a_new_run_refuses_a_foreign_run_unless_overwrite(tmp_path):
    from experiment import train_vit

    gpt_run = tmp_path / "gpt"
    gpt_run.mkdir()
    (gpt_run / "run.json").write_text(json.dumps({"model": "gpt2", "preset": "smoke", "config": {"n_layer": 2}}))
    (gpt_run / "log.txt").write_text("0 val 10.0\n0 train 10.0\n")
    with pytest.raises(UserError, match="already holds a run of gpt2 \\(smoke\\), another config; pass --resume"):
        train_vit.main([*TINY_RUN, "--epochs", "1", "--out-dir", str(gpt_run)])
    assert (gpt_run / "log.txt").read_text() == "0 val 10.0\n0 train 10.0\n" and not list(gpt_run.glob("*.pt"))
    with pytest.raises(UserError, match="--overwrite starts a new run; it cannot be combined with --resume"):
        train_vit.main([*TINY_RUN, "--out-dir", str(gpt_run), "--resume", "--overwrite"])

    train_vit.main([*TINY_RUN, "--epochs", "1", "--out-dir", str(gpt_run), "--overwrite"])
    assert json.loads((gpt_run / "run.json").read_text())["model"] == "vit"
    assert _epochs(gpt_run) == [1] * 4 and [p.name for p in gpt_run.glob("*.pt")] == ["model_001.pt"]


def test_a_resumed_run_keeps_its_seed(tmp_path, capsys):
    """Every epoch's shuffle depends on the seed: a resume without --seed continues the run's own order (the
    same weights as an uninterrupted run), and another --seed is refused."""
    from experiment import train_vit

    straight, part = tmp_path / "straight", tmp_path / "part"
    train_vit.main([*TINY_RUN, "--seed", "7", "--epochs", "2", "--out-dir", str(straight)])
    train_vit.main([*TINY_RUN, "--seed", "7", "--epochs", "1", "--out-dir", str(part)])
    with pytest.raises(UserError, match="--seed 8 differs from the resumed run's seed 7"):
        train_vit.main([*TINY_RUN, "--seed", "8", "--epochs", "2", "--out-dir", str(part), "--resume"])
    train_vit.main([*TINY_RUN, "--epochs", "2", "--out-dir", str(part), "--resume"])
    a, b = (torch.load(d / "model_002.pt", weights_only=True) for d in (straight, part))
    assert a["seed"] == b["seed"] == 7
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=0)
