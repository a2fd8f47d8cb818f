"""Every threshold of the diagnosis, each stated once, with why it has that value.

    from tinyimagenet.diagnosis import thresholds as T
    if gain >= T.FIT_MARGIN: ...

Read by measure.py (checks), loss_checks.py (the user's loss), experiments.py (fits and the short
run), rules.py (evidence -> causes), verdict.py (learning, tiers) and run.py (controls). No code here; changing a value
changes the diagnosis everywhere it is used, and nowhere else needs editing.
"""
from __future__ import annotations

# ------------------------------------------------------------------------------ statistics
# The one significance level. Strict because the diagnosis looks many times (every epoch x model x
# probe and val x interventions): at 0.05, 25 looks flag some chance-level model with probability
# 72%; at 1e-3 even 50 looks stay under 5% (Bonferroni).
ALPHA = 1e-3
# Evidence strength saturates here: telling p = 1e-15 from 1e-30 would rank sample sizes, not causes.
P_FLOOR = 1e-12
POWER_NEEDED = 0.8       # conventional power: below it a non-significant val cannot be called "stuck"
POWER_EFFECT = 2.0       # "stuck" needs that power to see this multiple of chance ...
STUCK_MAX = 1.5          # ... and an accuracy below this multiple (22% on 10 classes, p = 1e-3, is not stuck)

# ---------------------------------------------------------------------- measurements (measure.py)
INPUT_MEAN_MAX = 1.0     # |channel mean| above this: not standardized (standardized inputs sit near 0)
INPUT_STD_MIN = 0.2      # channel std below this: [0,1]-scaled pixels have ~0.25, standardized ~1
INPUT_STD_MAX = 5.0      # channel std above this: raw 0-255 pixels have ~60
INPUT_SCALE_RAW = 5.0    # off by this factor (mean, std or 1/std): raw pixels, a candidate even without a fit gain
ENTROPY_RATIO_MIN = 0.5  # batch label entropy under half of shuffled batches': sorted batches (sorted: 0)
PROB_ROW_TOL = 1e-4      # outputs >= 0 with rows summing to 1 within this are probabilities
EVAL_DIFF_REL = 1e-5     # two eval passes differing by more than this share of the output: stochastic eval
INIT_LOSS_TOL = 0.25     # loss at init within max(1, this x ln C) of ln C: a sound start
LABEL_SIGNAL_QUERIES = 5000  # leave-one-out 1-NN queries within train: thousands, not a small slice
LABEL_SHUFFLES = 4       # the label check's own shuffles of the train labels: the "no signal" arm, 4x the queries
OVERLAP_SHARE = 0.01     # val images that are exact copies of train images: decisive from this share up
                         # (a leaky split copies far more; 1% of val is already a measurable bias)

# ------------------------------------------------------------ the user's loss (loss_checks.py)
LOSS_MARGINS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)  # true-class margins the loss is called at
LOSS_LABEL_MARGIN = 4.0  # the margin at which right and wrong labels must give different losses
LOSS_SATURATED = 0.5     # x ln C: a best-case loss above this cannot reward being right (softmax before CE)
LOSS_IGNORES_TOL = 1e-5  # relative change in the loss under wrong labels that counts as "unchanged"

# ------------------------------------------------------------------ fixed-batch fit (experiments.py)
FIT_TARGET = 0.1         # "fits" = loss below 10% of ln C: a healthy net memorizes a few images
FIT_DIVERGED = 1.1       # final fit loss above 1.1x the initial one: diverged
FIT_EXPLODED = 1e3       # loss above 1000x max(1, initial): stop the fit, it has exploded
LR_UP_DECADES = 5        # the lr sweep goes up to x10^5 ...
LR_UP_MIN_DECADES = 3    # ... always to x1000, further only while each x10 still lowers the loss
LR_DOWN_DECADES = 3      # down to /1000 when the base fit diverges (one step otherwise)
CONTROL_LR_FALLBACK = 0.01  # lr too high with no fit to go by: the control tries two decades down

# ----------------------------------------------------------------------------- the short run
GRAD_EVERY = 10          # per-layer gradient norms sampled every this many steps at most ...
GRAD_SAMPLES = 20        # ... and more often on short runs, to get about this many samples per run
GRAD_MIN_STEPS = 5       # a gradient rule needs this many sampled steps: one step is one batch, not a trend
SYNC_EVERY = 20          # the loss is checked for non-finite values every this many steps
FULL_TRAIN_PER_CLASS = 500  # the official train split; "stuck with no cause" fails only there

# --------------------------------------------------------------------------- evidence (rules.py)
MIN_GAIN = 0.1           # below this share of ln C a one-change fit is no evidence, not even for a control
FIT_MARGIN = 0.25        # a change must remove >= 25% of ln C more fixed-batch loss than the base fit
STALLED = 0.05           # a base fit that removes < 5% of its initial loss has stalled
FROZEN_SHARE = 0.1       # frozen parameters holding >= 10% of the model fail a run that does not learn
FROZEN_DECISIVE = 0.5    # ... and decisively when they hold half of it or more
# Labels "carry no signal" when the 1-NN leave-one-out hits with them beat the check's own shuffles
# of them by less than NO_SIGNAL_POINTS (upper 95% bound of the difference), or (NO_SIGNAL - 1) x chance
# where that is larger. Measured on the real subset at 20/class (README): true labels beat the
# shuffles by ~2 points on 200 classes; shuffled labels by 0 +- 0.3 points.
NO_SIGNAL = 1.5
NO_SIGNAL_POINTS = 0.01
COLLAPSED = 1e-3         # < 0.1% of the logits' variation from the input: the outputs ignore it
DEAD_SHARE = 0.9         # >= 90% of a ReLU site's units never active on a batch: dead units
VANISHING = 1e-5         # median smallest/largest layer gradient norm below this: vanishing gradients
EXPLODING = 10.0         # a gradient/weight norm ratio above this: exploding gradients
DIED_LR_SCORE = 0.5      # the "sound at init, dead after training" lr-too-high candidate's score

# ------------------------------------------------------------------ controls (verdict.py, run.py)
# A control confirms its cause when it removes what that cause explains (verdict.Control):
RUN_DIVERGED = 10.0      # a run whose loss window exceeds this x ln C has diverged (a sound start is ~1x)
# ... the control's loss must then stay finite, under that bound, and end below its start and ln C;
# a run "stuck at ln C" has a val loss not significantly below ln C (one-sided z on per-image losses,
# ALPHA), and its control's val loss must be significantly below both ln C and the base run's.
# ------------------------------------------------------------------ extension before INCONCLUSIVE
EXTEND_EPOCHS = 1        # a control that trends right but is not significant: both arms get this many more epochs
EXTEND_BUDGET_S = 600.0  # default budget (s) for that extension; DiagnosisConfig.extend_budget_s overrides
# ---------------------------------------------------------------- headroom screen (headroom.py)
# The seed report's own bar for a 200-class model on the full train split: val top-1 above these
# percentages after these epochs. A run at or under it gets the screen by default.
SEED_BAR = {1: 1.0, 5: 5.0, 10: 10.0}
SEED_BAR_CLASSES = 200
HEADROOM_BUDGET = 2      # full control runs at most: each costs one training run (the CLI's default)
HEADROOM_SCREEN_EPOCHS = 1  # epochs of each surviving change's screen run, ranked against the base run there
HEADROOM_LR_UP = (10.0,)        # lr factors screened for learning_rate_too_low: one decade up ...
HEADROOM_LR_DOWN = (0.1, 0.01)  # ... and for learning_rate_too_high two down (an lr 100x too high needs /100)
# Neither fixed-batch fit fits: the change's fit is "worse" only when it ends higher by this share of
# the initial loss (nearly equal fits are a tie, not a reason to drop the change unscreened).
HEADROOM_FIT_TOLERANCE = 0.02
