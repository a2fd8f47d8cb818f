"""The strongest model in the repo: ResNet-18 adapted to 64x64 Tiny ImageNet.

What this is for
----------------
``BestModel`` is the network to train when the goal is accuracy rather than
an ablation. It follows the published from-scratch Tiny ImageNet recipe
(~65% top-1 in 100 epochs): ResNet-18's BasicBlock layout [2, 2, 2, 2] at
widths 64/128/256/512, but with the ImageNet stem (7x7 stride-2 conv +
max-pool, a 4x downsample meant for 224 px inputs) replaced by one 3x3
stride-1 conv + BN + ReLU and no max-pool. At 64 px the ImageNet stem would
leave a 2x2 map for the last stage; keeping full resolution gives stages at
64/32/16/8 px. Global average pooling feeds the classifier.

Like every model here it takes ``(N, 3, 64, 64)`` and returns
``(N, num_classes)`` logits, knows nothing of data or training, and supports
``dropout="fixed"`` (one Dropout(0.3) before the output layer) or
``dropout="legacy"`` (Dropout(0.2) after each of the 8 blocks plus a
2-hidden-layer head with Dropout(0.5)); see ``models_imagenet`` for the
shared blocks, the shared initialisation (including zero-init of each block's
last BN gamma) and why the legacy setting exists.

Usage
-----
    from tinyimagenet.best_model_imagenet import BestModel
    model = BestModel(num_classes=200)
    logits = model(images)            # images: (N, 3, 64, 64)
"""

from __future__ import annotations

from .models_imagenet import (
    RESIDUAL_FIXED_HEAD,
    RESIDUAL_LEGACY_HEAD,
    ResidualNetwork,
    is_legacy_dropout,
)


class BestModel(ResidualNetwork):
    """ResNet-18 for 64x64 inputs: 3x3 stride-1 stem, no max-pool, BasicBlocks
    [2, 2, 2, 2] at 64/128/256/512 channels (64/32/16/8 px), GAP, head."""

    def __init__(self, num_classes: int = 200, dropout: str = "fixed"):
        legacy = is_legacy_dropout(dropout)
        super().__init__(
            stage_widths=(64, 128, 256, 512),
            blocks_per_stage=(2, 2, 2, 2),
            num_classes=num_classes,
            head=RESIDUAL_LEGACY_HEAD if legacy else RESIDUAL_FIXED_HEAD,
            block_dropout=0.2 if legacy else 0.0,
            stem_pool=False,  # no early downsampling: 64 px is already small
        )
