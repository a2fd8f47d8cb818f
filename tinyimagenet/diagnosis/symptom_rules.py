"""The symptom rules: evidence read from the failing short run itself (a non-finite loss, outputs
that ignore the input, dead units, vanishing or exploding gradients), judged before the causes
from fit experiments that read them (rules.judge_lr_high reads dead units).

    from tinyimagenet.diagnosis.symptom_rules import judge_vanishing, gradient_steps
    judge_vanishing(judging)    # adds "vanishing_gradients" to judging.found when the run shows it

Their ids and order are in the causes table (causes.py); rules.py re-exports them. A symptom is
never a root cause by itself (tier SYMPTOM); thresholds come from thresholds.py.
"""
from __future__ import annotations

import math

from . import thresholds as T
from .judging import SYMPTOM, Judging

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
