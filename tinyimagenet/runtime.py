"""Process-level helpers for training runs: the device, Ctrl-C at a step boundary, CPU tuning.

    from tinyimagenet.runtime import pick_device, StepBoundaryInterrupt, keep_freed_memory

Used by the loop (train.py) and by the faces (quick_diagnosis.py, `python -m tinyimagenet.train`,
benchmarks/). Nothing here changes the process on import: the faces opt in.
"""
from __future__ import annotations

import ctypes
import signal
import threading

import torch


def pick_device(name: str) -> torch.device:
    """"auto" (CUDA when there is one), "cpu", "cuda", "cuda:1"; a clear error when CUDA is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu.")
    return torch.device(name)


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
