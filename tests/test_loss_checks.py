"""The user's loss, measured before training: each loss fault from a loss written the way users write it.

Unit cases call `check_loss` directly (milliseconds); the issue's two reports (a softmax inside the
loss: PASS before; `label_smoothing=1.0`: INCONCLUSIVE before) go through `diagnose(loss_fn=...)`
and must now fail on the named cause, before any training.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyimagenet.diagnosis import DiagnosisConfig, diagnose
from tinyimagenet.diagnosis.loss_checks import check_loss
from test_diagnosis import C, FAST, SmallCNN, synthetic


def softmax_then_ce(logits, targets):
    probs = torch.softmax(logits, dim=1)  # the planted bug: cross-entropy applies log-softmax itself
    return F.cross_entropy(probs, targets)


class SmoothedLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.ce = nn.CrossEntropyLoss(label_smoothing=1.0)

    def forward(self, logits, targets):
        return self.ce(logits, targets)


def test_sound_losses_pass():
    for loss in (F.cross_entropy, nn.CrossEntropyLoss(label_smoothing=0.1),
                 lambda z, y: F.nll_loss(F.log_softmax(z, 1), y), nn.CrossEntropyLoss(reduction="sum")):
        for c in (2, 10, 200):
            check = check_loss(loss, c)
            assert check.status == "pass", (loss, c, check.detail)


def test_softmax_inside_the_loss_saturates_and_is_named():
    check = check_loss(softmax_then_ce, 200)
    assert check.data["fault"] == "loss_saturates"
    assert any("test_loss_checks.py" in w for w in check.data["where"]), check.data["where"]


def test_label_smoothing_one_ignores_labels():
    assert check_loss(SmoothedLoss(), 10).data["fault"] == "loss_ignores_labels"
    assert check_loss(lambda z, y: F.cross_entropy(z, torch.zeros_like(y)), 10).data["fault"] == "loss_ignores_labels"


def test_nll_on_raw_logits_is_unbounded():
    assert check_loss(F.nll_loss, 10).data["fault"] == "loss_unbounded"


def test_a_loss_that_wants_other_inputs_is_not_blamed():
    check = check_loss(lambda z, y: F.mse_loss(z, y), 10)  # regression loss: nothing claimed
    assert check.status == "info" and check.data["fault"] is None


def test_check_consumes_no_rng():
    before = torch.get_rng_state()
    check_loss(softmax_then_ce, 10)
    assert torch.equal(before, torch.get_rng_state())


def _diagnose(loss):
    train, val = synthetic()
    return diagnose(SmallCNN, train=train, val=val, loss_fn=loss, num_classes=C, config=DiagnosisConfig(**FAST))


def test_diagnose_names_softmax_in_the_loss():
    r = _diagnose(softmax_then_ce)
    assert r["verdict"] == "FAIL" and r["causes"][0]["id"] == "loss_saturates"
    assert r["learning"] == "not trained"  # decided in milliseconds, before any training
    assert r["suggestions"][0].startswith("Give the loss raw logits")


def test_diagnose_names_label_smoothing_one():
    r = _diagnose(SmoothedLoss())
    assert r["verdict"] == "FAIL" and r["causes"][0]["id"] == "loss_ignores_labels"


def test_diagnose_with_a_sound_user_loss_has_no_loss_fault():
    r = _diagnose(nn.CrossEntropyLoss())
    assert not any(c["id"].startswith("loss_") for c in r["causes"])
    assert next(c for c in r["checks"] if c["name"] == "loss_fn")["status"] == "pass"
