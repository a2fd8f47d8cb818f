"""Watcher overhead: steady-state step time of a user-style loop, watched / unwatched, in one process.

    python benchmarks/watch_overhead.py                 # CPU, small CNN, batch 32 of 64x64
    python benchmarks/watch_overhead.py --device cuda --batch 256 --rounds 10

Blocks of --steps steps alternate unwatched / watched (--rounds each, after a warm-up), so drift
in the machine's load hits both; the ratio is median watched block time / median unwatched. The
loop is what a user writes: zero_grad, forward, cross-entropy, backward, step, and `loss.item()`
once per block (as a progress print would). Target (issue 19): ratio <= 1.10.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyimagenet.watch import watch


class UserCNN(nn.Module):
    def __init__(self, width: int, num_classes: int = 200):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.fc(self.drop(self.features(x).flatten(1)))


def block(model, opt, batches, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for x, y in batches:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    loss.item()  # one read-back per block, as a progress line does
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=int, default=32, help="channels of the first conv")
    p.add_argument("--steps", type=int, default=10, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=5, help="blocks of each kind")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = UserCNN(args.width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [(torch.randn(args.batch, 3, 64, 64, device=device), torch.randint(0, 200, (args.batch,), device=device))
               for _ in range(args.steps)]
    block(model, opt, batches, device)  # warm-up
    plain, watched = [], []
    with watch(capture=False) as w:  # the first steps are the sampled ones: run them before timing
        block(model, opt, batches * 3, device)
    for _ in range(args.rounds):
        plain.append(block(model, opt, batches, device))
        # Steady state: the same watcher, past its first sampled steps (re-entered, not re-created).
        with w:
            watched.append(block(model, opt, batches, device))
    p_med, w_med = statistics.median(plain), statistics.median(watched)
    print(f"device {device}, batch {args.batch}, width {args.width}, {args.rounds} x {args.steps} steps each")
    print(f"unwatched: {1000 * p_med / args.steps:.2f} ms/step (median block), "
          f"watched: {1000 * w_med / args.steps:.2f} ms/step")
    print(f"watched/unwatched step time ratio: {w_med / p_med:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
