"""Measure how often each chance test calls a model that learned nothing "above chance" (the
false-positive rate, FPR), and how often it detects one that did learn (power).

Two tests of the diagnosis (tinyimagenet/diagnosis/stats.py): the exact binomial test alone, which
assumes every image is an independent trial, and `chance_test`, which also requires the
class-permutation test to reject. Nulls -- models with nothing transferable:
  (a) random guessing: every prediction uniform, independent of the image;
  (b) class mapping: every true class is sent to one random predicted class (a random function,
      collisions allowed), 80% of images follow their class's mapping and 20% are uniform. This is
      a model that learned *some* partition of the images but no class identities -- what training
      on labels shuffled across folders produced here (22% val on 10 classes, 4% on its own
      held-out train images). Images of one class are then not independent trials;
  (c) collapsed: the model predicts one (random) class for every image.
Power: a model right with probability factor / C on each image independently (C = 200, 10,000
images), otherwise wrong uniformly.

Each cell is a count of rejections over `reps` independent simulated evaluations; an FPR of 0/R
means below 3/R with 95% confidence (the "rule of three"), shown as "0 (<3/R)". Class-balanced
evaluation sets, 50 images per class, as in Tiny ImageNet val.

    python benchmarks/chance_test_calibration.py            # ~1 min on a 2-core CPU
    python benchmarks/chance_test_calibration.py --reps-small 2000 --reps-large 200   # tighter
"""
from __future__ import annotations

import argparse
import time

import torch

from tinyimagenet.diagnosis.stats import ALPHA, chance_test

LEVELS = (ALPHA, 0.05)
FIDELITY = 0.8         # share of images that follow the class mapping in null (b)


def _targets(c: int, per_class: int) -> torch.Tensor:
    return torch.arange(c).repeat_interleave(per_class)


def guessing(c, per_class, gen):
    t = _targets(c, per_class)
    return torch.randint(0, c, t.shape, generator=gen), t


def class_mapping(c, per_class, gen):
    t = _targets(c, per_class)
    mapping = torch.randint(0, c, (c,), generator=gen)
    follow = torch.rand(t.shape, generator=gen) < FIDELITY
    return torch.where(follow, mapping[t], torch.randint(0, c, t.shape, generator=gen)), t


def collapsed(c, per_class, gen):
    t = _targets(c, per_class)
    return torch.full_like(t, int(torch.randint(0, c, (1,), generator=gen))), t


def learning(factor: float):
    def model(c, per_class, gen):
        t = _targets(c, per_class)
        right = torch.rand(t.shape, generator=gen) < factor / c
        wrong = (t + torch.randint(1, c, t.shape, generator=gen)) % c      # uniform over the other classes
        return torch.where(right, t, wrong), t
    return model


def run(model, c, per_class, reps, gen):
    """Rejection counts {(test, level): k} over `reps` simulated evaluations."""
    counts = {(test, a): 0 for test in ("binomial", "chance_test") for a in LEVELS}
    for rep in range(reps):
        preds, targets = model(c, per_class, gen)
        t = chance_test(preds, targets, c, seed=rep)   # fresh permutations per replicate
        for a in LEVELS:
            counts[("binomial", a)] += t.p_binomial < a
            counts[("chance_test", a)] += t.p_value < a
    return counts


def cell(k: int, reps: int) -> str:
    return f"0 (<{3 / reps:.3f})" if k == 0 else f"{k / reps:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps-small", type=int, default=300, help="replicates at C = 10 (500 images)")
    parser.add_argument("--reps-large", type=int, default=40, help="replicates at C = 200 (10,000 images)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(args.seed)
    rows = [("FPR", "(a) random guessing", guessing, 10), ("FPR", "(a) random guessing", guessing, 200),
            ("FPR", "(b) class mapping", class_mapping, 10), ("FPR", "(b) class mapping", class_mapping, 200),
            ("FPR", "(c) collapsed", collapsed, 10), ("FPR", "(c) collapsed", collapsed, 200),
            ("power", "learning, 2x chance", learning(2.0), 200),
            ("power", "learning, 1.5x chance", learning(1.5), 200)]
    start = time.perf_counter()
    head = " | ".join(f"{test} @{a:g}" for a in LEVELS for test in ("binomial", "chance_test"))
    print(f"| measure | scenario | C | images | reps | {head} |")
    print("|---|---|---:|---:|---:|" + "---:|" * 2 * len(LEVELS))
    mapping_c10 = None
    for measure, name, model, c in rows:
        reps = args.reps_small if c <= 10 else args.reps_large
        counts = run(model, c, 50, reps, gen)
        cells = " | ".join(cell(counts[(test, a)], reps) for a in LEVELS for test in ("binomial", "chance_test"))
        print(f"| {measure} | {name} | {c} | {50 * c} | {reps} | {cells} |", flush=True)
        if name.startswith("(b)") and c == 10:
            mapping_c10 = (counts[("binomial", ALPHA)] / reps, counts[("chance_test", ALPHA)] / reps)
    print(f"\n{time.perf_counter() - start:.0f} s; alpha = {ALPHA:g}, 9,999 class permutations per test; "
          f"last line: class mapping, C = 10, at alpha {ALPHA:g}")
    print(f"binomial_fpr_class_mapping: {mapping_c10[0]:.3f} chance_test_fpr_class_mapping: {mapping_c10[1]:.3f}")


if __name__ == "__main__":
    main()
