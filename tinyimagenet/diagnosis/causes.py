"""The table of causes: one entry per cause the diagnosis can name, and everything about it.

    from tinyimagenet.diagnosis.causes import CAUSES, by_id, roots, symptoms
    by_id("dropout_too_strong").suggestion

Each `Cause` entry says what kind of fault it is, what measures it, which rule turns the
measurements into evidence (`judge`), which one-change fixed-batch experiments test it (`fits`),
which change its control run applies (`control`), what to do about it (`suggestion`), for a
symptom the root causes that produce it, and which changes the headroom screen tries for a run
that learns (`screen`: mostly the control's own change, when it applies). verdict.py, run.py,
headroom.py, report.py and the README read ids, rules, changes and suggestions from here only:
adding a cause is one entry below (its functions in rules.py, symptom_rules.py for a symptom,
screens.py for its headroom candidates; all read here through rules.py) plus its README row,
which tests/test_causes_table.py checks against this table.

Table order matters twice: it is the order the fit experiments run in (lr up before lr down,
which reads the up-sweep), and the last tie-break of the ranking. Symptoms are judged before
roots, because a root's rule may read them (units dead after training point at the lr).

Kinds: "loss" entries are found by loss_checks.py before training (decisive: run.py stops there);
"loop" entries only by the watcher (tinyimagenet.watch, a layer above), since diagnose() trains in
its own loop. The watcher reads every suggestion from here and ranks in its own order
(watch/rules.py ORDER: in a user's loop, a fault upstream makes the others meaningless).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import rules as R
from . import thresholds as T

KINDS = ("root", "loop", "loss", "input", "symptom")  # every kind but "symptom" is a root cause


@dataclass(frozen=True)
class Cause:
    id: str                              # the name in reports and JSON, e.g. "dropout_too_strong"
    kind: str                            # one of KINDS
    measured_by: str                     # what measures it (README's "measurement" column)
    experiment: str                      # the fit change and the control's fix, in words ("—": none)
    suggestion: str                      # what to do; "{lr}" is filled with the lr that fitted, if any
    judge: Callable                      # rules.Judging -> None: adds this cause's evidence
    fits: Callable | None = None         # rules.FitPlan -> [FitRun]: its one-change fits, run when the base fit fails
    control: Callable | None = None      # Evidence -> Change | None: the fix its control run applies
    roots: tuple = ()                    # symptom: the root causes that produce it, upstream first
    screen: Callable | None = None       # rules.ScreenPlan -> [Change]: what the headroom screen tries (headroom.py)

    @property
    def is_root(self) -> bool:
        return self.kind != "symptom"

    def screen_changes(self, ev, shuffled: bool) -> list:
        """The headroom screen's candidates for this cause on a run that learns (most: its control's change)."""
        return self.screen(R.ScreenPlan(ev, shuffled, self.control)) if self.screen is not None else []


CAUSES: tuple[Cause, ...] = (
    # ------------------------------------------------------------------------------ root causes
    Cause("bad_labels", "root",
          "labels out of `[0, C)`, 1-based, one-hot, or one class in a split: decisive, before training", "—",
          "Give labels as class indices 0..C-1 (not one-hot, not 1-based), and check that each split holds every class.",
          R.judge_bad_labels),
    Cause("val_overlaps_train", "input",
          f"user data: {T.OVERLAP_SHARE:.0%} or more of the val images are exact copies of train images (hashes of "
          "the image tensors): decisive, whatever training shows; val accuracy is then no evidence of learning", "—",
          "Make train and val disjoint: one index list per split (Subset or a sampler each), split before any sampling.",
          R.judge_val_overlap),
    # the user's loss, measured on synthetic logits before training (loss_checks.py); the watcher
    # also tests the loss call it sees, with the call's own options
    Cause("loss_saturates", "loss",
          "your loss (`--loss`) on synthetic logits with margin M = 0..128 on the true class stays above ½ ln C "
          "at its best (a softmax before cross-entropy); names the softmax call: decisive, before training", "—",
          "Give the loss raw logits: remove the softmax before cross-entropy (it applies log-softmax itself).",
          R.judge_loss("loss_saturates")),
    Cause("loss_ignores_labels", "loss",
          "your loss is the same with every label wrong (`label_smoothing=1.0`): decisive, before training", "—",
          "The labels never reach the loss: check label_smoothing (< 1) and that the targets are passed.",
          R.judge_loss("loss_ignores_labels")),
    Cause("loss_unbounded", "loss",
          "your loss keeps falling below 0 as the margin grows (NLL on raw logits): decisive, before training", "—",
          "Use F.cross_entropy on logits, or F.nll_loss on F.log_softmax(logits): NLL on raw logits has no floor.",
          R.judge_loss("loss_unbounded")),
    Cause("outputs_are_probabilities", "root",
          "outputs >= 0 with rows summing to 1 within 1e-4: decisive (log-softmax outputs pass)", "log of the outputs",
          "Return logits from forward(): drop the final softmax (cross-entropy applies log-softmax itself).",
          R.judge_probabilities,
          fits=R.one_change("log_outputs", lambda p: p.checks["output_kind"].data["kind"] == "probabilities",
                            log_outputs=True),
          control=R.control_of(log_outputs=True)),
    Cause("stochastic_eval", "root",
          "two eval-mode passes over one batch differ; names the dropout still active in eval mode",
          "dropout off in eval mode only",
          "Pass training=self.training to functional dropout (or use nn.Dropout), so eval mode is deterministic.",
          R.judge_stochastic_eval, control=R.control_of(eval_dropout_off=True)),
    Cause("val_labels_misaligned", "root",
          "val labels vs `val_annotations.txt` (repo data, decisive); 1-NN within train above 1-NN on val "
          "(Fisher) while val is at chance", "model: held-out train above val (Fisher) while val is at chance",
          "Val labels must come from val/val_annotations.txt with train's sorted-wnid mapping.",
          R.judge_val_misaligned),
    Cause("train_labels_unlearnable", "root",
          "leave-one-out 1-NN within train: the given labels beat the check's own shuffles of them by under "
          "1 point (or 0.5x chance) with 95% confidence (decisive)",
          "model on held-out train at chance",
          "Train labels carry no signal: check that each class folder holds that class's images.",
          R.judge_unlearnable),
    Cause("learning_rate_too_low", "root", "—",
          "lr x10.. fits or removes >= 25% of ln C more loss; or a stalled fit whose loss falls at every x10 "
          "(dose-response); control at the best lr",
          "Raise the learning rate{lr} (for Adam, 5e-4 is the seed's next step).",
          R.judge_lr_low, fits=R.fit_lr_up, control=R.control_raise_lr, screen=R.screen_lr(T.HEADROOM_LR_UP)),
    Cause("learning_rate_too_high", "root",
          "base fit diverges or the run's loss turns non-finite; or units dead / outputs collapsed after "
          "training from a sound init", "lr /10.. fits or removes the margin; control at the best lr (else /100)",
          "Lower the learning rate{lr}, and warm it up over the first epochs.",
          R.judge_lr_high, fits=R.fit_lr_down, control=R.control_lower_lr_or_fallback,
          screen=R.screen_lr(T.HEADROOM_LR_DOWN)),
    Cause("dropout_too_strong", "root",
          "every dropout call and its rate (no cause from a rate or a layer name)",
          "all dropout off (module and functional)",
          "Remove dropout from conv stages and blocks; keep one Dropout(0.2-0.3) in the classifier, or none.",
          R.judge_dropout, fits=R.one_change("no_dropout", lambda p: bool(p.checks["dropout_sites"].data["sites"]),
                                             no_dropout=True),
          control=R.control_of(no_dropout=True), screen=R.screen_control("no_dropout", R.has_dropout)),
    Cause("weight_decay_too_strong", "root", "largest weight decay in the optimizer", "weight decay 0",
          "Lower the weight decay (5e-4 for SGD; AdamW 0.05 or less).",
          R.judge_weight_decay, fits=R.one_change("no_weight_decay", lambda p: p.checks["weight_decay"].data["max"] > 0,
                                                  weight_decay_zero=True),
          control=R.control_of(weight_decay_zero=True),
          screen=R.screen_control("no_weight_decay", R.has_weight_decay)),
    Cause("input_not_normalized", "root", "per-channel mean/std of the actual batches",
          "inputs standardized with the measured mean/std",
          "Standardize inputs per channel (ToTensor() then Normalize(mean, std)).",
          R.judge_input, fits=R.fit_standardized, control=R.control_standardize,
          screen=R.screen_control("standardized", R.inputs_off)),
    Cause("frozen_parameters", "root", "parameters unchanged after the fit, and why",
          "every parameter trainable (`requires_grad` / optimizer); a `detach` is reported, not fixable from outside",
          "Give every parameter to the optimizer with requires_grad=True, and remove the detach().",
          R.judge_frozen, fits=R.one_change("unfreeze", lambda p: R.movable_frozen(p.base), unfreeze=True),
          control=R.control_unfreeze, screen=R.screen_control("unfreeze", R.frees_parameters)),
    Cause("batches_not_shuffled", "root", "label entropy within batches < 50% of shuffled batches'", "batches shuffled",
          "Shuffle the training batches (DataLoader(..., shuffle=True)).",
          R.judge_unshuffled, control=R.control_of(shuffle=True), screen=R.screen_control("shuffle", R.not_shuffled)),
    # --------------- faults of the user's own training loop: measured only by the watcher
    # (python -m tinyimagenet.watch SCRIPT.py; rules in tinyimagenet/watch/rules.py, which ranks them)
    Cause("gradients_not_zeroed", "loop",
          "watcher: at the first backward after a step, `.grad` is the same tensor, unmodified since the step, "
          "on at least half of the steps", "—",
          "Call optimizer.zero_grad() once per step, before loss.backward(): gradients accumulate otherwise.",
          R.judge_in_own_loop),
    Cause("optimizer_not_stepping", "loop",
          "watcher: backward passes and no step; or steps with no gradient on any parameter (half of the "
          "checked steps)", "—",
          "Call optimizer.step() after loss.backward(), on an optimizer built from this model's parameters.",
          R.judge_in_own_loop),
    Cause("optimizer_not_tracking_model", "loop",
          "watcher: under half of the parameters used by the forward passes are in the optimizer that steps "
          "(a model re-created after its optimizer)", "—",
          "Build the optimizer after the model, from model.parameters() of the model you train "
          "(re-create the optimizer whenever the model is re-created).",
          R.judge_in_own_loop),
    Cause("train_in_eval_mode", "loop",
          "watcher: half of the backward passes go through a model with dropout/BatchNorm in eval mode", "—",
          "Call model.train() before the training loop (and again after each evaluation).",
          R.judge_in_own_loop),
    Cause("eval_in_train_mode", "loop",
          "watcher: no-grad forwards of a model with dropout/BatchNorm in train mode", "—",
          "Call model.eval() before evaluating (dropout and BatchNorm behave differently), then model.train().",
          R.judge_in_own_loop),
    Cause("lr_schedule_collapsed", "loop",
          "watcher: lr under 1e-3 of its start within the first tenth of the steps; says whether "
          "`scheduler.step()` runs per batch", "—",
          "Step the scheduler once per epoch if it was built for epochs (or give it the step count).",
          R.judge_in_own_loop),
    # ------------------------------------------- symptoms, in causal order (upstream first): the order ranks them
    Cause("vanishing_gradients", "symptom",
          "median smallest/largest positive layer gradient norm < 1e-5 over >= 5 sampled steps of the run, "
          "steps with exploding gradients left out", "—",
          "Use BatchNorm or residual connections, ReLU rather than sigmoid/tanh, and Kaiming initialization.",
          R.judge_vanishing, roots=("learning_rate_too_high",)),
    Cause("exploding_gradients", "symptom", "a gradient/weight norm ratio > 10 (non-finite gradients noted), the run read at >= 5 sampled steps; "
          "scored by how many exceed it", "—",
          "Lower the learning rate, clip gradients, check the initialization.",
          R.judge_exploding, roots=("learning_rate_too_high", "input_not_normalized")),
    Cause("non_finite_loss", "symptom", "the run's loss turns NaN/inf: epoch and step", "control at the best lower lr",
          "Lower the learning rate or clip gradients; check the loss for log(0) and the inputs for NaN.",
          R.judge_non_finite, control=R.control_lower_lr,
          roots=("learning_rate_too_high", "input_not_normalized")),
    Cause("collapsed_outputs", "symptom",
          "< 0.1% of the logits' variation comes from the input after training (std of the row-centred logits "
          "across val images against their std across classes)", "—",
          "The outputs do not depend on the input: check the initialization (biases, dead ReLUs) and the forward path.",
          R.judge_collapsed, roots=("learning_rate_too_high", "dropout_too_strong", "frozen_parameters")),
    Cause("dead_units", "symptom", ">= 90% of a ReLU site's units never active on a batch after training", "—",
          "Lower the learning rate; check the initialization and biases (or add BatchNorm).",
          R.judge_dead, roots=("learning_rate_too_high",)),
)

_BY_ID = {c.id: c for c in CAUSES}
assert len(_BY_ID) == len(CAUSES), "duplicate cause id"
assert all(c.kind in KINDS for c in CAUSES), "unknown kind"
assert all(r in _BY_ID and _BY_ID[r].is_root for c in CAUSES for r in c.roots), "a symptom's root is not a root"


def by_id(cause_id: str) -> Cause:
    return _BY_ID[cause_id]


def roots() -> tuple[Cause, ...]:
    return tuple(c for c in CAUSES if c.is_root)


def symptoms() -> tuple[Cause, ...]:
    return tuple(c for c in CAUSES if not c.is_root)


def ids() -> tuple[str, ...]:
    return tuple(c.id for c in CAUSES)


def markdown_table() -> str:
    """The README's causes table, rendered from this table (tests/test_causes_table.py compares)."""
    rows = ["| cause | kind | measurement | experiment (fit, and the control's fix) | roots (symptoms) |",
            "|---|---|---|---|---|"]
    for c in CAUSES:
        roots_ = ", ".join(f"`{r}`" for r in c.roots) or "—"
        rows.append(f"| `{c.id}` | {c.kind} | {c.measured_by} | {c.experiment} | {roots_ if not c.is_root else '—'} |")
    return "\n".join(rows)
