"""The decoded-image cache: every JPEG is decoded once into a uint8 array on disk.

    from tinyimagenet.cache import load_split
    images, targets, ds = load_split("data", "train", per_class=100)  # uint8 (N,64,64,3), int64 (N,)

Batching, augmentation and normalization on the training device are in `tinyimagenet.loaders`.
Why: PIL-decoding 100k small JPEGs every epoch is what makes most Tiny ImageNet repos slow, and a
DataLoader cannot feed a GPU from two CPU cores. The cache (one .npy per split, keyed by the image
files' names, sizes and mtimes, so a changed dataset rebuilds it) is written to a temporary file
and renamed into place, then memory-mapped on reuse. Labels are never cached: they are re-read
from the dataset each time (so an edited val_annotations.txt takes effect at once).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import IMAGE_SIZE, DatasetError, TinyImageNet, load_image

ENV_CACHE = "TINYIMAGENET_CACHE"
CACHE_VERSION = 1  # bump when the on-disk format changes


def default_cache_dir() -> Path:
    """$TINYIMAGENET_CACHE, else ~/.cache/tinyimagenet (outside the repository)."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "tinyimagenet")


def cache_key(paths: list[str]) -> str:
    """Hash of the image files' names, sizes and mtimes: any change means a rebuild."""
    h = hashlib.sha1(f"v{CACHE_VERSION}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _decode(path: str) -> np.ndarray:
    arr = np.asarray(load_image(path))
    if arr.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise DatasetError(f"{path} is {arr.shape[1]}x{arr.shape[0]}, expected "
                           f"{IMAGE_SIZE}x{IMAGE_SIZE}: not a Tiny ImageNet image.")
    return arr


def cached_images(dataset: TinyImageNet, cache_dir=None, progress: bool = True) -> np.ndarray:
    """uint8 array (N,64,64,3) of the dataset's images in sample order, memory-mapped from cache."""
    paths = [p for p, _ in dataset.samples]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"{dataset.split}-{len(paths)}-{cache_key(paths)}.npy"
    if path.is_file():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == (len(paths), IMAGE_SIZE, IMAGE_SIZE, 3) and arr.dtype == np.uint8:
            return arr
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(paths), IMAGE_SIZE, IMAGE_SIZE, 3))
        # PIL releases the GIL while decoding, so threads use both cores without pickling.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            decoded = pool.map(_decode, paths, chunksize=64)
            for i, arr in enumerate(tqdm(decoded, total=len(paths), disable=not progress,
                                         desc=f"caching {dataset.split} ({len(paths)} images)")):
                out[i] = arr
        out.flush()
        del out
        os.replace(tmp, path)  # readers see either no cache or a complete one
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def load_split(root=None, split: str = "train", per_class: int | None = None, cache_dir=None,
               progress: bool = True, download: bool = False, archive: str | None = None):
    """(images uint8 tensor (N,64,64,3), targets int64 tensor (N,), dataset) for one split."""
    ds = TinyImageNet(root, split=split, per_class=per_class, download=download, archive=archive)
    images = torch.from_numpy(np.array(cached_images(ds, cache_dir, progress)))  # into RAM
    return images, torch.tensor(ds.targets, dtype=torch.int64), ds
