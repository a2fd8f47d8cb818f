"""Diagnose a model: pre-flight measurements, one-change experiments, a short training run, controls.

    from tinyimagenet.diagnosis import diagnose, DiagnosisConfig
    result = diagnose(MyNet, train=my_train_ds, val=my_val_ds, config=DiagnosisConfig(epochs=3))
    result = diagnose("BaselineCNN", config=DiagnosisConfig(dropout="legacy"))   # registry shorthand
    report = run_diagnosis(DiagnosisConfig(models=["BaselineCNN"]))            # several, one report

Per model: labels and batches are measured before anything trains (bad labels stop here); the
model at init (outputs, eval determinism, dropout, loss vs ln C); a fixed batch is fitted as given
and, when that fails, once per change (dropout off, lr x10.., lr /10.., inputs standardized, log
of probability outputs, weight decay 0, all parameters trainable); `epochs` of training with a
held-out slice of train (the probe) and val predicted after each epoch; then the verdict, and
for the top causes whose fix can be applied from outside the code, the same training with that
fix: the control. The user's objects are never mutated and the global RNG state is restored.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..loaders import Data, Normalizer, load_data
from ..registry import MODELS, build_model
from ..runtime import pick_device
from ..train import RECIPE_LR_BY_MODEL, RECIPES, TrainConfig, make_optimizer, make_scheduler
from . import headroom, measure
from .experiments import Change, fit_batch, train_short
from .stats import above_chance, chance_test, two_proportion_test
from .subject import (BadLabels, Subject, check_labels, default_loss, model_factory, optimizer_factory,
                      repo_data_subject, user_data_subject)
from .verdict import Evidence, judge_learning, rank_causes, suggestions_for

ALL_MODELS = ("BaselineCNN", "DeeperWiderCNN", "CNNWithSEAttention", "ResidualCNN", "BestModel")
FULL_TRAIN_PER_CLASS = 500  # the official train split; "stuck with no cause" fails only there


@dataclass
class DiagnosisConfig:
    models: list = field(default_factory=lambda: list(ALL_MODELS))  # registry names (run_diagnosis)
    epochs: int = 5                       # epochs of the health-check training
    recipe: str = "seed"                  # "seed" (where the failure was reported) or "strong"
    dropout: str = "fixed"                # registry models: "fixed" or "legacy" (the seed's dropout)
    lr: float | None = None               # override the recipe's lr (recipe optimizer only)
    batch_size: int | None = None         # override the recipe's batch size (a user DataLoader keeps its own)
    schedule_epochs: int = 50             # lr schedule horizon: the check is the first epochs of a 50-epoch run
    train_per_class: int | None = None    # repo data: train images per class (None: all)
    val_per_class: int | None = None      # repo data: val images per class (None: all 50)
    probe_per_class: int | None = None    # held-out train images per class (None: 5% of train, >= 1)
    data_dir: str | None = None           # dataset folder ($TINYIMAGENET_ROOT or ./data when None)
    archive: str | None = None            # local path / URL of the archive to extract
    download: bool = False                # fetch the archive into data_dir when absent
    synthetic: bool = False               # generated offline data
    normalize: bool = True                # repo data: False feeds [0,1] inputs (to reproduce that fault)
    device: str = "auto"                  # "auto", "cpu", "cuda": decided once, passed to everything
    amp: bool = True                      # bf16 autocast on CUDA
    seed: int = 0                         # seeds the model, the batches and the experiments
    fit_batch: int = 8                    # images in the fixed batch of the fit experiments
    fit_steps: int = 50                   # max optimizer steps of each fit
    control: bool = True                  # rerun training with a fix for the top causes
    max_controls: int = 2                 # control runs at most per model (each costs one training run)
    headroom: bool | None = None          # headroom screen of a run that learns; None: only below the seed's bar
    headroom_budget: int = 2              # headroom: full control runs at most (after 1-epoch screens)
    headroom_screen_epochs: int = 1       # headroom: epochs of each change's screen run
    preflight_only: bool = False          # stop before training
    progress: bool = True                 # print the plan and per-epoch lines


def _recipe(cfg: DiagnosisConfig, name: str) -> TrainConfig:
    """The recipe as a TrainConfig (its optimizer, lr, weight decay, schedule), for the model `name`."""
    recipe = dict(RECIPES[cfg.recipe])
    recipe["lr"] = RECIPE_LR_BY_MODEL.get(cfg.recipe, {}).get(name, recipe["lr"])
    if cfg.lr is not None:
        recipe["lr"] = cfg.lr
    if cfg.batch_size is not None:
        recipe["batch_size"] = cfg.batch_size
    return TrainConfig(model=name if name in MODELS else "BaselineCNN", recipe=cfg.recipe, epochs=cfg.epochs,
                       schedule_epochs=max(cfg.epochs, cfg.schedule_epochs), device=cfg.device,
                       seed=cfg.seed, **recipe)


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda, random.getstate(), np.random.get_state()


def _restore_rng(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])
    random.setstate(state[2])
    np.random.set_state(state[3])


def diagnose(model, train=None, val=None, loss_fn=None, optimizer=None, *, num_classes: int | None = None,
             config: DiagnosisConfig | None = None, data: Data | None = None, name: str | None = None) -> dict:
    """Diagnose one model; returns its report entry (see report.py). The process is left as found."""
    cfg = config or DiagnosisConfig()
    state = _rng_state()
    try:
        return _diagnose(model, train, val, loss_fn, optimizer, num_classes, cfg, data, name)
    finally:
        _restore_rng(state)


def _log(cfg, text):
    if cfg.progress:
        print(text, flush=True)


def _diagnose(model, train, val, loss_fn, optimizer, num_classes, cfg, data, name) -> dict:
    t0 = time.perf_counter()
    device = pick_device(cfg.device)  # decided once; everything below gets it passed
    reg_name = model if isinstance(model, str) else None
    tc = _recipe(cfg, reg_name or "")
    result = {"config": {**dataclasses.asdict(tc), "device": str(device), "fit_batch": cfg.fit_batch,
                         "fit_steps": cfg.fit_steps, "user_model": reg_name is None,
                         "user_data": train is not None, "dropout": cfg.dropout if reg_name else "as given"},
              "checks": [], "fit": [], "epochs": [], "gradient_flow": [], "control": None, "controls": [],
              "slows": [], "headroom": {"ran": False, "why": "not trained"}}
    checks = {}
    if train is not None:
        if val is None or num_classes is None:
            raise ValueError("diagnose(train=...) needs val= and num_classes= too")
        try:
            fields = user_data_subject(train, val, num_classes, probe_per_class=cfg.probe_per_class,
                                       batch_size=tc.batch_size, seed=cfg.seed, device=device)
        except BadLabels as err:  # reported before any training: nothing else can be trusted
            checks["labels"] = measure.Check("labels", "fail", str(err))
            return _finish(result, Evidence(num_classes, checks, status="not trained"), cfg, t0)
    else:
        data = data if data is not None else load_data(cfg.data_dir, archive=cfg.archive, synthetic=cfg.synthetic,
                                                       train_per_class=cfg.train_per_class, download=cfg.download,
                                                       val_per_class=cfg.val_per_class, progress=cfg.progress)
        num_classes = data.num_classes
        fields = repo_data_subject(data, probe_per_class=cfg.probe_per_class, batch_size=tc.batch_size,
                                   seed=cfg.seed, device=device, normalize=cfg.normalize)
    make, label = model_factory(functools.partial(build_model, reg_name, dropout=cfg.dropout) if reg_name
                                else model, num_classes, cfg.seed)
    label = reg_name or label
    recipe_opt = lambda m: make_optimizer(m, tc)  # noqa: E731
    subject = Subject(name=name or label, make_model=make, loss_fn=loss_fn or default_loss,
                      make_optimizer=optimizer_factory(optimizer, recipe_opt), num_classes=num_classes, **fields)
    schedule = (lambda opt, steps: make_scheduler(opt, tc, steps)) if optimizer is None else None  # noqa: E731
    result["name"] = result["config"]["model"] = subject.name
    result["config"]["own_optimizer"], result["config"]["own_loss"] = optimizer is not None, loss_fn is not None
    _log(cfg, f"[{subject.name}] will run: label, batch and init checks; a fixed batch of {cfg.fit_batch} fitted "
              f"for up to {cfg.fit_steps} steps (and once per change if it does not fit)"
              + ("" if cfg.preflight_only else f"; {cfg.epochs} epochs on {len(subject.train_y)} train images, "
                 f"{len(subject.probe_y)} held-out train and {len(subject.val_y)} val images predicted after each; "
                 f"up to {cfg.max_controls if cfg.control else 0} control runs of the same size") + f"; on {device}")
    ev = Evidence(num_classes, checks)
    ev.full_data = int(torch.bincount(subject.train_y).min()) + int(torch.bincount(subject.probe_y).min()) \
        >= FULL_TRAIN_PER_CLASS

    # ---------------------------------------------------------------- measurements before training
    for split, y in (("train", subject.train_y), ("val", subject.val_y)):
        found = check_labels(y, num_classes, split)
        if found:
            checks["labels"] = measure.Check("labels", "fail", "; ".join(found))
    ann = measure.annotation_check(subject.root, subject.classes, subject.val_files, subject.val_y)
    if ann is not None:
        checks[ann.name] = ann
    if "labels" in checks:
        return _finish(result, ev, cfg, t0)
    x, y = _fixed_batch(subject, cfg, device)
    model0 = subject.make_model().to(device)
    train_loader, _, _ = subject.loaders()
    first_x, _ = next(iter(train_loader))
    for check in (measure.input_stats(first_x), measure.batch_label_entropy(train_loader, num_classes),
                  measure.output_kind(model0, x), measure.eval_determinism(model0, x),
                  measure.dropout_sites(model0, x), measure.init_loss(model0, x, y, subject.loss_fn, num_classes),
                  _weight_decay_check(subject.make_optimizer(model0))):
        checks[check.name] = check
    del model0
    ev.checks.update(_label_signal(subject, num_classes))

    # ------------------------------------------------------------------------- fixed-batch fits
    fit = lambda change: fit_batch(subject, change, x, y, steps=cfg.fit_steps, device=device,  # noqa: E731
                                   num_classes=num_classes)
    t_fit = time.perf_counter()
    ev.base = fit(Change("base"))
    step_seconds = (time.perf_counter() - t_fit) / max(1, len(ev.base.losses))
    if not ev.base.fitted:
        ev.fits = _experiments(ev, checks, fit)
    result["fit"] = [ev.base.to_json()] + [r.to_json() for r in ev.fits]
    n_train = len(subject.train_y)
    per_run = step_seconds / cfg.fit_batch * (n_train + (len(subject.val_y) + len(subject.probe_y)) / 3) * cfg.epochs
    if cfg.preflight_only:
        ev.status = "not trained"
        return _finish(result, ev, cfg, t0)

    # --------------------------------------------------------------------------- the short run
    _log(cfg, f"[{subject.name}] rough cost, timed on the fixed-batch fit: {per_run:.0f} s per training run "
              f"(batch {subject.batch_size}), and as much again per control run")
    amp = cfg.amp and device.type == "cuda"
    run = lambda change: train_short(subject, change, epochs=cfg.epochs, device=device, amp=amp,  # noqa: E731
                                     schedule=schedule)
    ev.run = run(Change("base"))
    result["gradient_flow"] = [r for r in ev.run.grad_rows if r["step"] == ev.run.grad_rows[-1]["step"]] \
        if ev.run.grad_rows else []
    for row in ev.run.history:
        _log(cfg, f"[{subject.name}] epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
                  f"val top-1 {row['val_acc']:.2f}%, held-out train {row['probe_acc']:.2f}%")
    if ev.run.history:
        ev.val_test = chance_test(ev.run.val_preds, subject.val_y, num_classes)
        ev.probe_test = chance_test(ev.run.probe_preds, subject.probe_y, num_classes)
        kv, kp = int((ev.run.val_preds == subject.val_y).sum()), int((ev.run.probe_preds == subject.probe_y).sum())
        ev.gap_test = two_proportion_test(kv, len(subject.val_y), kp, len(subject.probe_y))
    ev.status = judge_learning(ev)
    causes = rank_causes(ev)
    if cfg.control:
        tried = 0
        for cause in list(causes):
            change = _fix_for(cause.id, ev, checks)
            if tried >= cfg.max_controls or any(c["test"].significant and c["chance"].significant
                                                 for c in ev.controls):
                break
            if change is None or cause.refuted or cause.id in {c["cause"] for c in ev.controls}:
                continue
            tried += 1
            _log(cfg, f"[{subject.name}] control: {cause.id} -> rerun with {change.describe()}")
            res = run(change)
            acc = res.final.get("val_acc", 0.0)
            k_ctl = int((res.val_preds == subject.val_y).sum()) if res.val_preds is not None else 0
            k_base = int((ev.run.val_preds == subject.val_y).sum()) if ev.run.val_preds is not None else 0
            ev.controls.append({"cause": cause.id, "change": change.describe(), "result": res, "acc": acc,
                                "base_acc": ev.run.final.get("val_acc", 0.0),
                                "test": two_proportion_test(k_base, len(subject.val_y), k_ctl, len(subject.val_y)),
                                "chance": chance_test(res.val_preds, subject.val_y, num_classes)
                                if res.val_preds is not None else above_chance(0.0, len(subject.val_y), num_classes)})
            causes = rank_causes(ev)
    _headroom(result, ev, cfg, subject, checks, fit, causes,
              lambda change, epochs: train_short(subject, change, epochs=epochs, device=device, amp=amp,
                                                 schedule=schedule))
    return _finish(result, ev, cfg, t0)


def _headroom(result, ev, cfg, subject, checks, fit, causes, run) -> None:
    """The headroom screen (headroom.py) of a run that learns: findings into result["slows"]."""
    reported = any(not c.tentative and not c.refuted for c in causes)
    on, why = headroom.wanted(cfg.headroom, ev.status, ev.run.history, subject.num_classes, ev.full_data, reported)
    result["headroom"] = {"ran": on, "why": why}
    if on:
        hr = headroom.screen(subject, ev.run, checks, ev.base, fit=fit, run=run, epochs=cfg.epochs,
                             screen_epochs=cfg.headroom_screen_epochs, budget=cfg.headroom_budget,
                             known_fits=ev.fits, log=lambda text: _log(cfg, text))
        result["slows"] = [f.to_json() for f in hr["findings"]]
        result["headroom"].update(screen=hr["screen"], cost_s=hr["cost_s"])


def _fixed_batch(subject, cfg, device):
    g = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(len(subject.train_y), generator=g)[:cfg.fit_batch]
    if subject.train_x is not None:
        return subject.train_x[idx].to(device), subject.train_y[idx].to(device)
    train_loader, _, _ = subject.loaders()
    images = train_loader.images[idx.to(train_loader.images.device)]
    return Normalizer(device, enabled=cfg.normalize)(images.to(device)).contiguous(), subject.train_y[idx].to(device)


def _weight_decay_check(opt) -> measure.Check:
    wd = max((float(g.get("weight_decay", 0.0) or 0.0) for g in opt.param_groups), default=0.0)
    return measure.Check("weight_decay", "info", f"largest weight decay in the optimizer: {wd:g} "
                         f"({type(opt).__name__})", {"max": wd})


def _label_signal(subject: Subject, num_classes) -> dict:
    train_loader, _, val_loader = subject.loaders(False if subject.train_x is not None else None)
    check = measure.label_signal(train_loader.images, subject.train_y, val_loader.images, subject.val_y, num_classes,
                                 seed=0)
    return {check.name: check}


def _experiments(ev: Evidence, checks: dict, fit) -> list:
    """The one-change fits, run when the base fit fails; lr moves by 10x until fit or divergence."""
    runs = []
    if checks["dropout_sites"].data["sites"]:
        runs.append(fit(Change("no_dropout", no_dropout=True)))
    if checks["input_stats"].data["off"]:
        mean = tuple(checks["input_stats"].data["mean"])
        std = tuple(max(s, 1e-6) for s in checks["input_stats"].data["std"])
        runs.append(fit(Change("standardized", standardize=(mean, std))))
    if checks["output_kind"].data["kind"] == "probabilities":
        runs.append(fit(Change("log_outputs", log_outputs=True)))
    if checks["weight_decay"].data["max"] > 0:
        runs.append(fit(Change("no_weight_decay", weight_decay_zero=True)))
    if any(w in ("requires_grad=False", "not in the optimizer") for w in ev.base.frozen.values()):
        runs.append(fit(Change("unfreeze", unfreeze=True)))
    if not ev.base.diverged:  # up to x1000, further while each x10 still lowers the loss
        previous = ev.base.final
        for k in (1, 2, 3, 4, 5):
            r = fit(Change(f"lr_x{10 ** k}", lr_factor=10.0 ** k))
            runs.append(r)
            if r.fitted or r.diverged or (k >= 3 and not r.final < previous):
                break
            previous = r.final
    if ev.base.diverged or not any(r.fitted for r in runs if r.name.startswith("lr_x")):
        for k in (1, 2, 3):
            r = fit(Change(f"lr_div{10 ** k}", lr_factor=10.0 ** -k))
            runs.append(r)
            if r.fitted or not ev.base.diverged:
                break
    return runs


def _fix_for(cause: str, ev: Evidence, checks: dict) -> Change | None:
    """The change that removes `cause` from outside the user's code, if there is one."""
    simple = {"dropout_too_strong": Change("control", no_dropout=True),
              "outputs_are_probabilities": Change("control", log_outputs=True),
              "weight_decay_too_strong": Change("control", weight_decay_zero=True),
              "batches_not_shuffled": Change("control", shuffle=True),
              "stochastic_eval": Change("control", eval_dropout_off=True)}
    if cause in simple:
        return simple[cause]
    if cause == "frozen_parameters" and any(w in ("requires_grad=False", "not in the optimizer")
                                            for w in ev.base.frozen.values()):
        return Change("control", unfreeze=True)
    if cause == "input_not_normalized":
        s = checks["input_stats"].data
        return Change("control", standardize=(tuple(s["mean"]), tuple(max(v, 1e-6) for v in s["std"])))
    if cause in ("learning_rate_too_low", "learning_rate_too_high", "non_finite_loss"):
        prefix = "lr_x" if cause == "learning_rate_too_low" else "lr_div"  # the direction the cause names
        best = min((r for r in ev.fits if r.name.startswith(prefix)), key=lambda r: r.final, default=None)
        if best is not None and best.final < ev.base.final:
            return Change("control", lr_factor=best.lr / ev.base.lr)
        if cause == "learning_rate_too_high":  # no fit to go by (the batch fit as given): two decades down
            return Change("control", lr_factor=0.01)
    return None


def _finish(result: dict, ev: Evidence, cfg: DiagnosisConfig, t0: float) -> dict:
    candidates = rank_causes(ev)
    causes = [c for c in candidates if not c.tentative and not c.refuted]
    unconfirmed = [c.id for c in candidates if c.tentative and not c.refuted]
    refuted = [c.id for c in candidates if c.refuted]
    if refuted:
        ev.reasons.append(f"fixed-batch experiments pointed at {', '.join(refuted)}, but the control run with that "
                          "fix did no better: not reported as a cause")
    if unconfirmed:
        small = " the run is too small to call stuck and" if ev.status == "undecided" else ""
        ev.reasons.append(f"fixed-batch experiments point at {', '.join(unconfirmed)}, but{small} no control "
                          "confirmed it: not reported as a cause")
    if ev.status in ("learning", "not trained") and not causes:
        verdict = "PASS"
    elif causes or ev.status == "diverged" or (ev.status == "stuck" and ev.full_data):
        verdict = "FAIL"
        if not causes:
            ev.reasons.append("no cause isolated by any experiment")
    else:
        verdict = "INCONCLUSIVE"
        ev.reasons.append("no experiment isolated a cause; the verdict needs more data or epochs (see above)")
    run = ev.run
    result.update(
        checks=[c.to_json() for c in ev.checks.values()], learning=ev.status, verdict=verdict,
        passed=verdict == "PASS", reasons=ev.reasons,
        epochs=[{k: row[k] for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "probe_acc")}
                for row in (run.history if run else [])],
        significance={"val": dataclasses.asdict(ev.val_test) if ev.val_test else None,
                      "probe": dataclasses.asdict(ev.probe_test) if ev.probe_test else None,
                      "probe_vs_val": dataclasses.asdict(ev.gap_test) if ev.gap_test else None},
        causes=[c.to_json() for c in causes], suggestions=suggestions_for(causes, ev),
        controls=[{"cause": c["cause"], "change": c["change"], "val_acc": c["acc"],
                   "test": dataclasses.asdict(c["test"]),
                   "epochs": [{k: r[k] for k in ("epoch", "train_loss", "val_acc")} for r in c["result"].history]}
                  for c in ev.controls],
        nonfinite=list(run.nonfinite) if run and run.nonfinite else None,
        seconds=time.perf_counter() - t0)
    result["control"] = result["controls"][0] if result["controls"] else None
    return result


def run_diagnosis(cfg: DiagnosisConfig, data: Data | None = None) -> dict:
    """Diagnose every registry model in `cfg.models` on the repo's data; returns the report dict."""
    if data is None:
        data = load_data(cfg.data_dir, archive=cfg.archive, synthetic=cfg.synthetic, download=cfg.download,
                         train_per_class=cfg.train_per_class, val_per_class=cfg.val_per_class,
                         progress=cfg.progress)
    report = {"dataset": {"root": data.root, "num_classes": data.num_classes,
                          "train_images": len(data.train_targets), "val_images": len(data.val_targets),
                          "ln_num_classes": math.log(data.num_classes)}, "models": {}}
    for name in cfg.models:
        report["models"][name] = diagnose(name, config=cfg, data=data)
    return report
