"""Results from training histories: one markdown table (and optionally a plot) over many runs.

    python -m tinyimagenet.results runs/full/*                      # run folders (history.csv + config.json)
    python -m tinyimagenet.results ../shared/results/h200-2026-11-29 --plot val.png
    python -m tinyimagenet.results runs/full/* --missing            # + rows for issue 13's GPU runs not among them

Each PATH is a run folder written by `python -m tinyimagenet.train --out DIR` (history.csv, and
config.json for model/dropout/recipe/data size), a bare history CSV (the same columns, named after
its run, e.g. `BaselineCNN-legacy-seed-50ep.csv`), or a folder searched recursively for either.

Per run: model, dropout, recipe, train images per class, epochs, best and final val top-1/top-5,
wall time (the sum of the `seconds` column) and the first epoch whose val top-1 exceeded each of the
seed's thresholds (tinyimagenet/seed.py: >1%, >5%, >10%; "-" never; "(late)" after the seed's epoch;
"n/a" on data that is not the 200-class Tiny ImageNet, e.g. --synthetic).

Where the labels come from:
  * run folder: config.json's `model`, `dropout`, `recipe`; train images per class from its
    `train_per_class`, or, when that is null ("all"), counted in the first class folder of its
    `data_dir` if that still exists, else "all"; `synthetic: true` gives "synthetic". The seed's
    thresholds apply unless the run is synthetic or its `data_dir` holds other than 200 classes.
  * bare CSV: model = the file name's first "-"-separated token when it is a CamelCase name;
    dropout = a `fixed`/`legacy` token, recipe = a `seed`/`strong` token; per class = an `<N>pc`
    token, else a parent folder named `full-data` (500, the full train split) or `subset` (100, the
    shared subset); anything not found is "?".

`--missing` adds a row "not run: needs a GPU" for each 50-epoch full-split run issue 13 asks for
(ISSUE_RUNS) that no PATH provides. Reads CSVs with the csv module only (no torch import), so the
command answers in well under a second. A bad PATH: one line naming it, exit code 2.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .seed import SEED_NUM_CLASSES, SEED_THRESHOLDS

FULL_PER_CLASS = 500     # Tiny ImageNet's train split: 500 images per class
SUBSET_PER_CLASS = 100   # ../shared/data/tiny-imagenet-200-subset.zip
FOLDER_PER_CLASS = {"full-data": FULL_PER_CLASS, "subset": SUBSET_PER_CLASS}
# The 50-epoch full-split runs issue 13 asks for, as (model, dropout, recipe); --missing lists the absent ones.
ISSUE_RUNS = tuple((m, "fixed", "strong") for m in
                   ("BaselineCNN", "DeeperWiderCNN", "CNNWithSEAttention", "ResidualCNN", "BestModel")) + (
    ("BaselineCNN", "legacy", "seed"), ("BaselineCNN", "fixed", "seed"))
ISSUE_EPOCHS = 50
NOT_RUN = "not run: needs a GPU"


class ResultsError(ValueError):
    """A PATH that is not a history: the message names it."""


@dataclass
class Run:
    name: str                          # the folder or file name it came from
    history: list[dict]                # rows of history.csv (epoch, val_acc, val_top5, seconds, ...)
    model: str = "?"
    dropout: str = "?"
    recipe: str = "?"
    per_class: str = "?"               # train images per class: "500", "all", "synthetic", "?"
    seed_data: bool = True             # the 200-class Tiny ImageNet, where the seed's thresholds apply
    note: str = ""                     # e.g. NOT_RUN
    source: str = ""

    @property
    def epochs(self) -> int:
        return max((r["epoch"] for r in self.history), default=0)

    def first_above(self, threshold: float):
        """First epoch whose val top-1 exceeds `threshold` (%), or None."""
        return next((r["epoch"] for r in self.history if r.get("val_acc", -1) > threshold), None)


# ----------------------------------------------------------------------------------- reading
def read_history(path: Path) -> list[dict]:
    """history.csv rows as {column: int epoch / float}; empty cells dropped."""
    rows = []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not {"epoch", "val_acc"} <= set(reader.fieldnames or []):
                raise ResultsError(f"{path}: not a training history (no 'epoch' and 'val_acc' columns)")
            for line, row in enumerate(reader, start=2):
                try:
                    rows.append({k: int(float(v)) if k == "epoch" else float(v)
                                 for k, v in row.items() if k and v not in ("", None)})
                except ValueError as err:
                    raise ResultsError(f"{path}, line {line}: {err}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: cannot read it ({err})") from err
    return rows


def _count_data(data_dir) -> tuple:
    """(class folders, images in the first one) of `data_dir`'s train split; (None, None) if not there."""
    for root in (Path(data_dir), Path(data_dir) / "tiny-imagenet-200"):
        classes = sorted((root / "train").glob("*/images")) if (root / "train").is_dir() else []
        if classes:
            return len(classes), sum(1 for _ in classes[0].iterdir())
    return None, None


def load_run_folder(folder: Path) -> Run:
    """A `python -m tinyimagenet.train --out` folder: history.csv plus config.json when present."""
    cfg = {}
    if (folder / "config.json").is_file():
        try:
            cfg = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError) as err:
            raise ResultsError(f"{folder / 'config.json'}: cannot read it ({err})") from err
    # The data folder, when it is still there, says how many classes (the seed's thresholds are
    # for 200) and, for train_per_class null, how many images per class "all" was.
    num_classes, counted = _count_data(cfg["data_dir"]) if cfg.get("data_dir") else (None, None)
    if cfg.get("synthetic"):
        per_class = "synthetic"
    elif cfg.get("train_per_class"):
        per_class = str(cfg["train_per_class"])
    else:
        per_class = str(counted) if counted else "all" if cfg else "?"
    seed_data = not cfg.get("synthetic", False) and num_classes in (None, SEED_NUM_CLASSES)
    return Run(name=folder.name, history=read_history(folder / "history.csv"), model=cfg.get("model", "?"),
               dropout=cfg.get("dropout", "?"), recipe=cfg.get("recipe", "?"), per_class=per_class,
               seed_data=seed_data, source=str(folder))


def parse_name(path: Path) -> dict:
    """model/dropout/recipe/per_class from a name like `full-data/BaselineCNN-legacy-seed-5ep.csv`."""
    tokens = path.stem.split("-")
    found = {"model": tokens[0] if re.fullmatch(r"[A-Z][A-Za-z0-9]*", tokens[0]) else "?",
             "dropout": next((t for t in tokens if t in ("fixed", "legacy")), "?"),
             "recipe": next((t for t in tokens if t in ("seed", "strong")), "?"),
             "per_class": next((t[:-2] for t in tokens if re.fullmatch(r"\d+pc", t)), None)}
    if found["per_class"] is None:
        sizes = [FOLDER_PER_CLASS[p.name] for p in path.parents if p.name in FOLDER_PER_CLASS]
        found["per_class"] = str(sizes[0]) if sizes else "?"
    return found


def load_csv(path: Path) -> Run:
    return Run(name=path.stem, history=read_history(path), source=str(path), **parse_name(path))


def load_runs(paths) -> list[Run]:
    """Runs from run folders, history CSVs, or folders holding either (searched recursively)."""
    runs = []
    for p in map(Path, paths):
        if p.is_file():
            runs.append(load_run_folder(p.parent) if p.name == "history.csv" else load_csv(p))
        elif (p / "history.csv").is_file():
            runs.append(load_run_folder(p))
        elif p.is_dir():
            found = []
            for f in sorted(p.rglob("*.csv")):
                if f.name == "history.csv":
                    found.append(load_run_folder(f.parent))
                elif _is_history(f):
                    found.append(load_csv(f))
            if not found:
                raise ResultsError(f"{p}: no history.csv or history CSV found under this folder")
            runs += found
        else:
            raise ResultsError(f"{p}: no such file or folder")
    return runs


def _is_history(path: Path) -> bool:
    try:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError):
        return False
    return {"epoch", "val_acc"} <= set(header)


def from_history(rows, name: str, **labels) -> Run:
    """A Run from in-memory rows (a `fit` history or a diagnosis report's "epochs")."""
    labels = {k: ("?" if v is None else v) for k, v in labels.items()}
    if "per_class" in labels:
        labels["per_class"] = str(labels["per_class"])
    return Run(name=name, history=list(rows), **labels)


def missing_issue_runs(runs) -> list[Run]:
    """A NOT_RUN row for each ISSUE_RUNS entry no run covers (full split, >= 50 epochs)."""
    have = {(r.model, r.dropout, r.recipe) for r in runs
            if r.per_class in (str(FULL_PER_CLASS), "all") and r.epochs >= ISSUE_EPOCHS}
    return [Run(name=f"{m}-{d}-{rc}-{ISSUE_EPOCHS}ep (full split)", history=[], model=m, dropout=d, recipe=rc,
                per_class=str(FULL_PER_CLASS), note=NOT_RUN) for m, d, rc in ISSUE_RUNS if (m, d, rc) not in have]


# ----------------------------------------------------------------------------------- the table
COLUMNS = ["run", "model", "dropout", "recipe", "train/class", "epochs", "best top-1 % (epoch)", "final top-1 %",
           "best top-5 %", "final top-5 %", "wall s"] + [f">{t:g}% at" for t in SEED_THRESHOLDS.values()]


def row_of(run: Run) -> list[str]:
    """The table cells of one run (see COLUMNS)."""
    head = [run.name, run.model, run.dropout, run.recipe, run.per_class]
    if not run.history:
        return head + [run.note or "no epochs"] + [""] * (len(COLUMNS) - len(head) - 1)
    best = max(run.history, key=lambda r: r.get("val_acc", -1))
    last = run.history[-1]
    top5 = [r["val_top5"] for r in run.history if "val_top5" in r]
    secs = [r["seconds"] for r in run.history if "seconds" in r]
    cells = head + [str(run.epochs), f"{best['val_acc']:.2f} ({best['epoch']})", f"{last['val_acc']:.2f}",
                    f"{max(top5):.2f}" if top5 else "?", f"{last['val_top5']:.2f}" if "val_top5" in last else "?",
                    f"{sum(secs):,.0f}" if secs else "?"]
    for epoch, need in SEED_THRESHOLDS.items():
        at = run.first_above(need)
        cells.append("n/a" if not run.seed_data else "-" if at is None else f"{at}" + (" (late)" if at > epoch else ""))
    if run.note:
        cells[0] += f" ({run.note})"
    return cells


def markdown_table(runs) -> str:
    align = ["---" if i < 4 else "---:" for i in range(len(COLUMNS))]  # labels left, numbers right
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row_of(r)) + " |" for r in runs]
    return "\n".join(lines)


def plot_runs(runs, path=None):
    """Val top-1 per epoch of every run with history, one panel per training-set size (runs on
    500 and 100 images per class are not comparable), against the seed's thresholds on the
    200-class data; saved to `path` if given."""
    from . import plotting  # matplotlib only when a plot is asked for

    panels, seed_panels = {}, set()
    for r in runs:
        if r.history:
            title = f"train images per class: {r.per_class}" + ("" if r.seed_data else " (not the 200-class data)")
            panels.setdefault(title, {})[r.name] = r.history
            if r.seed_data:
                seed_panels.add(title)
    if not panels:
        raise ResultsError("nothing to plot: no run has a trained epoch")
    fig = plotting.history_panels(panels, seed_markers=seed_panels)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


# ------------------------------------------------------------------------------------------ CLI
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tinyimagenet.results", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="PATH", help="run folders, history CSVs, or folders holding them")
    p.add_argument("--plot", metavar="FILE", help="also draw val top-1 per epoch vs the seed's thresholds here (PNG)")
    p.add_argument("--missing", action="store_true",
                   help=f"add a '{NOT_RUN}' row for each {ISSUE_EPOCHS}-epoch full-split run of issue 13 "
                        "not among PATHs")
    return p


def main(argv=None) -> str:
    args = get_args_parser().parse_args(argv)
    try:
        runs = load_runs(args.paths)
    except ResultsError as err:  # one line naming the path, argparse's exit code for bad input
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.missing:
        runs += missing_issue_runs(runs)
    table = markdown_table(runs)
    print(table)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")  # a file is asked for: no display needed
        plot_runs(runs, args.plot)
        print(f"\nplot: {args.plot}")
    return table


if __name__ == "__main__":
    main()
