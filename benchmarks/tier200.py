"""The 200-class tier of benchmarks/diagnosis_accuracy.py: where users run the check.

    python benchmarks/diagnosis_accuracy.py --tier 200                 # this tier only
    python benchmarks/diagnosis_accuracy.py --tier 200 --quick         # its quick set-ups (in --quick too)
    python benchmarks/diagnosis_accuracy.py --list                     # every set-up with its tier

Not run by itself. Every set-up here trains on all 200 classes of the real subset at the sizes
the README suggests for a CPU: 10-20 train images per class, a tenth of val (5 per class) or all
of it (50), 1-3 epochs. Registry models on the repo's data path, and the two user-style models
of faults.py (UserCNN with BatchNorm, PlainCNN without) on user data, with the faults of issue 17
planted: lr far too high and far too low, shuffled train labels, misaligned val labels, legacy
dropout, a softmax head, frozen parameters; and healthy set-ups. The held-out "probe" slice is
1-2 images per class (faults.py's 10 per class would take every train image).
"""
from __future__ import annotations

from faults import (PlainSoftmaxHead, Setup, SoftmaxHead, UserCNN, _factory, adam, frozen_features, permuted,
                    plain_cnn, sgd, user)

C = 200
TENTH, FULL = 5, 50  # val images per class: a tenth of val, or all of it


def u(model, *, train=20, val=TENTH, epochs=1, opt=None, **kw):
    """A user-data set-up at 200 classes: `train`/`val` images per class, `epochs` epochs."""
    probe = 2 if train >= 20 else 1
    return user(model, opt=opt, classes=C, train=train, val=val,
                config=dict(epochs=epochs, probe_per_class=probe), **kw)


def r(name, *, train=20, val=TENTH, epochs=1, dropout="fixed"):
    """A registry model on the repo's data path (its recipe optimizer), at 200 classes."""
    def make(pool, seed):
        return dict(model=name, data=pool.repo(classes=C, train=train, val=val),
                    config=dict(epochs=epochs, probe_per_class=1 if train < 20 else 2, dropout=dropout))
    return make


def S(name, cause, arch, severity, make, quick=False, root=None):
    return Setup(f"t200_{name}", cause, arch, severity, make, root=root, quick=quick, tier=200)


SETUPS_200 = [
    # ---- lr far too high: the loss explodes in the first epoch (issue 17, failure 1)
    S("lr_x1e3_plain", "learning_rate_too_high", "PlainCNN", "Adam lr 1; 10/class, 1 epoch",
      u(plain_cnn, train=10, opt=adam(1.0)), quick=True),
    S("lr_x1e3", "learning_rate_too_high", "UserCNN", "Adam lr 1; 10/class, 1 epoch", u(UserCNN, train=10, opt=adam(1.0))),
    S("sgd_lr_10_plain", "learning_rate_too_high", "PlainCNN", "SGD lr 10; 20/class, 1 epoch",
      u(plain_cnn, opt=sgd(10.0))),
    # ---- lr far too low
    S("lr_x1e-3", "learning_rate_too_low", "UserCNN", "Adam lr 1e-6; 20/class, 2 epochs",
      u(UserCNN, opt=adam(1e-6), epochs=2)),
    S("lr_x1e-3_plain", "learning_rate_too_low", "PlainCNN", "Adam lr 1e-6; 10/class, 1 epoch",
      u(plain_cnn, train=10, opt=adam(1e-6))),
    # ---- labels (failure 2: shuffled train labels at 20/class)
    S("train_labels_shuffled", "train_labels_unlearnable", "UserCNN", "train labels permuted; 20/class, 1 epoch",
      u(UserCNN, train_labels=permuted), quick=True),
    S("train_labels_shuffled_plain", "train_labels_unlearnable", "PlainCNN", "train labels permuted; 20/class, 2 epochs",
      u(plain_cnn, train_labels=permuted, epochs=2)),
    S("val_labels_shuffled", "val_labels_misaligned", "UserCNN", "val labels permuted; 20/class, full val, 2 epochs",
      u(UserCNN, val=FULL, val_labels=permuted, epochs=2)),
    # ---- model faults
    S("legacy_dropout_BaselineCNN", "dropout_too_strong", "BaselineCNN (repo)", "dropout='legacy'; 20/class, 2 epochs",
      r("BaselineCNN", dropout="legacy", epochs=2)),
    S("softmax_head", "outputs_are_probabilities", "UserCNN", "softmax at the end; 10/class, 1 epoch",
      u(SoftmaxHead, train=10)),
    S("softmax_head_plain", "outputs_are_probabilities", "PlainCNN", "softmax at the end; 10/class, 1 epoch",
      u(PlainSoftmaxHead, train=10)),
    S("requires_grad_false_plain", "frozen_parameters", "PlainCNN", "requires_grad=False on every conv; 10/class",
      u(_factory(frozen_features, bn=False), train=10)),
    # ---- healthy: PASS, or INCONCLUSIVE with no cause
    S("healthy_user", None, "UserCNN", "10/class, 1 epoch", u(UserCNN, train=10)),
    S("healthy_plain_3ep", None, "PlainCNN", "20/class, full val, 3 epochs", u(plain_cnn, val=FULL, epochs=3)),
    S("healthy_BaselineCNN", None, "BaselineCNN (repo)", "fixed dropout; 20/class, 1 epoch", r("BaselineCNN")),
    S("healthy_CNNWithSEAttention", None, "CNNWithSEAttention (repo)", "fixed dropout; 10/class, 1 epoch",
      r("CNNWithSEAttention", train=10)),
]
