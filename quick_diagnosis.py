"""Quick diagnosis: a 5-epoch health check that finds out *why* a model does not learn.

    python quick_diagnosis.py                                  # all five models, ./data or $TINYIMAGENET_ROOT
    python quick_diagnosis.py --models BaselineCNN --dropout legacy --train-per-class 50 --json report.json
    python quick_diagnosis.py --synthetic --models BaselineCNN  # offline demo on generated data
    %run quick_diagnosis.py --models BaselineCNN               # in Jupyter (repo root)
    %run ../quick_diagnosis.py --preflight-only                # in Jupyter, from notebooks/

For each model: pre-flight checks (data, shape, loss at init vs ln C, dropout audit, gradients, can
it fit a small batch, and interventions when it cannot), then the first `--epochs` epochs of
training with a significance test against chance, then PASS/FAIL with the causes ranked by
evidence and a rerun with the top cause removed (the control). Exit code 0 whatever the verdict;
`--strict` exits 1 if a model fails. `main(argv)` returns the report dict.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # Before torch loads (libgomp reads it once): idle OpenMP threads sleep instead of spinning,
    # +35-50% images/s on a 2-core box that another job shares (see tinyimagenet/runtime.py).
    # Under `%run` in a kernel that already imported torch it changes nothing, harmlessly.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tinyimagenet.diagnosis import ALL_MODELS, DiagnosisConfig, format_report, run_diagnosis, to_json


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quick_diagnosis.py", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data-dir", help="tiny-imagenet-200 or its parent (default $TINYIMAGENET_ROOT or ./data)")
    src.add_argument("--synthetic", action="store_true", help="generated offline data (10 classes)")
    p.add_argument("--archive", help="local path or file:// URL of tiny-imagenet-200.zip to extract")
    p.add_argument("--models", nargs="+", default=list(ALL_MODELS), choices=ALL_MODELS, metavar="NAME",
                   help=f"models to check (default all: {' '.join(ALL_MODELS)})")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-per-class", type=int, default=None, help="train images per class (default all)")
    p.add_argument("--val-per-class", type=int, default=None, help="val images per class (default all 50)")
    p.add_argument("--recipe", choices=["seed", "strong"], default="seed")
    p.add_argument("--dropout", choices=["fixed", "legacy"], default="fixed")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-batch", type=int, default=8, help="images in the fixed-batch fit check")
    p.add_argument("--fit-steps", type=int, default=50, help="max steps of each fixed-batch fit")
    p.add_argument("--no-control", dest="control", action="store_false",
                   help="skip the rerun with the top cause removed")
    p.add_argument("--preflight-only", action="store_true", help="stop after the pre-flight checks")
    p.add_argument("--out", default=None, help="folder for plots and histories (default: none)")
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--strict", action="store_true", help="exit 1 if any model fails")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except ImportError:
        return False


def save_figures(report: dict, data_for_grid, out: str | None) -> list:
    """Plots to OUT/*.png; shown inline when running inside Jupyter."""
    import matplotlib.pyplot as plt

    from tinyimagenet import plotting

    figs = {"val_accuracy": plotting.val_accuracy(report), "loss": plotting.loss_curves(report),
            "gradient_flow": plotting.gradient_flow(report), "fit_batch": plotting.fit_curves(report)}
    if data_for_grid is not None:
        figs["samples"] = plotting.sample_grid(data_for_grid)
    saved = []
    for name, fig in figs.items():
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            fig.savefig(Path(out) / f"{name}.png", dpi=110)
            saved.append(str(Path(out) / f"{name}.png"))
        if _in_notebook():
            from IPython.display import display

            display(fig)
        plt.close(fig)
    return saved


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    opts = vars(args).copy()
    out, json_path, strict = opts.pop("out"), opts.pop("json"), opts.pop("strict")
    cfg = DiagnosisConfig(**opts)
    from tinyimagenet.loaders import load_data
    from tinyimagenet.runtime import keep_freed_memory, pick_device

    if pick_device(cfg.device).type == "cpu":
        keep_freed_memory()  # +20-30% images/s on CPU; freed memory stays with this process

    data = load_data(cfg.data_dir, archive=cfg.archive, synthetic=cfg.synthetic,
                     train_per_class=cfg.train_per_class, val_per_class=cfg.val_per_class, progress=cfg.progress)
    report = run_diagnosis(cfg, data=data)
    print(format_report(report))
    if json_path:
        from tinyimagenet.checkpoint import write_json

        write_json(to_json(report), json_path)
        print(f"\nreport: {json_path}")
    if out or _in_notebook():
        for path in save_figures(report, data, out):
            print(f"plot: {path}")
    failed = [n for n, m in report["models"].items() if not m["passed"]]
    if strict and failed and __name__ == "__main__":
        sys.exit(1)
    report["exit_code"] = 1 if strict and failed else 0
    return report


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as err:  # bad options or data: one clear line, not a traceback
        sys.exit(f"error: {err}")
