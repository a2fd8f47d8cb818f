"""Tests for tinyimagenet.loaders: crop_flip, Normalizer and BatchLoader (the batched loader).

What this checks
----------------
The batched GPU-style augmentation (`crop_flip`) against per-image torchvision references and
plain slicing; `Normalizer` bit-for-bit against its fused-affine definition; the train loader's
order (a deterministic, resumable permutation per epoch, a 1-image last batch dropped); per-image
augmentation within a batch; eval shards covering every sample once with no padding; and the
normalized real val split (../shared/data, via the `val_cache` fixture in conftest.py) being
standardized and channels_last.

Run:  PYTHONPATH=. pytest -q tests/test_loaders.py   (CPU, under a minute on 2 cores, mostly
decoding the real val split; the real-data test skips when ../shared/data is absent)
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from tinyimagenet.loaders import BatchLoader, Normalizer, crop_flip


@pytest.mark.parametrize("n,h,w,pad,strided", [(32, 64, 64, 4, False), (9, 7, 13, 3, True),
                                               (5, 8, 8, 0, False)])
def test_crop_flip_matches_per_image_torchvision(n, h, w, pad, strided):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, w, h, 3), dtype=torch.uint8, generator=g).transpose(1, 2) \
        if strided else torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    out = crop_flip(images, dx, dy, flip, pad)
    assert out.shape == (n, h, w, 3) and flip.any() and not flip.all()
    # The loader's path: gather by index into a reused padding buffer (dirtied by a first call).
    order = torch.randperm(n, generator=g)
    scratch = torch.zeros(2, n + 3, h + 2 * pad, w + 2 * pad, 3, dtype=torch.uint8)
    crop_flip(images.flip(1), dx, dy, flip, pad, index=order, scratch=scratch)
    again = crop_flip(images, dx[order], dy[order], flip[order], pad, index=order, scratch=scratch)
    assert torch.equal(again, out[order])
    for b in range(n):
        ref = TF.pad(images[b].permute(2, 0, 1), [pad] * 4, fill=0)
        ref = TF.crop(ref, int(dy[b]), int(dx[b]), h, w)
        if flip[b]:
            ref = TF.horizontal_flip(ref)
        assert torch.equal(out[b], ref.permute(1, 2, 0)), b
        # The same thing with plain slicing, as a second opinion on the reference.
        padded = np.pad(images[b].numpy(), ((pad, pad), (pad, pad), (0, 0)))
        crop = padded[int(dy[b]):int(dy[b]) + h, int(dx[b]):int(dx[b]) + w]
        assert np.array_equal(out[b].numpy(), crop[:, ::-1] if flip[b] else crop)


def test_normalizer_is_the_fused_affine_bit_for_bit():
    # Normalizer's definition: addcmul(shift, x, scale) with per-channel (3,) vectors. Its
    # faster implementation must give the same bits for every value, channel and position.
    values = torch.arange(256, dtype=torch.uint8).repeat(97)[:4 * 32 * 64 * 3]
    for enabled in (True, False):
        norm = Normalizer("cpu", enabled=enabled)
        for offset in range(3):  # each value in each channel, at every position of a row
            x = torch.roll(values, offset).view(4, 32, 64, 3)
            expected = torch.addcmul(norm.shift, x.float(), norm.scale).permute(0, 3, 1, 2)
            assert torch.equal(norm(x), expected)
    x = torch.rand(2, 6, 5, 3).transpose(1, 2)
    before = x.clone()
    out = norm(x)  # non-contiguous float input: works, and is not modified in place
    assert torch.equal(x, before) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out.permute(0, 2, 3, 1), torch.addcmul(norm.shift, x, norm.scale))


def _tiny(n=101):
    # Targets are the indices, so a batch's targets say exactly which samples it holds.
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 16, 16, 3), dtype=torch.uint8, generator=g), torch.arange(n)


def _epoch(loader, epoch, start_step=0):
    loader.set_epoch(epoch, start_step=start_step)
    return list(loader)


def test_train_loader_order_is_a_deterministic_resumable_permutation():
    images, targets = _tiny(101)  # 101 = 6 * 16 + 5
    loader = BatchLoader(images, targets, 16, train=True, seed=3)
    full = _epoch(loader, 2)
    seen = torch.cat([y for _, y in full])
    assert len(full) == len(loader) == 7 and len(seen) == 101 and len(set(seen.tolist())) == 101
    again = _epoch(BatchLoader(images, targets, 16, train=True, seed=3), 2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full, again))
    other = _epoch(loader, 3)
    assert not torch.equal(seen, torch.cat([y for _, y in other]))
    for k in (1, 4, 6):
        resumed = _epoch(loader, 2, start_step=k)
        assert len(resumed) == len(full) - k
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                   for a, b in zip(resumed, full[k:]))
    # A last batch of one image is dropped (BatchNorm), and nothing is repeated.
    short = torch.cat([y for _, y in BatchLoader(images[:97], targets[:97], 16, train=True)])
    assert len(short) == 96 and len(set(short.tolist())) == 96


def test_augmentation_differs_per_image_within_a_batch():
    images, zeros = _tiny(1)[0].expand(128, -1, -1, -1).contiguous(), torch.zeros(128).long()
    x, _ = next(iter(BatchLoader(images, zeros, 128, train=True, normalize=False)))
    x = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1)  # back to the uint8 NHWC crops
    distinct = {tuple(v.flatten().tolist()) for v in x}
    assert len(distinct) > 64  # 162 possible (dx, dy, flip): most of the 128 differ
    grid = torch.cartesian_prod(torch.arange(9), torch.arange(9), torch.arange(2))  # all 162
    every = crop_flip(images[:1].expand(162, -1, -1, -1), grid[:, 0], grid[:, 1], grid[:, 2] > 0, 4)
    assert distinct <= {tuple(v.flatten().tolist()) for v in every}  # each is a valid crop
    x, _ = next(iter(BatchLoader(images, zeros, 128, train=True, augment=False)))
    assert torch.equal(x, x[:1].expand_as(x))


def test_eval_loader_shards_cover_all_samples_without_padding():
    images, targets = _tiny(101)
    shards = [torch.cat([y for _, y in BatchLoader(images, targets, 16, train=False, rank=r,
                                                   world_size=2)]) for r in (0, 1)]
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert sorted(torch.cat(shards).tolist()) == list(range(101))  # each once: no padding
    x, y = next(iter(BatchLoader(images, targets, 101, train=False, augment=True)))
    assert torch.equal(y, targets)  # in order, and eval never augments:
    assert torch.equal(x, Normalizer("cpu")(images))


def test_normalizer_on_real_val_is_standardized_channels_last(val_cache):
    images, targets, _ = val_cache
    loader = BatchLoader(images, targets, 2500, train=False)  # 4 equal batches: average them
    means, squares = [], []
    for x, _ in loader:
        assert x.dtype == torch.float32 and x.shape == (2500, 3, 64, 64)
        assert x.is_contiguous(memory_format=torch.channels_last)
        means.append(x.mean((0, 2, 3)))
        squares.append((x * x).mean((0, 2, 3)))
    mean = torch.stack(means).mean(0)
    std = (torch.stack(squares).mean(0) - mean ** 2).sqrt()
    assert mean.abs().max() < 0.1, mean
    assert (std - 1).abs().max() < 0.15, std
