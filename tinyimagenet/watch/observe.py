"""What the watcher sees of a user's training, through process-wide hooks only (the user's code is unchanged).

    obs = Observer(); obs.install(); ...user's loop...; obs.remove(); rules.find_causes(obs)

- Module forward hooks for every module (`register_module_forward_pre_hook`/`_hook`): the
  outermost call of a module with parameters is a model's forward. Mode (train/eval), grad mode,
  call site, output width, and on a few early batches the input statistics and the output kind.
- Optimizer step hooks (`register_optimizer_step_pre_hook`/`_post_hook`): steps, lr, whether
  gradients exist and whether the stepped parameters are the ones the forward passes used.
- A TorchFunctionMode: `Tensor.backward` (was `.grad` zeroed since the last step?), the loss calls
  `F.cross_entropy` / `F.nll_loss` with their (logits, targets), and softmax calls (to name them).
- `LRScheduler.step` wrapped (restored on remove) to name the line that steps a schedule.

Costs are sampled: anything that reads a value back from the device (label ranges, input stats,
output kind) runs on the first batches and every SAMPLE_EVERY-th after; per step only Python
bookkeeping and asynchronous device ops (the loss is kept as a device tensor) happen. Nothing
here draws random numbers or writes to the user's tensors, modules or optimizers.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.overrides import TorchFunctionMode

from ..diagnosis.loss_checks import check_loss
from ..diagnosis.measure import _tiny_features, input_stats

SAMPLE_FIRST, SAMPLE_EVERY = 20, 50      # measured steps: the first 20, then every 50th
MAX_PAIRS = 10000                        # (input, label) pairs kept for the label-signal check (features only)
MAX_CAPTURE = 1024                       # images kept (on their device) for the hand-off to diagnose()
LOSS_FUNCS = {F.cross_entropy: "F.cross_entropy", F.nll_loss: "F.nll_loss"}
SOFTMAX_FUNCS = {F.softmax, torch.softmax, torch.Tensor.softmax}
MODE_LAYERS = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)
_TORCH = os.path.dirname(torch.__file__)
_SKIP = (_TORCH, os.path.dirname(os.path.abspath(__file__)),
         os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "diagnosis"))


def user_site() -> str:
    """file:line of the innermost frame outside torch, this package and the runner (the user's line)."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(_SKIP) and not path.startswith("<frozen") and \
                os.path.basename(path) not in ("contextlib.py", "runpy.py"):
            rel = os.path.relpath(path) if os.path.isabs(path) else path
            return f"{path if rel.startswith('..') else rel}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def _sampled(i: int) -> bool:
    return i < SAMPLE_FIRST or i % SAMPLE_EVERY == 0


@dataclass
class ModelInfo:
    name: str                              # class name
    site: str                              # first forward call
    mode_layers: bool                      # has dropout or BatchNorm (train/eval changes the output)
    trainable: set                         # ids of parameters with requires_grad
    train_forwards: int = 0                # grad-enabled forwards
    eval_in_train: list = field(default_factory=list)   # sites of no-grad forwards in train mode
    train_in_eval: list = field(default_factory=list)   # sites of forwards in eval mode whose loss was backpropagated
    width: int | None = None               # output width (classes)
    output_kind: str | None = None         # "probabilities" | "logits" | ... on the first batch
    softmax_site: str | None = None        # softmax producing the model's output
    input_checks: list = field(default_factory=list)    # measure.Check of early batches
    initial: nn.Module | None = None       # deepcopy at the first forward (hand-off)


@dataclass
class OptInfo:
    name: str
    defaults: dict
    site: str = "?"
    steps: int = 0
    lrs: list = field(default_factory=list)
    empty_steps: int = 0                   # sampled steps where no parameter had a gradient
    sampled_steps: int = 0
    not_tracking: list = field(default_factory=list)    # (model name, share tracked, site)
    param_ids: set = field(default_factory=set)
    snapshot: list = field(default_factory=list)        # (param weakref, grad, grad._version) after a step
    after_step: bool = False


class Observer(TorchFunctionMode):
    """Collects observations; `install()` / `remove()` are the only changes to the process."""

    def __init__(self, capture: bool = True):
        super().__init__()
        self.capture = capture
        self.models: dict[int, ModelInfo] = {}
        self._model_refs: dict[int, weakref.ref] = {}
        self.opts: dict[int, OptInfo] = {}
        self._stack = 0
        self._pending: dict = {}            # model id -> (ModelInfo, training) of its last grad-enabled forward
        self._pending_loss: dict | None = None  # the last grad-enabled loss call; kept if a backward follows
        self._forward_models: set = set()   # ids of models with grad-enabled forwards since the last step
        self._last_out: weakref.ref | None = None
        self._last_model: ModelInfo | None = None
        self._pending_x = None
        self._softmax: list = []            # (weakref(out), site), newest last
        self.backwards, self.backward_site = 0, None
        self.not_zeroed, self.zero_checks, self.not_zeroed_site = 0, 0, None
        self.loss_calls: dict[str, dict] = {}   # site -> {"func", "kwargs", "check", "input_kind", ...}
        self.train_loss_calls = 0
        self._loss_chunks, self._loss_buf = [], []
        self.label_ranges: list = []        # (min, max, site) on sampled calls
        self.entropy_ratios: list = []
        self.pairs_x, self.pairs_y, self.n_pairs = [], [], 0
        self.capture_x, self.capture_y, self.n_capture = [], [], 0
        self.num_classes: int | None = None
        self.scheduler_calls: dict[str, int] = {}
        self._scheduler_seen: set = set()
        self._handles: list = []
        self._orig_sched_step = None

    # ------------------------------------------------------------------ install / remove
    def install(self) -> "Observer":
        self._handles = [register_module_forward_pre_hook(self._pre_forward),
                         register_module_forward_hook(self._post_forward),
                         register_optimizer_step_pre_hook(self._pre_step),
                         register_optimizer_step_post_hook(self._post_step)]
        sched = torch.optim.lr_scheduler.LRScheduler
        self._orig_sched_step = sched.__dict__["step"]
        orig, seen, calls = self._orig_sched_step, self._scheduler_seen, self.scheduler_calls

        def step(sched_self, *args, **kwargs):
            if id(sched_self) in seen:  # the first call is the scheduler's own, from its __init__
                site = user_site()
                calls[site] = calls.get(site, 0) + 1
            seen.add(id(sched_self))
            return orig(sched_self, *args, **kwargs)
        sched.step = step
        self.__enter__()
        return self

    def remove(self) -> None:
        self.__exit__(None, None, None)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._orig_sched_step is not None:
            torch.optim.lr_scheduler.LRScheduler.step = self._orig_sched_step
            self._orig_sched_step = None

    # ------------------------------------------------------------------------- forwards
    def _pre_forward(self, module, args):
        self._stack += 1
        if self._stack > 1 or isinstance(module, nn.modules.loss._Loss):
            return None
        if next(module.parameters(), None) is None:
            return None
        info = self.models.get(id(module))
        if info is None or self._model_refs[id(module)]() is not module:
            info = ModelInfo(type(module).__name__, user_site(), any(isinstance(m, MODE_LAYERS) for m in module.modules()),
                             {id(p) for p in module.parameters() if p.requires_grad})
            if self.capture:
                try:
                    info.initial = copy.deepcopy(module)  # the hand-off's model: its state before any step
                except Exception:  # a module that cannot be copied is still watched, just not handed off
                    info.initial = None
            self.models[id(module)], self._model_refs[id(module)] = info, weakref.ref(module)
        grad = torch.is_grad_enabled()
        x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if grad:
            info.train_forwards += 1
            self._forward_models.add(id(module))
            if info.mode_layers:
                self._pending[id(module)] = (info, module.training)
            if x is not None:
                self._pending_x = x
                if len(info.input_checks) < 3 and x.is_floating_point() and x.ndim in (2, 4):
                    with torch.no_grad():
                        info.input_checks.append(input_stats(x.detach()))
        elif module.training and info.mode_layers and len(info.eval_in_train) < 1000:
            info.eval_in_train.append(user_site())
        self._last_model = info
        return None

    def _post_forward(self, module, args, output):
        self._stack = max(0, self._stack - 1)
        if self._stack or not isinstance(output, torch.Tensor) or output.ndim != 2:
            return None
        info = self.models.get(id(module))
        if info is None:
            return None
        info.width = output.shape[-1]
        self._last_out = weakref.ref(output)
        if info.output_kind is None and torch.is_grad_enabled() and output.is_floating_point():
            with torch.no_grad():
                info.output_kind = _kind(output.detach())
            if info.output_kind == "probabilities":
                info.softmax_site = self._softmax_site(output)
        return None

    def _softmax_site(self, t) -> str | None:
        return next((s for r, s in reversed(self._softmax) if r() is t), None)

    # ----------------------------------------------------------------------- optimizers
    def _opt(self, opt) -> OptInfo:
        info = self.opts.get(id(opt))
        if info is None:
            info = self.opts[id(opt)] = OptInfo(type(opt).__name__, {k: v for k, v in opt.defaults.items()
                                                                     if isinstance(v, (int, float, bool, tuple))})
        return info

    def _pre_step(self, opt, args, kwargs):
        self._stack = 0  # a forward that raised never popped; no forward runs during a step
        info = self._opt(opt)
        lr = opt.param_groups[0].get("lr", 0.0)
        info.lrs.append(float(lr) if not isinstance(lr, torch.Tensor) or lr.device.type == "cpu" else math.nan)
        if _sampled(info.steps):
            info.sampled_steps += 1
            info.site = user_site()
            params = [p for g in opt.param_groups for p in g["params"]]
            if len(params) != len(info.param_ids):
                info.param_ids = {id(p) for p in params}
            if not any(p.grad is not None for p in params):
                info.empty_steps += 1
            for mid in self._forward_models:
                m = self.models.get(mid)
                if m is not None and m.trainable:
                    share = len(m.trainable & info.param_ids) / len(m.trainable)
                    if share < 0.5:
                        info.not_tracking.append((m.name, share, info.site, m.site))
        info.steps += 1
        self._forward_models = set()
        return None

    def _post_step(self, opt, args, kwargs):
        info = self._opt(opt)
        snap = []
        for g in opt.param_groups:
            for p in g["params"]:
                if p.grad is not None and len(snap) < 2:
                    snap.append((weakref.ref(p), p.grad, p.grad._version))
        info.snapshot, info.after_step = snap, bool(snap)
        return None

    # ------------------------------------------------------------- torch function calls
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = None
        if func is torch.Tensor.backward or func is torch.autograd.backward:
            self._on_backward()
        elif func in LOSS_FUNCS:
            rec = self._on_loss(func, args, kwargs)
        out = func(*args, **kwargs)
        if func in SOFTMAX_FUNCS and isinstance(out, torch.Tensor):
            self._softmax = self._softmax[-7:] + [(weakref.ref(out), user_site())]
        elif rec is not None and isinstance(out, torch.Tensor):
            rec["loss"] = out.detach().float().mean()
            self._pending_loss = rec  # a training step's loss once a backward follows (validation's never is)
        return out

    def _commit_loss(self, rec: dict) -> None:
        """A loss call that was backpropagated: a training step's loss, labels and inputs."""
        if "loss" in rec:
            self._loss_buf.append(rec["loss"])
            if len(self._loss_buf) >= 256:  # one device tensor per 256 steps; read back only at the end
                self._loss_chunks.append(torch.stack(self._loss_buf))
                self._loss_buf = []
        if "entropy" in rec:
            self.entropy_ratios.append(rec["entropy"])
        if "pair" in rec and self.n_pairs < MAX_PAIRS:
            self.pairs_x.append(rec["pair"][0])
            self.pairs_y.append(rec["pair"][1])
            self.n_pairs += len(rec["pair"][1])
        if "capture" in rec and self.n_capture < MAX_CAPTURE:
            self.capture_x.append(rec["capture"][0])
            self.capture_y.append(rec["capture"][1])
            self.n_capture += len(rec["capture"][1])

    def _on_backward(self):
        self._stack = 0
        self.backwards += 1
        site = user_site()
        self.backward_site = self.backward_site or site
        for info in self.opts.values():
            if info.after_step:  # the first backward after a step: .grad must have been zeroed or set to None
                info.after_step = False
                self.zero_checks += 1
                live = [(r(), g, v) for r, g, v in info.snapshot if r() is not None]
                if live and all(p.grad is g and g._version == v for p, g, v in live):
                    self.not_zeroed += 1
                    self.not_zeroed_site = self.not_zeroed_site or site
        for model, training in self._pending.values():  # the last grad-enabled forward of each model
            if not training:
                model.train_in_eval.append(site)
        self._pending = {}
        if self._pending_loss is not None:
            self._commit_loss(self._pending_loss)
            self._pending_loss = None

    def _on_loss(self, func, args, kwargs) -> dict | None:
        """Measurements of a loss call; for a grad-enabled one, the record to keep if it is backpropagated."""
        logits = args[0] if args else kwargs.get("input")
        target = args[1] if len(args) > 1 else kwargs.get("target")
        if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor) or logits.ndim != 2:
            return None
        c = logits.shape[1]
        self.num_classes = self.num_classes or c
        training = torch.is_grad_enabled() and logits.requires_grad
        site = user_site()
        call = self.loss_calls.get(site)
        if call is None:
            call = self.loss_calls[site] = self._first_loss_call(func, logits, args, kwargs, site)
        if not training:
            return None
        rec: dict = {}
        i = self.train_loss_calls
        self.train_loss_calls += 1
        hard = not target.is_floating_point() and target.ndim == 1
        if hard and _sampled(i):
            with torch.no_grad():
                lo, hi = torch.aminmax(target)
                self.label_ranges.append((int(lo), int(hi), site))
                counts = torch.bincount(target.clamp(0, c - 1).cpu(), minlength=c).float()
            p = counts[counts > 0] / len(target)
            ideal = math.log(min(len(target), c))
            if ideal > 0:
                rec["entropy"] = float(-(p * p.log()).sum()) / ideal
        x = self._pending_x
        self._pending_x = None
        if hard and x is not None and x.ndim == 4 and len(x) == len(target):
            with torch.no_grad():
                if self.n_pairs < MAX_PAIRS:
                    rec["pair"] = (_tiny_features(x.detach().float()), target.detach().clone())
                if self.capture and self.n_capture < MAX_CAPTURE:
                    rec["capture"] = (x.detach().clone(), target.detach().clone())
        return rec

    def _first_loss_call(self, func, logits, args, kwargs, site) -> dict:
        """The loss as called here, measured on synthetic logits, and the kind of input it was given."""
        options = {k: v for k, v in kwargs.items() if k not in ("input", "target")}
        loss = _BoundLoss(func, options)
        # nll_loss wants log-probabilities: its options are measured behind a log-softmax; raw logits
        # reaching it are judged from the observed input (rules.py), not from the synthetic ones.
        probe = _BoundLoss(func, options, log_softmax=func is F.nll_loss)
        with torch.no_grad():
            kind = _kind(logits.detach().float())
            check = check_loss(probe, logits.shape[1], device=logits.device, name=f"{LOSS_FUNCS[func]} at {site}")
        from_model = self._last_out is not None and self._last_out() is logits
        return {"func": LOSS_FUNCS[func], "loss": loss, "options": {k: repr(v) for k, v in options.items()},
                "check": check, "input_kind": kind, "from_model": from_model,
                "softmax_site": self._softmax_site(logits), "model": self._last_model}

    # ----------------------------------------------------------------------------- results
    def losses(self) -> torch.Tensor:
        """The training loss per step, read back from the device once."""
        parts = self._loss_chunks + ([torch.stack(self._loss_buf)] if self._loss_buf else [])
        return torch.cat([p.cpu() for p in parts]) if parts else torch.zeros(0)


class _BoundLoss:
    """The observed loss call with its own options (label_smoothing, weight, ...): (logits, targets) -> loss."""

    def __init__(self, func, options, log_softmax: bool = False):
        self.func, self.options, self.log_softmax = func, options, log_softmax
        self.__qualname__ = LOSS_FUNCS[func]

    def __call__(self, logits, targets):
        options = {k: (v.to(logits.device) if isinstance(v, torch.Tensor) else v) for k, v in self.options.items()}
        return self.func(F.log_softmax(logits, 1) if self.log_softmax else logits, targets, **options)


def _kind(out: torch.Tensor) -> str:
    if bool((out >= 0).all()) and float((out.sum(1) - 1).abs().max()) < 1e-4:
        return "probabilities"
    if float(out.logsumexp(1).abs().max()) < 1e-4:
        return "log-probabilities"
    return "logits"
