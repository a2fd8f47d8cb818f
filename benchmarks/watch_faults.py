"""Fault benchmark of the watcher: user-style scripts with one planted loop or loss fault each, and
healthy variants; top-1 recall per cause and false alarms.

    python benchmarks/watch_faults.py                  # seeds 0 1, about 10 s per script on 2 CPU cores
    python benchmarks/watch_faults.py --seeds 0 1 2 --json watch_faults.json

The scripts are tests/watch_scripts.py's (synthetic 5-class data, a small CNN with BatchNorm and
dropout, DataLoader, SGD); each seed replaces the script's torch.manual_seed, so data, init and
batches change. Each runs in-process through `python -m tinyimagenet.watch --no-diagnose`'s main().
A fault counts as found when it is the top cause; a healthy script is a false alarm when any cause
is reported. Target (issue 19): top-1 recall >= 0.9 per cause, false alarms 0.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from watch_scripts import FAULTS, HEALTHY, script_text  # noqa: E402

from tinyimagenet.watch.__main__ import main as watch_main  # noqa: E402


def run_one(edits, seed: int, folder: str, name: str) -> dict:
    path = os.path.join(folder, f"{name}.py")
    with open(path, "w") as f:
        f.write(script_text(edits).replace("torch.manual_seed(0)", f"torch.manual_seed({seed})"))
    out = os.path.join(folder, f"{name}.json")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = watch_main(["--no-diagnose", "--json", out, path])
    with open(out) as f:
        m = next(iter(json.load(f)["models"].values()))
    return {"causes": [c["id"] for c in m["causes"]], "verdict": m["verdict"], "status": status,
            "seconds": time.perf_counter() - t0}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--json", help="write every run's result here")
    args = p.parse_args(argv)
    rows, results = [], {"faults": {}, "healthy": {}}
    with tempfile.TemporaryDirectory() as folder:
        for cause, edits in sorted(FAULTS.items()):
            runs = [run_one(edits, s, folder, cause) for s in args.seeds]
            hits = sum(r["causes"][:1] == [cause] for r in runs)
            results["faults"][cause] = runs
            rows.append(f"{cause:30s} top-1 {hits}/{len(runs)} = {hits / len(runs):.2f}   "
                        f"top causes {[r['causes'][:1] for r in runs]}  {sum(r['seconds'] for r in runs):.0f} s")
            print(rows[-1], flush=True)
        alarms = 0
        for variant, edits in sorted(HEALTHY.items()):
            runs = [run_one(edits, s, folder, "healthy_" + variant) for s in args.seeds]
            bad = sum(bool(r["causes"]) or r["verdict"] != "PASS" for r in runs)
            alarms += bad
            results["healthy"][variant] = runs
            rows.append(f"healthy {variant:22s} false alarms {bad}/{len(runs)}   "
                        f"verdicts {[r['verdict'] for r in runs]} causes {[r['causes'] for r in runs]}")
            print(rows[-1], flush=True)
    n_hit = sum(r["causes"][:1] == [c] for c, runs in results["faults"].items() for r in runs)
    n_all = sum(len(runs) for runs in results["faults"].values())
    n_ok = sum(len(runs) for runs in results["healthy"].values())
    print(f"overall top-1 recall {n_hit}/{n_all} = {n_hit / n_all:.3f}; false alarms {alarms}/{n_ok} healthy runs; "
          f"seeds {args.seeds}")
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return {"top1_recall": n_hit / n_all, "false_alarms": alarms, "healthy_runs": n_ok, "results": results}


if __name__ == "__main__":
    main()
