"""The functions the causes table (causes.py) points at: per cause, its evidence rule, its
fixed-batch experiments and its control's change.

    judge(ctx)      adds this cause's evidence to `ctx` (a `Judging`), or nothing
    fits(plan)      runs this cause's one-change fits of the fixed batch (a `FitPlan`), returns the FitRuns
    control(ev)     the Change that removes the cause from outside the user's code, or None
    screen(plan)    the Changes the headroom screen tries for it on a run that learns (a `ScreenPlan`)

Defined here: the judges of decisive measurements and of causes from fit experiments, the fit
experiments and the controls. Re-exported from the modules below this one, so every name the
table uses is read from here: judging.py (Judging, Finding, FitPlan, the tiers), symptom_rules.py
(the symptoms read from the failing run) and screens.py (the headroom screen's candidates).
Nothing here decides the order, the tiers after controls or the verdict: verdict.py does that for
every cause alike. Thresholds come from thresholds.py.
"""
from __future__ import annotations

import math
from typing import Callable

from . import thresholds as T
from .experiments import Change
from .judging import (CANDIDATE, CONFIRMED, DECISIVE, SYMPTOM, Finding, FitPlan, Judging,  # noqa: F401 (re-exported)
                      fit_gain, movable_frozen)
from .screens import (ScreenPlan, frees_parameters, has_dropout, has_weight_decay, inputs_off,  # noqa: F401
                      not_shuffled, screen_control, screen_lr)
from .stats import score as evidence_score
from .symptom_rules import (gradient_steps, judge_collapsed, judge_dead, judge_exploding,  # noqa: F401
                            judge_non_finite, judge_vanishing)

# ------------------------------------------------------------------- decisive measurements
def judge_bad_labels(j: Judging) -> None:
    chk = j.check("labels")
    if chk and chk.status == "fail":  # made only when the labels cannot be used (run.py)
        j.add("bad_labels", 1.0, DECISIVE, chk.detail)


def judge_val_overlap(j: Judging) -> None:
    chk = j.check("val_overlaps_train")  # user data only (user_data.py): val copies of train images
    if chk and chk.data["share"] >= T.OVERLAP_SHARE:  # val accuracy measures memory, whatever training shows
        j.add("val_overlaps_train", chk.data["share"], DECISIVE, chk.detail)


def judge_probabilities(j: Judging) -> None:
    chk = j.check("output_kind")
    if chk and chk.data["kind"] == "probabilities":
        j.add("outputs_are_probabilities", 1.0, DECISIVE, chk.detail)
        if "log_outputs" in j.fits and j.experiments:
            j.found["outputs_are_probabilities"].evidence.append(f"one change: {j.fits['log_outputs'].describe()}")


def judge_stochastic_eval(j: Judging) -> None:
    chk = j.check("eval_determinism")
    if chk and chk.data["stochastic"]:
        j.add("stochastic_eval", 1.0, DECISIVE, chk.detail, where=list(chk.data["sites"]))


def judge_unshuffled(j: Judging) -> None:
    chk = j.check("batch_label_entropy")  # sorted batches are a bug whatever this short run shows
    if chk and chk.data["ratio"] < T.ENTROPY_RATIO_MIN:
        j.add("batches_not_shuffled", 1 - chk.data["ratio"], DECISIVE, chk.detail)


def judge_val_misaligned(j: Judging) -> None:
    ann = j.check("val_annotations")
    if ann and ann.data["mismatches"]:
        j.add("val_labels_misaligned", ann.data["mismatches"] / max(1, ann.data["n"]), DECISIVE, ann.detail)
    if not j.experiments:
        return
    ev, sig = j.ev, j.check("label_signal")  # the model's held-out predictions, then the model-free 1-NN
    if ev.gap_test is not None and ev.gap_test.significant and not ev.val_test.significant:
        j.add("val_labels_misaligned", evidence_score(ev.gap_test.p_value, 1.0), CANDIDATE,
              f"model: {ev.gap_test.describe('val', 'held-out train')}")
    if sig is not None and sig.data["gap"].significant and not sig.data["val"].significant:
        j.add("val_labels_misaligned", evidence_score(sig.data["gap"].p_value, 1.0), CANDIDATE, sig.detail)


def judge_unlearnable(j: Judging) -> None:
    ev, sig = j.ev, j.check("label_signal")
    if not j.experiments or sig is None or ev.probe_test is None or ev.probe_test.significant:
        return
    # "No signal" must be shown, not just "not significant": real labels on 10 classes give the
    # 1-NN only ~1.6x chance. The given labels' leave-one-out hits are compared with the same
    # neighbours under the check's own shuffles of the labels (measure.label_signal): their advantage
    # must lie below the margin with 95% confidence. The old "95% bound below 1.5x chance" had too
    # little power on 200 classes: it missed shuffled labels on 3,800 queries (issue 17).
    s = sig.data["shuffled"]
    margin = max(T.NO_SIGNAL_POINTS, (T.NO_SIGNAL - 1) / ev.num_classes)
    if s.ci_high < margin and not s.significant:
        # Tier 0: no lr, dropout or other change can make a model learn labels without signal.
        j.add("train_labels_unlearnable", max(0.0, 1 - max(0.0, s.ci_high) / margin), DECISIVE, sig.detail,
              f"1-NN leave-one-out hits, given labels vs the check's own shuffles of them: difference "
              f"{100 * s.diff:+.2f} points, upper 95% bound {100 * s.ci_high:+.2f} < {100 * margin:.2f} points",
              f"model on held-out train images: {ev.probe_test.describe()}")


def judge_loss(cause_id: str) -> Callable[[Judging], None]:
    """The judge of one loss fault: the user's loss measured before training (loss_checks.py, the
    "loss_fn" check) named it. Decisive: no model can learn through a loss that cannot reward it."""
    def judge(j: Judging) -> None:
        chk = j.check("loss_fn")
        if chk and chk.status == "fail" and chk.data["fault"] == cause_id:
            j.add(cause_id, 1.0, DECISIVE, chk.detail, where=list(chk.data["where"]))
    return judge


def judge_in_own_loop(j: Judging) -> None:
    """Loop faults: diagnose() trains in its own loop, where they cannot occur; the watcher
    (tinyimagenet.watch, above this layer) measures them in the user's script."""


# ------------------------------------------------------------------ causes from fit experiments
def _lr_runs(j: Judging, prefix: str) -> list:
    runs = [r for r in j.ev.fits if r.name.startswith(prefix)]
    return sorted(runs, key=lambda r: r.lr if prefix == "lr_x" else -r.lr)


def _lr_high_measured(j: Judging) -> bool:
    return j.base.diverged or (j.ev.run is not None and j.ev.run.nonfinite is not None)


def judge_lr_low(j: Judging) -> None:
    if not j.experiments or _lr_high_measured(j):
        return
    ups = _lr_runs(j, "lr_x")
    finals = [j.base.final] + [r.final for r in ups]
    dose = all(b < a for a, b in zip(finals, finals[1:])) and len(ups) > 1
    j.fit_evidence("learning_rate_too_low", ups, dose_response=dose,
                   extra=[f"dose-response: loss after the fit falls at every x10 of the lr "
                          f"({' -> '.join(f'{v:.3f}' for v in finals)})"] if dose else [])


def judge_lr_high(j: Judging) -> None:
    if not j.experiments:
        return
    if _lr_high_measured(j):
        j.fit_evidence("learning_rate_too_high", _lr_runs(j, "lr_div"))
    died = [k for k in ("dead_units", "collapsed_outputs") if k in j.found]  # symptoms are judged first
    init = j.check("init_loss")
    if died and init is not None and init.data["sound"] and "learning_rate_too_high" not in j.found:
        # Sound at init, dead after training: a step too large for the whole data set kills units
        # without diverging on 8 images. Only a control at a lower lr can show it.
        c = j.add("learning_rate_too_high", T.DIED_LR_SCORE, CANDIDATE, f"the run left {' and '.join(died)} from a "
                  f"model whose loss at init was sound ({init.detail}): a candidate for a control at a lower lr")
        c.tentative = not j.strong_run


def judge_dropout(j: Judging) -> None:
    if j.experiments and "no_dropout" in j.fits:
        chk = j.check("dropout_sites")
        j.fit_evidence("dropout_too_strong", [j.fits["no_dropout"]], extra=[chk.detail], where=list(chk.data["sites"]))


def judge_weight_decay(j: Judging) -> None:
    if j.experiments and "no_weight_decay" in j.fits:
        j.fit_evidence("weight_decay_too_strong", [j.fits["no_weight_decay"]], extra=[j.check("weight_decay").detail])


def judge_input(j: Judging) -> None:
    chk = j.check("input_stats")
    if not j.experiments or chk is None or not chk.data["off"]:
        return
    s, fit = chk.data, j.fits.get("standardized")
    gain = j.fit_evidence("input_not_normalized", [fit] if fit else [], extra=[chk.detail])
    scale = max(max(abs(m) for m in s["mean"]), max(s["std"]), 1 / max(min(s["std"]), 1e-9))
    if not gain and scale > T.INPUT_SCALE_RAW:  # raw pixels, say: measured far off; only a control can confirm
        c = j.add("input_not_normalized", min(1.0, math.log10(scale) / 2), CANDIDATE, chk.detail,
                  *([f"one change: {fit.describe()}"] if fit else []))
        c.tentative = c.tentative is not False


def judge_frozen(j: Judging) -> None:
    if not j.experiments:
        return
    base = j.base
    form = j.check("output_form")  # parameters feeding only other outputs (an aux head) are not frozen
    side = set(form.data.get("side_params", ())) if form else set()
    frozen = {n: why for n, why in base.frozen.items() if "zero" not in why and n not in side}
    if not frozen:
        return
    modules = sorted({n.rsplit(".", 1)[0] for n in frozen})
    text = f"{len(frozen)} parameter tensors never changed in {len(base.losses)} steps: " + \
           "; ".join(f"{n} ({why})" for n, why in list(frozen.items())[:6])
    j.fit_evidence("frozen_parameters", [j.fits["unfreeze"]] if "unfreeze" in j.fits else [], extra=[text],
                   where=modules)
    share = base.frozen_share  # of all parameter elements: a measurement, not a guess
    if j.strong_run or share >= T.FROZEN_SHARE:
        c = j.add("frozen_parameters", share, DECISIVE if share >= T.FROZEN_DECISIVE else CANDIDATE,
                  text + f" ({100 * share:.0f}% of the parameters)", where=modules)
        c.tentative = False


# ------------------------------------------------------------- fixed-batch experiments per cause
def one_change(name: str, applies: Callable[[FitPlan], bool], **change) -> Callable[[FitPlan], list]:
    """A fit experiment of a single Change, run when `applies(plan)`."""
    def run(plan: FitPlan) -> list:
        return [plan.fit(Change(name, **change))] if applies(plan) else []
    return run


def measured_standardize(checks: dict) -> tuple:
    s = checks["input_stats"].data
    return tuple(s["mean"]), tuple(max(v, 1e-6) for v in s["std"])


def fit_standardized(plan: FitPlan) -> list:
    if not plan.checks["input_stats"].data["off"]:
        return []
    return [plan.fit(Change("standardized", standardize=measured_standardize(plan.checks)))]


def fit_lr_up(plan: FitPlan) -> list:
    """lr x10, x100, x1000, further while each x10 still lowers the loss; stops once it fits or diverges."""
    runs, previous = [], plan.base.final
    if plan.base.diverged:
        return runs
    for k in range(1, T.LR_UP_DECADES + 1):
        r = plan.fit(Change(f"lr_x{10 ** k}", lr_factor=10.0 ** k))
        runs.append(r)
        if r.fitted or r.diverged or (k >= T.LR_UP_MIN_DECADES and not r.final < previous):
            break
        previous = r.final
    return runs


def fit_lr_down(plan: FitPlan) -> list:
    """lr /10 when no higher lr fitted (down to /1000 while a diverging base still diverges)."""
    if not plan.base.diverged and any(r.fitted for r in plan.runs if r.name.startswith("lr_x")):
        return []
    runs = []
    for k in range(1, T.LR_DOWN_DECADES + 1):
        r = plan.fit(Change(f"lr_div{10 ** k}", lr_factor=10.0 ** -k))
        runs.append(r)
        if r.fitted or not plan.base.diverged:
            break
    return runs


# ------------------------------------------------------------------- the control's change per cause
def control_of(**change) -> Callable:
    """A control that always applies this one change."""
    return lambda ev: Change("control", **change)


def control_standardize(ev):
    return Change("control", standardize=measured_standardize(ev.checks))


def control_unfreeze(ev):
    return Change("control", unfreeze=True) if ev.base is not None and movable_frozen(ev.base) else None


def _best_lr(ev, prefix: str):
    best = min((r for r in ev.fits if r.name.startswith(prefix)), key=lambda r: r.final, default=None)
    if best is not None and best.final < ev.base.final:
        return Change("control", lr_factor=best.lr / ev.base.lr)
    return None


def control_raise_lr(ev):
    return _best_lr(ev, "lr_x")


def control_lower_lr(ev):
    return _best_lr(ev, "lr_div")


def control_lower_lr_or_fallback(ev):  # no fit to go by (the batch fit as given): two decades down
    return control_lower_lr(ev) or Change("control", lr_factor=T.CONTROL_LR_FALLBACK)
