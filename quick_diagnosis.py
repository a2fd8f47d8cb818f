"""Quick diagnosis: a 5-epoch health check that finds out, by experiment, *why* a model does not learn.

    python quick_diagnosis.py                                  # all five models, ./data or $TINYIMAGENET_ROOT
    python quick_diagnosis.py --models BaselineCNN --dropout legacy --train-per-class 50 --json report.json
    python quick_diagnosis.py --models BaselineCNN --dropout legacy --headroom   # what slows a model that learns
    python quick_diagnosis.py --model examples/softmax_head.py:SoftmaxHeadCNN --data-dir /tmp/tin
    python quick_diagnosis.py --model my_net.py:build --data my_data.py:get_splits   # your model and data
    %run quick_diagnosis.py --models BaselineCNN               # in Jupyter (repo root)
    %run ../quick_diagnosis.py --preflight-only                # in Jupyter, from notebooks/

For each model: measurements before training (labels, batches, outputs, eval determinism, dropout,
loss at init), a fixed batch fitted as given and with one change each when it fails, `--epochs` of
training with held-out train and val predicted after each, then PASS / FAIL / INCONCLUSIVE with
causes ranked by evidence, and reruns with the top causes fixed (the controls). Exit code 0
whatever the verdict; `--strict` exits 1 if a model FAILs. `main(argv)` returns the report dict.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

if __name__ == "__main__" and "IPython" not in sys.modules:
    # A script owns its process, so it may set what libgomp reads once, at `import torch`: idle
    # OpenMP threads sleep instead of spinning (+35-50% images/s on a shared 2-core box; see
    # tinyimagenet/runtime.py). Under %run in Jupyter the user's process is left alone.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tinyimagenet.diagnosis import DiagnosisConfig, diagnose, format_report, to_json
from tinyimagenet.diagnosis.errors import UserInputError
from tinyimagenet.registry import MODELS

EXAMPLES = """examples:
  python quick_diagnosis.py --models BaselineCNN --dropout legacy --train-per-class 20 --val-per-class 10
  python quick_diagnosis.py --model examples/softmax_head.py:SoftmaxHeadCNN --data-dir /tmp/tin \\
      --train-per-class 20 --val-per-class 50 --epochs 3
  python quick_diagnosis.py --model my_net.py:MyNet --data my_data.py:get_splits
      my_net.py:MyNet   an nn.Module class, a factory function, or a module instance; called with
                        num_classes=C when it takes that argument
      my_data.py:get_splits   a function returning (train, val, num_classes); each split a DataLoader
                        (read as your code iterates it), a Dataset, or an IterableDataset (read up to
                        --iterable-cap samples), yielding (image, label, *extra) or dicts (--keys)
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quick_diagnosis.py", description=__doc__.split("\n\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data-dir", help="tiny-imagenet-200 or its parent (default $TINYIMAGENET_ROOT or ./data)")
    src.add_argument("--synthetic", action="store_true", help="generated offline data (10 classes)")
    src.add_argument("--data", metavar="FILE.py:FUNCTION",
                     help="your data: FUNCTION() returns (train_dataset, val_dataset, num_classes)")
    p.add_argument("--archive", help="local path or file:// URL of tiny-imagenet-200.zip to extract")
    p.add_argument("--download", action="store_true", help="download the archive into --data-dir when absent")
    p.add_argument("--models", nargs="+", default=None, choices=list(MODELS), metavar="NAME",
                   help=f"registry models to check (default, without --model: all of {' '.join(MODELS)})")
    p.add_argument("--model", action="append", default=[], metavar="FILE.py:NAME",
                   help="your model: a class, factory or instance NAME in FILE.py (repeatable)")
    p.add_argument("--loss", metavar="FILE.py:NAME", help="your loss: NAME(logits, targets) -> scalar")
    p.add_argument("--keys", metavar="IMAGE,LABEL", default=None,
                   help="--data: the dict keys (or tuple positions, e.g. 0,2) of image and label in a sample")
    p.add_argument("--iterable-cap", type=int, default=20_000,
                   help="--data: samples read at most from an IterableDataset (default 20000)")
    p.add_argument("--optimizer", metavar="FILE.py:NAME", help="your optimizer factory: NAME(params) -> Optimizer")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-per-class", type=int, default=None, help="train images per class (default all)")
    p.add_argument("--val-per-class", type=int, default=None, help="val images per class (default all 50)")
    p.add_argument("--probe-per-class", type=int, default=None, help="held-out train images per class (default 5%%)")
    p.add_argument("--recipe", choices=["seed", "strong"], default="seed")
    p.add_argument("--dropout", choices=["fixed", "legacy"], default="fixed", help="registry models' dropout")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-batch", type=int, default=8, help="images in the fixed-batch fit check")
    p.add_argument("--fit-steps", type=int, default=50, help="max steps of each fixed-batch fit")
    p.add_argument("--no-control", dest="control", action="store_false",
                   help="skip the reruns with the top causes removed")
    p.add_argument("--max-controls", type=int, default=2, help="control runs at most per model")
    p.add_argument("--headroom", dest="headroom", action="store_const", const=True, default=None,
                   help="for a run that learns, screen the changes that could make it learn faster (default: only "
                        "for a 200-class full-split run below the seed's bar)")
    p.add_argument("--no-headroom", dest="headroom", action="store_const", const=False, help="never run the screen")
    p.add_argument("--headroom-budget", type=int, default=DiagnosisConfig.headroom_budget,
                   help="headroom: full control runs at most, after a short screen of each change "
                        f"(default {DiagnosisConfig.headroom_budget})")
    p.add_argument("--preflight-only", action="store_true", help="stop before training")
    p.add_argument("--out", default=None, help="folder for plots (default: none)")
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--strict", action="store_true", help="exit 1 if any model FAILs")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def load_object(spec: str, option: str):
    """`path/to/file.py:NAME` -> the object NAME defined in that file (a clear error otherwise)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path.endswith(".py") or not name:
        raise ValueError(f"{option} {spec!r}: expected FILE.py:NAME, e.g. examples/softmax_head.py:SoftmaxHeadCNN")
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ValueError(f"{option} {spec!r}: no file {file}")
    module_name = f"_user_{file.stem}_{abs(hash(str(file)))}"
    if module_name not in sys.modules:  # load each file once, so two options share its objects
        loader_spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(loader_spec)
        sys.path.insert(0, str(file.parent))  # the file may import its neighbours
        try:
            loader_spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(file.parent))
        sys.modules[module_name] = module
    module = sys.modules[module_name]
    if not hasattr(module, name):
        defined = sorted(k for k, v in vars(module).items() if not k.startswith("_") and callable(v))
        raise ValueError(f"{option} {spec!r}: {file.name} defines no {name!r} (it defines: {', '.join(defined)})")
    return getattr(module, name)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except ImportError:
        return False


def save_figures(report: dict, data_for_grid, out: str | None) -> list:
    """Plots to OUT/*.png; shown inline when running inside Jupyter. Only figures with data are
    drawn: a plotting function returns None when the report has nothing for it (after
    --preflight-only there are no epochs), and an empty chart would only mislead."""
    import matplotlib.pyplot as plt

    from tinyimagenet import plotting

    figs = {"val_accuracy": plotting.val_accuracy(report), "loss": plotting.loss_curves(report),
            "gradient_flow": plotting.gradient_flow(report), "fit_batch": plotting.fit_curves(report)}
    if data_for_grid is not None:
        figs["samples"] = plotting.sample_grid(data_for_grid)
    saved = []
    for name, fig in figs.items():
        if fig is None:
            continue
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
    user_models, data_spec, loss_spec, opt_spec = opts.pop("model"), opts.pop("data"), opts.pop("loss"), opts.pop("optimizer")
    if args.headroom_budget < 0:
        raise ValueError(f"--headroom-budget {args.headroom_budget}: give 0 or more full control runs")
    registry = opts.pop("models") or ([] if user_models else list(MODELS))
    from tinyimagenet.diagnosis.user_data import parse_keys

    opts["keys"] = parse_keys(opts["keys"])
    cfg = DiagnosisConfig(models=registry, **opts)
    models = [(name, name) for name in registry] + [(spec.rpartition(":")[2], load_object(spec, "--model"))
                                                    for spec in user_models]
    loss_fn = load_object(loss_spec, "--loss") if loss_spec else None
    optimizer = load_object(opt_spec, "--optimizer") if opt_spec else None
    from tinyimagenet.runtime import keep_freed_memory, pick_device

    if pick_device(cfg.device).type == "cpu" and not _in_notebook():
        keep_freed_memory()  # +20-30% images/s on CPU; a process-wide setting, so scripts only

    data, train, val, num_classes = None, None, None, None
    if data_spec:
        get_splits = load_object(data_spec, "--data")
        if not callable(get_splits):
            raise UserInputError(f"--data {data_spec!r}: {type(get_splits).__name__} is not a function")
        try:
            splits = get_splits()
        except TypeError as err:  # it wants arguments: the CLI calls it with none
            raise UserInputError(f"--data {data_spec!r}: calling it with no arguments failed: {err}") from None
        if not (isinstance(splits, tuple) and len(splits) == 3):
            raise UserInputError(f"--data {data_spec!r}: the function must return (train, val, num_classes), "
                                 f"got a {type(splits).__name__}")
        train, val, num_classes = splits
        dataset = {"root": data_spec, "num_classes": int(num_classes)}  # sizes: as read by the diagnosis
    else:
        from tinyimagenet.diagnosis.run import dataset_summary, load_repo_data

        data = load_repo_data(cfg)
        dataset = dataset_summary(data)
    import math

    report = {"dataset": {**dataset, "ln_num_classes": math.log(max(2, dataset["num_classes"]))}, "models": {}}
    for name, model in models:
        report["models"][name] = diagnose(model, train, val, loss_fn, optimizer, num_classes=num_classes,
                                          config=cfg, data=data, name=name)
        report["dataset"].update(report["models"][name].get("data") or {})  # a user split's size as read
    print(format_report(report))
    if json_path:
        from tinyimagenet.checkpoint import write_json

        write_json(to_json(report), json_path)
        print(f"\nreport: {json_path}")
    if out or _in_notebook():
        for path in save_figures(report, data, out):
            print(f"plot: {path}")
    failed = [n for n, m in report["models"].items() if m["verdict"] == "FAIL"]
    if strict and failed and __name__ == "__main__":
        sys.exit(1)
    report["exit_code"] = 1 if strict and failed else 0
    return report


if __name__ == "__main__":
    from tinyimagenet.data import DatasetError

    try:
        main()
    # Bad options, data, model output or loss (UserInputError is a ValueError): one line, no traceback.
    except (DatasetError, UserInputError, ValueError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)  # what argparse exits with for a bad option
