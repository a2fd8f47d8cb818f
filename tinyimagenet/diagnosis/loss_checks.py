"""Faults of the user's loss, measured in milliseconds on synthetic logits before any training.

    from tinyimagenet.diagnosis.loss_checks import check_loss
    check = check_loss(my_loss, num_classes=200)      # a measure.Check named "loss_fn"
    check.status == "fail" and check.data["fault"]     # "loss_saturates" | "loss_ignores_labels" | "loss_unbounded"

The loss is called on logits built without randomness: for a batch whose label i is i mod C, the
true class gets a margin M over all others, for M = 0, 1, 2, .., 128 (no RNG is consumed, so the
user's run is left as it was). What a sound classification loss does there, and each fault:
- `loss_ignores_labels`: the loss at margin 4 is the same with labels shifted by one class (wrong
  for every row), e.g. `label_smoothing=1.0`: the labels never reach the loss.
- `loss_unbounded`: the loss keeps falling with the margin, below zero (NLL on raw logits: -M).
- `loss_saturates`: even at the best margin the loss stays above half of ln C, e.g. a softmax
  applied before cross-entropy: log-softmax of probabilities is squeezed into [ln C - 1, ln C]
  whatever the model does (the seed's "5.30 -> 5.29"). The softmax call is named (file:line).
Checked in this order; the first that holds is the fault. Used by `diagnose(loss_fn=...)` and by
the watcher (tinyimagenet.watch), which tests the loss call it saw with the call's own options.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import thresholds as T
from .measure import Check
from .probes import call_site

SOFTMAX_FUNCS = {F.softmax, torch.softmax, torch.Tensor.softmax, F.sigmoid, torch.sigmoid, torch.Tensor.sigmoid}
# The faults found here, their suggestions and README rows are entries of the causes table
# (causes.py, kind "loss"); the thresholds are in thresholds.py (LOSS_*).


class _CallRecorder(TorchFunctionMode):
    """Records where softmax-like calls happen inside the loss (the site to name)."""

    def __init__(self):
        super().__init__()
        self.sites: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SOFTMAX_FUNCS:
            site = f"{call_site()} ({getattr(func, '__name__', 'softmax')})"
            if site not in self.sites:
                self.sites.append(site)
        return func(*args, **(kwargs or {}))


def margin_logits(num_classes: int, margin: float, batch: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits with `margin` on the true class (label i mod C), zeros elsewhere; no RNG."""
    y = torch.arange(batch, device=device) % num_classes
    logits = torch.zeros(batch, num_classes, device=device)
    logits[torch.arange(batch, device=device), y] = margin
    return logits, y


def _value(loss_fn, logits, y) -> float:
    out = loss_fn(logits, y)
    out = out.float().mean() if isinstance(out, torch.Tensor) else torch.tensor(float(out))
    return float(out)


def check_loss(loss_fn, num_classes: int, device=None, name: str | None = None) -> Check:
    """The loss on margin logits (see the module docstring); status "fail" names the fault in data["fault"]."""
    ln_c = math.log(num_classes)
    batch = max(2 * num_classes, 32)
    label = name or getattr(loss_fn, "__qualname__", None) or type(loss_fn).__name__
    recorder = _CallRecorder()
    try:
        with torch.no_grad(), recorder, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a shape warning from a loss that wants other inputs
            curve = [_value(loss_fn, *margin_logits(num_classes, m, batch, device)) for m in T.LOSS_MARGINS]
            logits, y = margin_logits(num_classes, T.LOSS_LABEL_MARGIN, batch, device)
            right, wrong = _value(loss_fn, logits, y), _value(loss_fn, logits, (y + 1) % num_classes)
    except Exception as err:  # a loss that wants other inputs: nothing measured, nothing claimed
        return Check("loss_fn", "info", f"loss {label} could not be called on (logits, class indices): "
                     f"{type(err).__name__}: {err}", {"fault": None, "where": []})
    where = list(recorder.sites)
    text = (f"loss {label} on logits with margin M on the true class, M = 0..128: "
            + " -> ".join(f"{v:.3g}" for v in curve) + f" (ln C = {ln_c:.3f})")
    data = {"fault": None, "where": where, "curve": curve, "right": right, "wrong": wrong, "ln_c": ln_c}
    if not all(math.isfinite(v) for v in curve + [right, wrong]):
        return Check("loss_fn", "info", text + ": non-finite values", data)
    if abs(wrong - right) <= T.LOSS_IGNORES_TOL * max(1.0, abs(right)):
        data["fault"] = "loss_ignores_labels"
        detail = (f"loss {label} is {right:.4f} with the right labels and {wrong:.4f} with every label wrong "
                  f"(margin {T.LOSS_LABEL_MARGIN:g}): the labels do not reach the loss")
    elif curve[-1] < min(0.0, curve[-2]) - 1.0:
        data["fault"] = "loss_unbounded"
        detail = text + ": it falls without bound as the margin grows (no floor at 0)"
    elif min(curve) > T.LOSS_SATURATED * ln_c:
        data["fault"] = "loss_saturates"
        detail = (text + f": even near-perfect logits leave the loss at {min(curve):.3f} > "
                  f"{T.LOSS_SATURATED:g} ln C, so "
                  "the gradient barely rewards being right" + (f"; softmax inside the loss at {', '.join(where)}"
                                                              if where else ""))
    else:
        return Check("loss_fn", "pass", text, data)
    return Check("loss_fn", "fail", detail, data)
