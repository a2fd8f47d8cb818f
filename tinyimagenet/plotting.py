"""Figures for the diagnosis report and training histories (matplotlib only; used from the faces).

    from tinyimagenet import plotting
    fig = plotting.val_accuracy(report)          # val top-1 per epoch, every control run, the seed's thresholds
    fig = plotting.loss_curves(report)           # train/val loss vs ln(C), log axis, divergence marked
    fig = plotting.gradient_flow(report)         # gradient norm per layer, by layer name (all zero: in words)
    fig = plotting.fit_curves(report)            # fixed-batch loss per step, diverged fits marked
    fig = plotting.sample_grid(data)             # images with their class names
    plotting.history_curves({"BestModel": rows, ...}, seed_markers=True)   # runs vs the seed's thresholds
    plotting.history_panels({"500 per class": {...}, "100 per class": {...}})  # one panel per group

The report functions return None when the report holds nothing to draw (e.g. after
`--preflight-only` there are no epochs), so callers skip the figure instead of showing empty axes.
The seed's thresholds are drawn only for the 200-class Tiny ImageNet (they mean nothing for the
10 synthetic classes) and only at epochs within or near the plotted range.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt  # headless machines fall back to Agg; Jupyter keeps inline
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from .seed import SEED_MARKERS, applies, marker_label

SEED_COLOR = "tab:green"


def _epoch_axis(ax, last: int) -> None:
    """Integer ticks only; a short run gets half an epoch of margin instead of 0.96..1.04."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if last <= 10:
        ax.set_xlim(0.5, last + 0.5)


def draw_seed_markers(ax, max_epoch: int, num_classes: int = 200) -> int:
    """The seed's expectations (>1% at 1, >5% at 5, >10% at 10, 35-50% at 50) near the plotted range.

    Markers at epochs up to max_epoch + 20% (at least +1) are drawn, so a 2-epoch run shows only
    epoch 1's and a 45-epoch run shows epoch 50's. Returns the last epoch drawn (0 if none)."""
    if not applies(num_classes):
        return 0
    reach = max_epoch + max(1.0, 0.2 * max_epoch)
    last, labelled = 0, set()
    for epoch, (lo, hi) in SEED_MARKERS.items():
        if epoch > reach:
            continue
        if hi is None:  # "must exceed lo": an upward caret at lo
            kind = "seed: val top-1 must exceed"
            ax.plot([epoch], [lo], marker="^", ms=9, ls="none", color=SEED_COLOR, zorder=4,
                    label=None if kind in labelled else kind)
        else:  # an expected range: a bar from lo to hi
            kind = "seed: expected range"
            ax.plot([epoch, epoch], [lo, hi], lw=7, alpha=0.4, color=SEED_COLOR, solid_capstyle="butt",
                    label=None if kind in labelled else kind)
        labelled.add(kind)
        # caret labels to the right; the range label left of its bar, which may end the axis
        ax.annotate(marker_label(epoch), (epoch, lo if hi is None else (lo + hi) / 2), textcoords="offset points",
                    xytext=(6, -3) if hi is None else (-7, -3), ha="left" if hi is None else "right",
                    fontsize=7, color="darkgreen", zorder=5,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))
        last = epoch
    return last


def _models_with(report: dict, key: str) -> list:
    return [(name, m) for name, m in report.get("models", {}).items() if m.get(key)]


def _ordered_controls(m: dict) -> list:
    """The model's control runs, the top cause's first (the one the report leads with)."""
    controls = [c for c in (m.get("controls") or []) if isinstance(c, dict)]
    top = (m.get("causes") or [{}])[0].get("id")
    return sorted(controls, key=lambda c: c.get("cause") != top)


def _diverged_label(nonfinite) -> str:
    if nonfinite and len(nonfinite) >= 2:
        return f"diverged at epoch {nonfinite[0]}, step {nonfinite[1]}"
    return ""


def val_accuracy(report: dict):
    """Val top-1 per epoch per model and every control run (the top cause's first, labelled by its
    change); None when nothing was trained."""
    models = [(name, m) for name, m in report.get("models", {}).items()
              if m.get("epochs") or m.get("controls") or m.get("nonfinite")]
    if not models:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    n = 1
    for name, m in models:
        e = m.get("epochs") or []
        n = max([n] + [r["epoch"] for r in e])
        verdict = m.get("verdict") or ("PASS" if m.get("passed") else "FAIL")
        gone = _diverged_label(m.get("nonfinite"))
        line, = ax.plot([r["epoch"] for r in e], [r["val_acc"] for r in e], marker="o",
                        label=f"{name} ({m.get('config', {}).get('dropout', '?')}) {verdict}" + (f"; {gone}" if gone else ""))
        for k, c in enumerate(_ordered_controls(m)):
            ce = c.get("epochs") or []
            n = max([n] + [r["epoch"] for r in ce])
            status = "confirmed" if c.get("confirmed") else "not confirmed"
            gone = _diverged_label(c.get("nonfinite"))
            label = f"{name} control for {c.get('cause', '?')}: {c.get('change', '?')} ({status}" + \
                    (f"; {gone})" if gone else ")")
            ax.plot([r["epoch"] for r in ce], [r["val_acc"] for r in ce], ls=("--", ":", "-.")[k % 3], marker="x",
                    lw=2.2 if k == 0 else 1.2, label=label)
    num_classes = report["dataset"]["num_classes"]
    ax.axhline(100 / num_classes, color="gray", ls=":", label=f"chance ({100 / num_classes:.2g}%)")
    _epoch_axis(ax, max(n, draw_seed_markers(ax, n, num_classes)))
    ax.set_ylim(bottom=0)
    ax.set(xlabel="epoch", ylabel="val top-1 (%)", title="Val accuracy per epoch: the run and its controls")
    ax.legend(fontsize=6.5)
    fig.tight_layout()
    return fig


def _positive(values) -> list:
    return [v if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else float("nan") for v in values]


def loss_curves(report: dict):
    """Train (solid) and val (dashed) loss per epoch vs ln C on a log axis (a diverging run spans
    decades), a non-finite loss marked where it happened; None when nothing was trained."""
    models = [(name, m) for name, m in report.get("models", {}).items() if m.get("epochs") or m.get("nonfinite")]
    if not models:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    n, marks = 1, []
    for name, m in models:
        e = m.get("epochs") or []
        n = max([n] + [r["epoch"] for r in e])
        line, = ax.plot([r["epoch"] for r in e], _positive(r["train_loss"] for r in e), marker="o",
                        label=f"{name} train")
        ax.plot([r["epoch"] for r in e], _positive(r.get("val_loss") for r in e), ls="--", marker="o", mfc="none",
                color=line.get_color(), label=f"{name} val")
        if m.get("nonfinite"):
            epoch, step = m["nonfinite"][0], m["nonfinite"][1]
            n = max(n, epoch)
            marks.append((epoch, line.get_color(), f"{name}: loss non-finite at epoch {epoch}, step {step}"))
    ln_c = report["dataset"]["ln_num_classes"]
    ax.axhline(ln_c, color="gray", ls=":", label=f"ln C = {ln_c:.3f} (chance)")
    ax.set_yscale("log")
    for epoch, color, text in marks:  # at the top edge: a non-finite value has no place on the axis
        ax.plot([epoch], [1], transform=ax.get_xaxis_transform(), marker="X", ms=11, color=color, ls="none",
                clip_on=False, label=text)
        ax.axvline(epoch, color=color, lw=0.8, alpha=0.5)
    _epoch_axis(ax, n)
    ax.set(xlabel="epoch", ylabel="cross-entropy (log scale)", title="Loss vs the chance level")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _flow_series(rows: list) -> tuple:
    """(layer names in order, [(label, {layer: grad_norm})]) from gradient_flow rows.

    Rows without a "step" key are one backward at init (the older report); with per-step rows,
    the first and the last step sampled are shown, so a flow that changes in training is visible.
    Rows lacking "layer" or "grad_norm" are skipped."""
    rows = [r for r in rows if isinstance(r, dict) and "layer" in r and r.get("grad_norm") is not None]
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    steps = sorted({r["step"] for r in rows if r.get("step") is not None})
    if not steps:
        return layers, [("at init", {r["layer"]: float(r["grad_norm"]) for r in rows})]
    picked = [steps[0]] + ([steps[-1]] if steps[-1] != steps[0] else [])
    return layers, [(f"step {s}", {r["layer"]: float(r["grad_norm"]) for r in rows if r.get("step") == s})
                    for s in picked]


def gradient_flow(report: dict):
    """Gradient norm per named layer, one panel per model (input at top); None when no rows.
    A panel whose gradients are all exactly zero says so in words instead of plotting points."""
    models = [(name, *_flow_series(m.get("gradient_flow") or [])) for name, m in report.get("models", {}).items()]
    models = [m for m in models if m[1]]
    if not models:
        return None
    longest = max(len(layers) for _, layers, _ in models)
    fig, axes = plt.subplots(1, len(models), figsize=(max(6.0, 4.6 * len(models)), max(3.2, 1.4 + 0.24 * longest)),
                             squeeze=False)
    for ax, (name, layers, series) in zip(axes[0], models):
        y = {layer: i for i, layer in enumerate(layers)}
        values = [v for _, norms in series for v in norms.values()]
        positive = [v for v in values if v > 0 and math.isfinite(v)]
        ax.set_yticks(list(y.values()), layers, fontsize=7)
        ax.invert_yaxis()  # input layer at the top, output at the bottom
        ax.set_title(name, fontsize=9)
        if not positive:  # nothing to place on a log axis: say what was measured
            steps = " and ".join(label for label, _ in series)
            ax.text(0.5, 0.5, f"every layer's gradient norm is exactly 0\n({steps}): no gradient reaches the weights",
                    transform=ax.transAxes, ha="center", va="center", fontsize=9, color="tab:red",
                    bbox=dict(boxstyle="round", fc="white", ec="tab:red"))
            ax.set_xticks([])
            continue
        # Dots, not bars: a bar's length on a log axis depends on where the axis starts. Exact
        # zeros (e.g. convs behind a zero-init BN gain) sit at the left edge as red crosses,
        # instead of stretching the axis over 30 decades.
        floor = min(positive) / 10
        for (label, norms), marker in zip(series, ("o", "s")):
            shown = [(v, y[k]) for k, v in norms.items() if v > 0 and math.isfinite(v)]
            ax.plot([v for v, _ in shown], [i for _, i in shown], ls="none", marker=marker, ms=5, mfc="none"
                    if marker == "s" else None, label=label)
        zeros = sorted({y[k] for _, norms in series for k, v in norms.items() if v <= 0})
        if zeros:
            ax.plot([floor] * len(zeros), zeros, ls="none", marker="x", color="tab:red", ms=7,
                    label="exactly zero (drawn at the left edge)")
        ax.legend(fontsize=7, loc="best")
        ax.set_xscale("log")
        if max(positive) / floor < 1e3:  # a narrow range: label 0.2, 0.5, 1, 2 ...
            ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels (3x10^-1, 4x10^-1 ...) overlap
        ax.grid(alpha=0.25)
        ax.set(xlabel="gradient norm")
    fig.suptitle("Gradient flow per layer (input at top), at the last sampled step of the run", fontsize=10)
    fig.tight_layout()
    return fig


def fit_curves(report: dict):
    """Loss on the fixed batch for the base run and each one-change fit, one panel per model; a
    fit that leaves the axis (diverged, or a non-finite loss) is marked at the step it left.
    None if no fit was run."""
    models = []
    for name, m in report.get("models", {}).items():
        runs = [r for r in (m.get("fit") or []) if isinstance(r, dict) and r.get("losses")]
        if runs:
            models.append((name, runs))
    if not models:
        return None
    ln_c = report["dataset"]["ln_num_classes"]
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.6), squeeze=False)
    for ax, (name, runs) in zip(axes[0], models):
        # Up to 2 ln C, or every fit's starting loss (raw pixels start far above ln C) up to 10 ln C.
        starts = [r["losses"][0] for r in runs if isinstance(r["losses"][0], (int, float)) and math.isfinite(r["losses"][0])]
        top = min(10 * ln_c, max([2 * ln_c] + [1.1 * v for v in starts]))
        left = 0  # fits that left the axis so far: their marks stack above the top edge
        for run in runs:
            lr = run.get("lr")
            losses = [v if isinstance(v, (int, float)) and math.isfinite(v) else float("nan") for v in run["losses"]]
            out = None
            if run.get("diverged") or run.get("nonfinite"):
                # where it leaves the axis: the first loss above the top, or the step after the last
                # finite one (a non-finite loss), or its last step
                out = next((k for k, v in enumerate(losses) if v > top), None)
                out = out if out is not None else len(losses) if run.get("nonfinite") else len(losses) - 1
            label = f"{run.get('name', '?')}" + (f" (lr {lr:g})" if isinstance(lr, (int, float)) else "")
            shown = losses if out is None else losses[:out + 1]
            line, = ax.plot(range(1, len(shown) + 1), [min(v, top * 1.5) for v in shown], label=label
                            + ("" if out is None else f": diverged at step {out + 1}"))
            if out is not None:  # stacked above the edge, so that fits leaving at the same step stay apart
                ax.plot([out + 1], [1 + 0.045 * left], transform=ax.get_xaxis_transform(), marker="X", ms=8,
                        color=line.get_color(), ls="none", clip_on=False, zorder=5)
                left += 1
        ax.axhline(ln_c, color="gray", ls=":", label=f"ln C = {ln_c:.2f}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_title(f"{name}: fixed batch (X: where a fit diverged)", fontsize=9, pad=8 + 5 * left)
        ax.set(xlabel="step", ylabel="loss", ylim=(0, top))
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def sample_grid(data, n: int = 16, seed: int = 0):
    """`n` train images with their class names (what the model is asked to learn); None for data
    that is not a loaded Tiny ImageNet-style `Data` (e.g. a user's own datasets)."""
    import torch

    if not all(hasattr(data, k) for k in ("train_images", "train_targets", "class_names")):
        return None

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


def _curves(ax, histories: dict, metric: str, seed_markers: bool) -> None:
    n = 1
    cmap = plt.get_cmap("tab20" if len(histories) > 10 else "tab10")
    for i, (name, rows) in enumerate(histories.items()):
        rows = [r for r in rows if metric in r]
        n = max([n] + [r["epoch"] for r in rows])
        ax.plot([r["epoch"] for r in rows], [r[metric] for r in rows], color=cmap(i % cmap.N),
                marker="o" if len(rows) <= 10 else None, ms=3, label=name)
    last = draw_seed_markers(ax, n) if seed_markers and metric == "val_acc" else 0
    _epoch_axis(ax, max(n, last))
    ax.set(xlabel="epoch", ylabel=_YLABEL.get(metric, metric))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the axes, not over the curves


_YLABEL = {"val_acc": "val top-1 (%)", "val_top5": "val top-5 (%)", "train_loss": "train loss"}


def history_curves(histories: dict, metric: str = "val_acc", seed_markers: bool = False, title: str | None = None):
    """Curves of `metric` for several runs ({name: history rows}); with `seed_markers` (val_acc on
    the 200-class data only) the seed's thresholds near the plotted epochs."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    _curves(ax, histories, metric, seed_markers)
    ax.set_title(title or f"{_YLABEL.get(metric, metric)} per epoch")
    fig.tight_layout()
    return fig


def history_panels(panels: dict, metric: str = "val_acc", seed_markers=()):
    """One panel per group ({panel title: {run name: history rows}}), stacked: runs on different
    data (e.g. 500 vs 100 train images per class) are not comparable, so they get their own axes.
    `seed_markers`: the titles of the panels on the 200-class data (or True for all)."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.6 * len(panels)), squeeze=False)
    for ax, (title, histories) in zip(axes[:, 0], panels.items()):
        _curves(ax, histories, metric, seed_markers is True or title in seed_markers)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
