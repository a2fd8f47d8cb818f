"""What is diagnosed: the user's model, data, loss and optimizer, turned into one `Subject`.

    subject = make_subject(MyNet, train=my_train_ds, val=my_val_ds, loss_fn=my_loss,
                           optimizer=lambda params: torch.optim.Adam(params, 1e-3), config=cfg)

Everything the user passes is left untouched: an `nn.Module` is deep-copied once and every
experiment builds its own copy from that template; a class or factory is called afresh (with
`num_classes=C` when it takes that argument) under the same seed, so every experiment starts
from the same weights. Data is read once into tensors (the user's transforms applied once, in
the user's order), so every experiment sees the same images; user_data.py reads them (a DataLoader
as the user's code iterates it: its sampler, batch size and shuffling or lack of it).
The repo's own data (a `loaders.Data`) stays uint8 and goes through `BatchLoader`.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..loaders import BatchLoader, Data, epoch_generator
from .errors import UserInputError, UserTypeError


class BadLabels(UserInputError):
    """The labels cannot be used as class indices (found before any training)."""


# --------------------------------------------------------------------------------------- batches
class TensorBatches:
    """Batches of already-transformed images on `device`, shuffled per epoch or kept in order.

    Same interface as loaders.BatchLoader (targets, set_epoch, len, iteration), so the
    diagnosis loop treats the repo's data and the user's alike.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int, *, shuffle: bool,
                 device, seed: int = 0, drop_single: bool = True):
        self.device = torch.device(device)
        # On the device once per run, like the repo's BatchLoader: no host-to-device copy per batch.
        self.images, self.targets = images.to(self.device), targets.to(self.device)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_single, self.epoch = drop_single, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(len(self.targets), self.batch_size)
        return full + (rest >= (2 if self.drop_single else 1))  # BatchNorm cannot take one image

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `idx` as the model receives them: (x, y) on the device."""
        idx = idx.to(self.device)
        return self.images.index_select(0, idx), self.targets.index_select(0, idx)

    def __iter__(self):
        n = len(self.targets)
        if self.shuffle:
            order = torch.randperm(n, generator=epoch_generator(self.seed, self.epoch))
        else:
            order = torch.arange(n)
        order = order.to(self.device)  # one copy per epoch
        for step in range(len(self)):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield self.images.index_select(0, idx), self.targets.index_select(0, idx)


# ------------------------------------------------------------------------------------ the subject
@dataclass
class Subject:
    name: str                                   # class or factory name, or the registry name
    make_model: Callable[[], nn.Module]         # a fresh copy, same initial weights every call
    loss_fn: Callable                           # (logits, targets) -> scalar loss
    make_optimizer: Callable                    # (model) -> optimizer (the user's factory or the recipe)
    num_classes: int
    train_images: torch.Tensor                  # as stored: user float (N,C,H,W), repo uint8 (N,H,W,3); on the device
    train_y: torch.Tensor                       # int64 labels of the training images
    probe_y: torch.Tensor                       # held-out train labels
    val_images: torch.Tensor                    # as stored, like train_images
    val_y: torch.Tensor
    batch_size: int                             # training batch size
    loaders: Callable                           # (shuffle: bool|None) -> (train, probe, val) batch sources
    shuffled: bool = True                       # the training batches come shuffled as given (the headroom screen)
    root: str = ""                              # the repo dataset's folder (label-file checks), if any
    val_files: list = dataclasses.field(default_factory=list)
    classes: list = dataclasses.field(default_factory=list)


def _accepts_num_classes(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "num_classes" or p.kind is p.VAR_KEYWORD for p in params)


def model_factory(model, num_classes: int, seed: int) -> tuple[Callable[[], nn.Module], str]:
    """(make, name): `make()` returns a fresh model with the same initial weights every call."""
    if isinstance(model, nn.Module):
        template = copy.deepcopy(model)  # the user's object is never touched again
        return (lambda: copy.deepcopy(template)), type(model).__name__
    if not callable(model):
        raise UserTypeError(f"model must be an nn.Module, a class or a factory, got {type(model).__name__}")
    takes_c = _accepts_num_classes(model)

    def make():
        torch.manual_seed(seed)  # the caller restores the global RNG afterwards
        built = model(num_classes=num_classes) if takes_c else model()
        if not isinstance(built, nn.Module):
            raise UserTypeError(f"{getattr(model, '__name__', model)}() returned {type(built).__name__}, not an nn.Module")
        return built
    return make, getattr(model, "__name__", type(model).__name__)


def check_labels(y: torch.Tensor, num_classes: int, split: str) -> list[str]:
    """Problems that make labels unusable as class indices, each a readable finding."""
    if y.ndim == 2 and y.shape[1] == num_classes and bool(((y == 0) | (y == 1)).all()):
        return [f"{split} labels are one-hot vectors of length {num_classes}; give class indices "
                "(y.argmax(1)) instead"]
    if y.ndim != 1 or y.is_floating_point() and not bool((y == y.round()).all()):
        return [f"{split} labels have shape {tuple(y.shape)} and dtype {y.dtype}; expected integer class indices"]
    y = y.long()
    lo, hi, found = int(y.min()), int(y.max()), []
    if lo == 1 and hi == num_classes:
        found.append(f"{split} labels run 1..{num_classes}: 1-based; subtract 1 (cross-entropy wants 0..{num_classes - 1})")
    elif lo < 0 or hi >= num_classes:
        found.append(f"{split} labels span {lo}..{hi}, outside [0, {num_classes}) for {num_classes} classes")
    present = int(torch.unique(y).numel())
    if present == 1 and len(y) > 1:
        found.append(f"all {len(y)} {split} labels are class {lo}: a split holding a single class "
                     "(the val-folder trap: val/ read as an image folder)")
    return found


def probe_indices(y: torch.Tensor, num_classes: int, per_class: int | None) -> torch.Tensor:
    """The last `per_class` images of each class (default 5% of the smallest class, >= 1)."""
    counts = torch.bincount(y, minlength=num_classes)
    present = counts[counts > 0]
    k = per_class if per_class is not None else max(1, int(0.05 * int(present.min())))
    if int(present.min()) <= k:
        raise UserInputError(f"--probe-per-class {k} leaves no training images for some class "
                             f"(smallest class has {int(present.min())}).")
    return torch.cat([(y == c).nonzero().flatten()[-k:] for c in range(num_classes) if counts[c] > 0])


def repo_data_subject(data: Data, *, probe_per_class, batch_size, seed, device, normalize=True) -> dict:
    """The repo's Tiny ImageNet (uint8, augmented and normalized on the device by BatchLoader)."""
    problems = check_labels(data.train_targets, data.num_classes, "train") + \
        check_labels(data.val_targets, data.num_classes, "val")
    if problems:
        raise BadLabels("; ".join(problems))
    probe = probe_indices(data.train_targets, data.num_classes, probe_per_class)
    keep = torch.ones(len(data.train_targets), dtype=torch.bool)
    keep[probe] = False
    # Images go to the device once here: every run and check builds its loaders from these, and
    # BatchLoader's own .to(device) is then free instead of a copy of the data per call.
    tx, ty = data.train_images[keep].to(device), data.train_targets[keep]
    px, py = data.train_images[probe].to(device), data.train_targets[probe]
    vx = data.val_images.to(device)
    common = dict(device=device, seed=seed, normalize=normalize)

    def loaders(shuffle: bool | None = None):
        return (BatchLoader(tx, ty, batch_size, train=True, **common),
                BatchLoader(px, py, 256, train=False, **common),
                BatchLoader(vx, data.val_targets, 256, train=False, **common))
    return dict(train_images=tx, train_y=ty, probe_y=py, val_images=vx, val_y=data.val_targets,
                batch_size=batch_size, loaders=loaders, root=data.root, val_files=data.val_files,
                classes=list(data.classes))


def optimizer_factory(optimizer, recipe_factory) -> Callable:
    """(model) -> optimizer: the user's `params -> Optimizer` factory, or the recipe's."""
    if optimizer is None:
        return recipe_factory
    if isinstance(optimizer, torch.optim.Optimizer):
        raise UserTypeError("optimizer must be a factory `params -> Optimizer` (e.g. "
                            "`lambda params: torch.optim.Adam(params, lr=1e-3)`), not an Optimizer bound to "
                            "other parameters")
    return lambda model: optimizer(model.parameters())


def default_loss(logits, targets):
    return F.cross_entropy(logits, targets)
