"""The fault suite of benchmarks/diagnosis_accuracy.py: user-style models, data views, set-ups.

Not run by itself: `python benchmarks/diagnosis_accuracy.py` imports SETUPS from here. Every
set-up is one way users really break a training run (a softmax at the end of forward, dropout
without training=self.training, inputs left in 0..255, ...) or a healthy control, built on the
real Tiny ImageNet subset. A set-up returns the arguments of `tinyimagenet.diagnosis.diagnose`;
the benchmark runs it and scores the report against `Setup.cause`.

Architectures: "UserCNN" (3 conv stages with BatchNorm, not in the registry: written here as a
user would), "PlainCNN" (the same without BatchNorm, like examples/heavy_dropout.py), and the
registry's ResidualCNN (fed 32x32 images: at 64x64 it costs 0.85 GFLOPs/image, too slow for a
shared 2-core CPU) or the registry models on the repo's own data path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tinyimagenet.data import MEAN, STD
from tinyimagenet.loaders import Data
from tinyimagenet.models_imagenet import ResidualCNN

# The cut every user-style set-up trains on: 10 classes keep a diagnose() call near 5-60 s on
# the shared 2-core CPU. All 100 train and 50 val images per class: with 40 and 20, a model at
# 15-23% on 10 classes was not significant under the class-permutation test, so healthy runs and
# controls alike came out INCONCLUSIVE and no fix could be confirmed.
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, PROBE_PER_CLASS = 10, 100, 50, 10
BATCH = 32
LR = 1e-3  # the healthy user optimizer: Adam(lr=1e-3); faults scale it


# ------------------------------------------------------------------------ user-style models
class UserCNN(nn.Module):
    """A healthy user CNN: conv-(BN)-ReLU stages of 16/32/64 channels, pooling, one linear layer."""

    def __init__(self, num_classes: int = 10, bn: bool = True, width: int = 16):
        super().__init__()
        chans = (3, width, 2 * width, 4 * width)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, padding=1), *([nn.BatchNorm2d(b)] if bn else []), nn.ReLU())
            for a, b in zip(chans, chans[1:]))
        self.fc = nn.Linear(chans[-1], num_classes)

    def after_stage(self, x):  # faulty subclasses put their dropout here
        return x

    def features(self, x):
        for i, stage in enumerate(self.stages):
            x = stage(x)
            x = F.max_pool2d(x, 2) if i < len(self.stages) - 1 else F.adaptive_avg_pool2d(x, 1)
            x = self.after_stage(x)
        return x.flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


def plain_cnn(num_classes: int = 10) -> nn.Module:
    """The second user architecture: the same CNN without BatchNorm."""
    return UserCNN(num_classes, bn=False)


class SoftmaxHead(UserCNN):
    def forward(self, x):
        return F.softmax(super().forward(x), dim=1)  # FAULT: cross-entropy wants logits


class PlainSoftmaxHead(SoftmaxHead):
    def __init__(self, num_classes: int = 10):
        super().__init__(num_classes, bn=False)


class DropoutNoFlag(UserCNN):
    p = 0.5

    def forward(self, x):
        return self.fc(F.dropout(self.features(x), self.p))  # FAULT: no training=self.training


class HeavyDropout(UserCNN):
    p = 0.7

    def after_stage(self, x):
        return F.dropout(x, self.p, training=self.training)  # FAULT: strong, after every stage


class PlainHeavyDropout(HeavyDropout):
    p = 0.8

    def __init__(self, num_classes: int = 10):
        super().__init__(num_classes, bn=False)


class DetachedFeatures(UserCNN):
    def forward(self, x):
        return self.fc(self.features(x).detach())  # FAULT: no gradient reaches the convs


def frozen_features(num_classes: int = 10, bn: bool = True) -> nn.Module:
    m = UserCNN(num_classes, bn=bn)
    for p in m.stages.parameters():
        p.requires_grad = False  # FAULT: "fine-tuning" left a from-scratch model frozen
    return m


def dead_init(num_classes: int = 10, bias: float = -10.0) -> nn.Module:
    """No BatchNorm, and a large negative bias before every ReLU: every unit is dead at init."""
    m = UserCNN(num_classes, bn=False)
    for stage in m.stages:
        nn.init.constant_(stage[0].bias, bias)  # FAULT: a "shift" copied from somewhere
    return m


class DeepSigmoid(nn.Module):
    """A deep stack of conv + sigmoid without normalization: the textbook vanishing gradient."""

    def __init__(self, num_classes: int = 10, depth: int = 10, width: int = 16):
        super().__init__()
        layers = [nn.AvgPool2d(4), nn.Conv2d(3, width, 3, padding=1), nn.Sigmoid()]  # 64 -> 16 px
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


def big_init(num_classes: int = 10, std: float = 1.0) -> nn.Module:
    """No BatchNorm, conv weights drawn N(0, std): activations and gradients grow every layer."""
    m = UserCNN(num_classes, bn=False)
    for stage in m.stages:
        nn.init.normal_(stage[0].weight, std=std)  # FAULT: an init without the 1/sqrt(fan_in)
    return m


# The registry's ResidualCNN with the same user faults (a user subclassing it), 32x32 inputs.
class ResidualDropoutNoFlag(ResidualCNN):
    def forward(self, x):
        h = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.classifier(F.dropout(h, 0.5))  # FAULT: no training=self.training


class ResidualSoftmax(ResidualCNN):
    def forward(self, x):
        return F.softmax(super().forward(x), dim=1)  # FAULT


def residual_frozen(num_classes: int = 10) -> nn.Module:
    m = ResidualCNN(num_classes)
    for p in list(m.stem.parameters()) + list(m.stages.parameters()):
        p.requires_grad = False  # FAULT
    return m


def naive_xent(logits, y):
    """A user's hand-written cross-entropy: 0 * log(0) = NaN once a softmax entry underflows."""
    p = logits.exp() / logits.exp().sum(1, keepdim=True)  # FAULT: no max-subtraction, exp overflows
    return -(F.one_hot(y, p.shape[1]) * p.log()).sum(1).mean()


class NaNPixels(Dataset):
    """A user's dataset with a few corrupt images decoded as NaN (one in every 50)."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return (torch.full_like(x, float("nan")) if i % 50 == 7 else x), y  # FAULT


# ------------------------------------------------------------------------------- the data
class Pool:
    """The real subset loaded once (uint8, all 200 classes); cuts of it as user or repo data."""

    def __init__(self, data: Data):
        self.data = data

    def _cut(self, images, targets, classes, per_class):
        idx = torch.cat([(targets == c).nonzero().flatten()[:per_class] for c in range(classes)])
        return images[idx], targets[idx]  # class-sorted: a DataLoader(shuffle=False) keeps it so

    def user(self, seed: int, *, classes=CLASSES, train=TRAIN_PER_CLASS, val=VAL_PER_CLASS, hw=64,
             scale255=False, train_labels=None, val_labels=None, shuffle=True, batch=BATCH, nan=False):
        """(train DataLoader, val TensorDataset) as a user builds them: float NCHW, normalized."""
        g = torch.Generator().manual_seed(seed)

        def tensors(images, targets, relabel):
            x = images.permute(0, 3, 1, 2).float()
            if hw != 64:
                x = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
            if not scale255:  # the fault keeps 0..255 (no ToTensor, no Normalize)
                x = (x / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
            return TensorDataset(x, relabel(targets, g) if relabel else targets)

        d = self.data
        tr = tensors(*self._cut(d.train_images, d.train_targets, classes, train), train_labels)
        va = tensors(*self._cut(d.val_images, d.val_targets, classes, val), val_labels)
        return DataLoader(NaNPixels(tr) if nan else tr, batch_size=batch, shuffle=shuffle), va

    def repo(self, *, classes=CLASSES, train=20, val=10) -> Data:
        """A `Data` cut to the first `classes` wnids (val_files kept, so label-file audits apply)."""
        d = self.data
        tx, ty = self._cut(d.train_images, d.train_targets, classes, train)
        vi = torch.cat([(d.val_targets == c).nonzero().flatten()[:val] for c in range(classes)])
        return Data(tx, ty, d.val_images[vi], d.val_targets[vi], list(d.classes[:classes]),
                    list(d.class_names[:classes]), d.root, [d.val_files[i] for i in vi.tolist()])


def permuted(y, g):
    return y[torch.randperm(len(y), generator=g)]


def adam(lr=LR, **kw):
    return lambda params: torch.optim.Adam(params, lr=lr, **kw)


def sgd(lr, **kw):
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9, **kw)


# ------------------------------------------------------------------------------ set-ups
@dataclass
class Setup:
    name: str
    cause: str | None        # the cause id the report must give (None: healthy)
    arch: str
    severity: str
    make: Callable           # (pool, seed) -> diagnose() keyword arguments (+ "config": overrides)
    root: str | None = None  # symptom set-ups: the documented root cause, if the fault has one
    quick: bool = False      # part of --quick
    tier: int = 10           # the benchmark tier it is summarized in: 10-class cuts, or 200 classes (tier200.py)


def user(model, *, opt=None, loss=None, config=None, **data_kw):
    """A set-up on user data: model, DataLoader/Dataset splits, Adam(1e-3) unless `opt`."""
    def make(pool, seed):
        train, val = pool.user(seed, **data_kw)
        classes = data_kw.get("classes", CLASSES)
        return dict(model=model, train=train, val=val, loss_fn=loss, optimizer=opt or adam(), num_classes=classes,
                    config=config or {})
    return make


def repo(name, *, preflight=False, epochs=1, **cut):
    """A registry model on the repo's own data path (recipe optimizer, BatchLoader)."""
    def make(pool, seed):
        return dict(model=name, data=pool.repo(**cut), config=dict(preflight_only=preflight, epochs=epochs,
                                                                   probe_per_class=None))
    return make


def with_cls(cls, **attrs):
    """A subclass with its fault severity set, named for the report."""
    return type(f"{cls.__name__}_" + "_".join(f"{k}{v}" for k, v in attrs.items()), (cls,), attrs)


def _factory(fn, **kw):
    def make(num_classes=10):
        return fn(num_classes, **kw)
    make.__name__ = fn.__name__
    return make


ARCHS = (("UserCNN", UserCNN, ""), ("PlainCNN", plain_cnn, "_plain"))  # the two user architectures
S, R32 = Setup, dict(hw=32)  # ResidualCNN set-ups get 32x32 images (a user's Resize(32))
SETUPS = [
    # ---- decisive measurements: bad labels stop the run before any model is built
    S("labels_1_based", "bad_labels", "UserCNN", "train+val labels 1..C", quick=True,
      make=user(UserCNN, train_labels=lambda y, g: y + 1, val_labels=lambda y, g: y + 1)),
    S("labels_out_of_range", "bad_labels", "UserCNN", "val labels are 200-class wnid ids",
      make=user(UserCNN, val_labels=lambda y, g: y * 17)),
    S("labels_one_hot", "bad_labels", "UserCNN", "one-hot train labels",
      make=user(UserCNN, train_labels=lambda y, g: F.one_hot(y, CLASSES))),
    S("labels_single_class_val", "bad_labels", "UserCNN", "every val label 0 (val/ as ImageFolder)",
      make=user(UserCNN, val_labels=lambda y, g: torch.zeros_like(y))),
    # ---- decisive measurements of the model at init
    S("softmax_head", "outputs_are_probabilities", "UserCNN", "softmax at the end", quick=True,
      make=user(SoftmaxHead)),
    S("softmax_head_plain", "outputs_are_probabilities", "PlainCNN", "softmax at the end",
      make=user(PlainSoftmaxHead)),
    S("softmax_head_resnet", "outputs_are_probabilities", "ResidualCNN", "softmax at the end",
      make=user(ResidualSoftmax, **R32)),
    S("dropout_no_flag_0.2", "stochastic_eval", "UserCNN", "F.dropout(h, 0.2)",
      make=user(with_cls(DropoutNoFlag, p=0.2))),
    S("dropout_no_flag_0.5", "stochastic_eval", "UserCNN", "F.dropout(h, 0.5)", quick=True,
      make=user(with_cls(DropoutNoFlag, p=0.5))),
    S("dropout_no_flag_resnet", "stochastic_eval", "ResidualCNN", "F.dropout(h, 0.5)",
      make=user(ResidualDropoutNoFlag, **R32)),
    S("val_annotations_shuffled", "val_labels_misaligned", "ResidualCNN (repo data)", "val labels permuted",
      make=lambda pool, seed: dict(model="ResidualCNN", data=_shuffle_val(pool.repo(), seed),
                                   config=dict(preflight_only=True, probe_per_class=None))),
    # ---- label faults found from predictions (the model's and the 1-NN check's)
    S("val_labels_shuffled", "val_labels_misaligned", "UserCNN", "val labels permuted (user data)",
      make=user(UserCNN, val_labels=permuted)),
    S("val_labels_shuffled_plain", "val_labels_misaligned", "PlainCNN", "val labels permuted (user data)",
      make=user(plain_cnn, val_labels=permuted)),
    S("train_labels_shuffled", "train_labels_unlearnable", "UserCNN", "train labels permuted", quick=True,
      make=user(UserCNN, train_labels=permuted)),
    S("train_labels_random_plain", "train_labels_unlearnable", "PlainCNN", "train labels uniform random",
      make=user(plain_cnn, train_labels=lambda y, g: torch.randint(0, CLASSES, y.shape, generator=g))),
    # ---- optimizer faults: severity = factor on the healthy Adam lr 1e-3
    *[S(f"lr_x{f:g}{sfx}", "learning_rate_too_high", arch, f"Adam lr {LR * f:g}",
        make=user(m, opt=adam(LR * f)), quick=(f == 1e3 and arch == "UserCNN"))
      for f in (1e2, 1e3) for arch, m, sfx in ARCHS],
    *[S(f"lr_x{f:g}{sfx}", "learning_rate_too_low", arch, f"Adam lr {LR * f:g}", make=user(m, opt=adam(LR * f)))
      for f in (1e-3, 1e-5) for arch, m, sfx in ARCHS],
    S("lr_x1e-3_resnet", "learning_rate_too_low", "ResidualCNN", "Adam lr 1e-6",
      make=user(ResidualCNN, opt=adam(1e-6), **R32)),
    *[S(f"weight_decay_{wd:g}{sfx}", "weight_decay_too_strong", arch, f"Adam(weight_decay={wd:g})",
        make=user(m, opt=adam(weight_decay=wd)))
      for wd in (1.0, 10.0) for arch, m, sfx in ARCHS],
    # ---- model faults
    *[S(f"heavy_dropout_{p}", "dropout_too_strong", "UserCNN", f"F.dropout(x, {p}) after every stage",
        make=user(with_cls(HeavyDropout, p=p)), quick=(p == 0.9)) for p in (0.5, 0.7, 0.9)],
    S("heavy_dropout_0.8_plain", "dropout_too_strong", "PlainCNN", "F.dropout(x, 0.8) after every stage",
      make=user(PlainHeavyDropout)),
    S("detached_features", "frozen_parameters", "UserCNN", ".detach() before the head", make=user(DetachedFeatures)),
    S("requires_grad_false", "frozen_parameters", "PlainCNN", "requires_grad=False on every conv",
      make=user(_factory(frozen_features, bn=False))),
    S("requires_grad_false_resnet", "frozen_parameters", "ResidualCNN", "requires_grad=False on stem+stages",
      make=user(residual_frozen, **R32)),
    # ---- data faults
    S("inputs_0_255", "input_not_normalized", "UserCNN", "no ToTensor scaling, no Normalize",
      make=user(UserCNN, scale255=True)),
    S("inputs_0_255_plain", "input_not_normalized", "PlainCNN", "no ToTensor scaling, no Normalize",
      make=user(plain_cnn, scale255=True)),
    # With SGD (momentum 0.9, lr 0.01), raw pixels blow the first steps up and kill the ReLUs;
    # Adam's per-weight scaling absorbs them (the two set-ups above learn anyway).
    S("inputs_0_255_sgd_plain", "input_not_normalized", "PlainCNN", "no ToTensor scaling, no Normalize; SGD 0.01",
      make=user(plain_cnn, opt=sgd(0.01), scale255=True)),
    S("not_shuffled", "batches_not_shuffled", "UserCNN", "DataLoader(shuffle=False), class-sorted",
      make=user(UserCNN, shuffle=False)),
    S("not_shuffled_plain", "batches_not_shuffled", "PlainCNN", "DataLoader(shuffle=False), class-sorted",
      make=user(plain_cnn, shuffle=False)),
    # ---- symptoms (right when the symptom is top, or `root` is top and the symptom is listed)
    S("dead_init_-10", "collapsed_outputs", "PlainCNN", "conv bias -10 before every ReLU",
      make=user(_factory(dead_init, bias=-10.0))),
    # Dead units collapse the outputs: the report names the collapse first (nothing upstream of it
    # can be changed from outside), and must list the dead units with it.
    S("dead_init_-3", "dead_units", "PlainCNN", "conv bias -3 before every ReLU",
      make=user(_factory(dead_init, bias=-3.0)), root="collapsed_outputs"),
    *[S(f"deep_sigmoid_{d}", "vanishing_gradients", "DeepSigmoid", f"{d} conv+sigmoid layers",
        make=user(_factory(DeepSigmoid, depth=d))) for d in (10, 16)],
    S("big_init", "exploding_gradients", "PlainCNN", "conv weights N(0, 1)", make=user(_factory(big_init))),
    # SGD at lr 10 blows the loss up to ~1e11 in 4 steps and kills every ReLU: a too-high lr
    # with dead units and collapsed outputs as its symptoms (measured: the loss stays finite).
    S("sgd_lr_10", "learning_rate_too_high", "PlainCNN", "SGD lr 10 (x1e3 of 0.01)",
      make=user(plain_cnn, opt=sgd(10.0))),
    S("naive_xent", "non_finite_loss", "PlainCNN", "hand-written softmax + log, Adam lr 10",
      make=user(plain_cnn, opt=adam(10.0), loss=naive_xent), root="learning_rate_too_high"),
    S("nan_images", "non_finite_loss", "UserCNN", "1 in 50 train images decoded as NaN",
      make=user(UserCNN, nan=True)),
    # ---- healthy: must come out PASS or INCONCLUSIVE with no cause
    S("healthy_user", None, "UserCNN", "-", make=user(UserCNN), quick=True),
    S("healthy_plain", None, "PlainCNN", "-", make=user(plain_cnn)),
    S("healthy_resnet_32px", None, "ResidualCNN", "-", make=user(ResidualCNN, **R32)),
    S("healthy_user_10_1", None, "UserCNN", "10 train + 1 val per class",
      make=user(UserCNN, train=10, val=1, config=dict(probe_per_class=1))),
    S("healthy_BaselineCNN_10_1_preflight", None, "BaselineCNN (repo)", "200 classes, 10 train + 1 val, preflight",
      make=repo("BaselineCNN", preflight=True, classes=200, train=10, val=1), quick=True),
    *[S(f"healthy_{m}", None, f"{m} (repo)", "fixed dropout, 10 classes x 20 train, 1 epoch",
        make=repo(m, classes=CLASSES, train=20, val=10))
      for m in ("BaselineCNN", "DeeperWiderCNN", "CNNWithSEAttention", "ResidualCNN", "BestModel")],
]


def _shuffle_val(data: Data, seed: int) -> Data:
    """The repo's val labels permuted (a broken annotation reader): the label-file audit's case."""
    g = torch.Generator().manual_seed(seed)
    data.val_targets = data.val_targets[torch.randperm(len(data.val_targets), generator=g)]
    return data
