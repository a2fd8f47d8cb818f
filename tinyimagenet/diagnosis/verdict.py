"""From measurements and experiments to a verdict (PASS, FAIL or INCONCLUSIVE) and ranked causes.

The rules, each stated once (constants below; ALPHA is stats.ALPHA, the one significance level):
- Learning: val top-1 above chance by `stats.chance_test` (binomial and class-permutation). Not
  above chance is "stuck" when val is large enough to see 2x chance with power 0.8 and the accuracy
  is under STUCK_MAX x chance, else "undecided" (the verdict says what val size would decide).
- A cause needs evidence: a decisive measurement (rows sum to 1, two eval passes differ, labels
  out of range, a label file contradicted, sorted batches, 1-NN label signal bounded below
  NO_SIGNAL x chance, >= FROZEN_SHARE of the parameters never changing); a control run that learns
  (above chance) and beats the base run (Fisher, p < ALPHA); or a one-change fit of the fixed batch
  that removes >= FIT_MARGIN x ln C more loss than the base fit (any amount, for an lr dose-response
  on a stalled fit). Fit evidence on an "undecided" run is tentative: reported only once its
  control confirms it, since a small healthy run fails fits too.
- Scores come from the evidence: `stats.score(p, effect)` for controls, the effect itself for
  deterministic comparisons (same weights, same batch) and measurements. Order: tier 0 (decisive,
  or confirmed by a control), tier 1 root causes, causes whose control made things no better,
  then symptoms (collapsed outputs, dead units, gradients, a non-finite loss) when a root cause
  explains them: a high lr that killed the ReLUs is the lr first, then its symptoms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .experiments import FitRun, RunResult
from .loss_checks import LOSS_FAULTS, SUGGESTIONS as LOSS_SUGGESTIONS
from .stats import power, required_n, score as evidence_score, wilson_interval

DECISIVE, CONFIRMED, CANDIDATE, SYMPTOM = 0, 1, 2, 3  # tiers, ranked in this order
MIN_GAIN = 0.1          # below this share of ln C a one-change fit is no evidence, not even for a control
FIT_MARGIN = 0.25        # a change must remove >= 25% of ln C more fixed-batch loss than the base fit
STALLED = 0.05           # a base fit that removes < 5% of its initial loss has stalled
POWER_EFFECT = 2.0       # "stuck" needs power 0.8 to see this multiple of chance, and an accuracy below
STUCK_MAX = 1.5          # this multiple of chance (22% on 10 classes, p = 1e-3, is not "stuck")
FROZEN_SHARE = 0.1       # frozen parameters holding >= 10% of the model fail a run that does not learn
NO_SIGNAL = 1.5          # labels "carry no signal" when 1-NN is below this multiple of chance (95% bound)

ROOT = ("bad_labels", "outputs_are_probabilities", "stochastic_eval", "val_labels_misaligned",
        "train_labels_unlearnable", "learning_rate_too_high", "learning_rate_too_low", "dropout_too_strong",
        "weight_decay_too_strong", "input_not_normalized", "frozen_parameters", "batches_not_shuffled") + LOSS_FAULTS
# Symptoms in causal order, upstream first: gradients that vanish or explode leave units dead and
# outputs collapsed; a non-finite loss is where exploding ends. The order, not the score, ranks them.
SYMPTOMS = ("vanishing_gradients", "exploding_gradients", "non_finite_loss", "collapsed_outputs", "dead_units")
CAUSES = ROOT + SYMPTOMS

SUGGESTIONS = {
    "bad_labels": "Give labels as class indices 0..C-1 (not one-hot, not 1-based), and check that each split holds every class.",
    "outputs_are_probabilities": "Return logits from forward(): drop the final softmax (cross-entropy applies log-softmax itself).",
    "stochastic_eval": "Pass training=self.training to functional dropout (or use nn.Dropout), so eval mode is deterministic.",
    "val_labels_misaligned": "Val labels must come from val/val_annotations.txt with train's sorted-wnid mapping.",
    "train_labels_unlearnable": "Train labels carry no signal: check that each class folder holds that class's images.",
    "learning_rate_too_high": "Lower the learning rate{lr}, and warm it up over the first epochs.",
    "learning_rate_too_low": "Raise the learning rate{lr} (for Adam, 5e-4 is the seed's next step).",
    "dropout_too_strong": "Remove dropout from conv stages and blocks; keep one Dropout(0.2-0.3) in the classifier, or none.",
    "weight_decay_too_strong": "Lower the weight decay (5e-4 for SGD; AdamW 0.05 or less).",
    "input_not_normalized": "Standardize inputs per channel (ToTensor() then Normalize(mean, std)).",
    "frozen_parameters": "Give every parameter to the optimizer with requires_grad=True, and remove the detach().",
    "batches_not_shuffled": "Shuffle the training batches (DataLoader(..., shuffle=True)).",
    "non_finite_loss": "Lower the learning rate or clip gradients; check the loss for log(0) and the inputs for NaN.",
    "collapsed_outputs": "The outputs do not depend on the input: check the initialization (biases, dead ReLUs) and the forward path.",
    "dead_units": "Lower the learning rate; check the initialization and biases (or add BatchNorm).",
    "vanishing_gradients": "Use BatchNorm or residual connections, ReLU rather than sigmoid/tanh, and Kaiming initialization.",
    "exploding_gradients": "Lower the learning rate, clip gradients, check the initialization.",
    **LOSS_SUGGESTIONS,
}


@dataclass
class Cause:
    id: str
    score: float
    evidence: list
    tier: int = 2                       # DECISIVE, CONFIRMED (by a control), CANDIDATE or SYMPTOM
    where: list = field(default_factory=list)   # modules or file:line the evidence points at
    refuted: bool = False               # its control ran and made nothing better: not reported
    tentative: bool | None = None       # True: fit evidence alone on an undecided run; reported only once confirmed

    def to_json(self) -> dict:
        return {"id": self.id, "score": round(self.score, 3), "evidence": self.evidence, "where": self.where}


@dataclass
class Evidence:
    """Everything measured for one model; the verdict reads only this."""
    num_classes: int
    checks: dict                          # name -> Check
    base: FitRun | None = None            # the fixed-batch fit as given
    fits: list = field(default_factory=list)          # FitRuns with one change each
    run: RunResult | None = None          # the short training as given
    val_test: object = None               # stats.ChanceTest of the last epoch's val predictions
    probe_test: object = None
    gap_test: object = None               # stats.TwoSample: held-out train above val?
    controls: list = field(default_factory=list)      # {"cause", "change", "result", "test"}
    status: str = ""                      # learning | stuck | undecided | diverged | not trained
    reasons: list = field(default_factory=list)
    full_data: bool = False


def fit_gain(base: FitRun, run: FitRun, ln_c: float) -> float:
    """Loss removed by the change beyond the base fit, as a fraction of ln C (diverged = 2 ln C)."""
    def end(r):
        return 2 * ln_c if (r.nonfinite or not r.losses) else min(r.final, 2 * ln_c)
    return (end(base) - end(run)) / ln_c


def judge_learning(ev: Evidence) -> str:
    if ev.run is None:
        return "not trained"
    if ev.run.nonfinite:
        e, s, v = ev.run.nonfinite
        ev.reasons.append(f"loss became {v} at epoch {e}, step {s}")
        return "diverged"
    ev.reasons.append(f"val top-1 {ev.val_test.describe()}")
    if ev.val_test.significant:
        return "learning"
    p0 = 1 / ev.num_classes
    p1 = min(0.999, POWER_EFFECT * p0)
    seen = power(ev.val_test.n, p0, p1)
    if seen < 0.8:
        ev.reasons.append(f"{ev.val_test.n} val images cannot tell {100 * p1:.2g}% from chance {100 * p0:.2g}% "
                          f"(power {seen:.2f}); about {required_n(p0, p1):,} would")
        return "undecided"
    if ev.val_test.accuracy / 100 >= STUCK_MAX * p0:
        ev.reasons.append(f"{ev.val_test.accuracy:.2f}% is {ev.val_test.accuracy / 100 / p0:.1f}x chance but not "
                          "significant: the class-permutation test counts classes, not images; more classes or "
                          "epochs would decide")
        return "undecided"
    return "stuck"


def _control_for(ev: Evidence, cause: str):
    return next((c for c in ev.controls if c["cause"] == cause), None)


def rank_causes(ev: Evidence) -> list[Cause]:
    import math as _m

    ln_c = _m.log(ev.num_classes)
    found: dict[str, Cause] = {}
    failing = ev.status not in ("learning", "not trained")
    base = ev.base

    def add(cid, score, tier, *evidence, where=()):
        c = found.setdefault(cid, Cause(cid, 0.0, [], tier))
        c.score, c.tier = max(c.score, score), min(c.tier, tier)
        c.evidence += [e for e in evidence if e not in c.evidence]
        c.where += [w for w in where if w not in c.where]

    chk = ev.checks.get
    # ---- decisive measurements: reported whatever training did
    if chk("labels") and chk("labels").status == "fail":
        add("bad_labels", 1.0, DECISIVE, chk("labels").detail)
    out = chk("output_kind")
    if out and out.status == "fail":
        add("outputs_are_probabilities", 1.0, DECISIVE, out.detail)
    det = chk("eval_determinism")
    if det and det.status == "fail":
        add("stochastic_eval", 1.0, DECISIVE, det.detail, where=list(det.data["sites"]))
    ent = chk("batch_label_entropy")  # sorted batches are a bug whatever this short run shows
    if ent and ent.status == "warn":
        add("batches_not_shuffled", 1 - ent.data["ratio"], DECISIVE, ent.detail)
    loss = chk("loss_fn")  # the user's loss measured on synthetic logits (loss_checks.py)
    if loss and loss.status == "fail":
        add(loss.data["fault"], 1.0, DECISIVE, loss.detail, where=loss.data["where"])
    ann = chk("val_annotations")
    if ann and ann.status == "fail":
        add("val_labels_misaligned", ann.data["mismatches"] / max(1, ann.data["n"]), DECISIVE, ann.detail)

    # ---- experiments: only when the run fails
    if failing and base is not None:
        stalled = base.losses and (1 - base.final / base.initial) < STALLED if base.initial > 0 else False
        strong_run = ev.status in ("stuck", "diverged") or stalled
        fits = {r.name: r for r in ev.fits}

        def fit_evidence(cid, runs, extra=(), where=(), dose_response=False):
            """A candidate from one-change fits: firm past FIT_MARGIN on a stuck run, else tentative
            (a control must confirm it); gains under MIN_GAIN are no evidence at all."""
            gain = max((fit_gain(base, r, ln_c) for r in runs), default=0.0)
            dose = dose_response and stalled and gain > 0
            if base.fitted or (gain < MIN_GAIN and not dose):
                return 0.0
            text = [f"fixed batch: {base.describe()}"] + [f"one change: {r.describe()}" for r in runs] + list(extra)
            add(cid, min(1.0, gain), CANDIDATE, *text, where=where)
            firm = strong_run and (gain >= FIT_MARGIN or dose)
            found[cid].tentative = False if firm else found[cid].tentative is not False
            return gain

        ups = sorted([r for r in ev.fits if r.name.startswith("lr_x")], key=lambda r: r.lr)
        downs = sorted([r for r in ev.fits if r.name.startswith("lr_div")], key=lambda r: -r.lr)
        if base.diverged or (ev.run is not None and ev.run.nonfinite):
            fit_evidence("learning_rate_too_high", downs)
        else:
            finals = [base.final] + [r.final for r in ups]
            monotone = all(b < a for a, b in zip(finals, finals[1:]))
            dose = monotone and len(ups) > 1
            fit_evidence("learning_rate_too_low", ups, dose_response=dose,
                         extra=[f"dose-response: loss after the fit falls at every x10 of the lr "
                                f"({' -> '.join(f'{v:.3f}' for v in finals)})"] if dose else [])
        sites = chk("dropout_sites").data["sites"] if chk("dropout_sites") else {}
        if "no_dropout" in fits:
            fit_evidence("dropout_too_strong", [fits["no_dropout"]], extra=[chk("dropout_sites").detail], where=list(sites))
        stats = chk("input_stats").data if chk("input_stats") else None
        if stats and stats["off"]:
            gain = fit_evidence("input_not_normalized", [fits["standardized"]] if "standardized" in fits else [],
                                extra=[chk("input_stats").detail])
            scale = max(max(abs(m) for m in stats["mean"]), max(stats["std"]), 1 / max(min(stats["std"]), 1e-9))
            if not gain and scale > 5:  # raw pixels, say: measured far off; only the control can confirm
                add("input_not_normalized", min(1.0, math.log10(scale) / 2), CANDIDATE, chk("input_stats").detail,
                    *([f"one change: {fits['standardized'].describe()}"] if "standardized" in fits else []))
                found["input_not_normalized"].tentative = found["input_not_normalized"].tentative is not False
        if "no_weight_decay" in fits:
            fit_evidence("weight_decay_too_strong", [fits["no_weight_decay"]], extra=[chk("weight_decay").detail])
        if "log_outputs" in fits and "outputs_are_probabilities" in found:
            found["outputs_are_probabilities"].evidence.append(f"one change: {fits['log_outputs'].describe()}")
        frozen = {n: why for n, why in base.frozen.items() if "zero" not in why}
        if frozen:
            modules = sorted({n.rsplit(".", 1)[0] for n in frozen})
            text = f"{len(frozen)} parameter tensors never changed in {len(base.losses)} steps: " + \
                   "; ".join(f"{n} ({why})" for n, why in list(frozen.items())[:6])
            fit_evidence("frozen_parameters", [fits["unfreeze"]] if "unfreeze" in fits else [], extra=[text],
                         where=modules)
            share = base.frozen_share  # of all parameter elements: a measurement, not a guess
            if strong_run or share >= FROZEN_SHARE:
                # Most of the model never moving is decisive for a run that fails: tier 0.
                add("frozen_parameters", share, DECISIVE if share >= 0.5 else CANDIDATE,
                    text + f" ({100 * share:.0f}% of the parameters)", where=modules)
                found["frozen_parameters"].tentative = False

        # ---- labels, from the model's held-out predictions and the model-free 1-NN check
        sig = chk("label_signal")
        if ev.gap_test is not None and ev.gap_test.significant and not ev.val_test.significant:
            add("val_labels_misaligned", evidence_score(ev.gap_test.p_value, 1.0), CANDIDATE,
                f"model: {ev.gap_test.describe('val', 'held-out train')}")
        if sig is not None and sig.data["gap"].significant and not sig.data["val"].significant:
            add("val_labels_misaligned", evidence_score(sig.data["gap"].p_value, 1.0), CANDIDATE, sig.detail)
        if sig is not None and ev.probe_test is not None and not ev.probe_test.significant:
            # "No signal" must be shown, not just "not significant": real labels on 10 classes give
            # the 1-NN only ~1.6x chance (16% on 100 held-out images, p = 0.05), which a bare
            # non-significance rule read as unlearnable. Leave-one-out within train, the 1-NN
            # accuracy must lie below NO_SIGNAL x chance with 95% confidence.
            t = sig.data["train"]
            k = round(t.accuracy * t.n / 100)
            hi = wilson_interval(k, t.n)[1]
            if hi < NO_SIGNAL / ev.num_classes:
                # Tier 0: no lr, dropout or other change can make a model learn labels without signal.
                add("train_labels_unlearnable", 1 - hi * ev.num_classes / NO_SIGNAL, DECISIVE, sig.detail,
                    f"1-NN within train: {k}/{t.n}, upper 95% bound {100 * hi:.2f}% < {NO_SIGNAL:g}x chance",
                    f"model on held-out train images: {ev.probe_test.describe()}")

        # ---- symptoms, measured during the failing run
        run = ev.run
        if run is not None and run.nonfinite:
            e, s, v = run.nonfinite
            add("non_finite_loss", 1.0, SYMPTOM, f"training loss became {v} at epoch {e}, step {s}")
        if run is not None and run.history and run.input_dependence < 1e-3:
            add("collapsed_outputs", 1.0, SYMPTOM, f"{run.input_dependence:.1e} of the logits' variation comes from "
                "the input (std across val images vs across classes): the outputs ignore the input")
        if run is not None and run.dead:
            site, frac = max(run.dead.items(), key=lambda kv: kv[1])
            if frac >= 0.9:
                add("dead_units", frac, SYMPTOM, f"{100 * frac:.0f}% of the units at {site} never active on a batch "
                    "after training", where=[site])
        if run is not None and run.grad_rows:
            _gradient_symptoms(run, add)
        died = [k for k in ("dead_units", "collapsed_outputs") if k in found]
        alive_at_init = chk("init_loss") is not None and chk("init_loss").status == "pass"
        if died and alive_at_init and "learning_rate_too_high" not in found:
            # Sound at init, dead after training: a step too large for the whole data set kills
            # units without diverging on 8 images. Only a control at a lower lr can show it.
            add("learning_rate_too_high", 0.5, CANDIDATE, f"the run left {' and '.join(died)} from a model whose loss at init "
                f"was sound ({chk('init_loss').detail}): a candidate for a control at a lower lr")
            found["learning_rate_too_high"].tentative = not strong_run

    # ---- controls: the strongest evidence, and what puts a root cause first
    for ctl in ev.controls:
        t = ctl["test"]
        text = (f"control run with {ctl['change']}: val top-1 {ctl['acc']:.2f}% vs {ctl['base_acc']:.2f}% "
                f"({t.describe('base run', 'control')}; same data, seed and epochs)")
        base_ex = max(0.0, ctl["base_acc"] - 100 / ev.num_classes)
        ctl_ex = max(1e-9, ctl["acc"] - 100 / ev.num_classes)
        effect = max(0.0, min(1.0, 1 - base_ex / ctl_ex))
        above = ctl["chance"]
        if t.significant and above.significant:  # better than the run, and learning at all
            add(ctl["cause"], evidence_score(t.p_value, effect), CONFIRMED, text, f"control: {above.describe()}")
            found[ctl["cause"]].tentative = False
        elif ctl["cause"] in found:
            c = found[ctl["cause"]]
            c.evidence.append(f"{text}; control: {above.describe()} - not confirmed")
            # No better at all: evidence against this cause. Better but not significantly (a small
            # val set): neither for nor against, so the cause keeps its place.
            c.refuted = c.tier > CONFIRMED and t.diff <= 0
    causes = list(found.values())
    if any(c.id in ROOT and not c.refuted for c in causes):  # a root cause explains the symptoms: they follow it
        for c in causes:
            if c.id in SYMPTOMS:
                c.tier = SYMPTOM
    elif causes:  # nothing upstream explains them: the symptom itself is the finding
        for c in causes:
            c.tier = min(c.tier, CANDIDATE)

    def key(c):
        symptom_rank = SYMPTOMS.index(c.id) if c.id in SYMPTOMS else -1  # root causes before symptoms
        return (c.refuted, c.tier, bool(c.tentative), symptom_rank, -c.score, CAUSES.index(c.id))
    return sorted(causes, key=key)


def _gradient_symptoms(run: RunResult, add) -> None:
    by_step: dict[int, list] = {}
    for r in run.grad_rows:
        by_step.setdefault(r["step"], []).append(r)
    spreads, ratios, finite = [], [], True
    for step, rows in by_step.items():
        g = [r["grad_norm"] for r in rows]
        finite &= all(math.isfinite(v) for v in g)
        live = [v for v in g if math.isfinite(v)]
        if step > 0 and live and max(live) > 0:
            spreads.append(min(live) / max(live))
        ratios += [r["grad_norm"] / (r["weight_norm"] + 1e-12) for r in rows if math.isfinite(r["grad_norm"])]
    if spreads:
        spreads.sort()
        median = spreads[len(spreads) // 2]
        if median < 1e-5:
            add("vanishing_gradients", min(1.0, -math.log10(median + 1e-30) / 10), SYMPTOM,
                f"median over {len(spreads)} sampled steps of smallest/largest layer gradient norm: {median:.1e}")
    top = max(ratios, default=0.0)
    if top > 10:  # non-finite gradients alone are the non-finite loss's business (NaN inputs, say)
        add("exploding_gradients", min(1.0, math.log10(top) / 3), SYMPTOM,
            f"largest gradient/weight norm ratio {top:.2e}" + ("" if finite else "; some gradients non-finite"))


def suggestions_for(causes: list[Cause], ev: Evidence) -> list[str]:
    out = []
    for c in causes:
        lr = ""
        if c.id.startswith("learning_rate"):
            fits = [r for r in ev.fits if r.name.startswith("lr_") and r.fitted]
            lr = f" (the fixed batch fits at lr {fits[0].lr:.3g})" if fits else ""
        out.append(SUGGESTIONS[c.id].format(lr=lr))
    return out
