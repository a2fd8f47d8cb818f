"""Measurements that need no training: the data, the labels, the batches, the model at init.

Each returns a `Check` (name, pass|warn|fail|info, one readable sentence with the numbers, and the
raw numbers in `data`). A check never names a cause: its status only marks the line in the
report; the rules in causes.py/rules.py read the numbers in `data` and decide what is a cause. Nothing here trains or changes the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .probes import ForwardProbe
from . import thresholds as T
from .stats import ALPHA, chance_test, two_proportion_test


@dataclass
class Check:
    name: str                                  # e.g. "input_stats"
    status: str                                # "pass", "warn", "fail", "info" or "note" (shown: how input was read)
    detail: str                                # one readable sentence with the numbers
    data: dict = field(default_factory=dict)   # the measurements themselves

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail}


# ------------------------------------------------------------------------ the repo's label files
def annotation_check(root: str, classes: list, val_files: list, val_targets: torch.Tensor) -> Check | None:
    """The loaded val labels against val/val_annotations.txt (the repo's own data only)."""
    if not root:
        return None
    path = Path(root) / "val" / "val_annotations.txt"
    if not path.is_file():  # a rearranged val/<wnid>/images copy: the folders are the only labels
        return Check("val_annotations", "warn", f"{path} is absent: val labels come from the val/<wnid> folder "
                     "names, with nothing to cross-check them against", {"mismatches": 0, "n": len(val_targets)})
    from ..data import read_val_annotations

    truth = dict(read_val_annotations(Path(root)))
    idx = {w: i for i, w in enumerate(classes)}
    expected = torch.tensor([idx.get(truth.get(f, ""), -1) for f in val_files])
    mismatches = int((expected != val_targets).sum())
    return Check("val_annotations", "fail" if mismatches else "pass",
                 f"{mismatches} of {len(expected)} loaded val labels differ from {path}",
                 {"mismatches": mismatches, "n": len(expected)})


# ------------------------------------------------------------------- label signal, model-free
def _tiny_features(images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Images (N,H,W,3 uint8 or N,C,H,W float) -> unit vectors of 8x8 pooled pixels, mean removed."""
    out = []
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk]
        x = (x.permute(0, 3, 1, 2) if x.dtype == torch.uint8 else x).float()
        x = F.adaptive_avg_pool2d(x, 8).flatten(1)
        out.append(F.normalize(x - x.mean(1, keepdim=True), dim=1))
    return torch.cat(out)


def nearest_neighbours(ref_images, query_images, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Index in `ref_images` of each query's nearest neighbour on 8x8 pixels (cosine, mean removed).

    `exclude[i]`: the index in `ref_images` that query i must not match (itself: leave-one-out).
    """
    ref = _tiny_features(ref_images)  # on the images' device
    out = []
    for i in range(0, len(query_images), 2048):
        sims = _tiny_features(query_images[i:i + 2048]) @ ref.T
        if exclude is not None:
            rows = torch.arange(len(sims), device=sims.device)
            sims[rows, exclude[i:i + 2048].to(sims.device)] = -float("inf")
        out.append(sims.argmax(1))
    return torch.cat(out).cpu()


def nearest_neighbour_preds(ref_images, ref_targets, query_images, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """1-nearest-neighbour labels on 8x8 pixels: does a label predict its images, without a model?"""
    return ref_targets.cpu()[nearest_neighbours(ref_images, query_images, exclude)]


def label_signal(train_images, train_targets, val_images, val_targets, num_classes: int,
                 max_queries: int = T.LABEL_SIGNAL_QUERIES, seed: int = 0) -> Check:
    """1-NN accuracy within train (leave-one-out) and on val, each against chance, and val against train;
    and the leave-one-out hits with the given labels against the same neighbours under labels shuffled here.

    Leave-one-out over up to `max_queries` train images gives the train-label check thousands of
    queries instead of a small held-out slice. On the real subset 1-NN scores a few percent against
    0.5% chance; shuffled train labels give chance on both, misaligned val labels on val only.
    "Val below train" is a two-sample test of the difference, not one side significant and the
    other not (the false alarm that rule gave on 200 val images).

    "shuffled": the same queries and the same neighbours, with the train labels permuted by this
    check LABEL_SHUFFLES times (seeded). That arm is what "no signal" looks like on this very data
    (hub neighbours, class sizes and all), so the given labels are compared with it (Fisher, and
    the Newcombe interval of the difference) instead of with a multiple of chance.
    """
    n = len(train_targets)
    y = train_targets.cpu()
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n, generator=g)[:max_queries]
    nn_idx = nearest_neighbours(train_images, train_images[pick.to(train_images.device)], exclude=pick)
    train = chance_test(y[nn_idx], y[pick], num_classes)
    val = chance_test(nearest_neighbour_preds(train_images, train_targets, val_images), val_targets, num_classes)
    k_t, k_v = round(train.accuracy * train.n / 100), round(val.accuracy * val.n / 100)
    gap = two_proportion_test(k_v, val.n, k_t, train.n)  # is train (2) above val (1)?
    k_s = 0
    for _ in range(T.LABEL_SHUFFLES):
        z = y[torch.randperm(n, generator=g)]
        k_s += int((z[nn_idx] == z[pick]).sum())
    shuffled = two_proportion_test(k_s, T.LABEL_SHUFFLES * len(pick), k_t, len(pick))  # given labels above shuffled?
    status = "warn" if (not shuffled.significant) or gap.significant else "pass"
    return Check("label_signal", status,
                 f"1-NN on 8x8 pixels, train (leave-one-out): {train.describe()}; val: {val.describe()}; "
                 f"{gap.describe('val', 'train')}; leave-one-out hits, {shuffled.describe('labels shuffled by the check', 'given labels')}",
                 {"train": train, "val": val, "gap": gap, "shuffled": shuffled})


# --------------------------------------------------------------------------- inputs and batches
def input_stats(x: torch.Tensor) -> Check:
    """Per-channel mean and std of the batches the model actually receives."""
    x = x.float()
    dims = (0, 2, 3) if x.ndim == 4 else 0
    mean, std = x.mean(dims), x.std(dims)
    off = bool((mean.abs() > T.INPUT_MEAN_MAX).any() or (std < T.INPUT_STD_MIN).any() or (std > T.INPUT_STD_MAX).any())
    return Check("input_stats", "warn" if off else "pass",
                 f"model inputs: mean {[round(v, 2) for v in mean.tolist()]}, std {[round(v, 2) for v in std.tolist()]} "
                 "per channel (standardized: ~0 and ~1)", {"mean": mean.tolist(), "std": std.tolist(), "off": off})


def batch_label_entropy(loader, num_classes: int, batches: int = 20) -> Check:
    """Label entropy within training batches, relative to what shuffled batches of that size get.

    A DataLoader with shuffle=False over class-sorted folders gives one class per batch: entropy
    0. Shuffled batches of B images from C balanced classes have entropy near log(min(B, C)).
    """
    loader.set_epoch(0)
    ratios = []
    for k, (_, y) in enumerate(loader):
        if k >= batches:
            break
        counts = torch.bincount(y.cpu(), minlength=num_classes).float()
        p = counts[counts > 0] / len(y)
        ideal = math.log(min(len(y), num_classes))
        ratios.append(float(-(p * p.log()).sum()) / ideal if ideal > 0 else 1.0)
    ratio = sum(ratios) / max(1, len(ratios))
    return Check("batch_label_entropy", "warn" if ratio < T.ENTROPY_RATIO_MIN else "pass",
                 f"label entropy within the first {len(ratios)} training batches: {100 * ratio:.0f}% of what "
                 "shuffled batches of that size reach", {"ratio": ratio})


# ------------------------------------------------------------------------------ the model at init
def output_kind(model, x: torch.Tensor) -> Check:
    """Logits, probabilities (non-negative, rows sum to 1) or log-probabilities (harmless under CE)."""
    model.eval()
    with torch.no_grad():
        out = model(x).float()
    row_sum_err = float((out.sum(1) - 1).abs().max())
    log_sum_err = float(out.logsumexp(1).abs().max())
    if bool((out >= 0).all()) and row_sum_err < T.PROB_ROW_TOL:
        kind, status = "probabilities", "fail"
    elif log_sum_err < T.PROB_ROW_TOL:
        kind, status = "log-probabilities", "pass"
    else:
        kind, status = "logits", "pass"
    return Check("output_kind", status,
                 f"outputs are {kind} (min {float(out.min()):.3g}; rows sum to 1 within {row_sum_err:.1e}; "
                 f"logsumexp 0 within {log_sum_err:.1e})",
                 {"kind": kind, "row_sum_err": row_sum_err, "shape": list(out.shape)})


def eval_determinism(model, x: torch.Tensor) -> Check:
    """Two eval-mode passes over the same batch must agree; name the dropout that still runs."""
    model.eval()
    with torch.no_grad(), ForwardProbe(model, record=True) as probe:
        torch.manual_seed(1)
        a = model(x).float()
        torch.manual_seed(2)
        b = model(x).float()
    diff = float((a - b).abs().max())
    scale = float(a.abs().max()) + 1e-12
    stochastic = diff > T.EVAL_DIFF_REL * scale
    sites = ", ".join(f"{s} p={p:g}" for s, p in probe.eval_dropout_sites.items()) or "none found"
    return Check("eval_determinism", "fail" if stochastic else "pass",
                 f"two eval-mode passes over one batch differ by up to {diff:.3g} ({100 * diff / scale:.1f}% of "
                 f"the largest output); dropout active in eval mode: {sites}",
                 {"max_diff": diff, "sites": dict(probe.eval_dropout_sites), "stochastic": stochastic})


def dropout_sites(model, x: torch.Tensor) -> Check:
    """Every dropout that runs in a train-mode forward, module or functional, with its rate."""
    model.train()
    with torch.no_grad(), ForwardProbe(model, record=True) as probe:
        torch.manual_seed(0)
        model(x)
    sites = probe.dropout_sites
    keep = math.prod(1 - p for p in sites.values())
    listing = ", ".join(f"{s} p={p:g}" for s, p in sites.items()) or "none"
    return Check("dropout_sites", "info", f"{len(sites)} dropout calls per forward ({listing}); "
                 f"product of keep-probabilities {keep:.3f}", {"sites": dict(sites), "keep": keep})


def init_loss(model, x, y, loss_fn, num_classes: int) -> Check:
    model.eval()
    with torch.no_grad():
        loss = float(loss_fn(model(x).float(), y))
    ln_c = math.log(num_classes)
    ok = math.isfinite(loss) and abs(loss - ln_c) < max(1.0, T.INIT_LOSS_TOL * ln_c)
    return Check("init_loss", "pass" if ok else "warn", f"loss at init {loss:.3f} vs ln({num_classes}) = {ln_c:.3f}",
                 {"loss": loss, "ln_c": ln_c, "sound": ok})


# ------------------------------------------------------------------------------ the optimizer
def weight_decay(opt) -> Check:
    """The largest weight decay over the optimizer's parameter groups (info: the fit tests it)."""
    wd = max((float(g.get("weight_decay", 0.0) or 0.0) for g in opt.param_groups), default=0.0)
    return Check("weight_decay", "info", f"largest weight decay in the optimizer: {wd:g} "
                 f"({type(opt).__name__})", {"max": wd})


__all__ = ["ALPHA", "Check", "annotation_check", "label_signal", "input_stats", "batch_label_entropy",
           "output_kind", "eval_determinism", "dropout_sites", "init_loss", "nearest_neighbour_preds", "weight_decay"]
