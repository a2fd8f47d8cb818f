"""The headroom screen: for a run that learns, which one change from outside makes it learn faster.

    from tinyimagenet.diagnosis import diagnose, DiagnosisConfig
    result = diagnose(MyNet, train=tr, val=va, num_classes=10, config=DiagnosisConfig(headroom=True))
    result["slows"]   # [{"id": "dropout_too_strong", "gain": 9.1, "ci": [6.2, 12.0], ...}], best first
    python quick_diagnosis.py --models BaselineCNN --dropout legacy --headroom --headroom-budget 2 ...

A model that learns gets PASS, but a fault can still cost it most of its accuracy (the seed
report's legacy dropout: 8.82% after 5 epochs against 22.27% without it). This screen tries the
changes the diagnosis applies from outside the user's code, each cause's `screen` in the causes
table (causes.py; mostly the cause's control change when it applies: every dropout off, weight
decay 0, inputs standardized, every parameter trainable, batches shuffled; and lr up and down by
thresholds.HEADROOM_LR_UP/DOWN). Thresholds (seed bar, budget, tolerance) are in thresholds.py.
In three steps:
1. the fixed-batch fit of each change (8 images, <= 50 steps, same weights and batch as the base
   fit): a change whose fit diverges is dropped; an lr factor also when its fit does not fit where
   the base fit does, or ends higher when neither fits (`fit_worse`; cheap: it cuts lr /10 on an lr
   already too low before it costs a screen epoch);
2. a short screen: each surviving change trained for `screen_epochs` epochs; ranked by the val
   loss (eval-mode cross-entropy, smoother than accuracy near chance) against the base run at the
   same epoch; the best `budget` that beat it go on;
3. a full control: the same training as the base run with that change; its val top-1 against the
   base run's by a one-sided Fisher exact test at thresholds.ALPHA, the gain in points with Newcombe's
   95% interval for the difference of two proportions (stats.two_proportion_test).
A significant gain is a finding "slows learning" under the cause's id, ranked by gain. Findings are
not causes: the verdict stays PASS, nothing is an alarm; they say what a one-change rerun bought.
Same layer as run.py (which calls it as its `_headroom` phase): takes the subject, the evidence and
callables for a fit and a run; imports nothing above it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from . import thresholds as T
from .causes import CAUSES
from .experiments import Change, FitRun, RunResult
from .stats import ALPHA, TwoSample, two_proportion_test
from .subject import Subject


@dataclass
class Slowdown:
    """A finding "slows learning": one change from outside raised val top-1 significantly."""
    id: str                  # the cause id: dropout_too_strong, learning_rate_too_low, ...
    change: str              # what the control changed, in words
    test: TwoSample          # base run (1) against the control (2) on the same val images

    @property
    def gain(self) -> float:
        """Val top-1 gained, in percentage points."""
        return 100 * self.test.diff

    def describe(self) -> str:
        t = self.test
        return (f"{self.id}: {self.gain:+.1f} points with {self.change}, 95% CI {100 * t.ci_low:+.1f} to "
                f"{100 * t.ci_high:+.1f} (val {100 * t.rate1:.2f}% -> {100 * t.rate2:.2f}%, {t.k1} -> {t.k2} of "
                f"{t.n2}; one-sided Fisher p = {t.p_value:.1e})")

    def to_json(self) -> dict:
        t = self.test
        return {"id": self.id, "change": self.change, "gain": round(self.gain, 3),
                "ci": [round(100 * t.ci_low, 3), round(100 * t.ci_high, 3)], "p_value": t.p_value,
                "base_correct": t.k1, "correct": t.k2, "n": t.n2, "text": self.describe()}


def below_seed_bar(history: list, num_classes: int, full_data: bool) -> bool:
    """A 200-class run on the full train split that is at or under the seed's bar at an epoch it ran."""
    if num_classes != T.SEED_BAR_CLASSES or not full_data:
        return False
    return any(row["epoch"] in T.SEED_BAR and row["val_acc"] <= T.SEED_BAR[row["epoch"]] for row in history)


def wanted(option: bool | None, status: str, history: list, num_classes: int, full_data: bool,
           has_causes: bool = False) -> tuple[bool, str]:
    """(run the screen?, why): on request, or by default below the seed's bar; only for a run that
    learns and has no reported cause (a FAIL is fixed first; its controls already ran)."""
    if option is False:
        return False, "off"
    if status != "learning":
        return False, f"not run: the run is {status or 'not trained'}, not learning"
    if has_causes:
        return False, "not run: a cause was found (fix it first)"
    if option:
        return True, "on request"
    if below_seed_bar(history, num_classes, full_data):
        bar = ", ".join(f">{v:g}%" for v in T.SEED_BAR.values())
        return True, (f"by default: a {T.SEED_BAR_CLASSES}-class run on the full train split below the seed's bar "
                      f"({bar} after epochs {', '.join(str(e) for e in T.SEED_BAR)})")
    return False, "not requested (--headroom); the run clears the seed's bar or is not a full-split 200-class run"


def candidates(ev, shuffled: bool) -> list[tuple[str, Change]]:
    """Every change that applies to this run, as (cause id, Change), in the causes table's order:
    each cause's `screen` (causes.py), mostly its control's own change when it applies."""
    return [(cause.id, change) for cause in CAUSES for change in cause.screen_changes(ev, shuffled)]


def fit_worse(base: FitRun | None, run: FitRun, change: Change) -> str:
    """Why the change's fixed-batch fit is worse than the base fit, or '' when it is not.

    Not by steps to fit when both fit: a too-high lr memorizes 8 images fastest (Adam 0.1 with
    BatchNorm fit in 9 steps, lr /10 in 13) while it generalizes worst; the screen judges that.
    A change that removes a measured condition (dropout off, weight decay 0, inputs standardized,
    parameters freed, batches shuffled; anything but an lr factor alone) is dropped only when its
    fit diverges: memorizing 8 images slower says little about generalizing (raw 0-255 inputs
    under Adam fit 8 images where standardized ones did not, benchmark set-up inputs_0_255_plain),
    and there are few such changes. The fit rules cut lr factors (lr /10 on an lr already too low)."""
    if base is None:
        return ""
    if run.diverged and not base.diverged:
        return "its fixed-batch fit diverges where the base fit does not"
    if not _lr_only(change):
        return ""
    if base.fitted and not run.fitted:
        return "its fixed-batch fit does not fit where the base fit does"
    if not base.fitted and not run.fitted and run.final > base.final + T.HEADROOM_FIT_TOLERANCE * base.initial:
        return f"its fixed-batch fit ends higher ({run.final:.3f}) than the base fit ({base.final:.3f})"
    return ""


def _lr_only(change: Change) -> bool:
    """The change is an lr factor and nothing else."""
    return change.lr_factor != 1.0 and dataclasses.replace(change, name="base", lr_factor=1.0) == Change()


def _count(preds: torch.Tensor | None, y: torch.Tensor) -> int:
    return int((preds == y).sum()) if preds is not None else 0


def screen(subject: Subject, ev, *, fit: Callable[[Change], FitRun], run: Callable[[Change, int], RunResult],
           epochs: int, epoch_seconds: float, screen_epochs: int = T.HEADROOM_SCREEN_EPOCHS,
           budget: int = T.HEADROOM_BUDGET, log=print) -> dict:
    """The three steps above; returns {"findings": [Slowdown], "screen": rows, "cost_s": estimate}.

    `ev` is the diagnosis's verdict.Evidence (its base run, base fit, checks, and the fits already
    made, reused by name); `fit(change)` is the fixed-batch fit, `run(change, epochs)` the
    diagnosis's training with one change, `epochs` the base run's length, `epoch_seconds` what
    one of its epochs took (the printed cost estimate).
    """
    base_run, base_fit = ev.run, ev.base
    cands = candidates(ev, subject.shuffled)
    per_epoch = epoch_seconds
    screen_epochs = max(1, min(screen_epochs, epochs))
    log(f"[{subject.name}] headroom: {len(cands)} changes to screen ({', '.join(c.describe() for _, c in cands)}); "
        f"cost about {len(cands) * screen_epochs * per_epoch + budget * epochs * per_epoch:.0f} s "
        f"({screen_epochs} epoch(s) each, then up to {budget} full runs of {epochs * per_epoch:.0f} s)")
    fits = {f.name: f for f in ev.fits}
    rows, survivors = [], []
    for cause, change in cands:
        f = fits.get(change.name) or fit(change)
        row = {"cause": cause, "change": change.describe(), "fit": f.describe()}
        worse = fit_worse(base_fit, f, change)
        if worse:
            row["dropped"] = worse
            log(f"[{subject.name}] headroom: {change.describe()} not screened: {worse}")
        else:
            survivors.append((cause, change, row))
        rows.append(row)
    base_at = base_run.history[screen_epochs - 1]
    scored = []
    for cause, change, row in survivors:
        res = run(change, screen_epochs)
        if not res.history:  # non-finite loss: the change made things worse
            row["screen"] = "loss turned non-finite"
            continue
        end = res.history[-1]
        row.update(screen_val_acc=end["val_acc"], screen_val_loss=end["val_loss"],
                   base_val_acc=base_at["val_acc"], base_val_loss=base_at["val_loss"])
        gain = base_at["val_loss"] - end["val_loss"]
        if gain > 0 or end["val_acc"] > base_at["val_acc"]:
            scored.append((gain, end["val_acc"] - base_at["val_acc"], cause, change, row))
    scored.sort(key=lambda s: (s[0], s[1]), reverse=True)
    k_base, n = _count(base_run.val_preds, subject.val_y), len(subject.val_y)
    findings, tried = [], set()
    for _, _, cause, change, row in scored:
        if len(tried) >= budget:
            break
        if cause in tried:  # one full run per cause: the screen's best direction/factor
            continue
        tried.add(cause)
        log(f"[{subject.name}] headroom control: {cause} -> rerun with {change.describe()}")
        res = run(change, epochs)
        test = two_proportion_test(k_base, n, _count(res.val_preds, subject.val_y), n, alpha=ALPHA)
        row["full"] = {"val_acc": 100 * test.rate2, "gain": 100 * test.diff, "p_value": test.p_value,
                       "significant": test.significant,
                       "epochs": [{k: r[k] for k in ("epoch", "train_loss", "val_acc")} for r in res.history]}
        if test.significant:
            findings.append(Slowdown(cause, change.describe(), test))
    findings.sort(key=lambda f: f.gain, reverse=True)
    return {"findings": findings, "screen": rows,
            "cost_s": len(cands) * screen_epochs * per_epoch + budget * epochs * per_epoch}


def verdict_suffix(slows: list) -> str:
    """'; slowed by dropout_too_strong: +9.1 points with every dropout switched off, 95% CI ...' or ''."""
    if not slows:
        return ""
    top = slows[0]
    more = f" (+{len(slows) - 1} more)" if len(slows) > 1 else ""
    return (f"; slowed by {top['id']}: {top['gain']:+.1f} points with {top['change']}, 95% CI "
            f"{top['ci'][0]:+.1f} to {top['ci'][1]:+.1f}{more}")


def confidence_note() -> str:
    return (f"findings: one-change reruns whose val top-1 beat the run as given (one-sided Fisher p < {ALPHA:g}); "
            "not faults: the verdict stays PASS")

