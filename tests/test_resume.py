"""Tests for resuming and checkpoints: tinyimagenet.train's --resume, Ctrl-C, kill -9 and NaN stops.

What this checks
----------------
* resume is exact: 1 epoch + ``--resume`` to 2 epochs, and a Ctrl-C (KeyboardInterrupt, or a
  real SIGINT inside a step) in the middle of an epoch followed by ``--resume``, give
  bit-identical weights and history to an uninterrupted run;
* a resume that would change the run (another cosine horizon, another lr) is refused before
  touching last.pt, and a pinned horizon (--schedule-epochs) resumes exactly;
* checkpoints survive ``kill -9`` mid-write, and a NaN loss stops the run with the last good
  checkpoint untouched; a huge lr diverges into NonFiniteLossError.

Run:  PYTHONPATH=. pytest -q tests/test_resume.py   (CPU only; up to a few minutes on 2 shared cores)

Costs are kept small on purpose: the shared small run (`run_args`) is BaselineCNN on 4 synthetic
images per class, 5 batches of 8 per epoch, 1-3 epochs.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinyimagenet import train as train_mod
from tinyimagenet.checkpoint import load_checkpoint, read_history_csv
from tinyimagenet.loaders import load_data
from tinyimagenet.train import NonFiniteLossError, TrainConfig, fit, main

REPO = Path(__file__).resolve().parents[1]


def run_args(root, out, *extra) -> list[str]:
    """CLI arguments of the small run the resume/NaN tests share.

    SGD with momentum, weight decay, label smoothing, dropout and augmentation: state that an
    inexact resume would break. A constant lr (the "seed" recipe's schedule), because a cosine
    schedule's horizon is --epochs: a 1-epoch run resumed with --epochs 2 would follow another
    schedule than a 2-epoch run. 5 batches of 8 per epoch (40 images), 20 val images.
    """
    return ["--model", "BaselineCNN", "--recipe", "seed", "--optimizer", "sgd", "--lr", "0.02",
            "--weight-decay", "5e-4", "--label-smoothing", "0.1", "--batch-size", "8",
            "--data-dir", str(root), "--train-per-class", "4", "--val-per-class", "2",
            "--device", "cpu", "--no-progress", "--out", str(out), *extra]


def same_weights(a: dict, b: dict) -> None:
    """Two checkpoints hold bit-identical weights and optimizer state (SGD momentum buffers)."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"state_dict[{k!r}] differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), f"optimizer {i}.{k}"
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]


def same_history(a: list[dict], b: list[dict]) -> None:
    """Rows identical except wall-clock times (`seconds`, `train_seconds`)."""
    strip = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]  # noqa: E731
    assert len(a) == len(b) and strip(a) == strip(b)


@pytest.fixture(scope="module")
def reference_run(synthetic_root, tmp_path_factory):
    """An uninterrupted 2-epoch run: (out dir, history, last.pt) every resume is compared with."""
    out = tmp_path_factory.mktemp("reference")
    history = main(run_args(synthetic_root, out, "--epochs", "2"))
    return out, history, torch.load(out / "last.pt", weights_only=True)


# --------------------------------------------------------------------------------- resuming
def test_checkpoint_contents(reference_run):
    out, history, ck = reference_run
    assert ck["epoch"] == 2 and ck["step"] == 0 and ck["partial_sums"] is None
    assert ck["config"]["model"] == "BaselineCNN" and ck["config"]["lr"] == 0.02
    same_history(ck["history"], history)
    csv_rows = read_history_csv(out / "history.csv")
    assert [r["epoch"] for r in csv_rows] == [1, 2]
    assert (out / "best.pt").is_file() and (out / "config.json").is_file()


def test_resume_at_epoch_boundary_equals_uninterrupted(reference_run, synthetic_root, tmp_path):
    _, ref_history, ref_ck = reference_run
    first = main(run_args(synthetic_root, tmp_path, "--epochs", "1"))
    assert len(first) == 1
    history = main(run_args(synthetic_root, tmp_path, "--epochs", "2", "--resume"))
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    same_weights(ck, ref_ck)
    same_history(history, ref_history)
    same_history(ck["history"], ref_history)


def before_training_step(monkeypatch, action) -> None:
    """Models built by train.fit call `action(k)` before the forward of training step k (0-based,
    counted over the whole run; evaluation batches are not counted)."""
    real_build, calls = train_mod.build_model, {"n": 0}

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)

        def hook(module, inputs):
            if module.training:
                calls["n"] += 1
                action(calls["n"] - 1)
        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(train_mod, "build_model", build)


@pytest.mark.parametrize("epoch,step", [(0, 2), (1, 3)])
def test_ctrl_c_mid_epoch_then_resume_equals_uninterrupted(reference_run, synthetic_root, tmp_path,
                                                           monkeypatch, epoch, step):
    """KeyboardInterrupt from the forward of training step `step` (0-based) of epoch `epoch`."""
    _, ref_history, ref_ck = reference_run

    def interrupt(k):
        if k == epoch * 5 + step:  # 5 steps per epoch (40 images, batch 8)
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        before_training_step(patch, interrupt)
        history = main(run_args(synthetic_root, tmp_path, "--epochs", "2"))
    same_history(history, ref_history[:epoch])  # the epochs that finished, nothing more
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (ck["epoch"], ck["step"]) == (epoch, step)
    assert ck["partial_sums"] is not None and ck["partial_sums"][2].item() == 8 * step

    resumed = main(run_args(synthetic_root, tmp_path, "--epochs", "2", "--resume"))
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    same_weights(ck, ref_ck)
    same_history(resumed, ref_history)


@pytest.mark.parametrize("step", [1, 3])
def test_sigint_inside_a_step_stops_after_that_step(reference_run, synthetic_root, tmp_path,
                                                     monkeypatch, step):
    """A real SIGINT (Ctrl-C, or Jupyter's interrupt) delivered during step `step`'s forward pass:
    the step completes (weights, optimizer and position agree), then the run stops and saves."""
    _, ref_history, ref_ck = reference_run

    def sigint(k):
        if k == step:
            os.kill(os.getpid(), signal.SIGINT)

    handler_before = signal.getsignal(signal.SIGINT)
    with monkeypatch.context() as patch:
        before_training_step(patch, sigint)
        history = main(run_args(synthetic_root, tmp_path, "--epochs", "2"))
    assert history == []
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (ck["epoch"], ck["step"]) == (0, step + 1)  # the interrupted step was finished, not lost
    assert signal.getsignal(signal.SIGINT) is handler_before  # the run's handler is gone again

    resumed = main(run_args(synthetic_root, tmp_path, "--epochs", "2", "--resume"))
    same_weights(torch.load(tmp_path / "last.pt", weights_only=True), ref_ck)
    same_history(resumed, ref_history)


def strong_args(root, out, *extra) -> list[str]:
    """run_args under the "strong" recipe: warmup, then cosine decay over the schedule's horizon."""
    args = run_args(root, out, *extra)
    args[args.index("--recipe") + 1] = "strong"
    return args


def test_resume_with_a_different_cosine_horizon_is_refused(synthetic_root, tmp_path):
    main(strong_args(synthetic_root, tmp_path, "--epochs", "1"))
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=r"cosine schedule over 1 epochs.*--schedule-epochs"):
        main(strong_args(synthetic_root, tmp_path, "--epochs", "2", "--resume"))
    assert (tmp_path / "last.pt").read_bytes() == before


def test_pinned_cosine_horizon_resumes_exactly(synthetic_root, tmp_path):
    """--schedule-epochs 2: one epoch now, one more later == two epochs in one go (cosine, warmup)."""
    reference = main(strong_args(synthetic_root, tmp_path / "ref", "--schedule-epochs", "2", "--epochs", "2"))
    main(strong_args(synthetic_root, tmp_path / "split", "--schedule-epochs", "2", "--epochs", "1"))
    resumed = main(strong_args(synthetic_root, tmp_path / "split", "--schedule-epochs", "2", "--epochs", "2",
                               "--resume"))
    same_history(resumed, reference)
    same_weights(torch.load(tmp_path / "split" / "last.pt", weights_only=True),
                 torch.load(tmp_path / "ref" / "last.pt", weights_only=True))


def test_resume_with_a_different_lr_is_refused(reference_run, synthetic_root, tmp_path):
    out, _, _ = reference_run
    (tmp_path / "last.pt").write_bytes((out / "last.pt").read_bytes())
    before = (tmp_path / "last.pt").read_bytes()
    args = run_args(synthetic_root, tmp_path, "--epochs", "3", "--resume")
    args[args.index("--lr") + 1] = "0.05"
    with pytest.raises(ValueError, match=r"lr: 0\.02 -> 0\.05"):
        main(args)
    assert (tmp_path / "last.pt").read_bytes() == before  # refused before touching anything


# ------------------------------------------------------------------------ crashes and NaNs
WRITER = """
import sys, time, torch
from tinyimagenet.checkpoint import save_checkpoint
path = sys.argv[1]
big = torch.zeros(24 * 2**20)   # 96 MB: a write takes long enough (~0.1-1 s) to be killed inside it
for i in range(1, 10**6):
    big.fill_(float(i))
    print("start", i, flush=True)
    t0 = time.perf_counter()
    save_checkpoint({"i": i, "big": big}, path)
    print("done", i, time.perf_counter() - t0, flush=True)
"""


def test_kill_9_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    """SIGKILL halfway through the second save: the first checkpoint must still load, whole.

    Nothing here depends on how save_checkpoint is atomic (temp file + rename, or anything else).
    """
    path = tmp_path / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().split() == ["start", "1"]
        done = proc.stdout.readline().split()
        assert done[:2] == ["done", "1"], done
        assert proc.stdout.readline().split() == ["start", "2"]
        time.sleep(float(done[2]) / 2)  # about half-way through an equally long second save
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ck = load_checkpoint(path)  # raises on a truncated or half-replaced file
    expected = 2 if "done 2" in rest else 1  # the kill may (rarely) land after the save finished
    assert ck["i"] == expected and bool((ck["big"] == float(expected)).all())
    assert ck["big"].numel() == 24 * 2**20


def test_nan_loss_stops_with_last_good_checkpoint(synthetic_root, tmp_path, monkeypatch):
    """Epoch 2, step index 1 (0-based) produces NaN logits: the error names epoch 2, step 2."""
    calls, snapshot = {"n": 0}, {}
    real_build = train_mod.build_model

    def build_with_nan(*args, **kwargs):
        model = real_build(*args, **kwargs)

        def hook(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] == 5 + 2:  # 5 steps in epoch 1, then the 2nd step of epoch 2
                    snapshot["bytes"] = (tmp_path / "last.pt").read_bytes()  # epoch 1's checkpoint
                    return output * float("nan")
        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_mod, "build_model", build_with_nan)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2\b") as info:
        main(run_args(synthetic_root, tmp_path, "--epochs", "3"))
    assert (info.value.epoch, info.value.step) == (2, 2) and math.isnan(info.value.value)
    assert [r["epoch"] for r in info.value.history] == [1]
    assert (tmp_path / "last.pt").read_bytes() == snapshot["bytes"], "last.pt was rewritten"
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["epoch"] == 1 and all(torch.isfinite(t).all() for t in ck["model"].values())


def test_huge_lr_diverges_into_nonfinite_loss_error(synthetic_root):
    data = load_data(synthetic_root, train_per_class=4, val_per_class=1, progress=False)
    cfg = TrainConfig(recipe="strong", optimizer="sgd", lr=1e6, warmup_epochs=0.0, batch_size=8,
                      epochs=1, device="cpu", progress=False)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step \d+"):
        fit(cfg, data=data)
