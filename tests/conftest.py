"""Shared fixtures: the real subset (extracted once per run), a 10-class cut of it, its decoded
val split, synthetic data.

Tests never touch the network or ~/.cache: the decoded-image cache goes to a per-run temp folder.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBSET_ZIP = Path(os.environ.get("TINYIMAGENET_SUBSET_ZIP",
                                  REPO.parent / "shared" / "data" / "tiny-imagenet-200-subset.zip"))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    old = os.environ.get("TINYIMAGENET_CACHE")
    os.environ["TINYIMAGENET_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("TINYIMAGENET_CACHE", None)
    else:
        os.environ["TINYIMAGENET_CACHE"] = old


@pytest.fixture(scope="session")
def subset_zip() -> Path:
    if not SUBSET_ZIP.is_file():
        pytest.skip(f"real Tiny ImageNet subset not found at {SUBSET_ZIP} (../shared/data is absent)")
    return SUBSET_ZIP


@pytest.fixture(scope="session")
def real_root(subset_zip, tmp_path_factory) -> Path:
    """The real subset (200 classes, 100 train/class, 10,000 val, 500 test), extracted to tmp."""
    parent = tmp_path_factory.mktemp("real")
    with zipfile.ZipFile(subset_zip) as zf:
        zf.extractall(parent)
    return parent / "tiny-imagenet-200"


@pytest.fixture(scope="session")
def val_cache(real_root, tmp_path_factory):
    """(images, targets, dataset) of the real val split, decoded into a private cache folder.

    Session-scoped: decoded once per run for tests/test_data.py and tests/test_loaders.py; read-only.
    """
    from tinyimagenet.cache import load_split

    return load_split(real_root, "val", cache_dir=tmp_path_factory.mktemp("vc"), progress=False)


@pytest.fixture(scope="session")
def real_small_root(real_root, tmp_path_factory) -> Path:
    """Real images, 10 classes: 100 train and 50 val per class, 20 test images."""
    from tinyimagenet.synthetic import make_subset_copy

    return make_subset_copy(real_root, tmp_path_factory.mktemp("real10"), num_classes=10,
                            train_per_class=100, val_per_class=50, test_images=20)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Generated official-layout data: 10 classes, 40 train and 10 val per class, 10 test."""
    from tinyimagenet.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("syn"), num_classes=10, train_per_class=40,
                          val_per_class=10, test_images=10)
