"""The training recipe the diagnosis runs when the user gives no optimizer: lr, batch, optimizer.

    recipe = Recipe.named("seed", model="BaselineCNN", epochs=5)     # train.RECIPES, by name
    opt = recipe.make_optimizer(model); sched = recipe.make_scheduler(opt, steps_per_epoch)

A small frozen object instead of a whole `train.TrainConfig`: the diagnosis needs a model factory,
data, a loss and an optimizer factory, nothing about checkpoints, torchrun or registry names.
`model` only picks a per-model lr where train.RECIPE_LR_BY_MODEL measured one; any other name
(a user's model) gets the recipe's lr. The diagnosis trains with plain cross-entropy (or the
user's loss): a recipe's label smoothing is not applied, and `label_smoothing` says 0.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..train import RECIPE_LR_BY_MODEL, RECIPES, make_optimizer, make_scheduler


@dataclass(frozen=True)
class Recipe:
    name: str                      # "seed" or "strong" (train.RECIPES)
    optimizer: str                 # "adam" or "sgd" (Nesterov, momentum 0.9)
    lr: float                      # peak learning rate
    batch_size: int                # training batch (a user's DataLoader keeps its own)
    weight_decay: float            # on conv/linear weights only
    schedule: str                  # "none" or "cosine"
    warmup_epochs: float           # linear warmup length
    epochs: int                    # epochs the diagnosis trains
    schedule_epochs: int           # horizon of the schedule: the check is the first epochs of a longer run
    device: str                    # where the model lives (make_optimizer checks it)
    label_smoothing: float = 0.0   # what the diagnosis's loss applies: none (see the module docstring)

    @classmethod
    def named(cls, name: str, *, model: str = "", epochs: int, schedule_epochs: int, device,
              lr: float | None = None, batch_size: int | None = None) -> "Recipe":
        if name not in RECIPES:
            raise ValueError(f"--recipe must be one of {sorted(RECIPES)}, got {name!r}")
        base = {k: v for k, v in RECIPES[name].items() if k != "label_smoothing"}
        base["lr"] = RECIPE_LR_BY_MODEL.get(name, {}).get(model, base["lr"])
        if lr is not None:
            base["lr"] = lr
        if batch_size is not None:
            base["batch_size"] = batch_size
        return cls(name=name, epochs=epochs, schedule_epochs=max(epochs, schedule_epochs), device=str(device), **base)

    def make_optimizer(self, model):
        return make_optimizer(model, self)  # reads optimizer, lr, weight_decay, device

    def make_scheduler(self, optimizer, steps_per_epoch: int):
        return make_scheduler(optimizer, self, steps_per_epoch)  # reads schedule, warmup, horizon

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
