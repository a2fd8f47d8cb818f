"""Tests for the model layer: tinyimagenet.models_imagenet, best_model_imagenet, registry.

What this checks
----------------
Every registered model under both dropout settings: output shapes, finite
outputs and gradients, eval determinism vs train-mode stochasticity,
channels_last equivalence, and -- the point of the "fixed" setting -- that the
dropout layout found by ``audit_dropout`` is exactly the documented one. Also
that initialisation does not depend on the dropout setting, that bad names and
options are rejected, and that FLOP counting agrees with a hand count.

Run:  PYTHONPATH=. pytest -q tests/test_models.py   (CPU, batch 2, < 1 min)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tinyimagenet.registry import (
    DROPOUT_SETTINGS,
    MODELS,
    audit_dropout,
    build_model,
    keep_probability,
    model_summary,
)

BATCH = 2
ALL_MODELS = pytest.mark.parametrize("name", list(MODELS))
ALL_SETTINGS = pytest.mark.parametrize("dropout", DROPOUT_SETTINGS)

# The documented dropout layout, as (place, rate) in module order. Block counts
# follow the architectures: ResidualCNN has 3 stages x 2 blocks, BestModel 4 x 2;
# DeeperWiderCNN and CNNWithSEAttention have 4 pooling stages, BaselineCNN 3.
FIXED_HEAD_ONLY = [("classifier", 0.3)]
EXPECTED_DROPOUT = {
    ("BaselineCNN", "fixed"): FIXED_HEAD_ONLY,
    ("BaselineCNN", "legacy"): [("conv_stage", 0.3)] * 3 + [("classifier", 0.5)] * 3,
    ("DeeperWiderCNN", "fixed"): FIXED_HEAD_ONLY,
    ("DeeperWiderCNN", "legacy"): [("conv_stage", 0.2)] * 4 + [("classifier", 0.5)] * 3,
    ("CNNWithSEAttention", "fixed"): FIXED_HEAD_ONLY,
    ("CNNWithSEAttention", "legacy"): [("conv_stage", 0.3)] * 4 + [("classifier", 0.5)] * 3,
    ("ResidualCNN", "fixed"): FIXED_HEAD_ONLY,
    ("ResidualCNN", "legacy"): [("block", 0.2)] * 6 + [("classifier", 0.5)] * 2,
    ("BestModel", "fixed"): FIXED_HEAD_ONLY,
    ("BestModel", "legacy"): [("block", 0.2)] * 8 + [("classifier", 0.5)] * 2,
}


def images(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, 3, 64, 64, generator=generator)


@ALL_MODELS
@ALL_SETTINGS
@pytest.mark.parametrize("num_classes", [200, 10])
def test_output_shape_and_finite(name, dropout, num_classes):
    model = build_model(name, num_classes=num_classes, dropout=dropout).eval()
    with torch.no_grad():
        logits = model(images())
    assert logits.shape == (BATCH, num_classes)
    assert torch.isfinite(logits).all()


@ALL_MODELS
@ALL_SETTINGS
def test_backward_gives_finite_gradient_for_every_parameter(name, dropout):
    model = build_model(name, num_classes=10, dropout=dropout).train()
    loss = nn.functional.cross_entropy(model(images()), torch.tensor([1, 7]))
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name


@ALL_MODELS
@ALL_SETTINGS
def test_eval_is_deterministic_and_train_is_stochastic(name, dropout):
    model = build_model(name, num_classes=10, dropout=dropout)
    x = images()
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        # Every setting has dropout in the head, so train-mode passes differ
        # (BN with batch 2 is fine: same batch, same statistics both times).
        model.train()
        assert not torch.equal(model(x), model(x))


@ALL_MODELS
@ALL_SETTINGS
def test_dropout_audit_matches_documented_layout(name, dropout):
    sites = audit_dropout(build_model(name, dropout=dropout))
    assert [(site.place, site.rate) for site in sites] == EXPECTED_DROPOUT[name, dropout]
    assert all(site.name.startswith("classifier.") == (site.place == "classifier") for site in sites)
    if dropout == "fixed":
        assert keep_probability(sites, place="conv_stage") == 1.0
        assert keep_probability(sites, place="block") == 1.0
        assert keep_probability(sites) == pytest.approx(0.7)


def test_keep_probability_of_legacy_baseline():
    sites = audit_dropout(build_model("BaselineCNN", dropout="legacy"))
    assert keep_probability(sites, place="conv_stage") == pytest.approx(0.7**3)
    assert keep_probability(sites, place="classifier") == pytest.approx(0.5**3)
    assert keep_probability(sites) == pytest.approx(0.7**3 * 0.5**3)


def test_baseline_fixed_classifier_is_the_seed_head():
    classifier = build_model("BaselineCNN", num_classes=200).classifier
    assert [type(layer) for layer in classifier] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    first, _, dropout, last = classifier
    assert (first.in_features, first.out_features) == (256 * 8 * 8, 512)
    assert dropout.p == 0.3
    assert (last.in_features, last.out_features) == (512, 200)


@ALL_MODELS
@ALL_SETTINGS
def test_channels_last_matches_contiguous(name, dropout):
    model = build_model(name, num_classes=10, dropout=dropout).eval()
    x = images()
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        result = model(x.contiguous(memory_format=torch.channels_last))
    scale = reference.abs().max().item()
    torch.testing.assert_close(result, reference, rtol=0, atol=1e-4 * scale + 1e-7)


@ALL_MODELS
def test_init_is_identical_across_dropout_settings(name):
    parameters = {}
    for dropout in DROPOUT_SETTINGS:
        torch.manual_seed(1234)
        model = build_model(name, dropout=dropout)
        # Everything outside the head is shared; dropout modules own no
        # parameters and sit after parameterised layers, so names match too.
        parameters[dropout] = {
            key: value for key, value in model.state_dict().items() if not key.startswith("classifier.")
        }
    fixed, legacy = parameters["fixed"], parameters["legacy"]
    assert fixed.keys() == legacy.keys()
    assert any(".weight" in key for key in fixed)
    for key in fixed:
        assert torch.equal(fixed[key], legacy[key]), key


def test_unknown_name_is_rejected_with_its_value():
    with pytest.raises(ValueError, match="NoSuchNet"):
        build_model("NoSuchNet")


@ALL_MODELS
def test_unknown_dropout_is_rejected_with_its_value(name):
    with pytest.raises(ValueError, match="dropout.*'sometimes'"):
        build_model(name, dropout="sometimes")
    with pytest.raises(ValueError, match="dropout.*'sometimes'"):
        MODELS[name](dropout="sometimes")


@ALL_MODELS
def test_model_summary_counts_params_and_flops(name):
    summary = model_summary(name)
    assert summary["name"] == name
    assert summary["params"] > 0 and summary["flops"] > 0


def test_baseline_flops_match_hand_count():
    def conv_macs(c_in, c_out, side):
        return c_in * c_out * 9 * side * side

    macs = conv_macs(3, 64, 64) + conv_macs(64, 128, 32) + conv_macs(128, 256, 16)
    macs += 256 * 8 * 8 * 512 + 512 * 200
    model = build_model("BaselineCNN").train()
    summary = model_summary(model)
    assert summary["flops"] == pytest.approx(2 * macs, rel=0.05)
    assert model.training  # the summary restores the caller's mode
