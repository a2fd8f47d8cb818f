"""CUDA end to end: every GPU path of the repo, small but real. Skipped when there is no GPU.

What this checks (issue 12)
---------------------------
* the quick diagnosis on the GPU, fixed and legacy dropout, including the legacy run's control
  rerun (the seed's own case, which crashed there: a device read from a model not yet placed);
* `fit` places a model built on the CPU, as the diagnosis builds its control, on the run's one
  device, and a probe evaluated from `on_epoch_end` runs there too;
* the train CLI under bf16 autocast, eager and --compile: a Ctrl-C mid-epoch, then --resume,
  continues the same run: the dropout RNG at every later step equals the uninterrupted run's
  (exact), and the weights agree within CUDA's non-deterministic kernels;
* torchrun --nproc_per_node=1 (NCCL) trains and evaluates;
* no host round-trip per step: an epoch and an evaluation run under
  torch.cuda.set_sync_debug_mode("error"), which raises on any synchronizing call; only the marked
  sync points (runtime.host_sync_allowed) lift it, once per epoch and every `sync_every` steps;
* benchmarks/train_throughput.py --device cuda runs and reports loop/step for each model.

Run on a GPU machine, as one prepared script (the tests, then the benchmark numbers the issue
asks for; about 5 + 4 minutes on one H200, an estimate: none of this has run yet, it was written
in a session without a GPU):

    pytest -q tests/test_cuda.py
    PYTHONPATH=. python benchmarks/train_throughput.py --device cuda --batch-size 256
    PYTHONPATH=. python benchmarks/train_throughput.py --device cuda --batch-size 256 --models BestModel --compile

Data: the real subset (../shared/data/tiny-imagenet-200-subset.zip, ./shared/data/..., or
$TINYIMAGENET_SUBSET_ZIP) for the diagnosis when it is there, else generated images; the other
tests use generated images (10 classes): the device paths do not depend on what the pixels show.
The notebooks stay CPU-tested (no jupyter on the GPU machine).
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from test_resume import run_args  # the CPU suite's helpers (tests/ is on sys.path)
from test_train import REPO, _free_port
from tinyimagenet import loop
from tinyimagenet import train as train_mod
from tinyimagenet.checkpoint import read_history_csv
from tinyimagenet.loaders import BatchLoader, load_data
from tinyimagenet.registry import build_model
from tinyimagenet.train import TrainConfig, evaluate, fit, make_optimizer, make_scheduler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA tests: no CUDA GPU here")

SUBSET_NAME = "tiny-imagenet-200-subset.zip"


@pytest.fixture(scope="module")
def gpu() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


def cuda_args(root, out, *extra) -> list[str]:
    """test_resume.run_args (SGD + momentum, weight decay, smoothing, dropout, augmentation; 5 steps
    of 8 images per epoch) on the GPU, with bf16 autocast (the default there)."""
    args = run_args(root, out, *extra)
    args[args.index("--device") + 1] = "cuda"
    return args


@pytest.fixture(scope="module")
def diagnosis_data(synthetic_root, tmp_path_factory) -> tuple[Path, bool]:
    """(root, is_real): the real subset when one is found, else the generated data."""
    candidates = [os.environ.get("TINYIMAGENET_SUBSET_ZIP"), REPO.parent / "shared" / "data" / SUBSET_NAME,
                  REPO / "shared" / "data" / SUBSET_NAME]
    for path in filter(None, candidates):
        if Path(path).is_file():
            parent = tmp_path_factory.mktemp("real")
            with zipfile.ZipFile(path) as zf:
                zf.extractall(parent)
            return parent / "tiny-imagenet-200", True
    return synthetic_root, False


# ---------------------------------------------------------------------------- the diagnosis
@pytest.mark.parametrize("dropout", ["fixed", "legacy"])
def test_quick_diagnosis_on_cuda(diagnosis_data, dropout):
    import quick_diagnosis

    root, real = diagnosis_data
    report = quick_diagnosis.main(["--data-dir", str(root), "--models", "BaselineCNN", "--dropout", dropout,
                                   "--train-per-class", "6", "--val-per-class", "2", "--epochs", "2",
                                   "--device", "cuda", "--no-progress"])
    result = report["models"]["BaselineCNN"]
    assert isinstance(result["passed"], bool)
    if dropout == "legacy" and real:
        # The seed's case: 2 epochs of 6 images per class (200 classes) leave legacy dropout at
        # chance, and its fix is a config change, so the control rerun (the crash) must have run.
        assert not result["passed"] and result.get("controls"), {k: result.get(k) for k in ("learning", "causes")}


def test_fit_places_a_model_built_on_the_cpu(synthetic_root, gpu, tmp_path):
    """The control rerun's situation: the model is built on the CPU and handed to fit, which
    puts it on the run's device before anything reads it; a probe evaluated in `on_epoch_end`
    (the diagnosis's held-out images) runs on the same device."""
    data = load_data(synthetic_root, train_per_class=8, val_per_class=2, progress=False)
    cfg = TrainConfig(recipe="seed", batch_size=16, epochs=1, device="cuda", progress=False,
                      out=str(tmp_path)).resolved()
    assert cfg.device == str(gpu)
    probe = BatchLoader(data.val_images, data.val_targets, 32, train=False, device=cfg.device)
    seen = []

    def on_epoch_end(row, model):
        seen.append({p.device for p in model.parameters()})
        row["probe_acc"] = evaluate(model, probe, amp=True)["top1"]

    history = fit(cfg, data=data, model=build_model("BaselineCNN", num_classes=10), on_epoch_end=on_epoch_end)
    assert seen == [{gpu}] and probe.device == gpu
    assert math.isfinite(history[0]["train_loss"]) and 0 <= history[0]["probe_acc"] <= 100


# ------------------------------------------------------------ the CLI: bf16, compile, Ctrl-C
class RngRecorder(BatchLoader):
    """A training loader that records the CUDA RNG state (dropout's) as each step begins, and can
    deliver a real SIGINT there: a Ctrl-C arriving during step `interrupt_at` = (epoch, step)."""
    log: dict = {}
    interrupt_at = None

    def _batches(self, idx, aug):
        for step, batch in enumerate(super()._batches(idx, aug), start=self.start_step):
            if self.train:
                RngRecorder.log[(self.epoch, step)] = torch.cuda.get_rng_state(self.device)
                if (self.epoch, step) == RngRecorder.interrupt_at:
                    os.kill(os.getpid(), signal.SIGINT)
            yield batch


@pytest.mark.parametrize("compile_flag", [[], ["--compile"]], ids=["eager", "compile"])
def test_cli_ctrl_c_then_resume_continues_the_run(synthetic_root, tmp_path, monkeypatch, compile_flag):
    monkeypatch.setattr(train_mod, "BatchLoader", RngRecorder)
    RngRecorder.log, RngRecorder.interrupt_at = {}, None
    reference = train_mod.main(cuda_args(synthetic_root, tmp_path / "ref", "--epochs", "2", *compile_flag))
    ref_log = dict(RngRecorder.log)
    assert len(ref_log) == 10  # 2 epochs of 5 steps

    RngRecorder.log, RngRecorder.interrupt_at = {}, (0, 2)
    out = tmp_path / "split"
    assert train_mod.main(cuda_args(synthetic_root, out, "--epochs", "2", *compile_flag)) == []
    ck = torch.load(out / "last.pt", weights_only=True)
    assert (ck["epoch"], ck["step"]) == (0, 3) and ck["config"]["device"].startswith("cuda:")
    assert ck["rng"] is not None and ck["rng"]["cuda"] is not None

    RngRecorder.log, RngRecorder.interrupt_at = {}, None
    resumed = train_mod.main(cuda_args(synthetic_root, out, "--epochs", "2", "--resume", *compile_flag))
    assert sorted(RngRecorder.log) == [(0, 3), (0, 4)] + [(1, k) for k in range(5)]
    for key, state in RngRecorder.log.items():  # the same dropout masks, step for step
        assert torch.equal(state, ref_log[key]), f"dropout RNG differs at (epoch, step) {key}"
    assert [r["epoch"] for r in resumed] == [1, 2]
    for a, b in zip(resumed, reference):  # atomics in CUDA kernels: close, not bit-identical
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-2 * abs(b["train_loss"]), (a, b)
    got, want = (torch.load(p / "last.pt", weights_only=True)["model"] for p in (out, tmp_path / "ref"))
    for k in want:
        if want[k].is_floating_point():
            assert (got[k] - want[k]).abs().max() <= 1e-2 * want[k].abs().max() + 1e-4, k


def test_torchrun_one_process_on_cuda(synthetic_root, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={_free_port()}",
           "-m", "tinyimagenet.train", *cuda_args(synthetic_root, out, "--epochs", "2")]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["epoch"] for r in read_history_csv(out / "history.csv")] == [1, 2]
    assert torch.load(out / "last.pt", weights_only=True)["config"]["device"] == "cuda:0"


# ------------------------------------------------------------------- no host sync per step
@pytest.mark.parametrize("model_name,recipe", [("BaselineCNN", "seed"), ("ResidualCNN", "strong")])
def test_an_epoch_syncs_only_every_sync_every_steps(synthetic_root, gpu, monkeypatch, model_name, recipe):
    """Adam (seed) and SGD + cosine + label smoothing (strong); a BN model too. 400 images in
    batches of 48: 8 full steps and a last one of 16; sync_every 3 -> sync points after steps 3,
    6, 9 plus the epoch's set-up; evaluation syncs twice (its targets check, its result)."""
    data = load_data(synthetic_root, progress=False)
    cfg = TrainConfig(model=model_name, recipe=recipe, batch_size=48, epochs=2, device="cuda", sync_every=3,
                      progress=False).resolved()
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=data.num_classes).to(gpu, memory_format=torch.channels_last)
    loader = BatchLoader(data.train_images, data.train_targets, 48, train=True, device=cfg.device)
    val = BatchLoader(data.val_images, data.val_targets, 64, train=False, device=cfg.device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(loader))
    loop.train_one_epoch(model, loader, optimizer, scheduler, epoch=0, cfg=cfg)  # warm-up: every shape once
    evaluate(model, val, amp=True)

    entries, real_allowed = [], loop.host_sync_allowed

    @contextlib.contextmanager
    def counted(device):
        entries.append(device)
        with real_allowed(device):
            yield

    monkeypatch.setattr(loop, "host_sync_allowed", counted)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):  # the mode is on and does catch syncs
            torch.zeros(1, device=gpu).item()
        position = loop.train_one_epoch(model, loader, optimizer, scheduler, epoch=1, cfg=cfg)
        metrics = evaluate(model, val, amp=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(loader) == 9 and len(entries) == 1 + 3 + 2, entries
    assert position["step"] == 9 and position["sums"][2].item() == 400
    assert metrics["n"] == len(data.val_targets) and math.isfinite(metrics["loss"])


# ------------------------------------------------------------------------------- benchmark
def test_train_throughput_benchmark_on_cuda():
    """Small settings: that it runs and reports loop/step; the real numbers come from the
    commands in this module's docstring (the issue's target, >= 0.85, is judged there)."""
    cmd = [sys.executable, "benchmarks/train_throughput.py", "--device", "cuda", "--models", "BaselineCNN",
           "ResidualCNN", "--batch-size", "64", "--repeats", "2", "--seconds", "0.2", "--epoch-images", "3000",
           "--epoch-seconds", "1", "--matmul-size", "2048"]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(proc.stdout)
    ratio = [line for line in proc.stdout.splitlines() if line.startswith("loop_vs_step_min:")]
    assert ratio and float(ratio[0].split()[1]) > 0, proc.stdout
