"""Batches for training and evaluation from in-memory uint8 images, augmented and normalized on
the training device, and `load_data`, which assembles both splits for a run.

    from tinyimagenet.loaders import load_data, BatchLoader
    data = load_data("data", train_per_class=100)               # or synthetic=True, archive=...
    loader = BatchLoader(data.train_images, data.train_targets, 256, train=True, device="cuda")
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader: ...          # x: float (B,3,64,64) normalized, channels_last layout

Why on the device: a DataLoader with two CPU workers cannot feed a GPU with 64x64 images, while
the whole uint8 train split (1.2 GB) fits in GPU memory and a gather does crop+flip for a batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed
from .cache import default_cache_dir, load_split
from .data import MEAN, STD, DatasetError, find_root
from .synthetic import make_synthetic


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """The CPU generator of epoch `epoch`'s draws: one formula for every batch source (BatchLoader
    here, the diagnosis's TensorBatches), so the same seed shuffles the same way everywhere.
    `stream` separates independent draws of one epoch (the order: 0; the augmentation: 7_919)."""
    return torch.Generator(device="cpu").manual_seed(seed * 100_003 + epoch + stream)


AUGMENT_STREAM = 7_919


# ------------------------------------------------------------- batched augmentation on device
def crop_flip(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor,
              pad: int, *, index: torch.Tensor | None = None,
              scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image random crop (zero padding `pad`) and horizontal flip of uint8 NHWC images.

    Output image b is the padded image's h x w window at row dy[b], column dx[b], mirrored when
    flip[b]. Same result as torchvision's RandomCrop(padding=pad, fill=0) + RandomHorizontalFlip
    applied image by image (tests/test_data.py checks it exactly).
    index: crop images[index] instead of images (gathered straight into the padding buffer).
    scratch: a contiguous uint8 (2, >=n, h+2*pad, w+2*pad, C) tensor of zeros to pad into; only
        its interior is written, so its border stays zero and it can be reused batch after batch.
    """
    # Speed (benchmarks/data_throughput.py): an advanced-indexing gather with one index per output
    # pixel took ~40 ms per 256 images on a CPU core; copying whole windows with index_select
    # takes ~1 ms. A flipped crop is the crop of the mirrored padded image at column 2*pad-dx, so
    # padding the batch and its mirror image once lets one window copy do crop and flip for all.
    n = images.shape[0] if index is None else len(index)
    _, h, w, c = images.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    if scratch is None:
        scratch = images.new_zeros(2, n, hp, wp, c)
    elif not (scratch.is_contiguous() and scratch.shape[0] == 2 and scratch.shape[1] >= n
              and scratch.shape[2:] == (hp, wp, c) and scratch.dtype == images.dtype):
        raise ValueError(f"scratch must be contiguous {images.dtype} (2, >={n}, {hp}, {wp}, {c}), "
                         f"got {scratch.dtype} {tuple(scratch.shape)}")
    inner = scratch[:, :n, pad:pad + h, pad:pad + w]  # [0]: as is, [1]: mirrored
    if index is None:
        inner[0].copy_(images)
    else:
        torch.index_select(images, 0, index, out=inner[0])
    inner[1].copy_(inner[0].flip(2))
    col = torch.where(flip, 2 * pad - dx, dx)
    image = flip.long() * scratch.shape[1] + torch.arange(n, device=images.device)
    start = (image * hp + dy) * wp + col  # index of each window's top-left pixel in `scratch`
    # Overlapping view: entry k is the h x w window whose top-left is pixel k (rows of w*c
    # elements, wp*c apart); its length keeps the last window inside the buffer (no device sync).
    windows = scratch.as_strided((scratch.numel() // c - (h - 1) * wp - (w - 1), h, w * c),
                                 (c, wp * c, 1))
    return windows.index_select(0, start).view(n, h, w, c)


class Normalizer:
    """uint8 NHWC -> float NCHW (channels_last memory), (x/255 - mean)/std fused into one affine."""

    def __init__(self, device, mean=MEAN, std=STD, enabled: bool = True):
        std_t = torch.tensor(std, device=device)
        self.scale = (1.0 / (255.0 * std_t)) if enabled else torch.full((3,), 1.0 / 255, device=device)
        self.shift = (-torch.tensor(mean, device=device) / std_t) if enabled else torch.zeros(3, device=device)
        self._tiled: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, batch_nhwc: torch.Tensor) -> torch.Tensor:
        n, h, w, c = batch_nhwc.shape
        # Speed: with (3,) vectors the innermost loop is 3 elements long and runs scalar on a
        # CPU; tiled along a whole image row (w*3 elements, same values) it vectorizes, and the
        # affine runs in place on the fresh float copy instead of allocating another batch.
        # Same arithmetic per element as addcmul(shift, x, scale) with the (3,) vectors.
        if w not in self._tiled:
            self._tiled[w] = (self.shift.repeat(w), self.scale.repeat(w))
        shift, scale = self._tiled[w]
        x = batch_nhwc.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        rows = x.view(n, h, w * c)
        torch.addcmul(shift, rows, scale, out=rows)
        return x.permute(0, 3, 1, 2)  # NCHW view of NHWC memory = channels_last


class BatchLoader:
    """Batches from in-memory uint8 images: shuffle, per-image crop+flip, normalize, on `device`.

    Deterministic: epoch e's order and augmentation come from a generator seeded with (seed, e),
    so a resumed run can skip the first `start_step` batches and see exactly what it would have.
    Distributed: with `world_size > 1` each rank takes its own shard (rank::world_size of the
    shuffled order for training; a contiguous slice, no padding, for evaluation so that summed
    metrics equal a single-process pass).
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int, *,
                 train: bool, augment: bool = True, device="cpu", seed: int = 0, pad: int = 4,
                 normalize: bool = True, rank: int = 0, world_size: int = 1):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N,H,W,3), got {images.dtype} {tuple(images.shape)}")
        # Everything lives on the training device: no host->device copy per batch on a GPU.
        self.images = images.to(device)
        self.targets = targets.to(device)
        # The device it was given, as tensors report it ("cuda" -> "cuda:0"): what train.py checks
        # the model against, and what tests read to see that the run's one device reached here.
        self.device = self.images.device
        self.batch_size, self.train, self.augment = batch_size, train, augment and train
        self.seed, self.pad, self.rank, self.world_size = seed, pad, rank, world_size
        self.normalizer = Normalizer(self.device, enabled=normalize)
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def _indices(self) -> torch.Tensor:
        n = len(self.targets)
        if not self.train:
            per = -(-n // self.world_size)
            lo, hi = min(n, self.rank * per), min(n, (self.rank + 1) * per)
            return torch.arange(lo, hi, device=self.device)
        perm = torch.randperm(n, generator=epoch_generator(self.seed, self.epoch))
        per = n // self.world_size  # equal step counts on every rank
        return perm[self.rank::self.world_size][:per].to(self.device)

    def _count(self) -> int:
        n = len(self.targets)
        if self.train:
            return n // self.world_size
        per = -(-n // self.world_size)
        return min(n, (self.rank + 1) * per) - min(n, self.rank * per)

    def __len__(self) -> int:
        # Training drops a last batch of one image: BatchNorm cannot normalize a single sample.
        full, rest = divmod(self._count(), self.batch_size)
        return full + (rest >= (2 if self.train else 1))

    def __iter__(self):
        """The epoch's batches. Everything that moves data from the host (the shuffled order, the
        augmentation draws: a few host->device copies, each a sync on CUDA) happens here, when
        iteration starts; the batches themselves are device-only work, no host round-trip."""
        idx = self._indices()
        aug = None
        if self.augment:  # one draw per image for the whole epoch: skipping batches stays exact
            n = len(idx)
            g = epoch_generator(self.seed, self.epoch, AUGMENT_STREAM)
            dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
            dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
            flip = torch.rand(n, generator=g) < 0.5
            aug = tuple(t.to(self.device) for t in (dx, dy, flip))
        return self._batches(idx, aug)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `idx` as the model receives them, without augmentation: (x NCHW float, y)."""
        idx = idx.to(self.device)
        return self.normalizer(self.images.index_select(0, idx)), self.targets.index_select(0, idx)

    def _batches(self, idx: torch.Tensor, aug):
        n = len(idx)
        scratch = None
        for step in range(self.start_step, len(self)):
            sl = slice(step * self.batch_size, min(n, (step + 1) * self.batch_size))
            rows = idx[sl]
            if aug is not None:
                if scratch is None:  # one zero-bordered padding buffer for the whole epoch
                    _, h, w, c = self.images.shape
                    scratch = self.images.new_zeros(2, self.batch_size, h + 2 * self.pad,
                                                    w + 2 * self.pad, c)
                dx, dy, flip = aug
                batch = crop_flip(self.images, dx[sl], dy[sl], flip[sl], self.pad, index=rows,
                                  scratch=scratch)
            else:  # index_select copies whole images; images[idx] is far slower on a CPU
                batch = self.images.index_select(0, rows)
            # index_select, not targets[rows]: one gather kernel, sure to stay on the device.
            yield self.normalizer(batch), self.targets.index_select(0, rows)


# ------------------------------------------------------------------------------ a run's data
@dataclass
class Data:
    train_images: torch.Tensor   # uint8 (N,64,64,3), CPU
    train_targets: torch.Tensor  # int64 (N,), sorted-wnid indices
    val_images: torch.Tensor     # uint8 (M,64,64,3)
    val_targets: torch.Tensor    # int64 (M,), from val_annotations.txt
    classes: list                # sorted wnids
    class_names: list            # first name from words.txt
    root: str                    # the tiny-imagenet-200 folder used
    val_files: list              # val image file names, in val_images order (for label audits)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


SYNTHETIC = dict(num_classes=10, train_per_class=100, val_per_class=20, test_images=10)


def synthetic_root(cache_dir=None) -> str:
    """The generated offline dataset (made once under the cache folder)."""
    parent = Path(default_cache_dir() if cache_dir is None else cache_dir) / "synthetic-c10-v1"
    try:
        return str(find_root(parent))
    except DatasetError:
        try:
            return str(make_synthetic(parent, **SYNTHETIC))
        except FileExistsError:  # another process made it meanwhile
            return str(find_root(parent))


def load_data(data_dir=None, *, archive: str | None = None, download: bool = False,
              synthetic: bool = False, train_per_class: int | None = None,
              val_per_class: int | None = None, cache_dir=None, progress: bool = True) -> Data:
    """Both labelled splits as uint8 tensors, from the decoded cache (built on first use).

    Finds the data at `data_dir` ($TINYIMAGENET_ROOT or ./data when None). When it is absent:
    extracts `archive` if given; else downloads the official archive (248 MB) into the default
    location, or into an explicit `data_dir` only with `download=True` (a mistyped --data-dir is
    an error naming it, not a download into a new folder). Under torchrun, rank 0 builds the
    cache first and the other ranks reuse it.
    """
    if synthetic:
        data_dir = synthetic_root(cache_dir)
    is_main = not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
        or torch.distributed.get_rank() == 0
    if not is_main:
        distributed.barrier()
    try:
        kw = dict(cache_dir=cache_dir, progress=progress and is_main)
        train_x, train_y, train_ds = load_split(data_dir, "train", train_per_class,
                                                download=download or data_dir is None,
                                                archive=archive, **kw)
        val_x, val_y, val_ds = load_split(train_ds.root, "val", val_per_class, **kw)
    finally:
        if is_main:
            distributed.barrier()
    return Data(train_x, train_y, val_x, val_y, train_ds.classes, train_ds.class_names, train_ds.root,
                [Path(p).name for p, _ in val_ds.samples])
