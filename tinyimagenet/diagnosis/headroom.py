"""The headroom screen: for a run that learns, which one change from outside makes it learn faster.

    from tinyimagenet.diagnosis import diagnose, DiagnosisConfig
    result = diagnose(MyNet, train=tr, val=va, num_classes=10, config=DiagnosisConfig(headroom=True))
    result["slows"]   # [{"id": "dropout_too_strong", "gain": 9.1, "ci": [6.2, 12.0], ...}], best first
    python quick_diagnosis.py --models BaselineCNN --dropout legacy --headroom --headroom-budget 2 ...

A model that learns gets PASS, but a fault can still cost it most of its accuracy (the seed
report's legacy dropout: 8.82% after 5 epochs against 22.27% without it). This screen tries the
changes the diagnosis applies from outside the user's code (every dropout off, lr up and down,
weight decay 0, inputs standardized, every parameter trainable, batches shuffled), in three steps:
1. the fixed-batch fit of each change (8 images, <= 50 steps, same weights and batch as the base
   fit): a change whose fit diverges, or does not fit where the base fit does, or ends higher when
   neither fits, is dropped (`fit_worse`; cheap: it cuts lr /10 on an lr already too low before
   it costs a screen epoch);
2. a short screen: each surviving change trained for `screen_epochs` epochs; ranked by the val
   loss (eval-mode cross-entropy, smoother than accuracy near chance) against the base run at the
   same epoch; the best `budget` that beat it go on;
3. a full control: the same training as the base run with that change; its val top-1 against the
   base run's by a one-sided Fisher exact test at stats.ALPHA, the gain in points with Newcombe's
   95% interval for the difference of two proportions (stats.two_proportion_test).
A significant gain is a finding "slows learning" under the cause's id, ranked by gain. Findings are
not causes: the verdict stays PASS, nothing is an alarm; they say what a one-change rerun bought.
Lower layers only: takes the subject, the Change objects and callables for a fit and a run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .experiments import Change, FitRun, RunResult
from .stats import ALPHA, TwoSample, two_proportion_test
from .subject import Subject

# The seed report's own bar for a 200-class model on the full train split: val top-1 above these
# percentages after these epochs. A run below it gets the screen by default.
SEED_BAR = {1: 1.0, 5: 5.0, 10: 10.0}
SEED_CLASSES = 200
LR_FACTORS = {"learning_rate_too_low": (10.0,), "learning_rate_too_high": (0.1, 0.01)}  # tried both ways


@dataclass
class Finding:
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
    if num_classes != SEED_CLASSES or not full_data:
        return False
    return any(row["epoch"] in SEED_BAR and row["val_acc"] <= SEED_BAR[row["epoch"]] for row in history)


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
        return True, "by default: a 200-class run on the full train split below the seed's bar (>1%, >5%, >10% after epochs 1, 5, 10)"
    return False, "not requested (--headroom); the run clears the seed's bar or is not a full-split 200-class run"


def candidates(checks: dict, base_fit: FitRun | None, subject: Subject) -> list[tuple[str, Change]]:
    """Every change that applies to this subject, as (cause id, Change)."""
    out = []
    if checks.get("dropout_sites") is not None and checks["dropout_sites"].data.get("sites"):
        out.append(("dropout_too_strong", Change("no_dropout", no_dropout=True)))
    for cause, factors in LR_FACTORS.items():
        out += [(cause, Change(f"lr_x{f:g}" if f > 1 else f"lr_div{1 / f:g}", lr_factor=f)) for f in factors]
    if checks.get("weight_decay") is not None and checks["weight_decay"].data.get("max", 0) > 0:
        out.append(("weight_decay_too_strong", Change("no_weight_decay", weight_decay_zero=True)))
    stats = checks.get("input_stats")
    if stats is not None and stats.data.get("off"):
        std = tuple(max(s, 1e-6) for s in stats.data["std"])
        out.append(("input_not_normalized", Change("standardized", standardize=(tuple(stats.data["mean"]), std))))
    if base_fit is not None and any(w in ("requires_grad=False", "not in the optimizer") for w in base_fit.frozen.values()):
        out.append(("frozen_parameters", Change("unfreeze", unfreeze=True)))
    if not subject.shuffled:
        out.append(("batches_not_shuffled", Change("shuffle", shuffle=True)))
    return out


FIT_TOLERANCE = 0.02  # neither fits: "ends higher" needs 2% of the initial loss more (equal fits tie)


def fit_worse(base: FitRun | None, run: FitRun) -> str:
    """Why the change's fixed-batch fit is worse than the base fit, or '' when it is not.

    Not by steps to fit when both fit: a too-high lr memorizes 8 images fastest (Adam 0.1 with
    BatchNorm fit in 9 steps, lr /10 in 13) while it generalizes worst; the screen judges that."""
    if base is None:
        return ""
    if run.diverged and not base.diverged:
        return "its fixed-batch fit diverges where the base fit does not"
    if base.fitted and not run.fitted:
        return "its fixed-batch fit does not fit where the base fit does"
    if not base.fitted and not run.fitted and run.final > base.final + FIT_TOLERANCE * base.initial:
        return f"its fixed-batch fit ends higher ({run.final:.3f}) than the base fit ({base.final:.3f})"
    return ""


def _count(preds: torch.Tensor | None, y: torch.Tensor) -> int:
    return int((preds == y).sum()) if preds is not None else 0


def screen(subject: Subject, base_run: RunResult, checks: dict, base_fit: FitRun | None, *,
           fit: Callable[[Change], FitRun], run: Callable[[Change, int], RunResult], epochs: int,
           screen_epochs: int = 1, budget: int = 2, known_fits: list = (), log=print) -> dict:
    """The three steps above; returns {"findings": [Finding], "screen": rows, "cost_s": estimate}.

    `fit(change)` is the fixed-batch fit, `run(change, epochs)` the diagnosis's training with one
    change, `epochs` the base run's length; `known_fits` are fits already made (reused by name).
    """
    cands = candidates(checks, base_fit, subject)
    per_epoch = base_run.seconds / max(1, len(base_run.history))
    screen_epochs = max(1, min(screen_epochs, epochs))
    log(f"[{subject.name}] headroom: {len(cands)} changes to screen ({', '.join(c.describe() for _, c in cands)}); "
        f"cost about {len(cands) * screen_epochs * per_epoch + budget * epochs * per_epoch:.0f} s "
        f"({screen_epochs} epoch(s) each, then up to {budget} full runs of {epochs * per_epoch:.0f} s)")
    fits = {f.name: f for f in known_fits}
    rows, survivors = [], []
    for cause, change in cands:
        f = fits.get(change.name) or fit(change)
        row = {"cause": cause, "change": change.describe(), "fit": f.describe()}
        worse = fit_worse(base_fit, f)
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
            findings.append(Finding(cause, change.describe(), test))
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

