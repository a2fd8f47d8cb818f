"""The diagnosis must find each planted fault by itself, in code written the way users write it.

One test per cause: a small model (defined here, not from the registry) or a data set with one
fault, `diagnose(...)`, and an assert on the top cause. Synthetic data (class prototypes plus noise,
16x16 pixels, learnable within one epoch) keeps each run to seconds; the real subset is used where
a fault shows there (the CLI test with an example file). Plus: a healthy model passes with no
cause, the user's model and the global RNG are left untouched, and a 1-based label set stops
before any training.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from tinyimagenet.diagnosis import DiagnosisConfig, diagnose, format_model

C = 5  # classes of the synthetic task
FAST = dict(epochs=2, device="cpu", progress=False, fit_batch=8, fit_steps=50, probe_per_class=10, lr=1e-3,
            batch_size=16)


# ------------------------------------------------------------------------------ data and models
def synthetic(train_per_class=60, val_per_class=40, seed=0, size=16, classes=C):
    """Class prototypes plus noise, standardized: a task a small CNN learns in one epoch."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, 3, size, size, generator=g)

    def split(n):
        y = torch.arange(classes).repeat_interleave(n)  # class-sorted, as image folders are
        x = protos[y] + 1.0 * torch.randn(len(y), 3, size, size, generator=g)
        return x, y
    (tx, ty), (vx, vy) = split(train_per_class), split(val_per_class)
    return TensorDataset(tx, ty), TensorDataset(vx, vy)


@pytest.fixture(scope="module")
def data():
    return synthetic()


class SmallCNN(nn.Module):
    """The healthy user model every fault below is planted into."""

    def __init__(self, num_classes=C, bn=True):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), norm(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1), norm(32)
        self.fc = nn.Linear(32, num_classes)

    def features(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        return F.adaptive_avg_pool2d(F.relu(self.bn2(self.conv2(x))), 1).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


class SoftmaxOutputs(SmallCNN):
    def forward(self, x):
        return F.softmax(self.fc(self.features(x)), dim=1)


class LogSoftmaxOutputs(SmallCNN):  # harmless under cross-entropy: must not be flagged
    def forward(self, x):
        return F.log_softmax(self.fc(self.features(x)), dim=1)


class EvalDropout(SmallCNN):
    def forward(self, x):
        return self.fc(F.dropout(self.features(x), 0.5))  # no training=self.training: drops in eval too


class HeavyDropout(SmallCNN):
    def forward(self, x):
        x = F.dropout(F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2), 0.9, training=self.training)
        x = F.adaptive_avg_pool2d(F.relu(self.bn2(self.conv2(x))), 1).flatten(1)
        return self.fc(F.dropout(x, 0.9, training=self.training))


class FrozenZeroHead(SmallCNN):
    def __init__(self, num_classes=C):
        super().__init__(num_classes)
        nn.init.zeros_(self.fc.weight)
        self.fc.weight.requires_grad_(False)  # frozen at zero: no signal reaches anything


class DeadFromInit(SmallCNN):
    def __init__(self, num_classes=C):
        super().__init__(num_classes, bn=False)
        for conv in (self.conv1, self.conv2):
            nn.init.constant_(conv.bias, -100.0)  # every ReLU is off for every input


class DeepSigmoid(nn.Module):
    def __init__(self, num_classes=C):
        super().__init__()
        layers = [nn.Flatten(), nn.Linear(3 * 16 * 16, 64), nn.Sigmoid()]
        for _ in range(14):
            layers += [nn.Linear(64, 64), nn.Sigmoid()]
        self.net = nn.Sequential(*layers, nn.Linear(64, num_classes))

    def forward(self, x):
        return self.net(x)


def run(model, train, val, **kw):
    loss_fn, optimizer, classes = kw.pop("loss_fn", None), kw.pop("optimizer", None), kw.pop("classes", C)
    cfg = DiagnosisConfig(**{**FAST, **kw})
    result = diagnose(model, train, val, loss_fn, optimizer, num_classes=classes, config=cfg)
    print("\n".join(format_model(getattr(model, "__name__", "model"), result)))  # the evidence, on failure
    return result


def top(result) -> str:
    return result["causes"][0]["id"] if result["causes"] else "-"


# ------------------------------------------------------------------------------------- healthy
def test_healthy_user_model_passes_with_no_cause(data):
    r = run(SmallCNN, *data)
    assert r["verdict"] == "PASS" and r["causes"] == [], r["reasons"]
    assert r["epochs"][-1]["val_acc"] > 40


def test_log_softmax_outputs_are_not_flagged(data):
    r = run(LogSoftmaxOutputs, *data)
    assert "outputs_are_probabilities" not in [c["id"] for c in r["causes"]]
    assert r["verdict"] == "PASS"


def test_user_objects_and_global_rng_are_left_as_found(data):
    model = SmallCNN()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1234)
    random.seed(5)
    np.random.seed(6)
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    run(model, *data, epochs=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training  # its mode too
    assert torch.equal(rng[0], torch.get_rng_state())
    assert rng[1] == random.getstate() and np.array_equal(rng[2], np.random.get_state()[1])


# --------------------------------------------------------------------- decisive measurements
def test_softmax_outputs_are_found(data):
    r = run(SoftmaxOutputs, *data)
    assert r["verdict"] == "FAIL" and top(r) == "outputs_are_probabilities"


def test_dropout_left_on_in_eval_is_found_and_located(data):
    r = run(EvalDropout, *data)
    assert top(r) == "stochastic_eval"
    assert any("test_diagnosis.py" in w for w in r["causes"][0]["where"])  # the line of the F.dropout call


@pytest.mark.parametrize("fault", ["one_based", "out_of_range", "one_hot", "single_class_val"])
def test_bad_labels_stop_before_training(fault):
    (tx, ty), (vx, vy) = synthetic(20, 5)[0].tensors, synthetic(20, 5)[1].tensors
    if fault == "one_based":
        ty, vy = ty + 1, vy + 1
    elif fault == "out_of_range":
        ty = ty.clone()
        ty[0] = 99
    elif fault == "one_hot":
        ty = F.one_hot(ty, C).float()
    else:
        vy = torch.zeros_like(vy)
    r = run(SmallCNN, TensorDataset(tx, ty), TensorDataset(vx, vy))
    assert r["verdict"] == "FAIL" and top(r) == "bad_labels" and r["epochs"] == []


def test_unshuffled_class_sorted_batches_are_found(data):
    train, val = data
    r = run(SmallCNN, DataLoader(train, batch_size=32, shuffle=False), val)
    assert top(r) == "batches_not_shuffled"


# ------------------------------------------------------------------------------- experiments
def test_heavy_functional_dropout_is_found(data):
    r = run(HeavyDropout, *data)
    assert r["verdict"] == "FAIL" and top(r) == "dropout_too_strong", r["causes"]
    assert any("test_diagnosis.py" in w for w in r["causes"][0]["where"])


def test_learning_rate_far_too_low_is_found(data):
    r = run(SmallCNN, *data, lr=1e-7)
    assert r["verdict"] == "FAIL" and top(r) == "learning_rate_too_low"


def test_learning_rate_far_too_high_is_found(data):
    r = run(lambda: SmallCNN(bn=False), *data, optimizer=lambda p: torch.optim.SGD(p, lr=50.0))
    assert r["verdict"] == "FAIL" and top(r) == "learning_rate_too_high"


def test_weight_decay_too_strong_is_found(data):
    r = run(SmallCNN, *data, optimizer=lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=50.0))
    assert r["verdict"] == "FAIL" and top(r) == "weight_decay_too_strong"


def test_unnormalized_inputs_are_found():
    train, val = synthetic()
    scale = lambda ds: TensorDataset(ds.tensors[0] * 60 + 120, ds.tensors[1])  # noqa: E731 - 0..255-ish pixels
    r = run(lambda: SmallCNN(bn=False), scale(train), scale(val),
            optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9))
    assert r["verdict"] == "FAIL" and top(r) == "input_not_normalized"


def test_frozen_parameters_are_found(data):
    r = run(FrozenZeroHead, *data)
    assert r["verdict"] == "FAIL" and top(r) == "frozen_parameters"
    assert "fc" in r["causes"][0]["where"]


# ------------------------------------------------------------------------------------ labels
def test_shuffled_val_labels_are_found():
    train, val = synthetic(val_per_class=60)
    y = val.tensors[1][torch.randperm(len(val), generator=torch.Generator().manual_seed(0))]
    r = run(SmallCNN, train, TensorDataset(val.tensors[0], y))
    assert r["verdict"] == "FAIL" and top(r) == "val_labels_misaligned"


def test_shuffled_train_labels_are_found():
    # 10 classes: with 5, no class-permutation test can reach ALPHA, and the 1-NN check's hits
    # cluster on a few "hub" neighbours, so its binomial test alone overstates chance-level signal.
    train, val = synthetic(val_per_class=40, classes=10)
    y = train.tensors[1][torch.randperm(len(train), generator=torch.Generator().manual_seed(0))]
    r = run(lambda: SmallCNN(num_classes=10), TensorDataset(train.tensors[0], y), val, classes=10)
    assert r["verdict"] == "FAIL" and top(r) == "train_labels_unlearnable"


# ---------------------------------------------------------------------------------- symptoms
def test_dead_from_init_is_collapsed_outputs(data):
    r = run(DeadFromInit, *data)
    ids = [c["id"] for c in r["causes"]]
    assert r["verdict"] == "FAIL" and ids[0] in ("collapsed_outputs", "dead_units") and "dead_units" in ids


def test_deep_sigmoid_net_has_vanishing_gradients(data):
    r = run(DeepSigmoid, *data)
    assert r["verdict"] == "FAIL" and "vanishing_gradients" in [c["id"] for c in r["causes"]]


# ------------------------------------------------------------------------------- CLI and JSON
def test_cli_user_model_file_on_real_images(real_small_root, tmp_path):
    import quick_diagnosis

    out = tmp_path / "report.json"
    report = quick_diagnosis.main(["--data-dir", str(real_small_root), "--model",
                                   "examples/softmax_head.py:SoftmaxHeadCNN", "--train-per-class", "20",
                                   "--val-per-class", "20", "--epochs", "1", "--device", "cpu", "--no-progress",
                                   "--no-control", "--json", str(out), "--strict"])
    m = json.loads(out.read_text())["models"]["SoftmaxHeadCNN"]
    assert set(m) >= {"config", "checks", "epochs", "passed", "verdict", "causes", "suggestions"}
    assert all(set(c) >= {"id", "evidence"} for c in m["causes"])
    assert m["passed"] is False and m["causes"][0]["id"] == "outputs_are_probabilities"
    assert report["exit_code"] == 1


class NaNImages(torch.utils.data.Dataset):
    """A user's dataset in which one image in ten decodes as NaN."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return (torch.full_like(x, float("nan")) if i % 10 == 3 else x), y


def test_nan_images_are_a_non_finite_loss(data):
    train, val = data
    r = run(SmallCNN, NaNImages(train), val)
    assert r["verdict"] == "FAIL" and top(r) == "non_finite_loss" and r["learning"] == "diverged"


class HugeInit(nn.Module):
    """Four BN-free convs initialized N(0, 1): each layer multiplies activations by ~sqrt(fan-in)."""

    def __init__(self, num_classes=C):
        super().__init__()
        chans = (3, 16, 32, 32, 32)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:]))
        for conv in self.convs:
            nn.init.normal_(conv.weight, std=1.0)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_huge_init_has_exploding_gradients(data):
    r = run(HugeInit, *data, optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
    assert r["verdict"] == "FAIL" and "exploding_gradients" in [c["id"] for c in r["causes"]]
