"""Diagnose a model: pre-flight measurements, one-change experiments, a short training run, controls.

    from tinyimagenet.diagnosis import diagnose, DiagnosisConfig
    result = diagnose(MyNet, train=my_train_ds, val=my_val_ds, config=DiagnosisConfig(epochs=3))
    result = diagnose("BaselineCNN", config=DiagnosisConfig(dropout="legacy"))   # registry shorthand
    report = run_diagnosis(DiagnosisConfig(models=["BaselineCNN"]))            # several, one report

Per model, in phases (one function each, in this order):
- `_inputs`: the model factory, the data (read once, a user's as their code reads it:
  user_data.py; bad labels stop here, a leaky split is the check val_overlaps_train), the loss,
  the optimizer factory (the user's, or the recipe's: recipe.py);
- `_loss_check`: the user's loss on synthetic logits (loss_checks.py); a faulty loss is decisive
  and stops here, before anything trains;
- `_preflight`: labels against the label file, the model's output and the loss on the fixed batch
  (contract.py: a broken contract is a UserInputError here, before anything costly), batches,
  inputs, the model at init (outputs, eval determinism, dropout, loss vs ln C), the optimizer's
  weight decay, the model-free label signal;
- `_fits`: a fixed batch fitted as given and, when that fails, each cause's one-change fits (the
  causes table, causes.py, says which);
- `_short_run`: `epochs` of training with a held-out slice of train (the probe) and val predicted
  after each epoch, tested against chance;
- `_controls`: for the top causes whose fix applies from outside the code, the same training
  with that fix;
- `_extend`: before an INCONCLUSIVE verdict, a control that trends right (higher accuracy or lower
  val loss, not significant) gets `extend_epochs` more epochs on both arms within
  `extend_budget_s`, the cost printed first;
- `_headroom`: for a run that learns with no reported cause, on request or below the seed's bar,
  the headroom screen (headroom.py): which one change makes it learn more ("slows learning");
- `_finish`: the verdict (verdict.decide) and the report entry (JSON shape in report.py).
The options are DiagnosisConfig (config.py, importable from here as before); the report entry
is built by report.report_entry. The user's objects are never mutated and the global RNG state
is restored (CPU, and CUDA on the device used only). Bad input (data, model output, loss,
options) raises errors.UserInputError.
"""
from __future__ import annotations

import dataclasses
import functools
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..loaders import Data
from ..registry import build_model
from ..runtime import pick_device, preserved_rng
from . import contract, headroom, measure, user_data
from . import thresholds as T
from .causes import CAUSES, by_id
from .config import DiagnosisConfig, dataset_summary, load_repo_data  # noqa: F401 (re-exported: .run kept them)
from .errors import UserInputError
from .experiments import Change, fit_batch, train_short
from .loss_checks import check_loss
from .recipe import Recipe
from .report import report_entry
from .rules import FitPlan
from .stats import above_chance, chance_test, two_proportion_test
from .subject import BadLabels, Subject, default_loss, model_factory, optimizer_factory, repo_data_subject
from .verdict import Control, Evidence, decide, judge_learning, rank_causes


@dataclass
class _State:
    """What the phases of one diagnosis share."""
    cfg: DiagnosisConfig
    device: torch.device
    subject: Subject | None               # None: the labels cannot be used, nothing else runs
    ev: Evidence
    config: dict                          # the report's "config": what was really run
    t0: float                             # start time (the report's "seconds")
    recipe: Recipe | None = None          # the recipe, when the optimizer is not the user's
    raw_make: Callable | None = None      # the model factory before its output is read as logits (contract)
    x: torch.Tensor | None = None         # the fixed batch of the fits
    y: torch.Tensor | None = None
    seconds_per_step: float = 0.0         # measured on the base fit: the cost estimate
    seconds_per_epoch: float = 0.0        # measured on the base run: the extension's cost estimate
    run_seconds: float = 0.0              # the short run as given, timed: the headroom screen's cost estimate
    headroom: dict = field(default_factory=lambda: {"ran": False, "why": "not trained"})  # the screen's rows
    slows: list = field(default_factory=list)  # the screen's findings (headroom.Slowdown), best first


def diagnose(model, train=None, val=None, loss_fn=None, optimizer=None, *, num_classes: int | None = None,
             config: DiagnosisConfig | None = None, data: Data | None = None, name: str | None = None,
             keys: tuple | None = None) -> dict:
    """Diagnose one model; returns its report entry (see report.py). The process is left as found.

    Bad input (data, model output, loss, options) raises errors.UserInputError before anything costly;
    `keys=(image_key, label_key)` names the fields of dict samples (or positions in tuple samples).
    """
    cfg = config or DiagnosisConfig()
    if keys is not None:
        cfg = dataclasses.replace(cfg, keys=tuple(keys))
    contract.check_config(cfg.epochs, cfg.preflight_only, num_classes)
    t0 = time.perf_counter()
    device = pick_device(cfg.device)  # decided once; everything below gets it passed
    with preserved_rng(device):  # CUDA's RNG of this device only: no other GPU is woken up
        # A user's shuffling DataLoader (and any random transform) draws from the global RNGs when it is
        # read: seed them, so the same seed gives the same run (CPU generator only: no GPU is touched).
        torch.default_generator.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        st = _inputs(model, train, val, loss_fn, optimizer, num_classes, cfg, data, name, device, t0)
        if st.subject is None:  # unusable labels: reported before any training, nothing else can be trusted
            return _finish(st)
        if not _loss_check(st, loss_fn):  # a loss that cannot reward learning: no training can say more
            return _finish(st)
        _preflight(st)
        _fits(st)
        if cfg.preflight_only:
            return _finish(st)
        _short_run(st)
        if cfg.control:
            _controls(st)
            _extend(st)
        _headroom(st)
        return _finish(st)


def _log(cfg, text):
    if cfg.progress:
        print(text, flush=True)


# ----------------------------------------------------------------------------------- the phases
def _inputs(model, train, val, loss_fn, optimizer, num_classes, cfg, data, name, device, t0) -> _State:
    """The Subject: model factory, data, loss, optimizer factory; and the plan. Unusable labels
    give a state without a subject, holding the failed labels check."""
    reg_name = model if isinstance(model, str) else None
    recipe = Recipe.named(cfg.recipe, model=reg_name or "", epochs=cfg.epochs, schedule_epochs=cfg.schedule_epochs,
                          device=device, lr=cfg.lr, batch_size=cfg.batch_size)
    batch_size = recipe.batch_size  # a user's DataLoader keeps its own
    recipe = recipe if optimizer is None else None  # the user's optimizer replaces the recipe's
    # The registry is only a name -> factory lookup; everything below sees a factory.
    factory = functools.partial(build_model, reg_name, dropout=cfg.dropout) if reg_name else model
    try:
        if train is not None:
            if val is None or num_classes is None:
                raise UserInputError("diagnose(train=...) needs val= and num_classes= too")
            fields, data_checks = user_data.user_data_subject(
                train, val, num_classes, probe_per_class=cfg.probe_per_class, batch_size=batch_size,
                seed=cfg.seed, device=device, keys=cfg.keys, iterable_cap=cfg.iterable_cap)
        else:
            data = data if data is not None else load_repo_data(cfg)
            num_classes = data.num_classes
            fields = repo_data_subject(data, probe_per_class=cfg.probe_per_class, batch_size=batch_size,
                                       seed=cfg.seed, device=device, normalize=cfg.normalize)
            data_checks = {}
    except BadLabels as err:
        label = name or reg_name or getattr(model, "__name__", type(model).__name__)
        checks = {"labels": measure.Check("labels", "fail", str(err))}
        return _State(cfg, device, None, Evidence(num_classes, checks, status="not trained"),
                      {"model": label, "device": str(device)}, t0)
    raw_make, label = model_factory(factory, num_classes, cfg.seed)
    make = contract.reading_logits(raw_make)  # tuple/dict/.logits outputs read as their logits, per call
    subject = Subject(name=name or reg_name or label, make_model=make, loss_fn=loss_fn or default_loss,
                      make_optimizer=optimizer_factory(optimizer, recipe.make_optimizer if recipe else None),
                      num_classes=num_classes, **fields)
    config = {"model": subject.name, "user_model": reg_name is None, "user_data": train is not None,
              "own_optimizer": optimizer is not None, "own_loss": loss_fn is not None,
              "dropout": cfg.dropout if reg_name else "as given",
              # the diagnosis standardizes only the repo's uint8 images; a user's arrive as given
              "normalize": cfg.normalize if train is None else "as given",
              "augment": train is None, "epochs": cfg.epochs, "batch_size": subject.batch_size,
              "seed": cfg.seed, "device": str(device), "amp": cfg.amp and device.type == "cuda",
              "fit_batch": cfg.fit_batch, "fit_steps": cfg.fit_steps,
              **({"recipe": recipe.name, **{k: v for k, v in recipe.to_json().items()
                                            if k not in ("name", "epochs", "device", "batch_size")}}
                 if recipe else {"recipe": "own optimizer"})}
    st = _State(cfg, device, subject, Evidence(num_classes, dict(data_checks)), config, t0, recipe, raw_make)
    counts = torch.bincount(subject.train_y).min() + torch.bincount(subject.probe_y).min()
    st.ev.full_data = int(counts) >= T.FULL_TRAIN_PER_CLASS
    _log(cfg, f"[{subject.name}] will run: label, batch and init checks; a fixed batch of {cfg.fit_batch} fitted "
              f"for up to {cfg.fit_steps} steps (and once per change if it does not fit)"
              + ("" if cfg.preflight_only else f"; {cfg.epochs} epochs on {len(subject.train_y)} train images, "
                 f"{len(subject.probe_y)} held-out train and {len(subject.val_y)} val images predicted after each; "
                 f"up to {cfg.max_controls if cfg.control else 0} control runs of the same size") + f"; on {device}")
    return st


def _loss_check(st: _State, loss_fn) -> bool:
    """The user's loss (not the default one) on synthetic logits; False when it is faulty, which
    the causes table (kind "loss") makes decisive: the run stops here, "not trained"."""
    if loss_fn is None:
        return True
    check = st.ev.checks["loss_fn"] = check_loss(loss_fn, st.subject.num_classes, st.device)
    if check.status == "fail":
        st.ev.status = "not trained"
        _log(st.cfg, f"[{st.subject.name}] loss: {check.data['fault']}, before training: {check.detail}")
        return False
    return True


def _preflight(st: _State) -> None:
    """Measurements before any training, each a Check in `st.ev.checks` (none trains the model)."""
    s, checks = st.subject, st.ev.checks
    ann = measure.annotation_check(s.root, s.classes, s.val_files, s.val_y)
    if ann is not None:
        checks[ann.name] = ann
    g = torch.Generator().manual_seed(st.cfg.seed)
    train_loader, _, _ = s.loaders()
    x, y = train_loader.batch(torch.randperm(len(s.train_y), generator=g)[:st.cfg.fit_batch])
    st.x, st.y = x.contiguous(), y
    # The model's output and the loss on these images: a broken contract raises here, in seconds.
    checks.update(contract.check_model(st.raw_make, st.x, st.y, s.loss_fn, s.num_classes, st.device))
    model0 = s.make_model().to(st.device)
    first_x, _ = next(iter(train_loader))
    opt0 = s.make_optimizer(model0)
    if st.recipe is None:  # the user's optimizer: say what it is, as built
        st.config.update(optimizer=type(opt0).__name__, lr=float(opt0.param_groups[0]["lr"]), schedule="none")
    for check in (measure.input_stats(first_x), measure.batch_label_entropy(train_loader, s.num_classes),
                  measure.output_kind(model0, st.x), measure.eval_determinism(model0, st.x),
                  measure.dropout_sites(model0, st.x), measure.init_loss(model0, st.x, y, s.loss_fn, s.num_classes),
                  measure.weight_decay(opt0),
                  measure.label_signal(s.train_images, s.train_y, s.val_images, s.val_y, s.num_classes, seed=0)):
        checks[check.name] = check


def _fits(st: _State) -> None:
    """The fixed batch as given; when it does not fit, each cause's one-change fits, in table order."""
    ev, cfg = st.ev, st.cfg
    fit = functools.partial(_fit, st)
    t = time.perf_counter()
    ev.base = fit(Change("base"))
    st.seconds_per_step = (time.perf_counter() - t) / max(1, len(ev.base.losses))
    if not ev.base.fitted:
        for cause in CAUSES:
            if cause.fits is not None:
                ev.fits += cause.fits(FitPlan(fit, ev.checks, ev.base, list(ev.fits)))
    if cfg.preflight_only:
        ev.status = "not trained"


def _fit(st: _State, change: Change):
    """The fixed batch fitted with one change (the same weights and batch each time)."""
    return fit_batch(st.subject, change, st.x, st.y, steps=st.cfg.fit_steps, device=st.device,
                     num_classes=st.subject.num_classes)


def _train(st: _State, change: Change, epochs: int | None = None):
    """The short run with one change, `cfg.epochs` long unless told (the headroom screen's runs)."""
    sched = st.recipe.make_scheduler if st.recipe is not None else None
    return train_short(st.subject, change, epochs=epochs or st.cfg.epochs, device=st.device,
                       amp=st.cfg.amp and st.device.type == "cuda", schedule=sched)


def _short_run(st: _State) -> None:
    """`epochs` of training as given, and its tests against chance."""
    s, ev, cfg = st.subject, st.ev, st.cfg
    per_run = st.seconds_per_step / cfg.fit_batch * (len(s.train_y) + (len(s.val_y) + len(s.probe_y)) / 3) * cfg.epochs
    _log(cfg, f"[{s.name}] rough cost, timed on the fixed-batch fit: {per_run:.0f} s per training run "
              f"(batch {s.batch_size}), and as much again per control run")
    t = time.perf_counter()
    ev.run = _train(st, Change("base"))
    st.run_seconds = time.perf_counter() - t
    st.seconds_per_epoch = st.run_seconds / max(1, len(ev.run.history) or cfg.epochs)
    _judge_run(st)


def _judge_run(st: _State) -> None:
    """The base run's per-epoch lines and its tests against chance (again after an extension)."""
    s, ev, cfg = st.subject, st.ev, st.cfg
    ev.val_test = ev.probe_test = ev.gap_test = None
    for row in ev.run.history:
        _log(cfg, f"[{s.name}] epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
                  f"val top-1 {row['val_acc']:.2f}%, held-out train {row['probe_acc']:.2f}%")
    if ev.run.history:
        ev.val_test = chance_test(ev.run.val_preds, s.val_y, s.num_classes)
        ev.probe_test = chance_test(ev.run.probe_preds, s.probe_y, s.num_classes)
        kv, kp = _correct(ev.run.val_preds, s.val_y), _correct(ev.run.probe_preds, s.probe_y)
        ev.gap_test = two_proportion_test(kv, len(s.val_y), kp, len(s.probe_y))
    ev.status = judge_learning(ev)


def _correct(preds, targets) -> int:
    return int((preds == targets).sum()) if preds is not None else 0


def _controls(st: _State) -> None:
    """Rerun training with the fix of each top cause that has one, until one confirms or the budget ends."""
    s, ev, cfg = st.subject, st.ev, st.cfg
    for finding in rank_causes(ev):
        if len(ev.controls) >= cfg.max_controls or any(c.confirms for c in ev.controls):
            break
        spec = by_id(finding.id)
        change = spec.control(ev) if spec.control is not None else None
        if change is None or finding.refuted or finding.id in {c.cause for c in ev.controls}:
            continue
        _log(cfg, f"[{s.name}] control: {finding.id} -> rerun with {change.describe()}")
        res = _train(st, change)
        ev.controls.append(_control(st, finding.id, change, res))


def _control(st: _State, cause: str, change: Change, res, extended: str = "") -> Control:
    s, ev, n_val = st.subject, st.ev, len(st.subject.val_y)
    return Control(
        cause=cause, change=change, result=res, acc=res.final.get("val_acc", 0.0),
        base_acc=ev.run.final.get("val_acc", 0.0),
        test=two_proportion_test(_correct(ev.run.val_preds, s.val_y), n_val, _correct(res.val_preds, s.val_y), n_val),
        chance=chance_test(res.val_preds, s.val_y, s.num_classes) if res.val_preds is not None
        else above_chance(0.0, n_val, s.num_classes),
        base=ev.run, num_classes=s.num_classes, extended=extended)


def _extend(st: _State) -> None:
    """Before INCONCLUSIVE: a control that trends right but is not significant gets more epochs.

    Both arms (the base run and that control) are trained again for `extend_epochs` more epochs,
    when the cost estimated from the base run's epochs fits `extend_budget_s`; the cost is printed
    first and the report says what was extended and why. The diagnosis already predicts every val
    image it was given, so more val means giving it more (repo data: `val_per_class`).
    """
    ev, cfg = st.ev, st.cfg
    if cfg.extend_epochs <= 0 or any(c.confirms for c in ev.controls) or ev.status not in ("stuck", "undecided"):
        return
    verdict = decide(ev, rank_causes(ev)).verdict
    trending = [c for c in ev.controls if c.acc > c.base_acc or c.loss_lower]
    if verdict != "INCONCLUSIVE" or not trending:
        return
    ctl = max(trending, key=lambda c: c.acc - c.base_acc)
    epochs = cfg.epochs + cfg.extend_epochs
    cost = 2 * epochs * st.seconds_per_epoch
    why = (f"the control for {ctl.cause} trended right (val top-1 {ctl.acc:.2f}% vs {ctl.base_acc:.2f}%, val loss "
           f"{'lower' if ctl.loss_lower else 'not lower'}) but was not significant")
    if cost > cfg.extend_budget_s:
        _log(cfg, f"[{st.subject.name}] not extended: {epochs} epochs on both arms would cost ~{cost:.0f} s, over "
                  f"the budget of {cfg.extend_budget_s:.0f} s (extend_budget_s)")
        ev.reasons.append(f"{why}; extending both arms to {epochs} epochs (~{cost:.0f} s) is over the budget "
                          f"of {cfg.extend_budget_s:.0f} s (extend_budget_s)")
        return
    _log(cfg, f"[{st.subject.name}] extending: {why}; both arms again for {epochs} epochs, ~{cost:.0f} s "
              f"(budget {cfg.extend_budget_s:.0f} s)")
    t = time.perf_counter()
    ev.run = _train(st, Change("base"), epochs)
    ev.reasons = []
    _judge_run(st)
    res = _train(st, ctl.change, epochs)
    text = (f"both arms retrained for {epochs} epochs instead of {cfg.epochs} ({time.perf_counter() - t:.0f} s, "
            f"estimated {cost:.0f} s, budget {cfg.extend_budget_s:.0f} s) because {why}")
    ev.controls = [c for c in ev.controls if c is not ctl] + [_control(st, ctl.cause, ctl.change, res, text)]
    ev.reasons.append(f"extended: {text}")


def _headroom(st: _State) -> None:
    """The headroom screen (headroom.py) of a run that learns and has no reported cause."""
    s, ev, cfg = st.subject, st.ev, st.cfg
    reported = bool(decide(ev, rank_causes(ev)).causes)
    on, why = headroom.wanted(cfg.headroom, ev.status, ev.run.history, s.num_classes, ev.full_data, reported)
    st.headroom = {"ran": on, "why": why}
    if not on:
        return
    hr = headroom.screen(s, ev, fit=functools.partial(_fit, st), run=functools.partial(_train, st),
                         epochs=cfg.epochs, epoch_seconds=st.run_seconds / max(1, len(ev.run.history)),
                         screen_epochs=cfg.headroom_screen_epochs,
                         budget=cfg.headroom_budget, log=lambda text: _log(cfg, text))
    st.slows = [f.to_json() for f in hr["findings"]]
    st.headroom.update(screen=hr["screen"], cost_s=hr["cost_s"])


def _finish(st: _State) -> dict:
    result = report_entry(st.ev, st.config, [st.ev.base.to_json()] + [r.to_json() for r in st.ev.fits]
                     if st.ev.base is not None else [], time.perf_counter() - st.t0)
    result["name"] = st.config["model"]
    if st.subject is not None:  # the images as read (a user's DataLoader, sampler or IterableDataset decides)
        s = st.subject
        result["data"] = {"train_images": len(s.train_y) + len(s.probe_y), "val_images": len(s.val_y)}
    result["slows"], result["headroom"] = st.slows, st.headroom
    return result



def run_diagnosis(cfg: DiagnosisConfig, data: Data | None = None) -> dict:
    """Diagnose every registry model in `cfg.models` on the repo's data; returns the report dict."""
    data = data if data is not None else load_repo_data(cfg)
    report = {"dataset": dataset_summary(data), "models": {}}
    for name in cfg.models:
        report["models"][name] = diagnose(name, config=cfg, data=data)
    return report
