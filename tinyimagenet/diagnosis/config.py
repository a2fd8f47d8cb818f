"""What a diagnosis is told: DiagnosisConfig (every option of diagnose() and run_diagnosis()), and
the one place the repo's data is loaded from it.

    from tinyimagenet.diagnosis import DiagnosisConfig      # also importable from .run, as before
    cfg = DiagnosisConfig(epochs=3, headroom=True)
    data = load_repo_data(DiagnosisConfig(synthetic=True)); dataset_summary(data)

Used by run.py (the phases) and quick_diagnosis.py; the defaults of the extension and the headroom
screen come from thresholds.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..loaders import Data, load_data
from ..registry import MODELS
from . import thresholds as T
from . import user_data

@dataclass
class DiagnosisConfig:
    """Every option of a diagnosis, each with its default (one comment per field)."""
    models: list = field(default_factory=lambda: list(MODELS))  # registry names (run_diagnosis)
    epochs: int = 5                       # epochs of the health-check training
    recipe: str = "seed"                  # "seed" (where the failure was reported) or "strong"
    dropout: str = "fixed"                # registry models: "fixed" or "legacy" (the seed's dropout)
    lr: float | None = None               # override the recipe's lr (recipe optimizer only)
    batch_size: int | None = None         # override the recipe's batch size (a user DataLoader keeps its own)
    schedule_epochs: int = 50             # lr schedule horizon: the check is the first epochs of a 50-epoch run
    train_per_class: int | None = None    # repo data: train images per class (None: all)
    val_per_class: int | None = None      # repo data: val images per class (None: all 50)
    probe_per_class: int | None = None    # held-out train images per class (None: 5% of train, >= 1)
    data_dir: str | None = None           # dataset folder ($TINYIMAGENET_ROOT or ./data when None)
    archive: str | None = None            # local path / URL of the archive to extract
    download: bool = False                # fetch the archive into data_dir when absent
    synthetic: bool = False               # generated offline data
    normalize: bool = True                # repo data: False feeds [0,1] inputs (to reproduce that fault)
    device: str = "auto"                  # "auto", "cpu", "cuda": decided once, passed to everything
    amp: bool = True                      # bf16 autocast on CUDA
    seed: int = 0                         # seeds the model, the batches and the experiments
    fit_batch: int = 8                    # images in the fixed batch of the fit experiments
    fit_steps: int = 50                   # max optimizer steps of each fit
    control: bool = True                  # rerun training with a fix for the top causes
    max_controls: int = 2                 # control runs at most per model (each costs one training run)
    extend_epochs: int = T.EXTEND_EPOCHS  # a control trending right but not significant: both arms get this many more
    extend_budget_s: float = T.EXTEND_BUDGET_S  # ... when the estimated cost fits this many seconds (0: never extend)
    headroom: bool | None = None          # headroom screen of a run that learns; None: only below the seed's bar
    headroom_budget: int = T.HEADROOM_BUDGET  # headroom: full control runs at most (after short screens)
    headroom_screen_epochs: int = T.HEADROOM_SCREEN_EPOCHS  # headroom: epochs of each change's screen run
    preflight_only: bool = False          # stop before training
    progress: bool = True                 # print the plan and per-epoch lines
    keys: tuple | None = None             # user data: (image key, label key) of dict samples, or tuple positions
    iterable_cap: int = user_data.ITERABLE_CAP  # user data: samples read at most from an IterableDataset


def load_repo_data(cfg: DiagnosisConfig) -> Data:
    """The repo's Tiny ImageNet (or the synthetic set) as `cfg` asks: the one place it is loaded."""
    return load_data(cfg.data_dir, archive=cfg.archive, synthetic=cfg.synthetic, download=cfg.download,
                     train_per_class=cfg.train_per_class, val_per_class=cfg.val_per_class, progress=cfg.progress)


def dataset_summary(data: Data) -> dict:
    return {"root": data.root, "num_classes": data.num_classes, "train_images": len(data.train_targets),
            "val_images": len(data.val_targets), "ln_num_classes": math.log(data.num_classes)}
