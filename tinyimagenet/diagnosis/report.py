"""The diagnosis report: one model's entry built from its evidence (report_entry, where the verdict
is decided), as text (terminal and notebook) and as strict JSON.

JSON shape (accuracies in percent, causes ranked, empty when nothing was found):
    {"dataset": {...}, "models": {"BaselineCNN": {"config": {...}, "checks": [{"name", "status", "detail"}],
     "epochs": [{"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "probe_acc"}],
     "verdict": "PASS|FAIL|INCONCLUSIVE", "passed": bool, "learning": "learning|stuck|undecided|diverged|not trained",
     "causes": [{"id", "score", "evidence": [...], "where": [...]}], "suggestions": [...],
     "slows": [{"id", "change", "gain", "ci": [low, high], "p_value", "base_correct", "correct", "n", "text"}],
     "headroom": {"ran": bool, "why": str, "screen": [...], "cost_s": float},
     "fit": [...], "gradient_flow": [...], "seconds": float,
     "controls": [{"cause", "change", "val_acc", "confirmed", "test", "epochs", "nonfinite"}],
     "data": {"train_images", "val_images"}}}}   (user data: the images the diagnosis read, probe included in train)
"config" says what was run: the recipe's optimizer, lr and schedule (or the user's optimizer as
built), batch size, "normalize"/"augment" (the repo's images only; a user's arrive "as given").
"slows" are the headroom screen's findings (headroom.py): not causes, the verdict is unchanged.
For a model given by file, the name is the class or factory name.
"""
from __future__ import annotations

import dataclasses
import math

from .headroom import verdict_suffix
from .stats import ALPHA
from .verdict import Evidence, decide, rank_causes, suggestions_for


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


def report_entry(ev: Evidence, config: dict, fit: list, seconds: float) -> dict:
    """The report entry (shape: report.py) from the evidence; the verdict is decided here, once."""
    found = rank_causes(ev)
    v = decide(ev, found)
    run = ev.run
    last = run.grad_rows[-1]["step"] if run is not None and run.grad_rows else None
    return dict(
        config=config, checks=[c.to_json() for c in ev.checks.values()], fit=fit,
        learning=ev.status, verdict=v.verdict, passed=v.verdict == "PASS", reasons=ev.reasons + v.reasons,
        epochs=[{k: row[k] for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "probe_acc")}
                for row in (run.history if run else [])],
        gradient_flow=[r for r in run.grad_rows if r["step"] == last] if last is not None else [],
        significance={"val": dataclasses.asdict(ev.val_test) if ev.val_test else None,
                      "probe": dataclasses.asdict(ev.probe_test) if ev.probe_test else None,
                      "probe_vs_val": dataclasses.asdict(ev.gap_test) if ev.gap_test else None},
        causes=[c.to_json() for c in v.causes], suggestions=suggestions_for(v.causes, ev),
        controls=[{"cause": c.cause, "change": c.change.describe(), "val_acc": c.acc, "confirmed": c.confirms,
                   "confirmed_by": c.criterion, "extended": c.extended,
                   "test": dataclasses.asdict(c.test),
                   "epochs": [{k: r[k] for k in ("epoch", "train_loss", "val_acc")} for r in c.result.history],
                   "nonfinite": list(c.result.nonfinite) if c.result.nonfinite else None}
                  for c in ev.controls],
        nonfinite=list(run.nonfinite) if run and run.nonfinite else None,
        seconds=seconds)


def format_model(name: str, m: dict) -> list[str]:
    slows = m.get("slows") or []
    lines = [f"{name}: {m['verdict']} ({m['learning']}{verdict_suffix(slows)}; {m['seconds']:.0f} s)"]
    lines += [f"  - {r}" for r in m["reasons"]]
    if (m.get("headroom") or {}).get("ran"):  # findings are not faults: what a one-change rerun bought
        lines.append(f"  headroom screen ({m['headroom']['why']}): " + (
            f"{len(slows)} change(s) raised val top-1 significantly (one-sided Fisher p < {ALPHA:g}); "
            "not faults, the verdict is unchanged" if slows else "no change raised val top-1 significantly"))
        lines += [f"  slows learning {rank}: {f['text']}" for rank, f in enumerate(slows, 1)]
    for c in m["checks"]:
        if c["status"] in ("warn", "fail", "note"):  # notes: how the user's data and model were read
            lines.append(f"  [{c['status']:4}] {c['name']}: {c['detail']}")
    for rank, (c, s) in enumerate(zip(m["causes"], m["suggestions"]), 1):
        lines.append(f"  cause {rank}: {c['id']} (evidence score {c['score']:.2f})")
        if c.get("where"):
            lines.append(f"      where: {', '.join(c['where'])}")
        lines += [f"      evidence: {e}" for e in c["evidence"]]
        lines.append(f"      suggestion: {s}")
    for ctl in m.get("controls") or []:
        accs = " ".join(f"{e['val_acc']:.2f}" for e in ctl["epochs"])
        lines.append(f"  control ({ctl['cause']}: {ctl['change']}): val top-1 % per epoch {accs}")
    return lines


def format_report(report: dict) -> str:
    ds = report["dataset"]
    lines = []
    if ds:
        lines.append(f"Data: {ds.get('root', 'user data')}  ({ds['num_classes']} classes, {ds['train_images']} "
                     f"train, {ds['val_images']} val images; ln C = {ds['ln_num_classes']:.3f})")
    rows = []
    for name, m in report["models"].items():
        cfg = m["config"]
        accs = " ".join(f"{e['val_acc']:.2f}" for e in m["epochs"]) or "-"
        top = m["causes"][0]["id"] if m["causes"] else (f"slowed by {m['slows'][0]['id']}" if m.get("slows") else "-")
        recipe = "own optimizer" if cfg.get("own_optimizer") else f"{cfg['recipe']} lr={cfg['lr']:g}"
        rows.append((name, cfg.get("dropout", "as given"), recipe, accs,
                     m["verdict"], m["learning"], top))
    header = ("model", "dropout", "recipe", "val top-1 % per epoch", "verdict", "learning", "top cause")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines += ["", "  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    for name, m in report["models"].items():
        lines += [""] + format_model(name, m)
    return "\n".join(lines)
