"""Pre-flight measurements that need no training: the data, the model at init, one backward pass.

Each returns `Check`s (name, pass|warn|fail, a readable detail, and the raw numbers in `data`)
that the verdict weighs as evidence. Nothing here trains; see `interventions.py` for that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import read_classes, read_val_annotations
from ..loaders import Data, Normalizer
from ..registry import audit_dropout, keep_probability

# Guidelines the audit compares against (the seed's lessons): conv stages/blocks 0-0.1, one
# classifier dropout of 0.2-0.5. A violation is a warning only; the interventions decide.
CONV_DROPOUT_MAX = 0.1
CLASSIFIER_DROPOUT_RANGE = (0.2, 0.5)


@dataclass
class Check:
    name: str                                  # e.g. "dropout_audit"
    status: str                                # "pass", "warn" or "fail"
    detail: str                                # one readable sentence with the numbers
    data: dict = field(default_factory=dict)   # the measurements themselves

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail}


# ------------------------------------------------------------------------------------- data
def data_checks(data: Data, normalize: bool = True) -> list[Check]:
    """Labels in range, class counts, train/val mapping, val labels vs the annotation file, inputs."""
    c = data.num_classes
    checks = []
    for split, t in (("train", data.train_targets), ("val", data.val_targets)):
        lo, hi = int(t.min()), int(t.max())
        counts = torch.bincount(t.clamp(0, c - 1), minlength=c)
        ok = lo >= 0 and hi < c
        checks.append(Check(f"{split}_labels", "pass" if ok and int(counts.min()) > 0 else "fail",
                            f"{split}: {len(t)} images, labels {lo}..{hi} of {c} classes, "
                            f"{int(counts.min())}-{int(counts.max())} per class, "
                            f"{int((counts > 0).sum())} classes present",
                            {"min_label": lo, "max_label": hi, "min_count": int(counts.min()),
                             "max_count": int(counts.max()), "classes_present": int((counts > 0).sum())}))
    checks.append(_mapping_check(data))
    checks.append(_val_annotation_check(data))
    checks.append(input_stats_check(data, normalize))
    return checks


def _mapping_check(data: Data) -> Check:
    root = Path(data.root)
    wnids = read_classes(root)
    folders = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    val_wnids = sorted({w for _, w in read_val_annotations(root)})
    problems = []
    if list(data.classes) != wnids:
        problems.append("label order is not the sorted wnids.txt")
    if set(folders) != set(wnids):
        problems.append(f"train folders differ from wnids.txt ({len(set(folders) ^ set(wnids))} wnids)")
    if not set(val_wnids) <= set(wnids):
        problems.append(f"{len(set(val_wnids) - set(wnids))} val wnids are not in wnids.txt")
    return Check("class_mapping", "fail" if problems else "pass",
                 "; ".join(problems) or f"train and val share the {len(wnids)} sorted wnids",
                 {"problems": problems})


def _val_annotation_check(data: Data) -> Check:
    """The loaded val labels must be exactly what val_annotations.txt says, and not collapsed."""
    truth = dict(read_val_annotations(Path(data.root)))
    idx = {w: i for i, w in enumerate(data.classes)}
    expected = torch.tensor([idx.get(truth.get(f, ""), -1) for f in data.val_files])
    mismatches = int((expected != data.val_targets).sum())
    counts = torch.bincount(data.val_targets.clamp(min=0), minlength=data.num_classes)
    largest_share = float(counts.max()) / max(1, len(data.val_targets))
    collapsed = largest_share > 5.0 / data.num_classes and largest_share > 0.2
    status = "fail" if mismatches or collapsed else "pass"
    detail = (f"{mismatches} of {len(expected)} val labels differ from val_annotations.txt; "
              f"largest class holds {100 * largest_share:.1f}% of val"
              + (" (labels collapsed: the val-folder trap?)" if collapsed else ""))
    return Check("val_annotations", status, detail, {"mismatches": mismatches, "largest_share": largest_share})


def input_stats_check(data: Data, normalize: bool = True, n: int = 512) -> Check:
    """Per-channel mean/std of what the model actually receives (the training pipeline's output)."""
    images = data.train_images[: min(n, len(data.train_images))]
    x = Normalizer("cpu", enabled=normalize)(images)
    mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    ok = bool((mean.abs() < 0.5).all() and (std > 0.5).all() and (std < 2.0).all())
    return Check("input_stats", "pass" if ok else "fail",
                 f"model inputs: mean {[round(v, 2) for v in mean.tolist()]}, std "
                 f"{[round(v, 2) for v in std.tolist()]} per channel (want ~0 and ~1)",
                 {"mean": mean.tolist(), "std": std.tolist()})


# ------------------------------------------------------------------------------------ model
def dropout_audit_check(model: nn.Module) -> Check:
    sites = audit_dropout(model)
    conv = [s for s in sites if s.place != "classifier"]
    head = [s for s in sites if s.place == "classifier"]
    problems = [f"{s.place} dropout {s.rate} at {s.name} (guideline 0-{CONV_DROPOUT_MAX})"
                for s in conv if s.rate > CONV_DROPOUT_MAX]
    lo, hi = CLASSIFIER_DROPOUT_RANGE
    problems += [f"classifier dropout {s.rate} at {s.name} (guideline {lo}-{hi})"
                 for s in head if not lo <= s.rate <= hi]
    if len(head) > 1:
        problems.append(f"{len(head)} stacked classifier dropouts (guideline: one)")
    keep = keep_probability(sites)
    listing = ", ".join(f"{s.name}={s.rate}" for s in sites) or "none"
    return Check("dropout_audit", "warn" if problems else "pass",
                 f"{len(sites)} dropout layers ({listing}); keep-probability along the path "
                 f"{keep:.3f}" + (f"; {len(problems)} outside guidelines" if problems else ""),
                 {"sites": [vars(s) for s in sites], "keep_probability": keep,
                  "keep_features": keep_probability(sites, "conv_stage") * keep_probability(sites, "block"),
                  "keep_classifier": keep_probability(sites, "classifier"), "violations": problems})


def init_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[Check]:
    """Output shape and the loss at initialization against ln(C) (what uniform guessing scores)."""
    model.eval()
    with torch.no_grad():
        logits = model(x).float()
    shape_ok = tuple(logits.shape) == (len(x), num_classes)
    loss = float(F.cross_entropy(logits, y))
    ln_c = math.log(num_classes)
    if not math.isfinite(loss):
        status = "fail"
    else:
        status = "pass" if abs(loss - ln_c) < max(1.0, 0.25 * ln_c) else "warn"
    return [Check("output_shape", "pass" if shape_ok else "fail",
                  f"logits {tuple(logits.shape)}, expected {(len(x), num_classes)}"),
            Check("init_loss", status, f"loss at init {loss:.3f} vs ln({num_classes}) = {ln_c:.3f}",
                  {"loss": loss, "ln_c": ln_c})]


def _zero_init_branch_weights(model: nn.Module) -> set[str]:
    """Names of conv weights inside residual branches whose last BatchNorm gain is all zero.

    init_weights zeroes each BasicBlock's bn2 gain so the block starts as its skip path (Goyal et
    al. 2017); until the first update every weight in that branch gets exactly zero gradient.
    Measured: ResidualCNN and BestModel then showed "smallest/largest gradient norm 0.0e+00", a
    vanishing-gradient warning about a deliberate choice. The branch convs are the block's direct
    Conv2d children (a projection shortcut is a Sequential of its own and does get gradient).
    """
    names = set()
    for block_name, block in model.named_modules():
        children = dict(block.named_children())
        if any(isinstance(c, nn.BatchNorm2d) and not bool(c.weight.detach().any()) for c in children.values()):
            prefix = f"{block_name}." if block_name else ""
            names |= {f"{prefix}{n}.weight" for n, c in children.items() if isinstance(c, nn.Conv2d)}
    return names


def gradient_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[list[Check], list[dict]]:
    """One train-mode backward: per-layer gradient norms, grad/weight ratios, dead ReLU channels.

    Returns the checks and the per-layer rows (for the gradient-flow plot). Thresholds are wide on
    purpose (orders of magnitude): they flag broken nets, not merely unusual ones.
    """
    model.train()
    model.zero_grad(set_to_none=True)
    dead: dict[str, float] = {}

    def hook(name):
        def fn(_, __, out):
            alive = (out.detach() > 0).flatten(2).any(2).any(0) if out.ndim == 4 else (out.detach() > 0).any(0)
            dead[name] = 1.0 - float(alive.float().mean())
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    torch.manual_seed(0)
    try:
        F.cross_entropy(model(x).float(), y).backward()
    finally:
        for h in handles:
            h.remove()
    rows = []
    by_design = _zero_init_branch_weights(model)
    for name, p in model.named_parameters():
        if p.ndim > 1 and p.grad is not None:
            g, w = float(p.grad.norm()), float(p.detach().norm())
            rows.append({"layer": name, "grad_norm": g, "weight_norm": w, "ratio": g / (w + 1e-12)})
    model.zero_grad(set_to_none=True)
    grads = [r["grad_norm"] for r in rows]
    finite = all(math.isfinite(g) for g in grads)
    gated = [r["layer"] for r in rows if r["grad_norm"] == 0.0 and r["layer"] in by_design]
    live = [r["grad_norm"] for r in rows if r["layer"] not in gated]
    spread = (min(live) / max(live)) if finite and live and max(live) > 0 else 0.0
    note = (f"; {len(gated)} layers inside residual branches that start at zero (last BatchNorm gain 0, "
            "by design) get no gradient at step 0 and are left out") if gated else ""
    max_ratio = max((r["ratio"] for r in rows), default=0.0)
    checks = [
        Check("exploding_gradients", "fail" if not finite else "warn" if max_ratio > 100 else "pass",
              f"largest grad/weight ratio {max_ratio:.2e} ({'non-finite gradients' if not finite else 'finite'})",
              {"max_ratio": max_ratio, "finite": finite}),
        Check("vanishing_gradients", "warn" if finite and spread < 1e-5 else "pass",
              f"smallest/largest layer gradient norm {spread:.1e} (first layer "
              f"{grads[0] if grads else float('nan'):.2e}, last {grads[-1] if grads else float('nan'):.2e}){note}",
              {"spread": spread, "zero_init_branch_layers": gated}),
    ]
    worst = max(dead.items(), key=lambda kv: kv[1], default=("none", 0.0))
    checks.append(Check("dead_units", "warn" if worst[1] > 0.5 else "pass",
                        f"most dead ReLU layer {worst[0]}: {100 * worst[1]:.0f}% of channels never active on the batch",
                        {"dead_fraction": dead}))
    return checks, rows


# ------------------------------------------------------------------------- label signal (no model)
def _tiny_features(images: torch.Tensor, size: int = 8, chunk: int = 4096) -> torch.Tensor:
    """uint8 NHWC -> unit vectors of 8x8 average-pooled pixels minus each image's mean."""
    out = []
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].permute(0, 3, 1, 2).float()
        x = F.adaptive_avg_pool2d(x, size).flatten(1)
        out.append(F.normalize(x - x.mean(1, keepdim=True), dim=1))
    return torch.cat(out)


def label_signal_check(name: str, ref_images, ref_targets, query_images, query_targets,
                       num_classes: int) -> Check:
    """Do these labels carry signal? 1-nearest-neighbour on 8x8 pixels, no model involved.

    On the real subset this scores ~5% on held-out train images (chance 0.5%, p ~ 1e-30) and
    exactly chance once labels are shuffled, so it separates "labels are broken" from "the model
    has not learned yet" without any training.
    """
    from .stats import above_chance

    ref = _tiny_features(ref_images)
    hits = 0
    for i in range(0, len(query_images), 2048):
        q = _tiny_features(query_images[i:i + 2048])
        nearest = (q @ ref.T).argmax(1)
        hits += int((ref_targets[nearest] == query_targets[i:i + 2048]).sum())
    test = above_chance(100 * hits / max(1, len(query_targets)), len(query_targets), num_classes)
    status = "warn" if test.p_value >= 0.05 else "pass"
    signal = ("labels carry signal" if test.p_value < 0.01 else
              "no label signal detected" if test.p_value >= 0.05 else "inconclusive")
    return Check(name, status, f"1-NN on 8x8 pixels vs train labels: {test.describe()} ({signal})",
                 {"accuracy": test.accuracy, "n": test.n, "p_value": test.p_value})
