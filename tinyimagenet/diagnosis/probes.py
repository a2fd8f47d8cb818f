"""See inside a user's forward pass without editing their code: dropout, ReLUs, call sites.

    with ForwardProbe(model, drop_dropout=True):        # every dropout is the identity
        model(x)
    with ForwardProbe(model, record=True) as probe:     # what ran, and where
        model(x)
    probe.dropout_sites      # {"features.2 (nn.Dropout2d)": 0.3, "models/mine.py:41 (F.dropout)": 0.8}
    probe.dead_fraction      # {"features.1": 0.97, ...}: share of channels never active on the batch

Why a TorchFunctionMode: a user's `F.dropout(h, 0.8)` or `torch.relu(h)` is not a module, so module
hooks cannot see it, but every torch.nn.functional call passes through the active function mode
however it was imported. Module forward hooks on the model's own submodules (removed on exit, so
nothing outside the model is touched) keep a stack of qualified names, so a functional call made
inside `nn.Dropout.forward` is reported as that module, and one made in a user's forward as the
file and line of the call.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

DROPOUT_FUNCS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
RELU_FUNCS = {F.relu, torch.relu, F.relu_, torch.relu_}
LEAF_TYPES = (nn.modules.dropout._DropoutNd, nn.ReLU, nn.ReLU6)
_SKIP = (os.path.dirname(torch.__file__), os.path.dirname(os.path.abspath(__file__)))


def call_site() -> str:
    """file:line of the innermost frame outside torch and this package (the user's call)."""
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(_SKIP) and "contextlib" not in path:
            rel = os.path.relpath(path)
            return f"{path if rel.startswith('..') else rel}:{frame.f_lineno}"  # relative inside the cwd
        frame = frame.f_back
    return "?"


def _dropout_args(args, kwargs) -> tuple[float, bool]:
    p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
    training = kwargs.get("training", args[2] if len(args) > 2 else True)
    return float(p), bool(training)


class ForwardProbe(TorchFunctionMode):
    """A context around forward passes of `model` (see the module docstring).

    drop_dropout: every dropout call returns its input unchanged (the "dropout off" experiment).
    drop_eval_dropout: the same, but only while the model is in eval mode (the stochastic-eval fix).
    record: collect dropout sites (rate, and whether they were active in eval mode) and ReLU
        dead fractions; costs a reduction per ReLU call, so only for measurement passes.
    """

    def __init__(self, model: nn.Module, *, drop_dropout: bool = False, drop_eval_dropout: bool = False,
                 record: bool = False):
        super().__init__()
        self.model, self.drop_dropout, self.drop_eval_dropout, self.record = model, drop_dropout, drop_eval_dropout, record
        self.dropout_sites: dict[str, float] = {}
        self.eval_dropout_sites: dict[str, float] = {}   # dropout that ran with training=True in eval mode
        self.dead_fraction: dict[str, float] = {}
        self._stack: list[str] = []
        self._handles: list = []

    # -------------------------------------------------------------------------- module names
    def __enter__(self):
        if self.record:  # names are only needed to report sites
            for name, module in self.model.named_modules():
                label = f"{name or '<model>'} ({type(module).__name__})"
                self._handles.append(module.register_forward_pre_hook(self._push((label, module))))
                self._handles.append(module.register_forward_hook(self._pop))
        return super().__enter__()

    def _push(self, label):
        def hook(module, args):  # a hook's return value would replace the input: return None
            self._stack.append(label)
        return hook

    def _pop(self, module, args, output):  # likewise, None keeps the output
        if self._stack:
            self._stack.pop()

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._stack.clear()
        return super().__exit__(*exc)

    def _where(self, kind: str) -> str:
        # Inside a leaf module (nn.Dropout, nn.ReLU) the module names the site; a functional call
        # in some module's own forward is named by its source line, which is what the user edits.
        if self._stack and isinstance(self._stack[-1][1], LEAF_TYPES):
            return self._stack[-1][0]
        return f"{call_site()} ({kind})"

    # ------------------------------------------------------------------------------ dispatch
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in DROPOUT_FUNCS:
            p, training = _dropout_args(args, kwargs)
            eval_mode = not self.model.training
            if self.record and training and p > 0:
                site = self._where(f"F.{func.__name__}")
                self.dropout_sites[site] = p
                if eval_mode:
                    self.eval_dropout_sites[site] = p
            if training and (self.drop_dropout or (self.drop_eval_dropout and eval_mode)):
                return args[0]
        out = func(*args, **kwargs)
        if self.record and func in RELU_FUNCS and isinstance(out, torch.Tensor) and out.ndim >= 2:
            with torch.no_grad():
                active = out.detach() > 0
                per_unit = active.flatten(2).any(2).any(0) if active.ndim > 2 else active.any(0)
                self.dead_fraction[self._where("relu")] = 1.0 - float(per_unit.float().mean())
        return out
