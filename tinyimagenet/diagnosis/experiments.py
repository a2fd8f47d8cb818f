"""The diagnosis's own training loop, and the one-change experiments it runs with it.

    run = fit_batch(subject, Change("no_dropout", no_dropout=True), x, y, steps=50, device=dev)
    result = train_short(subject, Change("base"), epochs=5, device=dev)

Every experiment builds a fresh model from `subject.make_model()` (same initial weights), its own
optimizer from `subject.make_optimizer`, and changes exactly one thing, from outside the user's
code: dropout off (every dropout call, module or functional, becomes the identity), dropout off
in eval mode only, the lr scaled, weight decay at 0, inputs standardized, the log taken of
probability outputs, all parameters trainable, batches shuffled. The difference against the
base run is the evidence. Scope: bugs inside a user's own training loop are out of reach here,
because this loop replaces it.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from . import thresholds as T
from .probes import ForwardProbe
from .subject import Subject


@dataclass(frozen=True)
class Change:
    name: str = "base"                    # shown in the report: "base", "no_dropout", "lr_x10", ...
    lr_factor: float = 1.0                # every param group's lr times this
    no_dropout: bool = False              # all dropout calls are the identity
    eval_dropout_off: bool = False        # dropout calls are the identity while the model is in eval mode
    standardize: tuple | None = None      # ((mean,...), (std,...)) per input channel, applied before the model
    log_outputs: bool = False             # train on log(outputs): for models that output probabilities
    weight_decay_zero: bool = False       # every param group's weight_decay set to 0
    unfreeze: bool = False                # requires_grad=True on every parameter
    shuffle: bool = False                 # training batches shuffled every epoch

    def describe(self) -> str:
        parts = {"lr_factor": f"lr x{self.lr_factor:.3g}", "no_dropout": "every dropout switched off",
                 "eval_dropout_off": "dropout switched off in eval mode", "standardize": "inputs standardized",
                 "log_outputs": "log of the outputs", "weight_decay_zero": "weight decay 0",
                 "unfreeze": "every parameter trainable", "shuffle": "batches shuffled"}
        default = Change()
        on = [text for key, text in parts.items() if getattr(self, key) != getattr(default, key)]
        return ", ".join(on) or "as given"


class Standardize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class LogOutputs(nn.Module):
    """log(p) of a model that outputs probabilities: cross-entropy then sees log-probabilities."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).float().clamp_min(1e-12).log()


def build(subject: Subject, change: Change, device) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = subject.make_model()
    if change.unfreeze:
        for p in model.parameters():
            p.requires_grad_(True)
    if change.standardize is not None:
        model = nn.Sequential(Standardize(*change.standardize), model)
    if change.log_outputs:
        model = LogOutputs(model)
    model = model.to(device)
    opt = subject.make_optimizer(model)
    for group in opt.param_groups:
        group["lr"] = group["lr"] * change.lr_factor
        if change.weight_decay_zero and "weight_decay" in group:
            group["weight_decay"] = 0.0
    return model, opt


def forward_context(model, change: Change, record: bool = False):
    if not (change.no_dropout or change.eval_dropout_off or record):
        return nullcontext(None)
    return ForwardProbe(model, drop_dropout=change.no_dropout, drop_eval_dropout=change.eval_dropout_off,
                        record=record)


def lr_of(opt) -> float:
    return float(opt.param_groups[0]["lr"])


# ------------------------------------------------------------------------------ fixed-batch fit
FIT_TARGET = T.FIT_TARGET  # kept importable under its old name


@dataclass
class FitRun:
    name: str
    lr: float
    losses: list = field(default_factory=list)
    target: float = 0.0
    nonfinite: bool = False
    frozen: dict = field(default_factory=dict)  # parameter name -> why it never changed (base run only)
    frozen_share: float = 0.0  # share of all parameter elements that never changed (gradient-exactly-zero excluded)

    @property
    def initial(self) -> float:
        return self.losses[0] if self.losses else float("nan")

    @property
    def final(self) -> float:
        """Mean of the last 3 losses (dropout makes single steps noisy); inf once non-finite."""
        return float("inf") if self.nonfinite or not self.losses else sum(self.losses[-3:]) / len(self.losses[-3:])

    @property
    def fitted(self) -> bool:
        return self.final < self.target

    @property
    def diverged(self) -> bool:
        return self.nonfinite or self.final > T.FIT_DIVERGED * self.initial

    def describe(self) -> str:
        end = "non-finite" if self.nonfinite else f"{self.final:.3f}"
        verdict = "fits" if self.fitted else "diverges" if self.diverged else "does not fit"
        return f"{self.name} (lr {self.lr:.3g}): loss {self.initial:.3f} -> {end} in {len(self.losses)} steps, {verdict}"

    def to_json(self) -> dict:
        return {"name": self.name, "lr": self.lr, "losses": [round(v, 4) for v in self.losses],
                "fitted": self.fitted, "diverged": self.diverged, "nonfinite": self.nonfinite}


def _frozen(model: nn.Module, opt, before: dict) -> dict:
    """Parameters that did not change during the fit, and why (never: they just moved little)."""
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    out = {}
    for name, p in model.named_parameters():
        if name in before and torch.equal(before[name], p.detach()):
            out[name] = ("requires_grad=False" if not p.requires_grad else
                         "not in the optimizer" if id(p) not in in_opt else
                         "no gradient reaches it (a detach, or unused)" if p.grad is None else
                         "gradient exactly zero")
    return out


def fit_batch(subject: Subject, change: Change, x, y, *, steps: int, device, num_classes: int) -> FitRun:
    """Train a fresh model on one fixed batch in train mode; stops early once fitted."""
    model, opt = build(subject, change, device)
    model.train()
    run = FitRun(change.name, lr_of(opt), target=FIT_TARGET * math.log(num_classes))
    before = {n: p.detach().clone() for n, p in model.named_parameters()} if change.name == "base" else None
    for step in range(steps):
        torch.manual_seed(1_000 + step)  # the same dropout masks in every experiment
        with forward_context(model, change):
            loss = subject.loss_fn(model(x).float(), y)
        value = float(loss.detach())  # a host sync per step, on purpose: <= 50 steps, each may stop the fit
        if not math.isfinite(value):
            run.nonfinite = True
            break
        run.losses.append(value)
        if len(run.losses) >= 3 and run.final < run.target:
            break
        if value > T.FIT_EXPLODED * max(1.0, run.losses[0]):  # exploding: no point going on
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if before is not None and len(run.losses) >= 3:  # "never changed" needs a few updates to mean anything
        run.frozen = _frozen(model, opt, before)
        sizes = dict((n, p.numel()) for n, p in model.named_parameters())
        stuck = sum(sizes[n] for n, why in run.frozen.items() if "zero" not in why)
        run.frozen_share = stuck / max(1, sum(sizes.values()))
    return run


# ------------------------------------------------------------------------------ short training
@dataclass
class RunResult:
    change: Change
    history: list = field(default_factory=list)      # per epoch: train_loss, train_acc, val_acc, probe_acc, ...
    nonfinite: tuple | None = None                   # (epoch, step, value)
    val_preds: torch.Tensor | None = None            # last epoch's predictions (CPU), for the tests
    probe_preds: torch.Tensor | None = None
    grad_rows: list = field(default_factory=list)    # per sampled step: {"step", "layer", "grad_norm", "weight_norm"}
    dead: dict = field(default_factory=dict)         # ReLU site -> share of units never active, end of run
    input_dependence: float = float("nan")           # share of the logits' variation due to the input, end of run
    loss_trace: list = field(default_factory=list)  # mean train loss per sync window, in order (the last may be inf)
    val_losses: torch.Tensor | None = None          # last epoch's per-image val cross-entropy (CPU)
    grad_every: int = 0                             # gradient norms were sampled every this many steps

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


@torch.no_grad()
def predict(model, loader, change: Change, amp: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(predictions on CPU, logits of the first batch, per-image cross-entropy on CPU) in eval mode."""
    model.eval()
    loader.set_epoch(0)
    preds, first, losses = [], None, []
    with forward_context(model, change):
        for x, y in loader:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x).float()
            preds.append(logits.argmax(1))
            losses.append(nn.functional.cross_entropy(logits, y, reduction="none"))  # stays on the device
            first = logits if first is None else first
    return torch.cat(preds).cpu(), first, (torch.cat(losses).cpu() if losses else torch.zeros(0))


def input_dependence(logits: torch.Tensor) -> float:
    """Share of the logits' variation that comes from the input: 0 when the outputs ignore it.

    Std across images of the row-centred logits (softmax ignores a per-row shift), over that plus
    the std across classes of the mean logits (the class prior a bias alone can learn). A ratio,
    because an absolute threshold flagged a healthy BN-free model whose logits are small early on.
    """
    if len(logits) < 2:
        return float("nan")
    centered = logits - logits.mean(1, keepdim=True)
    across_inputs, across_classes = float(centered.std(0).mean()), float(centered.mean(0).std())
    return across_inputs / (across_inputs + across_classes + 1e-12)


def train_short(subject: Subject, change: Change, *, epochs: int, device, amp: bool = False,
                grad_every: int | None = None, sync_every: int = T.SYNC_EVERY, schedule=None, progress=None) -> RunResult:
    """`epochs` epochs of training with held-out probe and val predictions after each epoch.

    Losses and counts stay on the device between syncs (every `sync_every` steps): a non-finite
    loss stops the run, naming the epoch and step. Per-layer gradient norms are sampled every
    `grad_every` steps (the vanishing/exploding evidence comes from the run, not from init); by
    default every GRAD_EVERY steps, more often when that would give fewer than GRAD_SAMPLES samples
    (200 classes x 10 images in batches of 64 is 31 steps an epoch: every 10th gave 4 samples).
    """
    train, probe, val = subject.loaders(True if change.shuffle else None)
    model, opt = build(subject, change, device)
    scheduler = schedule(opt, len(train)) if schedule is not None else None
    if grad_every is None:
        grad_every = max(1, min(T.GRAD_EVERY, len(train) * epochs // T.GRAD_SAMPLES))
    result = RunResult(change, grad_every=grad_every)
    amp = amp and torch.device(device).type == "cuda"
    params = [(n, p) for n, p in model.named_parameters() if p.ndim > 1]
    step = 0
    for epoch in range(epochs):
        model.train()
        train.set_epoch(epoch)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss*n, correct, n
        window = []
        for x, y in train:
            with forward_context(model, change), torch.autocast(torch.device(device).type, torch.bfloat16, enabled=amp):
                logits = model(x)
                loss = subject.loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step % grad_every == 0:
                norms = torch.stack([p.grad.detach().float().norm() if p.grad is not None
                                     else torch.zeros((), device=device) for _, p in params] or [torch.zeros(())])
                result.grad_rows.append((step, norms, torch.stack([p.detach().float().norm() for _, p in params]
                                                                  or [torch.zeros(())])))
            opt.step()
            if scheduler is not None:
                scheduler.step()
            sums[0] += loss.detach().double() * len(y)
            sums[1] += (logits.detach().argmax(1) == y).sum()
            sums[2] += len(y)
            window.append(loss.detach())
            step += 1
            if len(window) >= sync_every or step % len(train) == 0:
                values = torch.stack(window).float()
                result.loss_trace.append(float(values.mean()))
                bad = (~torch.isfinite(values)).nonzero()
                if len(bad):
                    k = int(bad[0])
                    result.nonfinite = (epoch + 1, step - len(window) + k + 1, float(values[k]))
                    break
                window = []
            if progress is not None:
                progress()
        if result.nonfinite:
            break
        loss_sum, correct, count = sums.tolist()
        val_preds, val_logits, val_losses = predict(model, val, change, amp)
        probe_preds, _, _ = predict(model, probe, change, amp)
        result.val_preds, result.probe_preds, result.val_losses = val_preds, probe_preds, val_losses
        result.history.append(dict(
            epoch=epoch + 1, train_loss=loss_sum / max(1, count), train_acc=100 * correct / max(1, count),
            val_loss=float(val_losses.mean()) if len(val_losses) else float("nan"), val_acc=100 * float((val_preds == subject.val_y).float().mean()),
            probe_acc=100 * float((probe_preds == subject.probe_y).float().mean()), lr=lr_of(opt),
            input_dependence=input_dependence(val_logits)))
    result.grad_rows = [{"step": s, "layer": name, "grad_norm": float(g), "weight_norm": float(w)}
                        for s, gs, ws in result.grad_rows for (name, _), g, w in zip(params, gs.tolist(), ws.tolist())]
    if result.history:
        result.input_dependence = result.history[-1]["input_dependence"]
        x, _ = next(iter(probe))
        model.train()
        with torch.no_grad(), ForwardProbe(model, record=True) as rec:
            model(x)
        result.dead = rec.dead_fraction
    return result
