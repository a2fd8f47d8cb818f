"""The diagnosis figures draw what the report says (issue 16): every control run, a diverged run
on a log loss axis with its divergence marked, an all-zero gradient flow in words, diverged fits
marked where they left the axis. A hand-made report with each case; the figures' artists are read
back, no pixels compared."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

from tinyimagenet import plotting  # noqa: E402


def _report():
    ln_c = math.log(200)
    controls = [{"cause": "learning_rate_too_high", "change": "lr x0.01", "val_acc": 11.25, "confirmed": True,
                 "epochs": [{"epoch": 1, "train_loss": 5.0, "val_acc": 4.0}, {"epoch": 2, "train_loss": 4.5, "val_acc": 11.25}]},
                {"cause": "input_not_normalized", "change": "inputs standardized", "val_acc": 24.5, "confirmed": True,
                 "epochs": [{"epoch": 1, "train_loss": 4.0, "val_acc": 12.0}, {"epoch": 2, "train_loss": 3.5, "val_acc": 24.5}]}]
    model = {"verdict": "FAIL", "config": {"dropout": "as given"}, "causes": [{"id": "input_not_normalized"}],
             "controls": controls, "nonfinite": [2, 7, float("nan")],
             "epochs": [{"epoch": 1, "train_loss": 1.6e9, "val_loss": 3e4, "val_acc": 0.5}],
             "gradient_flow": [{"step": 40, "layer": f"l{i}.weight", "grad_norm": 0.0, "weight_norm": 1.0} for i in range(3)],
             "fit": [{"name": "base", "lr": 0.1, "losses": [5.3, 40.0, 900.0], "diverged": True, "nonfinite": False},
                     {"name": "lr_div10", "lr": 0.01, "losses": [5.3, 5.2], "nonfinite": True},
                     {"name": "standardized", "lr": 0.1, "losses": [5.3, 2.0, 0.3], "nonfinite": False},
                     {"name": "raw_start", "lr": 0.1, "losses": [22.4, 9.0, 2.4], "diverged": False}]}
    return {"dataset": {"num_classes": 200, "ln_num_classes": ln_c}, "models": {"RawPixelsNet": model}}


def _texts(fig):
    ax = fig.axes[0]
    return [t.get_text() for t in ax.get_legend().get_texts()] + [t.get_text() for t in ax.texts]


def test_val_accuracy_draws_every_control_top_cause_first():
    fig = plotting.val_accuracy(_report())
    labels = [t for t in _texts(fig) if "control for" in t]
    assert len(labels) == 2 and "input_not_normalized" in labels[0] and "lr x0.01" in labels[1], labels
    assert any("diverged at epoch 2, step 7" in t for t in _texts(fig))


def test_loss_axis_is_log_and_divergence_marked():
    fig = plotting.loss_curves(_report())
    assert fig.axes[0].get_yscale() == "log"
    assert any("non-finite at epoch 2, step 7" in t for t in _texts(fig))


def test_all_zero_gradient_flow_is_said_in_words():
    fig = plotting.gradient_flow(_report())
    ax = fig.axes[0]
    assert any("exactly 0" in t.get_text() for t in ax.texts)
    assert not ax.lines, "no points drawn for zero gradients"


def test_diverged_fits_are_marked_where_they_left():
    fig = plotting.fit_curves(_report())
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("base") and "diverged at step 2" in t for t in labels), labels
    assert any(t.startswith("lr_div10") and "diverged at step 3" in t for t in labels), labels
    assert not any(t.startswith(("standardized", "raw_start")) and "diverged" in t for t in labels), labels
    assert fig.axes[0].get_ylim()[1] > 22.4, "the axis holds a fit that starts high (raw pixels) but does not diverge"
