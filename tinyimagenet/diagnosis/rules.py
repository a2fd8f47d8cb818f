"""The functions the causes table (causes.py) points at: per cause, its evidence rule, its
fixed-batch experiments and its control's change.

    judge(ctx)      adds this cause's evidence to `ctx` (a `Judging`), or nothing
    fits(plan)      runs this cause's one-change fits of the fixed batch (a `FitPlan`), returns the FitRuns
    control(ev)     the Change that removes the cause from outside the user's code, or None
    screen(plan)    the Changes the headroom screen tries for it on a run that learns (a `ScreenPlan`)

Nothing here decides the order, the tiers after controls or the verdict: verdict.py does that for
every cause alike. Thresholds come from thresholds.py.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

from . import thresholds as T
from .experiments import Change, FitRun
from .stats import score as evidence_score

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


# ----------------------------------------------------------------- symptoms, from the failing run
def judge_non_finite(j: Judging) -> None:
    run = j.ev.run
    if j.experiments and run is not None and run.nonfinite:
        e, s, v = run.nonfinite
        j.add("non_finite_loss", 1.0, SYMPTOM, f"training loss became {v} at epoch {e}, step {s}")


def judge_collapsed(j: Judging) -> None:
    run = j.ev.run
    if j.experiments and run is not None and run.history and run.input_dependence < T.COLLAPSED:
        j.add("collapsed_outputs", 1.0, SYMPTOM, f"{run.input_dependence:.1e} of the logits' variation comes from "
              "the input (std across val images vs across classes): the outputs ignore the input")


def judge_dead(j: Judging) -> None:
    run = j.ev.run
    if j.experiments and run is not None and run.dead:
        site, frac = max(run.dead.items(), key=lambda kv: kv[1])
        if frac >= T.DEAD_SHARE:
            j.add("dead_units", frac, SYMPTOM, f"{100 * frac:.0f}% of the units at {site} never active on a batch "
                  "after training", where=[site])


def gradient_steps(run) -> list[dict]:
    """Per sampled step (step 0, before any update, left out): its largest gradient/weight ratio,
    whether every gradient is finite, and the smallest/largest positive layer gradient norm.

    A step is "exploding" when its ratio exceeds EXPLODING; the vanishing rule reads only the other
    steps, so the two symptoms are never drawn from the same steps (a huge largest norm made the
    min/max spread tiny, and an exactly-zero gradient - a dead or unused layer - read as 0.0).
    """
    by_step: dict[int, list] = {}
    for r in run.grad_rows:
        by_step.setdefault(r["step"], []).append(r)
    out = []
    for step, rows in sorted(by_step.items()):
        if step == 0:
            continue
        g = [r["grad_norm"] for r in rows]
        ratios = [r["grad_norm"] / (r["weight_norm"] + 1e-12) for r in rows if math.isfinite(r["grad_norm"])]
        live = [v for v in g if math.isfinite(v) and v > 0]
        top = max(ratios, default=0.0)
        out.append({"step": step, "ratio": top, "finite": all(math.isfinite(v) for v in g),
                    "exploding": top > T.EXPLODING,
                    "spread": min(live) / max(live) if len(live) > 1 else None})
    return out


def _backed(k: int) -> float:
    """How far k observations back a symptom: 1 from GRAD_MIN_STEPS on, less below."""
    return min(1.0, k / T.GRAD_MIN_STEPS)


def _sampled(run, n: int) -> str:
    return f"{n} sampled steps (every {run.grad_every or T.GRAD_EVERY} steps; a rule needs >= {T.GRAD_MIN_STEPS})"


def judge_vanishing(j: Judging) -> None:
    run = j.ev.run
    if not (j.experiments and run is not None and run.grad_rows):
        return
    spreads = sorted(s["spread"] for s in gradient_steps(run) if not s["exploding"] and s["spread"] is not None)
    if len(spreads) < T.GRAD_MIN_STEPS:
        return
    median = spreads[len(spreads) // 2]
    if median < T.VANISHING:
        k = sum(v < T.VANISHING for v in spreads)
        j.add("vanishing_gradients", min(1.0, -math.log10(median + 1e-30) / 10) * _backed(k), SYMPTOM,
              f"median over {_sampled(run, len(spreads))} without exploding gradients of smallest/largest "
              f"positive layer gradient norm: {median:.1e}; {k} of them below {T.VANISHING:g}")


def judge_exploding(j: Judging) -> None:
    run = j.ev.run
    if not (j.experiments and run is not None and run.grad_rows):
        return
    steps = gradient_steps(run)
    hot = [s for s in steps if s["exploding"]]
    if len(steps) < T.GRAD_MIN_STEPS or not hot:  # non-finite gradients alone are the non-finite loss's business
        return
    top = max(s["ratio"] for s in hot)
    finite = all(s["finite"] for s in steps)
    j.add("exploding_gradients", min(1.0, math.log10(top) / 3) * _backed(len(hot)), SYMPTOM,
          f"gradient/weight norm ratio above {T.EXPLODING:g} at {len(hot)} of {_sampled(run, len(steps))}; "
          f"largest {top:.2e}" + ("" if finite else "; some gradients non-finite"))


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


def movable_frozen(base: FitRun) -> bool:
    """Frozen parameters a change from outside can free (a detach in the forward cannot be)."""
    return any(w in ("requires_grad=False", "not in the optimizer") for w in base.frozen.values())


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


# ------------------------------------------------ the headroom screen's candidates per cause (headroom.py)
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
