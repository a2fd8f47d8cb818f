"""Power of the label-signal rule (train_labels_unlearnable) on the real subset: how often it fires.

    python benchmarks/label_signal_power.py --data-dir /tmp/tin/tiny-imagenet-200 --per-class 20 --seeds 0 1 2 3 4

For each seed, `measure.label_signal` runs twice on the same images: with the true train labels
(the rule must not fire: a false alarm) and with the train labels permuted (the rule must fire:
its power). Prints the leave-one-out hits of the given labels against the check's own shuffles,
the upper 95% bound of the difference, the margin, and the rule's decision, then the rates.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from tinyimagenet.diagnosis import measure, thresholds as T
from tinyimagenet.loaders import load_data


def fires(check, num_classes: int) -> bool:
    """The decision judge_unlearnable makes from the check (the model's probe test aside)."""
    s = check.data["shuffled"]
    return s.ci_high < max(T.NO_SIGNAL_POINTS, (T.NO_SIGNAL - 1) / num_classes) and not s.significant


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("TINYIMAGENET_ROOT", "/tmp/tin/tiny-imagenet-200"))
    p.add_argument("--per-class", type=int, default=20, help="train images per class")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = load_data(args.data_dir, train_per_class=args.per_class, val_per_class=5, progress=False)
    C = data.num_classes
    margin = max(T.NO_SIGNAL_POINTS, (T.NO_SIGNAL - 1) / C)
    print(f"{C} classes, {len(data.train_targets)} train, {len(data.val_targets)} val; margin {100 * margin:.2f} points")
    out = {"clean": [], "shuffled": []}
    for seed in args.seeds:
        for kind in ("clean", "shuffled"):
            y = data.train_targets
            if kind == "shuffled":
                y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(100 + seed))]
            t = time.perf_counter()
            chk = measure.label_signal(data.train_images, y, data.val_images, data.val_targets, C, seed=seed)
            s, f = chk.data["shuffled"], fires(chk, C)
            out[kind].append(f)
            print(f"seed {seed} {kind:<8}: given {100 * s.rate2:.2f}% ({s.k2}/{s.n2}) vs own shuffles "
                  f"{100 * s.rate1:.2f}% ({s.k1}/{s.n1}); diff {100 * s.diff:+.2f} [{100 * s.ci_low:+.2f}, "
                  f"{100 * s.ci_high:+.2f}] p {s.p_value:.1e}; rule fires: {f} ({time.perf_counter() - t:.1f} s)")
    print(f"fires on clean labels (false alarms): {sum(out['clean'])}/{len(out['clean'])}; "
          f"on shuffled labels (power): {sum(out['shuffled'])}/{len(out['shuffled'])}")
    return out


if __name__ == "__main__":
    main()
