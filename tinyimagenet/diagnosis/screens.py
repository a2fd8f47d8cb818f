"""The headroom screen's candidates per cause: which Changes the screen (headroom.py) tries on a
run that learns, and when each applies.

    from tinyimagenet.diagnosis.screens import ScreenPlan, screen_control, has_dropout
    screen = screen_control("no_dropout", has_dropout)    # a cause's `screen` in the causes table
    screen(ScreenPlan(evidence, shuffled=True, control=its_control))   # -> [Change(...)] or []

The causes table (causes.py) points at these; rules.py re-exports them. Imports judging.py and
experiments.py only; headroom.py reads them through the table.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from .experiments import Change
from .judging import movable_frozen

@dataclass
class ScreenPlan:
    """What a cause's headroom candidates read, on a run that learns and has no reported cause."""
    ev: object                          # verdict.Evidence: checks, base fit, fits
    shuffled: bool                      # the training batches are shuffled as given
    control: Callable | None            # the cause's control (Evidence -> Change | None), from the table


def screen_control(name: str, applies: Callable[[ScreenPlan], bool]) -> Callable[[ScreenPlan], list]:
    """The cause's own control change, named `name` (a fit of that name is reused), when it applies."""
    def changes(plan: ScreenPlan) -> list:
        change = plan.control(plan.ev) if plan.control is not None and applies(plan) else None
        return [dataclasses.replace(change, name=name)] if change is not None else []
    return changes


def screen_lr(factors: tuple) -> Callable[[ScreenPlan], list]:
    """lr times each factor: a run that learns has no lr fits to pick the control's lr from."""
    return lambda plan: [Change(f"lr_x{f:g}" if f > 1 else f"lr_div{1 / f:g}", lr_factor=f) for f in factors]


def has_dropout(plan: ScreenPlan) -> bool:
    return bool(plan.ev.checks["dropout_sites"].data["sites"])


def has_weight_decay(plan: ScreenPlan) -> bool:
    return plan.ev.checks["weight_decay"].data["max"] > 0


def inputs_off(plan: ScreenPlan) -> bool:
    return bool(plan.ev.checks["input_stats"].data["off"])


def frees_parameters(plan: ScreenPlan) -> bool:
    return plan.ev.base is not None and movable_frozen(plan.ev.base)


def not_shuffled(plan: ScreenPlan) -> bool:
    return not plan.shuffled
