"""The headroom screen: a model that learns, but slowly because of a planted fault, gets a finding.

    pytest -q tests/test_headroom.py        # a few minutes on a shared 2-core CPU

Written the way users write models and data (own nn.Module, TensorDataset, DataLoader, Adam).
Synthetic data: class prototypes plus heavy noise at 16x16, so a small CNN learns within two
epochs but not to 100%, and a slowdown shows in val accuracy.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from tinyimagenet.diagnosis import DiagnosisConfig, diagnose, format_model
from tinyimagenet.diagnosis import measure
from tinyimagenet.diagnosis import thresholds as T
from tinyimagenet.diagnosis.causes import by_id
from tinyimagenet.diagnosis.experiments import Change, FitRun
from tinyimagenet.diagnosis.headroom import below_seed_bar, candidates, fit_worse, wanted
from tinyimagenet.diagnosis.stats import ALPHA, newcombe_interval, two_proportion_test
from tinyimagenet.diagnosis.verdict import Evidence

C = 10
CFG = dict(epochs=2, device="cpu", progress=False, fit_batch=8, fit_steps=50, probe_per_class=5,
           headroom=True, headroom_budget=2)


def noisy_task(train_per_class=60, val_per_class=100, noise=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(C, 3, 16, 16, generator=g)

    def split(n):
        y = torch.arange(C).repeat_interleave(n)
        return protos[y] + noise * torch.randn(len(y), 3, 16, 16, generator=g), y
    (tx, ty), (vx, vy) = split(train_per_class), split(val_per_class)
    return TensorDataset(tx, ty), TensorDataset(vx, vy)


class UserNet(nn.Module):
    """A small BN CNN; `p` is the dropout after each stage (0: the healthy model)."""
    p = 0.0

    def __init__(self, num_classes=C):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.dropout(F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2), self.p, training=self.training)
        x = F.adaptive_avg_pool2d(F.relu(self.bn2(self.conv2(x))), 1).flatten(1)
        return self.fc(F.dropout(x, self.p, training=self.training))


class SlowDropout(UserNet):
    p = 0.5  # FAULT: learns, but far less than without it


@pytest.fixture(scope="module")
def task():
    train, val = noisy_task()
    return DataLoader(train, batch_size=16, shuffle=True), val


def _diagnose(model, task, **kw):
    train, val = task
    cfg = DiagnosisConfig(**{**CFG, **kw})
    result = diagnose(model, train, val, None, lambda ps: torch.optim.Adam(ps, lr=3e-3), num_classes=C, config=cfg)
    print("\n".join(format_model(model.__name__, result)))
    return result


def test_slow_dropout_is_found_with_a_significant_gain(task):
    r = _diagnose(SlowDropout, task)
    assert r["learning"] == "learning" and r["verdict"] == "PASS" and not r["causes"]
    assert r["slows"], "no finding"
    top = r["slows"][0]
    assert top["id"] == "dropout_too_strong" and top["p_value"] < ALPHA and top["ci"][0] > 0
    assert [f["gain"] for f in r["slows"]] == sorted((f["gain"] for f in r["slows"]), reverse=True)
    first = format_model("m", r)[0]
    assert "PASS (learning; slowed by dropout_too_strong: +" in first and "95% CI" in first
    # the finding's numbers are the two runs' counts: the base run's val predictions and the control's
    n, k1, k2 = top["n"], top["base_correct"], top["correct"]
    assert k1 == round(r["epochs"][-1]["val_acc"] * n / 100)
    full = next(row["full"] for row in r["headroom"]["screen"] if row["cause"] == "dropout_too_strong")
    assert k2 == round(full["val_acc"] * n / 100)
    lo, hi = newcombe_interval(k1, n, k2, n)
    assert top["gain"] == pytest.approx(100 * (k2 - k1) / n, abs=1e-3)
    assert top["ci"] == pytest.approx([100 * lo, 100 * hi], abs=1e-3)
    assert top["p_value"] == pytest.approx(two_proportion_test(k1, n, k2, n).p_value)


def test_healthy_model_gets_no_finding(task):
    r = _diagnose(UserNet, task)
    assert r["verdict"] == "PASS" and r["headroom"]["ran"]
    assert r["slows"] == [], r["slows"]


def test_screen_is_off_unless_asked_or_below_the_seed_bar():
    hist = [{"epoch": 1, "val_acc": 0.9}, {"epoch": 2, "val_acc": 3.0}]
    assert below_seed_bar(hist, 200, True) and not below_seed_bar(hist, 200, False)
    assert not below_seed_bar(hist, 10, True)
    assert not below_seed_bar([{"epoch": 1, "val_acc": 1.5}, {"epoch": 5, "val_acc": 5.5}], 200, True)
    assert wanted(None, "learning", hist, 200, True)[0] and not wanted(None, "learning", hist, 10, True)[0]
    assert not wanted(True, "stuck", hist, 200, True)[0] and not wanted(False, "learning", hist, 200, True)[0]
    assert not wanted(True, "learning", hist, 10, False, has_causes=True)[0]


def _evidence(model, x, opt, frozen=None):
    """The measurements the screen's candidates read, made by the diagnosis's own functions."""
    checks = {c.name: c for c in (measure.input_stats(x), measure.dropout_sites(model, x), measure.weight_decay(opt))}
    return Evidence(C, checks, base=FitRun("base", 1e-3, losses=[2.3, 0.1], frozen=frozen or {}))


def test_candidates_come_from_the_causes_table():
    x = torch.randn(8, 3, 16, 16)
    faulty = SlowDropout()
    faulty.fc.weight.requires_grad_(False)
    ev = _evidence(faulty, 50 * x + 100, torch.optim.Adam(faulty.parameters(), weight_decay=0.1),
                   frozen={"fc.weight": "requires_grad=False"})
    cands = candidates(ev, shuffled=False)
    assert [cid for cid, _ in cands] == ["learning_rate_too_low", "learning_rate_too_high", "learning_rate_too_high",
                                         "dropout_too_strong", "weight_decay_too_strong", "input_not_normalized",
                                         "frozen_parameters", "batches_not_shuffled"]
    lr = [c.lr_factor for cid, c in cands if cid.startswith("learning_rate")]
    assert lr == list(T.HEADROOM_LR_UP + T.HEADROOM_LR_DOWN)
    for cid, change in cands[3:]:  # the rest: each cause's own control change, under the fit's name
        assert dataclasses.replace(change, name="control") == by_id(cid).control(ev), cid
    healthy = UserNet()
    ev = _evidence(healthy, x, torch.optim.Adam(healthy.parameters()))
    assert [cid for cid, _ in candidates(ev, shuffled=True)] == ["learning_rate_too_low"] + ["learning_rate_too_high"] * 2


def test_fit_pruning_cuts_lr_factors_but_not_a_measured_conditions_removal():
    # Raw 0-255 inputs under Adam memorize 8 images where standardized ones do not (the benchmark's
    # inputs_0_255_plain): the fit must not drop the cause's own change, only an lr factor.
    base = FitRun("base", 1e-3, losses=[2.3, 0.02, 0.01, 0.01], target=0.05)  # final: mean of the last 3
    slower = FitRun("x", 1e-3, losses=[2.3, 1.6, 1.5, 1.5], target=0.05)
    exploded = FitRun("x", 1e-3, losses=[2.3, float("nan")], nonfinite=True, target=0.05)
    assert base.fitted and not slower.fitted and exploded.diverged
    standardized = Change("standardized", standardize=((0.5,) * 3, (0.25,) * 3))
    assert fit_worse(base, slower, Change("lr_div10", lr_factor=0.1)) == \
        "its fixed-batch fit does not fit where the base fit does"
    assert fit_worse(base, slower, standardized) == ""
    assert fit_worse(base, slower, Change("no_dropout", no_dropout=True)) == ""
    assert "diverges" in fit_worse(base, exploded, standardized)
