"""From measurements and experiments to a verdict (PASS, FAIL or INCONCLUSIVE) and ranked causes.

    status = judge_learning(ev)            # learning | stuck | undecided | diverged | not trained
    found = rank_causes(ev)                # every cause the evidence supports, best first
    verdict = decide(ev, found)            # the reported causes, PASS/FAIL/INCONCLUSIVE, its sentences

The rules, each stated once (the numbers in thresholds.py, the per-cause rules in causes.py):
- Learning: val top-1 above chance by `stats.chance_test` (binomial and class-permutation). Not
  above chance is "stuck" when val is large enough to see POWER_EFFECT x chance with power
  POWER_NEEDED and the accuracy is under STUCK_MAX x chance, else "undecided" (the verdict says
  what val size would decide).
- A cause needs evidence: a decisive measurement, a control run that learns (above chance) and
  beats the base run (Fisher, p < ALPHA), or a one-change fit of the fixed batch that removes
  >= FIT_MARGIN x ln C more loss than the base fit (causes.py says which, per cause). Fit evidence
  on an "undecided" run is tentative: reported only once its control confirms it, since a small
  healthy run fails fits too.
- Scores come from the evidence: `stats.score(p, effect)` for controls, the effect itself for
  deterministic comparisons (same weights, same batch) and measurements. Order: tier 0 (decisive,
  or confirmed by a control), tier 1 root causes, causes whose control made things no better,
  then symptoms (in the table's causal order) when a root cause explains them: a high lr that
  killed the ReLUs is the lr first, then its symptoms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import thresholds as T
from .causes import CAUSES, by_id
from .experiments import Change, FitRun, RunResult
from .rules import CANDIDATE, CONFIRMED, DECISIVE, SYMPTOM, Finding, Judging, fit_gain  # noqa: F401 (re-exported)
from .stats import ChanceTest, TwoSample, images_to_decide, power, score as evidence_score

_ORDER = {c.id: i for i, c in enumerate(CAUSES)}
_SYMPTOM_RANK = {c.id: i for i, c in enumerate(c for c in CAUSES if not c.is_root)}


@dataclass
class Control:
    """One control run: the base training again with the fix for `cause`, and how it compares."""
    cause: str                            # the cause id whose fix was applied
    change: Change                        # the fix (causes.py: the cause's control)
    result: RunResult                     # the control's training
    acc: float                            # its last-epoch val top-1 (%)
    base_acc: float                       # the base run's last-epoch val top-1 (%)
    test: TwoSample                       # Fisher: control above the base run?
    chance: ChanceTest                    # the control's val against chance
    base: RunResult | None = None         # the base run it is compared with (the loss criteria read it)
    num_classes: int = 0                  # C, for ln C
    extended: str = ""                    # what was extended before deciding, and why ("" if nothing)

    @property
    def criterion(self) -> str:
        """Why this control confirms its cause ("" if it does not): it removed what the cause explains.

        - the base loss diverged (non-finite, or above RUN_DIVERGED x ln C) and the control's stayed
          finite, under that bound, and fell (last window below its first and below ln C);
        - the base val loss was stuck at ln C and the control's fell clearly below it: per-image val
          losses significantly below ln C and below the base run's (one-sided z, ALPHA);
        - or its val accuracy beats the base run's (Fisher, ALPHA) and is above chance.
        """
        if self.test.significant and self.chance.significant:
            return (f"accuracy: val top-1 {self.acc:.2f}% vs {self.base_acc:.2f}% ({self.test.describe('base run', 'control')}), "
                    f"above chance")
        if self.base is None or self.num_classes < 2:
            return ""
        ln_c = math.log(self.num_classes)
        if diverged(self.base, ln_c):
            t = self.result.loss_trace
            bound = T.RUN_DIVERGED * ln_c
            if (self.result.nonfinite is None and len(t) >= 2 and all(math.isfinite(v) and v <= bound for v in t)
                    and t[-1] < min(t[0], ln_c)):
                worst = max(self.base.loss_trace, default=float("inf"))
                return (f"loss: the base run's train loss diverged (up to {worst:.3g}); the control's stayed finite "
                        f"and fell, {t[0]:.3f} -> {t[-1]:.3f} (ln C {ln_c:.3f})")
            return ""
        b, c = self.base.val_losses, self.result.val_losses
        if b is None or c is None or len(b) != len(c) or len(c) < 2:
            return ""
        p_base = _below_p(b, ln_c)
        p_ctl = _below_p(c, ln_c)
        p_pair = _below_p(c - b, 0.0)
        if p_base >= T.ALPHA and p_ctl < T.ALPHA and p_pair < T.ALPHA:
            return (f"loss: the base run's val loss stayed at ln C ({float(b.mean()):.4f} vs {ln_c:.4f}, "
                    f"p {p_base:.2g}); the control's fell clearly below it ({float(c.mean()):.4f}, p {p_ctl:.1e}; "
                    f"below the base run's on the same {len(c)} val images, p {p_pair:.1e})")
        return ""

    @property
    def confirms(self) -> bool:
        return bool(self.criterion)

    @property
    def loss_lower(self) -> bool:
        """The control's val loss is below the base run's (or the base diverged and it did not): a trend."""
        if self.base is None:
            return False
        if self.base.nonfinite is not None:
            return self.result.nonfinite is None
        b, c = self.base.val_losses, self.result.val_losses
        return b is not None and c is not None and len(b) == len(c) > 0 and float(c.mean()) < float(b.mean())


def diverged(run: RunResult, ln_c: float) -> bool:
    """The run's loss turned non-finite or rose past RUN_DIVERGED x ln C in some sync window."""
    return run.nonfinite is not None or any(not math.isfinite(v) or v > T.RUN_DIVERGED * ln_c for v in run.loss_trace)


def _below_p(x: torch.Tensor, mu: float) -> float:
    """One-sided p that the mean of `x` is below `mu` (z-test; per-image losses, n in the hundreds+)."""
    x = x.double()
    if len(x) < 2:
        return 1.0
    se = float(x.std()) / math.sqrt(len(x))
    if se == 0:
        return 0.0 if float(x.mean()) < mu else 1.0
    z = (mu - float(x.mean())) / se
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass
class Evidence:
    """Everything measured for one model; the verdict reads only this."""
    num_classes: int
    checks: dict                          # name -> measure.Check
    base: FitRun | None = None            # the fixed-batch fit as given
    fits: list = field(default_factory=list)          # FitRuns with one change each
    run: RunResult | None = None          # the short training as given
    val_test: ChanceTest | None = None    # the last epoch's val predictions against chance
    probe_test: ChanceTest | None = None  # the same for the held-out train images
    gap_test: TwoSample | None = None     # held-out train above val?
    controls: list[Control] = field(default_factory=list)
    status: str = ""                      # learning | stuck | undecided | diverged | not trained
    reasons: list = field(default_factory=list)       # sentences for the report, in order
    full_data: bool = False               # the official train size: "stuck with no cause" fails


@dataclass
class Verdict:
    verdict: str                          # PASS, FAIL or INCONCLUSIVE
    causes: list                          # the reported Findings, ranked
    reasons: list = field(default_factory=list)  # what was left out and why (after ev.reasons in the report)


def judge_learning(ev: Evidence) -> str:
    if ev.run is None:
        return "not trained"
    if ev.run.nonfinite:
        e, s, v = ev.run.nonfinite
        ev.reasons.append(f"loss became {v} at epoch {e}, step {s}")
        return "diverged"
    ev.reasons.append(f"val top-1 {ev.val_test.describe()}")
    leak = ev.checks.get("val_overlaps_train")  # user data: val copies of train images (user_data.py)
    if leak is not None and leak.status == "fail":
        ev.reasons.append(f"{100 * leak.data['share']:.1f}% of the val images are copies of train images: val "
                          "accuracy here is no evidence of learning")
    if ev.val_test.significant:
        return "learning"
    p0 = 1 / ev.num_classes
    p1 = min(0.999, T.POWER_EFFECT * p0)
    seen = power(ev.val_test.n, p0, p1)
    if seen < T.POWER_NEEDED:
        ev.reasons.append(f"{ev.val_test.n} val images cannot tell {100 * p1:.2g}% from chance {100 * p0:.2g}% "
                          f"(power {seen:.2f} < {T.POWER_NEEDED:g}); "
                          f"{images_to_decide(ev.val_test.n, p0, p1, target=T.POWER_NEEDED):,} would")
        return "undecided"
    if ev.val_test.accuracy / 100 >= T.STUCK_MAX * p0:
        ev.reasons.append(f"{ev.val_test.accuracy:.2f}% is {ev.val_test.accuracy / 100 / p0:.1f}x chance but not "
                          "significant: the class-permutation test counts classes, not images; more classes or "
                          "epochs would decide")
        return "undecided"
    return "stuck"


def _weigh_controls(j: Judging, ev: Evidence) -> None:
    """Controls: the strongest evidence, and what puts a root cause first."""
    for ctl in ev.controls:
        t = ctl.test
        text = (f"control run with {ctl.change.describe()}: val top-1 {ctl.acc:.2f}% vs {ctl.base_acc:.2f}% "
                f"({t.describe('base run', 'control')}; same data, seed and epochs)")
        base_ex = max(0.0, ctl.base_acc - 100 / ev.num_classes)
        ctl_ex = max(1e-9, ctl.acc - 100 / ev.num_classes)
        effect = max(0.0, min(1.0, 1 - base_ex / ctl_ex))
        extra = [f"extended: {ctl.extended}"] if ctl.extended else []
        why = ctl.criterion
        if why:
            # Confirmed by the loss alone (no accuracy gain yet): scored as a measured effect.
            s = evidence_score(t.p_value, effect) if why.startswith("accuracy") else max(0.5, effect)
            c = j.add(ctl.cause, s, CONFIRMED, text, f"control: {ctl.chance.describe()}",
                      f"confirmed by {why}", *extra)
            c.tentative = False
        elif ctl.cause in j.found:
            c = j.found[ctl.cause]
            c.evidence += [f"{text}; control: {ctl.chance.describe()} - not confirmed", *extra]
            # No better at all: evidence against this cause. Better but not significantly (a small
            # val set), or a lower loss: neither for nor against, so the cause keeps its place.
            c.refuted = c.tier > CONFIRMED and t.diff <= 0 and not ctl.loss_lower


def rank_causes(ev: Evidence) -> list[Finding]:
    """Every cause the evidence supports (refuted and tentative ones included), best first."""
    j = Judging(ev)
    for spec in sorted(CAUSES, key=lambda c: c.is_root):  # symptoms first: a root's rule may read them
        spec.judge(j)
    _weigh_controls(j, ev)
    found = list(j.found.values())
    if any(by_id(c.id).is_root and not c.refuted for c in found):  # a root cause explains the symptoms
        for c in found:
            if not by_id(c.id).is_root:
                c.tier = SYMPTOM
    else:  # nothing upstream explains them: the symptom itself is the finding
        for c in found:
            c.tier = min(c.tier, CANDIDATE)

    def key(c):
        return (c.refuted, c.tier, bool(c.tentative), _SYMPTOM_RANK.get(c.id, -1), -c.score, _ORDER[c.id])
    return sorted(found, key=key)


def decide(ev: Evidence, found: list[Finding]) -> Verdict:
    """The verdict from the ranked findings, and sentences saying what was left out, and why.

    Pure: it reads `ev` and writes nothing, so the phases can ask for the verdict so far (the
    extension, the headroom screen) without the report saying it twice."""
    reasons = []
    causes = [c for c in found if not c.tentative and not c.refuted]
    unconfirmed = [c.id for c in found if c.tentative and not c.refuted]
    refuted = [c.id for c in found if c.refuted]
    if refuted:
        reasons.append(f"fixed-batch experiments pointed at {', '.join(refuted)}, but the control run with that "
                       "fix did no better: not reported as a cause")
    if unconfirmed:
        small = " the run is too small to call stuck and" if ev.status == "undecided" else ""
        reasons.append(f"fixed-batch experiments point at {', '.join(unconfirmed)}, but{small} no control "
                       "confirmed it: not reported as a cause")
    if ev.status in ("learning", "not trained") and not causes:
        return Verdict("PASS", causes, reasons)
    if causes or ev.status == "diverged" or (ev.status == "stuck" and ev.full_data):
        if not causes:
            reasons.append("no cause isolated by any experiment")
        return Verdict("FAIL", causes, reasons)
    reasons.append("no experiment isolated a cause; the verdict needs more data or epochs (see above)")
    return Verdict("INCONCLUSIVE", causes, reasons)


def suggestions_for(causes: list[Finding], ev: Evidence) -> list[str]:
    out = []
    for c in causes:
        lr = ""
        if c.id.startswith("learning_rate"):
            fits = [r for r in ev.fits if r.name.startswith("lr_") and r.fitted]
            lr = f" (the fixed batch fits at lr {fits[0].lr:.3g})" if fits else ""
        out.append(by_id(c.id).suggestion.format(lr=lr))
    return out
