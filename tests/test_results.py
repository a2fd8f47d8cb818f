"""Tests for `python -m tinyimagenet.results`: the results table (and plot) from training histories.

What this checks
----------------
* on the real GPU histories in ../shared/results/h200-2026-11-29 (skipped when ../shared is
  absent): every CSV becomes a row, labels parsed from file and folder names, numbers read right;
  `--missing` adds issue 13's 50-epoch full-split runs as "not run: needs a GPU";
* on a run folder written by a tiny real `fit` (history.csv + config.json): labels from config.json,
  and no seed thresholds on 10-class data;
* threshold-crossing epochs on a hand-written history (strictly above, "(late)", "-");
* `--plot` writes a PNG; a bad path or a CSV that is not a history: exit code 2, one line naming it;
* the figures behind it and behind quick_diagnosis.save_figures (tinyimagenet/plotting.py): no
  figure without data, integer epoch ticks, the seed's markers only on 200 classes and near the
  plotted epochs, gradient flow labelled by layer name.

Run:  PYTHONPATH=. pytest -q tests/test_results.py   (about 10-20 s; only the fit test imports torch)
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tinyimagenet import results
from tinyimagenet.seed import SEED_THRESHOLDS

REPO = Path(__file__).resolve().parents[1]
# Same lookup as conftest.py's subset: ../shared beside the repository root.
SHARED_RESULTS = REPO.parent / "shared" / "results" / "h200-2026-11-29"
HEADER = "epoch,train_loss,train_acc,val_loss,val_acc,val_top5,lr,seconds\n"


def rows_by_run(table: str) -> dict:
    """{run name: {column: cell}} from the markdown table."""
    lines = table.strip().splitlines()
    cols = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = dict(zip(cols, cells))
    return out


def write_history(path: Path, val_accs, seconds=2.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{e},5.0,1.0,5.0,{a},{3 * a},0.0001,{seconds}" for e, a in enumerate(val_accs, start=1)]
    path.write_text(HEADER + "\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------- the real shared histories
@pytest.fixture(scope="module")
def shared_results() -> Path:
    if not SHARED_RESULTS.is_dir():
        pytest.skip(f"GPU histories not found at {SHARED_RESULTS} (../shared is absent)")
    return SHARED_RESULTS


def test_shared_histories_table(shared_results, capsys):
    table = results.main([str(shared_results)])
    assert capsys.readouterr().out.strip() == table
    rows = rows_by_run(table)
    assert len(rows) == len(list(shared_results.rglob("*.csv")))
    full = rows["BaselineCNN-fixed-seed-5ep"]  # full-data/: 500 per class by folder name
    assert (full["model"], full["dropout"], full["recipe"], full["train/class"], full["epochs"]) == \
        ("BaselineCNN", "fixed", "seed", "500", "5")
    # The shared README's table: 9.59 / 14.06 / 18.00 / 20.68 / 22.27% after epochs 1-5.
    assert full["best top-1 % (epoch)"] == "22.27 (5)" and full["final top-1 %"] == "22.27"
    assert [full[f">{t:g}% at"] for t in SEED_THRESHOLDS.values()] == ["1", "1", "2"]
    sub = rows["BaselineCNN-legacy-seed-50ep"]  # subset/: 100 per class
    assert (sub["train/class"], sub["epochs"], sub["final top-1 %"]) == ("100", "50", "16.32")
    torchrun = rows["BaselineCNN-torchrun-2ep-20pc"]  # "20pc" token wins over the folder; no recipe token
    assert (torchrun["train/class"], torchrun["dropout"], torchrun["recipe"]) == ("20", "?", "?")
    assert torchrun[">1% at"] == "-"


def test_shared_histories_missing_gpu_runs(shared_results):
    runs = results.load_runs([shared_results])
    missing = results.missing_issue_runs(runs)
    # None of the shared runs is a 50-epoch full-split one, so all of issue 13's are missing.
    assert [(r.model, r.dropout, r.recipe) for r in missing] == list(results.ISSUE_RUNS)
    table = results.markdown_table(runs + missing)
    assert table.count(results.NOT_RUN) == len(results.ISSUE_RUNS)


# ------------------------------------------------------------------- a run folder from a real fit
def test_run_folder_from_a_real_fit(synthetic_root, tmp_path):
    from tinyimagenet.loaders import load_data
    from tinyimagenet.train import TrainConfig, fit

    data = load_data(synthetic_root, train_per_class=5, val_per_class=2, progress=False)
    cfg = TrainConfig(model="BaselineCNN", recipe="seed", dropout="legacy", epochs=2, batch_size=25,
                      train_per_class=5, val_per_class=2, data_dir=str(synthetic_root), device="cpu",
                      progress=False, out=str(tmp_path / "run"))
    history = fit(cfg, data=data)
    (run,) = results.load_runs([tmp_path])  # the parent folder: found by searching it
    assert (run.model, run.dropout, run.recipe, run.per_class, run.epochs) == ("BaselineCNN", "legacy", "seed", "5", 2)
    assert not run.seed_data  # 10 synthetic classes: the seed's thresholds mean nothing here
    row = rows_by_run(results.markdown_table([run]))["run"]
    assert row["final top-1 %"] == f"{history[-1]['val_acc']:.2f}"
    assert row["wall s"] == f"{sum(r['seconds'] for r in history):,.0f}"
    assert [row[f">{t:g}% at"] for t in SEED_THRESHOLDS.values()] == ["n/a"] * 3


# ------------------------------------------------------------------- hand-written histories
def test_threshold_crossing_epochs(tmp_path):
    folder = tmp_path / "runs" / "base"
    write_history(folder / "history.csv", [0.5, 1.0, 1.2, 6.0, 4.0, 11.0, 12.0])
    (folder / "config.json").write_text(json.dumps({"model": "BaselineCNN", "dropout": "fixed", "recipe": "seed",
                                                    "train_per_class": 500, "synthetic": False}))
    write_history(tmp_path / "runs" / "subset" / "ResidualCNN-legacy-seed-3ep.csv", [0.4, 0.6, 0.9])
    table = results.main([str(tmp_path / "runs")])
    rows = rows_by_run(table)
    base = rows["base"]
    # 1.0 at epoch 2 does not exceed 1%: first above is epoch 3, after the seed's epoch 1.
    assert [base[f">{t:g}% at"] for t in SEED_THRESHOLDS.values()] == ["3 (late)", "4", "6"]
    assert (base["train/class"], base["best top-1 % (epoch)"], base["final top-1 %"], base["wall s"]) == \
        ("500", "12.00 (7)", "12.00", "14")
    res = rows["ResidualCNN-legacy-seed-3ep"]
    assert (res["model"], res["dropout"], res["recipe"], res["train/class"]) == ("ResidualCNN", "legacy", "seed", "100")
    assert [res[f">{t:g}% at"] for t in SEED_THRESHOLDS.values()] == ["-", "-", "-"]


def test_unlabelled_csv_name_gives_question_marks(tmp_path):
    (run,) = results.load_runs([write_history(tmp_path / "somewhere" / "history-copy.csv", [1.5])])
    assert (run.model, run.dropout, run.recipe, run.per_class) == ("?", "?", "?", "?")


def test_plot_writes_png(tmp_path, capsys):
    write_history(tmp_path / "full-data" / "BaselineCNN-fixed-seed-6ep.csv", [2, 4, 6, 8, 9, 10])
    write_history(tmp_path / "subset" / "BaselineCNN-legacy-seed-3ep.csv", [0.5, 0.7, 1.1])
    png = tmp_path / "plots" / "val.png"
    results.main([str(tmp_path), "--plot", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert f"plot: {png}" in capsys.readouterr().out


# ------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kind", ["missing", "not_a_history", "empty_folder"])
def test_bad_path_exits_2_with_one_line(tmp_path, kind):
    bad = {"missing": tmp_path / "no-such-run", "not_a_history": tmp_path / "notes.csv",
           "empty_folder": tmp_path / "empty"}[kind]
    if kind == "not_a_history":
        bad.write_text("name,value\na,1\n")
    elif kind == "empty_folder":
        bad.mkdir()
    proc = subprocess.run([sys.executable, "-m", "tinyimagenet.results", str(bad)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], proc.stderr
    assert proc.stdout == ""


# ------------------------------------------------------------------- the figures (plotting.py)
def _report(num_classes: int, epochs: int) -> dict:
    rows = [{"epoch": e, "train_loss": 5.0, "val_loss": 5.0, "val_acc": 0.5 + e} for e in range(1, epochs + 1)]
    return {"dataset": {"num_classes": num_classes, "ln_num_classes": 5.3},
            "models": {"BaselineCNN": {"config": {"dropout": "fixed"}, "passed": True, "epochs": rows,
                                       "gradient_flow": [{"layer": "features.0.0.weight", "grad_norm": 0.2},
                                                         {"layer": "classifier.3.weight", "grad_norm": 0.0},
                                                         {"step": 3}],
                                       "fit": [{"name": "base", "lr": 1e-4, "losses": [5.3, 4.0]}]}}}


def test_figures_skip_empty_reports_and_mark_the_seed_only_on_200_classes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tinyimagenet import plotting

    preflight = _report(200, 0)  # --preflight-only: no epochs
    assert plotting.val_accuracy(preflight) is None and plotting.loss_curves(preflight) is None
    empty = {"dataset": preflight["dataset"],
             "models": {"M": {"epochs": [], "gradient_flow": [], "fit": [{"name": "x"}]}}}
    assert [f(empty) for f in (plotting.gradient_flow, plotting.fit_curves)] == [None, None]

    def seed_texts(fig):
        return [t.get_text() for t in fig.axes[0].texts]

    fig = plotting.val_accuracy(_report(200, 2))
    assert seed_texts(fig) == [">1%"]  # epoch 5's marker is not near a 2-epoch run
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())
    assert seed_texts(plotting.val_accuracy(_report(200, 12))) == [">1%", ">5%", ">10%"]
    assert seed_texts(plotting.val_accuracy(_report(10, 12))) == []  # 10 classes: the seed's numbers mean nothing
    fig = plotting.gradient_flow(_report(200, 1))
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["features.0.0.weight", "classifier.3.weight"]
    plt.close("all")
