"""Figures for the diagnosis report and training histories (matplotlib only; used from the faces).

    from tinyimagenet import plotting
    fig = plotting.val_accuracy(report)          # val top-1 per epoch vs the seed's expected band
    fig = plotting.loss_curves(report)           # train/val loss vs the ln(C) line
    fig = plotting.gradient_flow(report)         # per-layer gradient norm at init
    fig = plotting.sample_grid(data)             # images with their class names
    plotting.history_curves({"BestModel": rows, ...})   # 50-epoch runs vs the seed band
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt  # headless machines fall back to Agg; Jupyter keeps inline

from .diagnosis.verdict import SEED_BAND


def _band(ax, max_epoch: int) -> None:
    for epoch, (lo, hi) in SEED_BAND.items():
        if epoch <= max(max_epoch, 1) + 0.5:
            ax.plot([epoch, epoch], [lo, hi], color="tab:green", lw=6, alpha=0.35,
                    label="seed's expected range" if epoch == 1 else None)


def val_accuracy(report: dict):
    fig, ax = plt.subplots(figsize=(6, 4))
    n = 1
    for name, m in report["models"].items():
        e = m["epochs"]
        n = max(n, len(e))
        ax.plot([r["epoch"] for r in e], [r["val_acc"] for r in e], marker="o",
                label=f"{name} ({m['config']['dropout']}) {'PASS' if m['passed'] else 'FAIL'}")
        if m.get("control"):
            c = m["control"]["epochs"]
            ax.plot([r["epoch"] for r in c], [r["val_acc"] for r in c], ls="--", marker="x",
                    label=f"{name} control: {m['control']['change']}")
    ax.axhline(100 / report["dataset"]["num_classes"], color="gray", ls=":", label="chance")
    _band(ax, n)
    ax.set(xlabel="epoch", ylabel="val top-1 (%)", title="Val accuracy per epoch")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def loss_curves(report: dict):
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in report["models"].items():
        e = m["epochs"]
        line, = ax.plot([r["epoch"] for r in e], [r["train_loss"] for r in e], marker="o", label=f"{name} train")
        ax.plot([r["epoch"] for r in e], [r["val_loss"] for r in e], ls="--", color=line.get_color(),
                label=f"{name} val")
    ax.axhline(report["dataset"]["ln_num_classes"], color="gray", ls=":",
               label=f"ln C = {report['dataset']['ln_num_classes']:.3f} (chance)")
    ax.set(xlabel="epoch", ylabel="cross-entropy", title="Loss vs the chance level")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def gradient_flow(report: dict):
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, m in report["models"].items():
        rows = m.get("gradient_flow") or []
        ax.semilogy(range(len(rows)), [max(r["grad_norm"], 1e-30) for r in rows], marker=".", label=name)
    ax.set(xlabel="layer (input -> output)", ylabel="gradient norm at init", title="Gradient flow (one backward)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fit_curves(report: dict):
    """Loss on the fixed batch for the base run and each intervention, one panel per model."""
    models = list(report["models"].items())
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.2), squeeze=False)
    for ax, (name, m) in zip(axes[0], models):
        for run in m["fit"]:
            ax.plot([v if v is not None and math.isfinite(v) else float("nan") for v in run["losses"]],
                    label=f"{run['name']} (lr {run['lr']:g})")
        ax.axhline(report["dataset"]["ln_num_classes"], color="gray", ls=":")
        ax.set(title=f"{name}: fixed batch", xlabel="step", ylabel="loss", ylim=(0, 2 * report["dataset"]["ln_num_classes"]))
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def sample_grid(data, n: int = 16, seed: int = 0):
    """`n` train images with their class names (what the model is asked to learn)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train_targets), generator=g)[:n]
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.9 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, idx.tolist()):
        ax.imshow(data.train_images[i].numpy())
        ax.set_title(data.class_names[int(data.train_targets[i])][:18], fontsize=7)
    fig.tight_layout()
    return fig


def history_curves(histories: dict, metric: str = "val_acc"):
    """Curves of `metric` for several runs ({name: history rows}) against the seed's band."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    n = 1
    for name, rows in histories.items():
        n = max(n, len(rows))
        ax.plot([r["epoch"] for r in rows], [r[metric] for r in rows], label=name)
    if metric == "val_acc":
        _band(ax, n)
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
