"""The diagnosis report as text (terminal and notebook) and as strict JSON.

JSON shape (accuracies in percent, causes ranked, empty when the model passed):
    {"dataset": {...}, "models": {"BaselineCNN": {"config": {...}, "checks": [{"name", "status", "detail"}],
     "epochs": [{"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "probe_acc"}],
     "passed": bool, "learning": "learning|slow|stuck|diverged", "causes": [{"id", "score", "evidence"}],
     "suggestions": [...], "fit": [...], "gradient_flow": [...], "control": {...} | null, ...}}}
"""
from __future__ import annotations

import math


def to_json(report: dict) -> dict:
    """A copy that `json.dumps(..., allow_nan=False)` accepts (non-finite numbers become null)."""
    def clean(v):
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return clean(report)


def format_report(report: dict) -> str:
    ds = report["dataset"]
    lines = [f"Data: {ds['root']}  ({ds['num_classes']} classes, {ds['train_images']} train, "
             f"{ds['val_images']} val images; ln C = {ds['ln_num_classes']:.3f})"]
    for c in ds["checks"]:
        lines.append(f"  [{c['status']:4}] {c['name']}: {c['detail']}")
    rows = []
    for name, m in report["models"].items():
        cfg = m["config"]
        accs = " ".join(f"{e['val_acc']:.2f}" for e in m["epochs"]) or "-"
        top = m["causes"][0]["id"] if m["causes"] else "-"
        rows.append((name, cfg["dropout"], f"{cfg['recipe']} lr={cfg['lr']:g}", accs,
                     "PASS" if m["passed"] else "FAIL", m["learning"], top))
    header = ("model", "dropout", "recipe", "val top-1 % per epoch", "verdict", "learning", "top cause")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines += ["", "  ".join(h.ljust(w) for h, w in zip(header, widths)),
              "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    for name, m in report["models"].items():
        lines += ["", f"{name}: {'PASS' if m['passed'] else 'FAIL'} ({m['learning']}; "
                      f"{m['seconds']:.0f} s)"]
        lines += [f"  - {r}" for r in m["reasons"]]
        for c in m["checks"]:
            if c["status"] != "pass":
                lines.append(f"  [{c['status']:4}] {c['name']}: {c['detail']}")
        for rank, (c, s) in enumerate(zip(m["causes"], m["suggestions"]), 1):
            lines.append(f"  cause {rank}: {c['id']} (evidence score {c['score']:.2f})")
            lines += [f"      evidence: {e}" for e in c["evidence"]]
            lines.append(f"      suggestion: {s}")
        if m.get("control"):
            ctl = m["control"]
            accs = " ".join(f"{e['val_acc']:.2f}" for e in ctl["epochs"])
            lines.append(f"  control ({ctl['change']}): val top-1 % per epoch {accs}")
    return "\n".join(lines)
