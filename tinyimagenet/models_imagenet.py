"""Tiny ImageNet classifiers and the building blocks they share.

What this is for
----------------
Defines four of the five models compared in this repo -- ``BaselineCNN``,
``DeeperWiderCNN``, ``CNNWithSEAttention`` and ``ResidualCNN`` (the fifth,
``BestModel``, lives in ``best_model_imagenet.py``) -- plus the pieces all of
them are assembled from, so no model repeats another's code:

* ``conv_stage``          -- [3x3 conv + ReLU] x k, optional SE, 2x2 max-pool
* ``ClassifierSpec``      -- an MLP head described by hidden sizes and dropout
* ``SqueezeExcitation``   -- channel attention (Hu et al. 2018)
* ``BasicBlock``          -- ResNet basic residual block (He et al. 2016)
* ``PlainCNN`` / ``ResidualNetwork`` -- the two model skeletons
* ``init_weights``        -- the single initialisation routine every model uses
  (with ``init_generator``, which makes it independent of the dropout setting)

Every model maps a float batch ``(N, 3, 64, 64)`` to logits
``(N, num_classes)`` and knows nothing about data or training.

Dropout settings
----------------
``dropout="fixed"`` (default) is the repo's fix: no dropout in conv stages or
residual blocks, exactly one ``nn.Dropout(0.3)`` in the classifier.
``dropout="legacy"`` rebuilds the original configuration (dropout after every
stage/block plus 0.5 dropout in deep MLP heads), which left the models at
chance accuracy; it is kept so that failure stays reproducible. Only
``nn.Dropout`` modules are used (never ``F.dropout``) so that
``registry.audit_dropout`` can find every site by walking the modules.
Dropout modules are appended *after* the layers that own parameters, so
parameter names outside ``classifier`` are identical in both settings.

Usage
-----
    from tinyimagenet.models_imagenet import ResidualCNN
    model = ResidualCNN(num_classes=200, dropout="fixed")
    logits = model(images)                       # images: (N, 3, 64, 64)

Most code should go through ``tinyimagenet.registry.build_model`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

INPUT_SIZE = 64  # Tiny ImageNet images are 64x64; plain CNNs size their flatten from it.
DROPOUT_SETTINGS = ("fixed", "legacy")
SE_REDUCTION = 16  # Hu et al.'s default bottleneck ratio for the SE MLP.


def is_legacy_dropout(dropout: str) -> bool:
    """Validate a ``dropout`` option and say whether it selects the legacy layout."""
    if dropout not in DROPOUT_SETTINGS:
        raise ValueError(f"dropout must be one of {DROPOUT_SETTINGS}, got {dropout!r}")
    return dropout == "legacy"


# --------------------------------------------------------------------------- heads


@dataclass(frozen=True)
class ClassifierSpec:
    """An MLP head: ``[Linear, ReLU, Dropout(hidden_dropout)]`` per hidden size,
    then an optional ``Dropout(output_dropout)`` and the output ``Linear``.

    A rate of 0 means "no Dropout module at all", so the audit never sees
    no-op dropout layers.
    """

    hidden_sizes: tuple[int, ...] = ()
    hidden_dropout: float = 0.0
    output_dropout: float = 0.0

    def build(self, in_features: int, num_classes: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        width = in_features
        for hidden in self.hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            if self.hidden_dropout:
                layers.append(nn.Dropout(self.hidden_dropout))
            width = hidden
        if self.output_dropout:
            layers.append(nn.Dropout(self.output_dropout))
        layers.append(nn.Linear(width, num_classes))
        return nn.Sequential(*layers)


# Plain CNNs flatten a large feature map, so their fixed head keeps the seed's
# 512-unit hidden layer with the single Dropout(0.3) after it.
PLAIN_FIXED_HEAD = ClassifierSpec(hidden_sizes=(512,), hidden_dropout=0.3)
PLAIN_LEGACY_HEAD = ClassifierSpec(hidden_sizes=(1024, 512, 256), hidden_dropout=0.5)
# Residual nets end in global average pooling (a 1-D descriptor), so the fixed
# head is the standard ResNet one: dropout then a single Linear.
RESIDUAL_FIXED_HEAD = ClassifierSpec(output_dropout=0.3)
RESIDUAL_LEGACY_HEAD = ClassifierSpec(hidden_sizes=(512, 256), hidden_dropout=0.5)


# --------------------------------------------------------------------------- blocks


class SqueezeExcitation(nn.Module):
    """Channel attention: global average pool -> FC reduce -> ReLU -> FC expand
    -> sigmoid, then rescale each channel of the input by its gate."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION):
        super().__init__()
        bottleneck = max(channels // reduction, 1)
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.excite = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, bottleneck),
            nn.ReLU(inplace=True),
            nn.Linear(bottleneck, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.excite(self.squeeze(x))
        return x * gates[:, :, None, None]


def conv_stage(
    in_channels: int,
    widths: Sequence[int],
    *,
    dropout: float = 0.0,
    se_reduction: Optional[int] = None,
) -> nn.Sequential:
    """One pooling stage of a plain CNN: ``[Conv3x3(pad 1) + ReLU]`` for each
    width, optional SE on the stage output, ``MaxPool2d(2)``, optional dropout.

    Dropout goes last so conv parameter names do not depend on the setting.
    """
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
        in_channels = width
    if se_reduction:
        layers.append(SqueezeExcitation(in_channels, se_reduction))
    layers.append(nn.MaxPool2d(2))
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, plus a skip connection
    (1x1 conv + BN projection when stride or width changes), ReLU, and an
    optional dropout on the block output (legacy setting only)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        # No conv bias: the BatchNorm that follows has its own shift.
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)  # zero-initialised by init_weights
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.relu(out + self.shortcut(x))
        return self.dropout(out)


# --------------------------------------------------------------------------- init


def init_generator() -> torch.Generator:
    """A generator for ``init_weights``, seeded by one draw from the global RNG.

    Models call this *before* building any layer. Building layers runs
    PyTorch's default init, which consumes global RNG in proportion to layer
    sizes -- and the legacy head is bigger than the fixed one. Drawing the seed
    first makes the final weights depend only on ``torch.manual_seed`` and the
    module order, so both dropout settings get identical feature weights.
    """
    seed = int(torch.randint(0, 2**62, ()))
    return torch.Generator().manual_seed(seed)


def init_weights(model: nn.Module, generator: Optional[torch.Generator] = None) -> None:
    """Initialise ``model`` in place; every model calls this once, last thing in
    its constructor, with a generator from ``init_generator``. Modules are
    visited in order with feature layers before the head, so the feature
    weights are the same for both dropout settings.

    * Conv: Kaiming-normal, fan_out, ReLU gain (He et al. 2015). Variance 2/fan
      keeps signal magnitudes stable through deep ReLU stacks, which matters most
      in the plain CNNs that have no BatchNorm to rescue a bad scale; fan_out is
      the torchvision convention (He et al. show preserving either the forward
      or the backward pass suffices).
    * Hidden Linear (incl. SE MLPs): Kaiming-normal, fan_in, for the same reason.
    * Output Linear: N(0, 0.01) weights and zero bias, so the initial logits are
      near zero, the softmax is near uniform and the first loss is ~ln(C)
      rather than confidently wrong.
    * BatchNorm: gamma 1, beta 0; then the last BN gamma of every BasicBlock is
      zeroed so each block starts as the identity on its skip path, which eases
      early optimisation (Goyal et al. 2017).
    """
    output_layer = [m for m in model.classifier.modules() if isinstance(m, nn.Linear)][-1]
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if module is output_layer:
                nn.init.normal_(module.weight, mean=0.0, std=0.01, generator=generator)
            else:
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu", generator=generator)
            nn.init.zeros_(module.bias)
    # Separate pass: modules() visits a block before its bn2, so zeroing inside
    # the loop above would be undone by the BatchNorm branch.
    for module in model.modules():
        if isinstance(module, BasicBlock):
            nn.init.zeros_(module.bn2.weight)


# --------------------------------------------------------------------------- skeletons


class PlainCNN(nn.Module):
    """Conv stages without BatchNorm -> flatten -> MLP head.

    ``stage_widths`` gives the conv widths of each pooling stage, e.g.
    ``((64,), (128,))`` is two stages of one conv each.
    """

    is_residual = False  # read by registry.audit_dropout

    def __init__(
        self,
        stage_widths: Sequence[Sequence[int]],
        num_classes: int,
        head: ClassifierSpec,
        stage_dropout: float = 0.0,
        se_reduction: Optional[int] = None,
    ):
        super().__init__()
        generator = init_generator()  # before any layer draws from the global RNG
        stages = []
        channels = 3
        for widths in stage_widths:
            stages.append(conv_stage(channels, widths, dropout=stage_dropout, se_reduction=se_reduction))
            channels = widths[-1]
        self.features = nn.Sequential(*stages)
        side = INPUT_SIZE // 2 ** len(stage_widths)  # each stage halves the map
        self.classifier = head.build(channels * side * side, num_classes)
        init_weights(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class ResidualNetwork(nn.Module):
    """Stem (3x3 conv + BN + ReLU, optional max-pool) -> stages of BasicBlocks
    (first stage stride 1, later stages halve the map) -> global average pool
    -> head."""

    is_residual = True  # read by registry.audit_dropout

    def __init__(
        self,
        stage_widths: Sequence[int],
        blocks_per_stage: Sequence[int],
        num_classes: int,
        head: ClassifierSpec,
        block_dropout: float = 0.0,
        stem_pool: bool = False,
    ):
        super().__init__()
        generator = init_generator()  # before any layer draws from the global RNG
        channels = stage_widths[0]
        stem: list[nn.Module] = [
            nn.Conv2d(3, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        ]
        if stem_pool:
            stem.append(nn.MaxPool2d(2))
        self.stem = nn.Sequential(*stem)
        stages = []
        for index, (width, num_blocks) in enumerate(zip(stage_widths, blocks_per_stage)):
            blocks = []
            for block_index in range(num_blocks):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(channels, width, stride=stride, dropout=block_dropout))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = head.build(channels, num_classes)
        init_weights(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------- models


class BaselineCNN(PlainCNN):
    """Three stages of one conv each (64/128/256), 64->32->16->8 px, flatten
    256x8x8 -> Linear(16384, 512) -> ReLU -> Dropout(0.3) -> Linear."""

    def __init__(self, num_classes: int = 200, dropout: str = "fixed"):
        legacy = is_legacy_dropout(dropout)
        super().__init__(
            stage_widths=((64,), (128,), (256,)),
            num_classes=num_classes,
            head=PLAIN_LEGACY_HEAD if legacy else PLAIN_FIXED_HEAD,
            stage_dropout=0.3 if legacy else 0.0,
        )


class DeeperWiderCNN(PlainCNN):
    """Four stages of two convs each (32->64, 128, 256, 384), 64->4 px, flatten
    384x4x4 -> MLP head. Eight convs vs the baseline's three and a 384-wide top.

    The first conv runs at full 64x64 resolution, where each channel costs 4x
    what it costs one stage later, so it is kept at 32 channels to hold the
    forward cost near 1.35 GFLOPs/image.
    """

    def __init__(self, num_classes: int = 200, dropout: str = "fixed"):
        legacy = is_legacy_dropout(dropout)
        super().__init__(
            stage_widths=((32, 64), (128, 128), (256, 256), (384, 384)),
            num_classes=num_classes,
            head=PLAIN_LEGACY_HEAD if legacy else PLAIN_FIXED_HEAD,
            stage_dropout=0.2 if legacy else 0.0,
        )


class CNNWithSEAttention(PlainCNN):
    """Four stages of conv3x3 + ReLU + squeeze-and-excitation (r=16) + pool,
    widths 64/128/256/512, 64->4 px, flatten 512x4x4 -> MLP head."""

    def __init__(self, num_classes: int = 200, dropout: str = "fixed"):
        legacy = is_legacy_dropout(dropout)
        super().__init__(
            stage_widths=((64,), (128,), (256,), (512,)),
            num_classes=num_classes,
            head=PLAIN_LEGACY_HEAD if legacy else PLAIN_FIXED_HEAD,
            stage_dropout=0.3 if legacy else 0.0,
            se_reduction=SE_REDUCTION,
        )


class ResidualCNN(ResidualNetwork):
    """Small ResNet: stem conv 64 + BN + ReLU + max-pool (64->32 px), then
    2 BasicBlocks at each of 64/128/256 channels (32/16/8 px), global average
    pool, head. The stem pool keeps it near 0.85 GFLOPs/image."""

    def __init__(self, num_classes: int = 200, dropout: str = "fixed"):
        legacy = is_legacy_dropout(dropout)
        super().__init__(
            stage_widths=(64, 128, 256),
            blocks_per_stage=(2, 2, 2),
            num_classes=num_classes,
            head=RESIDUAL_LEGACY_HEAD if legacy else RESIDUAL_FIXED_HEAD,
            block_dropout=0.2 if legacy else 0.0,
            stem_pool=True,
        )
