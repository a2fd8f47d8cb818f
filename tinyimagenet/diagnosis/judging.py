"""What every per-cause function of the causes table reads and writes: the tiers, a Finding,
the Judging context a judge adds evidence to, the FitPlan a cause's fit experiments read.

    from tinyimagenet.diagnosis.judging import Judging, FitPlan, Finding, DECISIVE, SYMPTOM
    j = Judging(evidence); some_judge(j); j.found     # cause id -> Finding

The bottom of the rule modules: rules.py, symptom_rules.py and screens.py import it, it imports
none of them (verdict.py reads it through rules.py). Thresholds come from thresholds.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from . import thresholds as T
from .experiments import Change, FitRun

DECISIVE, CONFIRMED, CANDIDATE, SYMPTOM = 0, 1, 2, 3  # tiers, ranked in this order


@dataclass
class Finding:
    """One cause with its evidence, as the verdict ranks and reports it."""
    id: str
    score: float
    evidence: list
    tier: int = CANDIDATE               # DECISIVE, CONFIRMED (by a control), CANDIDATE or SYMPTOM
    where: list = field(default_factory=list)   # modules or file:line the evidence points at
    refuted: bool = False               # its control ran and made nothing better: not reported
    tentative: bool | None = None       # True: fit evidence alone on an undecided run; reported only once confirmed

    def to_json(self) -> dict:
        return {"id": self.id, "score": round(self.score, 3), "evidence": self.evidence, "where": self.where}


def fit_gain(base: FitRun, run: FitRun, ln_c: float) -> float:
    """Loss removed by the change beyond the base fit, as a fraction of ln C (diverged = 2 ln C)."""
    def end(r):
        return 2 * ln_c if (r.nonfinite or not r.losses) else min(r.final, 2 * ln_c)
    return (end(base) - end(run)) / ln_c


class Judging:
    """What a judge reads (the evidence) and writes (findings), for one model."""

    def __init__(self, ev):
        self.ev, self.found = ev, {}
        self.ln_c = math.log(ev.num_classes)
        self.failing = ev.status not in ("learning", "not trained")
        base = self.base = ev.base
        self.stalled = bool(base is not None and base.losses and base.initial > 0
                            and (1 - base.final / base.initial) < T.STALLED)
        self.strong_run = ev.status in ("stuck", "diverged") or self.stalled
        self.fits = {r.name: r for r in ev.fits}
        # experiments only count when the run fails: a model that learns passes whatever a fit liked
        self.experiments = self.failing and base is not None

    def check(self, name):
        return self.ev.checks.get(name)

    def add(self, cid, score, tier, *evidence, where=()):
        c = self.found.setdefault(cid, Finding(cid, 0.0, [], tier))
        c.score, c.tier = max(c.score, score), min(c.tier, tier)
        c.evidence += [e for e in evidence if e not in c.evidence]
        c.where += [w for w in where if w not in c.where]
        return c

    def fit_evidence(self, cid, runs, extra=(), where=(), dose_response=False) -> float:
        """A candidate from one-change fits: firm past FIT_MARGIN on a stuck run, else tentative
        (a control must confirm it); gains under MIN_GAIN are no evidence at all."""
        base = self.base
        gain = max((fit_gain(base, r, self.ln_c) for r in runs), default=0.0)
        dose = dose_response and self.stalled and gain > 0
        if base.fitted or (gain < T.MIN_GAIN and not dose):
            return 0.0
        text = [f"fixed batch: {base.describe()}"] + [f"one change: {r.describe()}" for r in runs] + list(extra)
        c = self.add(cid, min(1.0, gain), CANDIDATE, *text, where=where)
        firm = self.strong_run and (gain >= T.FIT_MARGIN or dose)
        c.tentative = False if firm else c.tentative is not False
        return gain


@dataclass
class FitPlan:
    """What a cause's fit experiments read: the measurements, the base fit, the runs so far."""
    fit: Callable[[Change], FitRun]     # one fixed-batch fit with this change
    checks: dict                        # name -> measure.Check
    base: FitRun                        # the fit as given (it did not fit)
    runs: list                          # FitRuns of the causes before this one in the table


def movable_frozen(base: FitRun) -> bool:
    """Frozen parameters a change from outside can free (a detach in the forward cannot be)."""
    return any(w in ("requires_grad=False", "not in the optimizer") for w in base.frozen.values())
