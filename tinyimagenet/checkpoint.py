"""Atomic checkpoint and history files: a crash or kill -9 mid-write never corrupts what was there.

A checkpoint is a plain dict (model/optimizer/scheduler state dicts, the config as a dict, the
history so far, the position in training and, mid-epoch, dropout's RNG state as CPU byte tensors,
see runtime.rng_state) of tensors and Python primitives only, so it loads with
`torch.load(path, weights_only=True)` and rebuilds the run on its own (`config` says how).
`check_same_run` refuses a --resume whose options would make a different run.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import torch

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "seconds")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}: train first, or drop --resume.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a foreign or damaged file: say which one
        raise RuntimeError(f"Cannot load checkpoint {path}: {err}. Delete it to start over.") from err


def write_history_csv(history: list[dict], path: str | os.PathLike) -> None:
    buf = io.StringIO()
    extra = sorted({k for row in history for k in row} - set(HISTORY_FIELDS))
    writer = csv.DictWriter(buf, fieldnames=list(HISTORY_FIELDS) + extra, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def read_history_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


def write_json(obj, path: str | os.PathLike) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


# Config fields a resumed run may change; any other difference would silently make a different run.
# sync_every only says how often the host checks the loss, download where missing data may come
# from: the weights depend on neither (and checkpoints older than either field lack it).
RESUMABLE_CHANGES = {"epochs", "resume", "progress", "out", "device", "compile", "data_dir", "archive",
                     "download", "sync_every"}


def check_same_run(saved: dict, now: dict, path) -> None:
    """Refuse to resume `path` (saved config dict) under a config (`now`) that makes another run."""
    diff = {k: (saved.get(k), v) for k, v in now.items() if k not in RESUMABLE_CHANGES and saved.get(k) != v}
    if diff:
        changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"--resume: {path} was written by a different configuration ({changes}). "
                         "Use another --out, or the same options.")
    # --epochs may change on resume, but a cosine schedule's horizon is --epochs unless
    # --schedule-epochs pins it: the continued run would follow a schedule no single run follows.
    saved_horizon = saved.get("schedule_epochs") or saved.get("epochs")
    if now.get("schedule") == "cosine" and (now.get("schedule_epochs") or now.get("epochs")) != saved_horizon:
        raise ValueError(f"--resume: {path} follows a cosine schedule over {saved_horizon} epochs; "
                         f"resuming with --epochs {now.get('epochs')} would change it mid-run. Resume with "
                         f"--epochs {saved_horizon}, or start runs you mean to extend with "
                         f"--schedule-epochs N (the horizon) and --epochs M <= N.")
