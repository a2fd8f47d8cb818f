"""Model registry: build models by name, audit their dropout, measure their cost.

What this is for
----------------
The one place the rest of the repo (training scripts, notebooks, benchmarks)
should get models from, so a model name in a config maps to exactly one
class. It also answers two questions about any model without training it:

* where is the dropout, and how much signal does it drop? (``audit_dropout``,
  ``keep_probability``) -- the legacy dropout layout kept models at chance,
  so this is checked rather than trusted;
* how big and how expensive is it? (``model_summary``, ``summary_table``) --
  FLOPs are *counted* by running one 1x3x64x64 image under
  ``torch.utils.flop_counter.FlopCounterMode``, not estimated by formula.

Usage
-----
    from tinyimagenet.registry import build_model, audit_dropout, keep_probability
    model = build_model("ResidualCNN", num_classes=200, dropout="fixed")
    sites = audit_dropout(model)              # [DropoutSite(name, place, rate), ...]
    keep_probability(sites, place="block")    # 1.0 for the fixed setting

    python -m tinyimagenet.registry           # prints the params/FLOPs table
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .best_model_imagenet import BestModel
from .models_imagenet import (
    DROPOUT_SETTINGS,
    INPUT_SIZE,
    BaselineCNN,
    CNNWithSEAttention,
    DeeperWiderCNN,
    ResidualCNN,
    is_legacy_dropout,
)

__all__ = [
    "MODELS",
    "DROPOUT_SETTINGS",
    "DropoutSite",
    "build_model",
    "audit_dropout",
    "keep_probability",
    "model_summary",
    "summary_table",
]

MODELS: dict[str, type] = {
    cls.__name__: cls
    for cls in (BaselineCNN, DeeperWiderCNN, CNNWithSEAttention, ResidualCNN, BestModel)
}

# Every dropout flavour torch ships; matching on the public classes (rather than
# "Dropout" in the class name) keeps the audit exact.
_DROPOUT_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def build_model(name: str, num_classes: int = 200, dropout: str = "fixed") -> nn.Module:
    """Instantiate the model registered under ``name``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    is_legacy_dropout(dropout)  # validate before building anything
    return MODELS[name](num_classes=num_classes, dropout=dropout)


@dataclass(frozen=True)
class DropoutSite:
    name: str  # module path, e.g. "features.0.3"
    place: str  # "conv_stage", "block" or "classifier"
    rate: float


def audit_dropout(model: nn.Module) -> list[DropoutSite]:
    """Every dropout module of ``model`` in ``named_modules`` order.

    A site under ``model.classifier`` is "classifier"; anything else is
    "block" in residual models and "conv_stage" in plain CNNs, decided by the
    model's ``is_residual`` class attribute.
    """
    feature_place = "block" if getattr(model, "is_residual", False) else "conv_stage"
    sites = []
    for name, module in model.named_modules():
        if isinstance(module, _DROPOUT_TYPES):
            in_classifier = name == "classifier" or name.startswith("classifier.")
            place = "classifier" if in_classifier else feature_place
            sites.append(DropoutSite(name=name, place=place, rate=float(module.p)))
    return sites


def keep_probability(sites: list[DropoutSite], place: Optional[str] = None) -> float:
    """Product of ``1 - rate`` over ``sites`` (optionally only those at
    ``place``): the expected fraction of units that survive every dropout on
    the forward path. In the residual models dropout follows the residual
    sum, so no skip connection bypasses it and the product is exact."""
    return math.prod(1.0 - site.rate for site in sites if place is None or site.place == place)


def model_summary(model_or_name: Union[str, nn.Module], num_classes: int = 200) -> dict:
    """``{"name", "params", "flops"}``: trainable parameter count and forward
    FLOPs for one 1x3x64x64 image, counted with ``FlopCounterMode`` in eval
    mode (so dropout and BN behave as at inference). A model passed in is
    returned to its previous train/eval mode."""
    if isinstance(model_or_name, str):
        name, model = model_or_name, build_model(model_or_name, num_classes=num_classes)
    else:
        name, model = type(model_or_name).__name__, model_or_name
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    reference = next(model.parameters())
    image = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, device=reference.device, dtype=reference.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        model.train(was_training)
    return {"name": name, "params": params, "flops": counter.get_total_flops()}


def summary_table(num_classes: int = 200) -> str:
    """Markdown table of params (M) and forward GFLOPs/image for every model
    (default "fixed" dropout; the legacy heads differ only in MLP size)."""
    lines = ["| Model | Params (M) | GFLOPs (fwd/image) |", "|---|---:|---:|"]
    for name in MODELS:
        summary = model_summary(name, num_classes=num_classes)
        lines.append(f"| {name} | {summary['params'] / 1e6:.2f} | {summary['flops'] / 1e9:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary_table())
