"""The diagnosis accuracy benchmark in --quick mode, on the real subset: CI fails when it regresses.

    pytest -q tests/test_diagnosis_accuracy.py      # a few minutes on a 2-core CPU

Runs benchmarks/diagnosis_accuracy.py's quick set-ups (planted faults and healthy models, seed 0)
and asserts the benchmark's targets: top-1 recall >= 0.9 over the faults, no false alarm on the
healthy set-ups. Skipped when ../shared/data holds no subset (conftest's `real_root`). Also the
benchmark's --watch: the loop and loss faults of user scripts, on synthetic data, in seconds.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import diagnosis_accuracy  # noqa: E402


def test_quick_suite_meets_targets(real_root, capsys):
    out = diagnosis_accuracy.main(["--quick", "--data-dir", str(real_root)])
    printed = capsys.readouterr().out
    rows = out["rows"]
    assert any(r["cause"] == "healthy" for r in rows) and any(r["cause"] != "healthy" for r in rows)
    last = printed.strip().splitlines()[-1]
    assert last.startswith("top1_recall: ") and " false_alarm_rate: " in last
    misses = "\n".join(f"{r['setup']}: verdict {r['verdict']}, causes {r['causes']}"
                       for r in rows if not r["correct"])
    assert out["top1_recall"] >= 0.9, f"recall {out['top1_recall']:.2f}; misdiagnosed:\n{misses}"
    assert out["false_alarm_rate"] == 0, f"false alarms:\n{misses}"


def test_watch_faults_through_the_benchmark():
    """The loop and loss faults of user-style scripts (tests/watch_scripts.py), scored by the same
    benchmark's --watch: each planted fault is the watcher's top cause, no healthy script alarms."""
    out = diagnosis_accuracy.main(["--watch", "--seeds", "0"])
    missed = {c: [r["causes"][:1] for r in runs] for c, runs in out["results"]["faults"].items()
              if any(r["causes"][:1] != [c] for r in runs)}
    assert out["top1_recall"] >= 0.9, f"missed: {missed}"
    assert out["false_alarms"] == 0, out["results"]["healthy"]
