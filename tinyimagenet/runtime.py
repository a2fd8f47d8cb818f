"""Process-level helpers for training runs: the device, Ctrl-C at a step boundary, host syncs, the
RNG state of dropout, CPU and GPU tuning.

    from tinyimagenet.runtime import pick_device, StepBoundaryInterrupt, keep_freed_memory

Used by the loop (train.py) and by the faces (quick_diagnosis.py, `python -m tinyimagenet.train`,
benchmarks/). Nothing here changes the process on import: the faces opt in.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading

import torch


def pick_device(name: str | torch.device) -> torch.device:
    """The one place a run's device is decided: "auto" (CUDA when there is one), "cpu", "cuda", "cuda:1".

    A CUDA device always comes back with its index ("cuda" -> "cuda:0", or under torchrun the
    process's own GPU, cuda:$LOCAL_RANK), so that every comparison of devices downstream is exact:
    tensors report "cuda:0", and torch.device("cuda") != torch.device("cuda:0"). Idempotent, so
    `TrainConfig.resolved()` can store the answer and everything else reads it from the config.
    A clear ValueError when CUDA is asked for and absent, or the index does not exist.
    """
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N): {err}") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu.")
    index = device.index
    if index is None:  # torchrun sets LOCAL_RANK: one GPU per process on this machine
        index = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: cuda:{index} does not exist, this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s).")
    return torch.device("cuda", index)


def same_device(a: str | torch.device, b: str | torch.device) -> bool:
    """a and b name the same device; a missing index ("cuda") matches any index of its type."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


@contextlib.contextmanager
def host_sync_allowed(device: torch.device):
    """Marks a deliberate host<->device synchronization of the training loop.

    The loop runs on CUDA without any host round-trip except inside these blocks (once per epoch
    for its set-up, once every `sync_every` steps for the loss check). tests/test_cuda.py holds
    the loop to that: it runs an epoch under torch.cuda.set_sync_debug_mode("error"), which
    raises on any synchronizing call, and this block lifts the mode for its own duration only.
    On the CPU (or when no debug mode is set) it costs one attribute check.
    """
    mode = torch.cuda.get_sync_debug_mode() if torch.device(device).type == "cuda" else 0
    if mode:
        torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        if mode:
            torch.cuda.set_sync_debug_mode(mode)


def rng_state(device: torch.device) -> dict:
    """The global RNG state dropout draws from (CPU, plus the CUDA device's), as CPU tensors.

    Why: nn.Dropout takes no generator, so its masks come from the global RNG. The loop seeds it
    once per epoch from (seed, epoch, rank); a mid-epoch checkpoint stores this state and the
    resumed run restores it (`set_rng_state`), so the remaining steps draw the masks they would
    have drawn uninterrupted, without a reseed (a host operation) per step. Host-only: no sync.
    """
    device = torch.device(device)
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore `rng_state(device)`'s result (after torch.load(map_location=cuda) too: the RNG
    setters want CPU byte tensors, so they are moved back first)."""
    device = torch.device(device)
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


@contextlib.contextmanager
def preserved_rng(device="cpu"):
    """Every global RNG the code inside can draw from, as found on entry, restored on exit: torch's
    CPU, the CUDA RNG of `device` when it is a GPU (`rng_state(device)`), Python's `random` and
    NumPy's. For library code that seeds (the diagnosis) inside a user's process, which must be left
    as it was. Only `device`'s CUDA state: reading every GPU's (get_rng_state_all) would start a CUDA
    context on every visible GPU, even for a run on the CPU."""
    import random

    import numpy as np

    device = torch.device(device)
    saved = rng_state(device)
    host = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        set_rng_state(saved, device)
        random.setstate(host[0])
        np.random.set_state(host[1])


class StepBoundaryInterrupt:
    """Inside this context, Ctrl-C stops the run between training steps, never inside one.

    Why: a KeyboardInterrupt raised in the middle of `optimizer.step()` leaves some parameters
    updated and others not, and the mid-epoch checkpoint saved on Ctrl-C would then resume from
    weights no uninterrupted run ever had. Here the first SIGINT only sets `requested`; the loop
    calls `check()` after each step (and after each epoch's checkpoint), which raises
    KeyboardInterrupt there. A second Ctrl-C raises at once, as an escape hatch from a hang.
    Signal handlers can only be installed from the main thread; elsewhere this does nothing.
    Jupyter's "interrupt kernel" sends the same SIGINT, so notebooks get the same behaviour.
    """

    def __init__(self):
        self.requested = False
        self._installed = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            self.requested = False
            raise KeyboardInterrupt

    def __enter__(self) -> "StepBoundaryInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc) -> bool:
        if self._installed:
            # A handler installed from C reads back as None: restore Python's default then.
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
            self._installed = False
        return False


def keep_freed_memory() -> bool:
    """Stop glibc from mmap-ing (and unmapping on free) every large tensor; True if applied.

    PyTorch's CPU allocator is plain malloc/free, and glibc serves blocks over its mmap threshold
    (at most 32 MB) with fresh mmap()s: every step then page-faults and zero-fills its big
    activations again (BaselineCNN at batch 64: 67 MB per conv1-sized tensor). Keeping freed memory
    in the heap (no mmap, no trimming) lets the next step reuse it: +20-30% images/s on the 2-core
    CPU box (benchmarks/train_throughput.py). The price: the process does not give freed memory
    back to the OS until it exits, so the faces apply it to CPU training runs only.
    Same as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=... in the environment, but settable now.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (macOS, musl): leave the allocator alone
        return False


def fused_optimizer_kwargs(device: torch.device) -> dict:
    """{"fused": True} where PyTorch has a fused Adam/SGD kernel for this device (CPU and CUDA).

    One pass over each parameter instead of several: +0-10% images/s for BaselineCNN on CPU, whose
    8.4M-weight Linear dominates the optimizer's work (benchmarks/train_throughput.py).
    """
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


def tune_for(device: torch.device) -> None:
    """What a training face (`python -m tinyimagenet.train`) sets for its device, process-wide.

    CPU: keep freed memory in the heap (above). CUDA: cudnn.benchmark, which times the
    convolution algorithms once per input shape and keeps the fastest; training shapes are fixed
    (the full batch and the epoch's last, smaller one), so the search is paid once per shape.
    """
    if torch.device(device).type == "cpu":
        keep_freed_memory()
    elif torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
