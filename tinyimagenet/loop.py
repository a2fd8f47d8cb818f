"""One epoch of training, and evaluation: the hot loop under every run (train.fit, the diagnosis,
the benchmarks).

    from tinyimagenet.loop import train_one_epoch, evaluate     # also re-exported by train.py
    position = train_one_epoch(model, loader, optimizer, scheduler, epoch=0, cfg=cfg)
    metrics = evaluate(model, val_loader, amp=True)             # {"loss", "top1", "top5", "n"}

Both run on the device their loader was given (a model elsewhere is a clear error, not a CUDA
traceback). On CUDA they never wait on the GPU except at marked points (runtime.host_sync_allowed):
the epoch's set-up, every `cfg.sync_every` steps, and the end. Sums and counts stay on the
device; the host adds a batch's size as a plain number, never as a new tensor (a host->device
copy waits for the GPU). Dropout's RNG is seeded once per epoch from (seed, epoch, rank), and a
resumed epoch restores the state saved with its checkpoint: no reseed (host work) per step.
tests/test_train.py checks exact resume on CPU; tests/test_cuda.py checks the sync points on a GPU.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from . import distributed
from .data import require_labels
from .runtime import StepBoundaryInterrupt, host_sync_allowed, same_device, set_rng_state


class NonFiniteLossError(RuntimeError):
    def __init__(self, epoch: int, step: int, value: float):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(f"Loss became {value} at epoch {epoch}, step {step}: training stopped. The "
                         "last checkpoint is the previous epoch's. Lower the lr or check the inputs.")


def _rng_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """Dropout's seed for an epoch started at `step` (0, or a resume point with no saved state)."""
    return (seed * 1_000_003 + epoch * 100_003 + step * 101 + rank) % (2**63)


def _run_device(device, loader, model) -> torch.device:
    """The device the loop runs on: the one the loader was given (`device`, when passed, must
    agree). A model elsewhere is a placement bug upstream: say so, not a CUDA traceback later."""
    if device is not None and not same_device(device, loader.device):
        raise ValueError(f"device {device} was passed but the loader is on {loader.device}")
    device = loader.device
    first = next(model.parameters(), None)
    if first is not None and first.device != device:
        raise ValueError(f"the model is on {first.device} but its data is on {device}: place the model on the "
                         "run's device first (TrainConfig.resolved().device; fit does this)")
    return device


# ---------------------------------------------------------------------- one epoch, and evaluation
def train_one_epoch(model, loader, optimizer, scheduler, *, epoch: int, cfg,
                    device: torch.device | None = None, rank: int = 0, position: dict | None = None,
                    bar=None, interrupt: StepBoundaryInterrupt | None = None) -> dict:
    """Train one epoch over `loader`; returns {"step": steps done, "sums": [loss*n, correct, n], "rng"}.

    `position` is that same dict, updated after every step, so a caller interrupted mid-epoch
    (Ctrl-C) knows where it stopped; passing a saved one resumes there ("rng": the dropout RNG
    state saved with it, see runtime.rng_state). Counts and sums stay on the device; the host
    reads them, and checks the losses, only every `cfg.sync_every` steps (and at the epoch's
    end): a non-finite loss raises NonFiniteLossError there, naming its step, on every rank at
    once under DDP (a rank that stopped alone would leave the others waiting in the next
    gradient all-reduce forever). `interrupt.check()` runs after each complete step.
    """
    device = _run_device(device, loader, model)
    model.train()
    amp = cfg.amp and device.type == "cuda"
    sync_every = cfg.sync_every or (1 if device.type == "cpu" else 20)
    position = {"step": 0, "sums": None, "rng": None} if position is None else position
    start_step = position["step"]
    with host_sync_allowed(device):  # the epoch's set-up: its host->device copies happen here
        sums = position.get("sums")
        totals = position["sums"] = (torch.zeros(3, dtype=torch.float64) if sums is None else sums).to(
            device=device, dtype=torch.float64)
        rng = position.get("rng")
        if start_step > 0 and rng is not None and (device.type != "cuda" or rng.get("cuda") is not None):
            set_rng_state(rng, device)  # mid-epoch resume: the masks it would have drawn
        else:  # a new epoch, or a resume without this device's state (DDP, saved on the CPU)
            torch.manual_seed(_rng_seed(cfg.seed, epoch, start_step, rank))
        position["rng"] = None  # applied; a later checkpoint takes the live state (fit)
        loader.set_epoch(epoch, start_step)
        batches = iter(loader)
    steps = len(loader)
    losses, last_sync = [], start_step
    t0, seen = time.perf_counter(), 0
    for step, (x, y) in enumerate(batches, start=start_step):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        # Device-side bookkeeping only: a count known on the host is added as a plain number
        # (a kernel argument), never as a new tensor (torch.tensor(..., device=cuda) is a copy
        # that waits for the GPU).
        loss = loss.detach()
        losses.append(loss)
        n = y.shape[0]
        totals[:2] += torch.stack([loss.double() * n, (logits.detach().argmax(1) == y).sum().double()])
        totals[2] += n
        seen += n
        if (step + 1) % sync_every == 0 or step + 1 == steps:
            with host_sync_allowed(device):
                _check_losses(losses, epoch, last_sync)
                if bar is not None:
                    t = totals.tolist()
                    bar.set_postfix(loss=f"{t[0] / t[2]:.3f}", acc=f"{100 * t[1] / t[2]:.1f}%",
                                    img_s=f"{seen / (time.perf_counter() - t0):.0f}")
                    bar.update(step + 1 - last_sync)
            losses.clear()
            last_sync = step + 1
        position["step"] = step + 1
        if interrupt is not None:
            interrupt.check()  # a Ctrl-C during the step takes effect now, with `position` exact
    return position


def _check_losses(losses: list, epoch: int, first_step: int) -> None:
    """The sync point: raise NonFiniteLossError if any rank saw a non-finite loss in the window
    of steps `first_step`... (one host read, summed over ranks so that all stop together)."""
    window = torch.stack(losses)
    bad_here = ~torch.isfinite(window)
    if bool(distributed.all_reduce_sum(bad_here.sum().double().reshape(1)).item()):
        # This rank's first bad step, or (when only other ranks saw one) the window's end.
        bad = int(bad_here.nonzero()[0]) if bool(bad_here.any()) else len(window) - 1
        raise NonFiniteLossError(epoch + 1, first_step + bad + 1, float(window[bad]))


@torch.no_grad()
def evaluate(model, loader, device: torch.device | str | None = None, amp: bool = False,
             split: str = "val") -> dict:
    """Loss (plain cross-entropy), top-1 and top-5 accuracy in percent, over all ranks' shards.

    Runs on the loader's device (`device`, if given, must be the same); one host read at the end.
    Refuses a split without labels (the test split) rather than scoring against class 0.
    """
    device = _run_device(device, loader, model)
    with host_sync_allowed(device):  # reads the targets once
        require_labels(loader.targets, split)
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    loader.set_epoch(0)
    for x, y in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = model(x)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        sums[:3] += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                                 (top[:, 0] == y).sum().double(), (top == y[:, None]).any(1).sum().double()])
        sums[3] += y.shape[0]
    with host_sync_allowed(device):
        loss, top1, top5, n = distributed.all_reduce_sum(sums).tolist()
    return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n, "n": int(n)}
