"""From the watcher's observations (observe.Observer) to causes, each with evidence and file:line.

    causes, status, reasons = find_causes(obs)     # causes ranked, upstream first

Loop faults and the causes-table ids the loop shows as well. Each rule is a measurement with a
threshold stated here; none is a guess from names. Ranked by ORDER: a fault that makes the others
meaningless (labels, the loss, an optimizer that steps nothing) comes first.
`status`: "learning", "stalled" (training loss stays near ln C), "diverged" (non-finite loss),
"not trained" (no optimizer step and no backward seen).
"""
from __future__ import annotations

import math

import torch

from ..diagnosis import thresholds as T
from ..diagnosis.causes import by_id, ids
from ..diagnosis.stats import wilson_interval
from .observe import Observer

STALL = 0.9              # stalled: mean training loss over the last fifth of steps above 0.9 ln C
COLLAPSE = 1e-3          # lr_schedule_collapsed: lr under 1e-3 of its start ...
EARLY = 0.1              # ... within the first tenth of the run
UNSHUFFLED = 0.5         # label entropy within batches below half of what shuffled batches reach
MAJORITY = 0.5           # a per-step fault must show on at least half of the checked steps

# Every id below is an entry of the causes table (diagnosis/causes.py: loop faults, loss faults and
# the ones the loop shows as well), which holds their suggestions. The watcher ranks them its own
# way: in a user's loop, a fault upstream (labels, the loss, an optimizer that steps nothing) makes
# the others meaningless, whatever the diagnosis's table order.
ORDER = ("bad_labels", "loss_ignores_labels", "loss_unbounded", "loss_saturates", "outputs_are_probabilities",
         "optimizer_not_tracking_model", "optimizer_not_stepping", "gradients_not_zeroed", "train_in_eval_mode",
         "lr_schedule_collapsed", "batches_not_shuffled", "train_labels_unlearnable", "eval_in_train_mode",
         "input_not_normalized", "non_finite_loss")
assert set(ORDER) <= set(ids()), "a watch cause missing from the causes table"


def suggestion(cause_id: str) -> str:
    return by_id(cause_id).suggestion.format(lr="")


def _cause(cid, evidence, where, score=1.0) -> dict:
    return {"id": cid, "score": round(score, 3), "evidence": list(evidence), "where": list(dict.fromkeys(w for w in where if w))}


def learning_status(obs: Observer, losses: torch.Tensor, reasons: list) -> str:
    steps = sum(o.steps for o in obs.opts.values())
    if not steps and not obs.backwards:
        reasons.append("no optimizer step and no backward seen")
        return "not trained"
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        reasons.append(f"training loss became {float(losses[bad[0, 0]])} at step {int(bad[0, 0])}")
        return "diverged"
    if obs.num_classes and len(losses) >= 10:
        ln_c = math.log(obs.num_classes)
        tail = float(losses[-max(2, len(losses) // 5):].mean())
        reasons.append(f"training loss {float(losses[:max(1, len(losses) // 10)].mean()):.3f} over the first tenth of "
                       f"{len(losses)} steps, {tail:.3f} over the last fifth (ln C = {ln_c:.3f})")
        return "stalled" if tail > STALL * ln_c else "learning"
    reasons.append(f"{len(losses)} training loss values seen: too few to judge learning")
    return "undecided"


def find_causes(obs: Observer) -> tuple[list, str, list]:
    reasons: list = []
    losses = obs.losses()
    status = learning_status(obs, losses, reasons)
    c = obs.num_classes or next((m.width for m in obs.models.values() if m.width), None)
    found: dict[str, dict] = {}

    def add(cid, evidence, where=(), score=1.0):
        found.setdefault(cid, _cause(cid, evidence, where, score))

    # ---- labels reaching the loss
    if c and obs.label_ranges:
        lo = min(r[0] for r in obs.label_ranges)
        hi = max(r[1] for r in obs.label_ranges)
        site = next(r[2] for r in obs.label_ranges if r[0] < 0 or r[1] >= c) if (lo < 0 or hi >= c) else None
        if site:
            one_based = " (1-based: subtract 1)" if lo >= 1 and hi == c else ""
            add("bad_labels", [f"labels reaching the loss span {lo}..{hi}, outside [0, {c}) for {c} classes{one_based}"],
                [site])
    # ---- the loss, each call site once
    for site, call in obs.loss_calls.items():
        chk, model = call["check"], call["model"]
        if call["input_kind"] == "probabilities":
            if call["from_model"] or (model is not None and model.output_kind == "probabilities"):
                add("outputs_are_probabilities", [f"the model {model.name if model else ''} returns probabilities "
                    f"(rows sum to 1) and {call['func']} at {site} applies log-softmax to them again"],
                    [model.softmax_site if model else None, site])
            else:
                add("loss_saturates", [f"{call['func']} at {site} receives probabilities (rows sum to 1), not logits: "
                    "log-softmax of probabilities stays within 1 of ln C whatever the model does"],
                    [call["softmax_site"], site])
        if call["func"] == "F.nll_loss" and call["input_kind"] == "logits":
            add("loss_unbounded", [f"F.nll_loss at {site} receives raw logits (logsumexp far from 0): -logit "
                "falls without bound"], [site])
        if chk.status == "fail":
            add(chk.data["fault"], [chk.detail + (f" (options {call['options']})" if call["options"] else "")],
                chk.data["where"] + [site])
    # ---- optimizers
    steps = sum(o.steps for o in obs.opts.values())
    for o in obs.opts.values():
        if o.not_tracking:
            name, share, site, model_site = o.not_tracking[0]
            add("optimizer_not_tracking_model", [f"{o.name} steps parameters of which {100 * share:.0f}% belong to the "
                f"model {name} that runs the forward passes (first forward at {model_site}), on "
                f"{len(o.not_tracking)} of {o.sampled_steps} checked steps: was the model re-created after its "
                "optimizer?"], [site, model_site])
        elif o.sampled_steps and o.empty_steps >= max(2, MAJORITY * o.sampled_steps):
            add("optimizer_not_stepping", [f"{o.name}.step() ran with no gradient on any parameter on {o.empty_steps} "
                f"of {o.sampled_steps} checked steps"], [o.site])
    if obs.backwards >= 3 and steps == 0:
        add("optimizer_not_stepping", [f"{obs.backwards} backward passes and no optimizer step"], [obs.backward_site])
    if obs.zero_checks and obs.not_zeroed >= max(2, MAJORITY * obs.zero_checks):
        add("gradients_not_zeroed", [f"at {obs.not_zeroed} of {obs.zero_checks} backward passes after an optimizer "
            "step, .grad still held the previous step's gradient (same tensor, unchanged since the step): "
            "gradients add up across steps"], [obs.not_zeroed_site])
    # ---- train / eval modes
    for m in obs.models.values():
        if m.train_in_eval and len(m.train_in_eval) >= MAJORITY * max(1, obs.backwards):
            add("train_in_eval_mode", [f"{len(m.train_in_eval)} of {obs.backwards} backward passes went through "
                f"{m.name} in eval mode (model.training False): dropout off, BatchNorm on running statistics"],
                [m.train_in_eval[0]])
        if m.eval_in_train:
            add("eval_in_train_mode", [f"{len(m.eval_in_train)} no-grad forward passes of {m.name} in train mode: "
                "dropout still drops and BatchNorm updates its statistics during evaluation"],
                [m.eval_in_train[0]], score=0.8)
    # ---- the lr schedule
    for o in obs.opts.values():
        lrs = [v for v in o.lrs if math.isfinite(v)]
        if len(lrs) >= 10 and lrs[0] > 0:
            early = lrs[:max(1, math.ceil(EARLY * len(lrs)))]
            low = min(early)
            if low < COLLAPSE * lrs[0]:
                calls = sum(obs.scheduler_calls.values())
                per = (f"the scheduler is stepped per batch ({calls} scheduler.step() calls for {o.steps} optimizer "
                       "steps)") if calls >= 0.5 * o.steps else f"{calls} scheduler.step() calls for {o.steps} steps"
                add("lr_schedule_collapsed", [f"lr fell from {lrs[0]:.3g} to {low:.3g} within the first "
                    f"{len(early)} of {len(lrs)} steps; {per}"], list(obs.scheduler_calls) or [o.site])
    # ---- batches
    if obs.entropy_ratios:
        ratio = sum(obs.entropy_ratios) / len(obs.entropy_ratios)
        if ratio < UNSHUFFLED:
            add("batches_not_shuffled", [f"label entropy within {len(obs.entropy_ratios)} sampled training batches: "
                f"{100 * ratio:.0f}% of what shuffled batches of that size reach"],
                [r[2] for r in obs.label_ranges[:1]], score=1 - ratio)
    bad_inputs = _nonfinite_inputs(obs)
    if status in ("stalled", "diverged"):
        _stalled_causes(obs, c, add, label_signal=status == "stalled")
    if status == "diverged":
        extra = (f"; {bad_inputs[0]} of {bad_inputs[1]} sampled training images hold NaN or inf"
                 if bad_inputs[0] else "; the sampled training images are finite")
        add("non_finite_loss", [reasons[-1] + extra], [obs.backward_site], score=0.5)
    causes = sorted(found.values(), key=lambda d: ORDER.index(d["id"]))
    return causes, status, reasons


def _pairs(obs: Observer) -> tuple[torch.Tensor, torch.Tensor]:
    if not obs.pairs_x:
        return torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)
    return torch.cat(obs.pairs_x).cpu(), torch.cat(obs.pairs_y).cpu()


def _nonfinite_inputs(obs: Observer) -> tuple[int, int]:
    feats, _ = _pairs(obs)
    return int((~torch.isfinite(feats).all(1)).sum()), len(feats)


def _stalled_causes(obs: Observer, c, add, label_signal: bool) -> None:
    """Causes that need a run that does not learn: inputs far off, labels that carry no signal."""
    checks = [k for m in obs.models.values() for k in m.input_checks]
    if checks and all(k.data["off"] for k in checks):
        add("input_not_normalized", [checks[0].detail], score=0.5)
    feats, y = _pairs(obs)
    finite = torch.isfinite(feats).all(1)
    feats, y = feats[finite], y[finite]
    if label_signal and c and len(y) >= 20 * c:
        k = leave_one_out_hits(feats, y)
        hi = wilson_interval(k, len(y))[1]
        if hi < T.NO_SIGNAL / c:
            add("train_labels_unlearnable", [f"1-NN on 8x8 pixels of the (input, label) pairs that reached the loss, "
                f"leave-one-out: {k}/{len(y)} right, upper 95% bound {100 * hi:.2f}% < {T.NO_SIGNAL:g}x chance: the "
                "labels do not belong to the images they are paired with (labels from another loader or batch?)"],
                [r[2] for r in obs.label_ranges[:1]], score=1 - hi * c / T.NO_SIGNAL)


def leave_one_out_hits(feats: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> int:
    hits = 0
    for i in range(0, len(y), chunk):
        sims = feats[i:i + chunk] @ feats.T
        rows = torch.arange(len(sims))
        sims[rows, rows + i] = -math.inf
        hits += int((y[sims.argmax(1)] == y[i:i + chunk]).sum())
    return hits
