"""Images/s delivered to a training loop: PIL + DataLoader pipeline vs the decoded cache.

Both paths deliver the same thing, normalized float batches of randomly cropped (padding 4) and
flipped train images, on the CPU:

  (a) reference: the usual torchvision pipeline, decoding every JPEG with PIL every epoch:
      TinyImageNet(root, "train", transform=Compose([RandomCrop(64, padding=4),
      RandomHorizontalFlip(), ToTensor(), Normalize(MEAN, STD)])) through
      DataLoader(batch_size, shuffle=True, num_workers=workers);
  (b) cache: `load_split` (JPEGs decoded once into a uint8 array; the build is timed and reported
      separately, not in images/s) + `BatchLoader(train=True, augment=True, device="cpu")`.

Each path is timed over the same number of images (--images), after one warm-up batch that is
not counted (DataLoader worker start-up, first-touch allocations). The last line is
`ratio: <cache images/s / reference images/s>`.

Run (from the repository root, with the real data extracted outside the repository):
    mkdir -p /tmp/bench && unzip -qo ../shared/data/tiny-imagenet-200-subset.zip -d /tmp/bench
    PYTHONPATH=. python benchmarks/data_throughput.py --data-dir /tmp/bench
Timings are noisy on a shared machine: run it a few times.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from tinyimagenet.cache import load_split  # noqa: E402
from tinyimagenet.data import ENV_ROOT, MEAN, STD, TinyImageNet  # noqa: E402
from tinyimagenet.loaders import BatchLoader  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=os.environ.get(ENV_ROOT) or "data",
                   help=f"Tiny ImageNet folder or its parent (default: ${ENV_ROOT} or ./data)")
    p.add_argument("--images", type=int, default=10_000,
                   help="images timed per path, after the warm-up batch (default 10000)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference")
    p.add_argument("--cache-dir", default=None,
                   help="decoded-image cache folder (default: a fresh temporary one, so the "
                        "build is measured; an existing cache there is reused)")
    return p


def _time_stream(batches, images: int) -> tuple[float, int]:
    """(seconds, images) to pull at least `images` images from `batches` after one warm-up batch."""
    next(batches)  # warm-up: not counted
    seen, start = 0, time.perf_counter()
    while seen < images:
        x, _ = next(batches)
        seen += x.shape[0]
    return time.perf_counter() - start, seen


def reference_batches(root, batch_size: int, workers: int):
    """Endless batches of the torchvision/PIL pipeline, epoch after epoch."""
    transform = transforms.Compose([transforms.RandomCrop(64, padding=4),
                                    transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                    transforms.Normalize(MEAN, STD)])
    ds = TinyImageNet(root, "train", transform=transform)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers)
    while True:
        yield from loader


def cache_batches(images, targets, batch_size: int):
    """Endless batches of the cache path, epoch after epoch."""
    loader = BatchLoader(images, targets, batch_size, train=True, augment=True, device="cpu")
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def main(argv=None) -> float:
    args = get_args_parser().parse_args(argv)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads; "
          f"batch {args.batch_size}, {args.images} images timed per path")

    seconds, n = _time_stream(reference_batches(args.data_dir, args.batch_size, args.workers),
                              args.images)
    reference = n / seconds
    print(f"(a) reference PIL + DataLoader({args.workers} workers): {n} images in {seconds:.2f} s "
          f"= {reference:,.0f} images/s")

    with tempfile.TemporaryDirectory(prefix="tinyimagenet-bench-") as tmp:
        cache_dir = args.cache_dir or tmp
        existed = any(Path(cache_dir).glob("train-*.npy"))
        start = time.perf_counter()
        images, targets, _ = load_split(args.data_dir, "train", cache_dir=cache_dir, progress=False)
        build = time.perf_counter() - start
        print(f"    cache {'load (reused)' if existed else 'build'} of {len(images)} train images: "
              f"{build:.2f} s (one-off, not in images/s)")
        seconds, n = _time_stream(cache_batches(images, targets, args.batch_size), args.images)
    cached = n / seconds
    print(f"(b) cache + BatchLoader(cpu): {n} images in {seconds:.2f} s = {cached:,.0f} images/s")
    ratio = cached / reference
    print(f"ratio: {ratio:.1f}")
    return ratio


if __name__ == "__main__":
    main()
