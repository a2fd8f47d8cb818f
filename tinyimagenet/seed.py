"""The seed report's expectations for val top-1 on Tiny ImageNet (200 classes, full train split).

Plain data, no torch: the diagnosis verdict, the plots and `python -m tinyimagenet.results` all
read these, so they live at the bottom of the import graph.

    from tinyimagenet.seed import SEED_THRESHOLDS, SEED_MARKERS, SEED_BAND

They only mean something for the 200-class data set: `applies(num_classes)` says whether to use them.
"""
from __future__ import annotations

# Val top-1 (%) that a healthy model must exceed after epoch N (the seed's "> 1% after epoch 1" ...).
SEED_THRESHOLDS = {1: 1.0, 5: 5.0, 10: 10.0}

# The seed's expected markers per epoch as (low, high) val top-1 %; high None = "more than low".
# Epoch 50 is the seed's 35-50% for a finished 50-epoch run.
SEED_MARKERS = {1: (1.0, None), 5: (5.0, None), 10: (10.0, None), 50: (35.0, 50.0)}

# The seed's table of expected (min, max) val top-1 % per epoch (a wider view of the same claim).
SEED_BAND = {1: (1, 2), 5: (4, 8), 10: (8, 15), 30: (25, 35), 50: (35, 50)}

# The data set the numbers are about: Tiny ImageNet's 200 classes.
SEED_NUM_CLASSES = 200


def applies(num_classes) -> bool:
    """True when the seed's numbers mean something for this data (the 200-class Tiny ImageNet)."""
    return num_classes == SEED_NUM_CLASSES


def marker_label(epoch: int) -> str:
    """'>1%' or '35-50%': how the seed states its expectation at `epoch` (a key of SEED_MARKERS)."""
    lo, hi = SEED_MARKERS[epoch]
    return f">{lo:g}%" if hi is None else f"{lo:g}-{hi:g}%"
