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
not counted (DataLoader worker start-up, first-touch allocations), --repeats times in a row; each
path's images/s is the median of its repeats, because other jobs on a shared machine come and go
while the cache path's sub-second windows run. The last line is
`ratio: <cache images/s / reference images/s>`.

OMP_WAIT_POLICY defaults to PASSIVE here (set it to override): on a machine shared with other
jobs, OpenMP threads that spin while waiting for a descheduled peer made every batched op of the
cache path several times slower (measured: 2,600 vs 18,000 images/s on 2 busy cores). The
reference's DataLoader workers run single-threaded, so the setting does not touch them.

Run (from the repository root, with the real data extracted outside the repository):
    mkdir -p /tmp/bench && unzip -qo ../shared/data/tiny-imagenet-200-subset.zip -d /tmp/bench
    PYTHONPATH=. python benchmarks/data_throughput.py --data-dir /tmp/bench
Timings are noisy on a shared machine: run it a few times.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP: see above

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import transforms  # noqa: E402

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
    p.add_argument("--repeats", type=int, default=3,
                   help="timed windows per path; the median counts (default 3)")
    p.add_argument("--cache-dir", default=None,
                   help="decoded-image cache folder (default: a fresh temporary one, so the "
                        "build is measured; an existing cache there is reused)")
    return p


def _time_stream(batches, images: int, repeats: int) -> list[tuple[int, float]]:
    """(images, seconds) of `repeats` back-to-back windows of at least `images` images each,
    pulled from `batches` after one warm-up batch."""
    next(batches)  # warm-up: not counted
    windows = []
    for _ in range(repeats):
        seen, start = 0, time.perf_counter()
        while seen < images:
            x, _ = next(batches)
            seen += x.shape[0]
        windows.append((seen, time.perf_counter() - start))
    return windows


def _report(name: str, windows: list[tuple[int, float]]) -> float:
    rates = [n / s for n, s in windows]
    parts = ", ".join(f"{n} in {s:.2f} s = {n / s:,.0f}" for n, s in windows)
    median = statistics.median(rates)
    print(f"{name}: {parts} images/s; median {median:,.0f} images/s")
    return median


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
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; batch {args.batch_size}, "
          f"{args.images} images timed per path")

    batches = reference_batches(args.data_dir, args.batch_size, args.workers)
    try:
        windows = _time_stream(batches, args.images, args.repeats)
    finally:
        batches.close()  # shuts the DataLoader workers down: they must not compete with (b)
    reference = _report(f"(a) reference PIL + DataLoader({args.workers} workers)", windows)

    with tempfile.TemporaryDirectory(prefix="tinyimagenet-bench-") as tmp:
        cache_dir = args.cache_dir or tmp
        before = set(Path(cache_dir).glob("*.npy"))
        start = time.perf_counter()
        images, targets, _ = load_split(args.data_dir, "train", cache_dir=cache_dir, progress=False)
        build = time.perf_counter() - start
        built = set(Path(cache_dir).glob("*.npy")) != before  # else an existing cache was reused
        print(f"    cache {'build' if built else 'load (reused)'} of {len(images)} train images: "
              f"{build:.2f} s (one-off, not in images/s)")
        windows = _time_stream(cache_batches(images, targets, args.batch_size), args.images,
                               args.repeats)
    cached = _report("(b) cache + BatchLoader(cpu)", windows)
    ratio = cached / reference
    print(f"ratio: {ratio:.1f}")
    return ratio


if __name__ == "__main__":
    main()
