"""Can the model fit one small fixed batch? And if not, which single change makes it fit?

A healthy network memorizes a handful of images within a few dozen steps (Karpathy's "overfit one
batch"). When it cannot, we rerun the same experiment from the same initial weights with one thing
changed: dropout off, the learning rate up, the learning rate down, inputs normalized. The change
that makes the batch fit is the evidence for a cause; no rule of thumb is needed.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..train import TrainConfig, make_optimizer

FIT_TARGET = 0.1  # "fits" = train-mode loss below 10% of ln(C) (plain cross-entropy)


@dataclass
class FitRun:
    name: str                  # "base", "no_dropout", "lr_x10", "lr_div10", "normalized", ...
    lr: float                  # learning rate used
    losses: list = field(default_factory=list)  # train-mode loss per step
    target: float = 0.0        # the loss that counts as fitted
    nonfinite: bool = False    # the loss became NaN/inf

    @property
    def initial(self) -> float:
        return self.losses[0] if self.losses else float("nan")

    @property
    def final(self) -> float:
        """Mean of the last 3 losses (dropout makes single steps noisy); inf when it diverged."""
        if self.nonfinite or not self.losses:
            return float("inf")
        return sum(self.losses[-3:]) / len(self.losses[-3:])

    @property
    def fitted(self) -> bool:
        return not self.nonfinite and self.final < self.target

    @property
    def diverged(self) -> bool:
        return self.nonfinite or self.final > 1.1 * self.initial

    @property
    def progress(self) -> float:
        """Fraction of the initial loss removed (1 = all of it, <0 = got worse)."""
        if self.nonfinite:
            return -math.inf
        return 1.0 - self.final / self.initial if self.initial > 0 else 0.0

    def describe(self) -> str:
        end = "non-finite" if self.nonfinite else f"{self.final:.3f}"
        verdict = "fits" if self.fitted else "diverges" if self.diverged else "does not fit"
        return f"{self.name} (lr {self.lr:g}): loss {self.initial:.3f} -> {end} in {len(self.losses)} steps, {verdict}"

    def to_json(self) -> dict:
        return {"name": self.name, "lr": self.lr, "losses": [round(v, 4) for v in self.losses],
                "fitted": self.fitted, "diverged": self.diverged, "nonfinite": self.nonfinite}


def fit_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, *, name: str,
              lr: float, steps: int, num_classes: int, no_dropout: bool = False) -> FitRun:
    """Train a deep copy of `model` on (x, y) in train mode with the recipe's optimizer at `lr`.

    Plain cross-entropy (label smoothing would put the floor above the target) and no schedule:
    the question is only whether optimization can drive the loss to ~0. Stops early once fitted.
    """
    model = copy.deepcopy(model)
    if no_dropout:
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.p = 0.0
    model.train()
    opt = make_optimizer(model, dataclasses.replace(cfg, lr=lr))
    run = FitRun(name, lr, target=FIT_TARGET * math.log(num_classes))
    for step in range(steps):
        torch.manual_seed(1_000 + step)  # same dropout masks for every intervention
        loss = F.cross_entropy(model(x).float(), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            run.nonfinite = True
            break
        run.losses.append(value)
        if len(run.losses) >= 3 and run.final < run.target:
            break
        if value > 1e3 * max(1.0, run.losses[0]):  # exploding: no point going on
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return run


def run_interventions(model, x, y, cfg: TrainConfig, base: FitRun, *, steps: int, num_classes: int,
                      has_dropout: bool, fix_inputs=None) -> list[FitRun]:
    """The controlled experiments, run only when `base` failed to fit.

    The lr is moved by 10x at a time, up to 1000x, until the batch fits or the run diverges, so a
    learning rate that is off by orders of magnitude (1e-7, 1.0) is still found. `fix_inputs`, when
    given, maps x to properly normalized inputs (run only if the input check failed).
    """
    runs = []

    def go(name, lr, inputs=x, **kw):
        r = fit_batch(model, inputs, y, cfg, name=name, lr=lr, steps=steps, num_classes=num_classes, **kw)
        runs.append(r)
        return r

    if has_dropout:
        go("no_dropout", cfg.lr, no_dropout=True)
    if fix_inputs is not None:
        go("normalized", cfg.lr, inputs=fix_inputs(x))
    raised_fits = False
    if not base.diverged:
        for k in (1, 2, 3):
            r = go(f"lr_x{10 ** k}", cfg.lr * 10 ** k)
            raised_fits = r.fitted
            if r.fitted or r.diverged or r.progress > base.progress + 0.3:
                break
    if base.diverged or not raised_fits:  # a lower lr only matters if raising it did not help
        for k in (1, 2, 3):
            r = go(f"lr_div{10 ** k}", cfg.lr / 10 ** k)
            if r.fitted or not base.diverged or r.progress < 0.05 and not r.diverged:
                break
    return runs
