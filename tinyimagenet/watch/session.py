"""Watch a training loop as the user wrote it: `with watch() as w: <loop>`, then `w.report()`.

    from tinyimagenet.watch import watch
    with watch(num_classes=200) as w:
        for x, y in loader:
            loss = criterion(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
    print(w.report())          # verdict, causes with file:line, suggestions
    w.to_json()                # quick_diagnosis's shape: {"models": {NAME: {"passed", "verdict", "causes": [...]}}}
    w.diagnose()               # a stalled run with no loop fault: the captured pieces to diagnose()

Every hook is removed when the block exits (also on an exception); nothing draws random numbers.
The command-line face is `python -m tinyimagenet.watch SCRIPT.py` (__main__.py).
"""
from __future__ import annotations

import copy
import math
import time

import torch

from .observe import Observer
from .rules import find_causes, suggestion


class Watch:
    def __init__(self, num_classes: int | None = None, capture: bool = True):
        self.observer = Observer(capture=capture)
        self.forced_classes = num_classes
        self._result: dict | None = None
        self.seconds = 0.0

    def __enter__(self) -> "Watch":
        self._t0 = time.perf_counter()
        self.observer.install()
        return self

    def __exit__(self, *exc) -> bool:
        self.observer.remove()
        self.seconds = time.perf_counter() - self._t0
        return False

    # ------------------------------------------------------------------------------ results
    def result(self) -> dict:
        """One entry per model trained (grad-enabled forwards), in quick_diagnosis's shape."""
        if self._result is not None:
            return self._result
        obs = self.observer
        if self.forced_classes:
            obs.num_classes = self.forced_classes
        causes, status, reasons = find_causes(obs)
        if causes:
            verdict = "FAIL"
        elif status == "learning":
            verdict = "PASS"
        elif status == "diverged":
            verdict = "FAIL"
        else:
            verdict = "INCONCLUSIVE"
            if status == "stalled":
                reasons.append("the loss stays near ln C and no loop or loss fault explains it: "
                               "the captured pieces can go to diagnose() for its experiments")
        trained = [m for m in obs.models.values() if m.train_forwards] or list(obs.models.values())
        models = {}
        for m in trained or [None]:
            name = m.name if m else "(no model seen)"
            while name in models:
                name += "'"
            models[name] = {"verdict": verdict, "passed": verdict == "PASS", "learning": status,
                            "reasons": list(reasons), "causes": causes,
                            "suggestions": [suggestion(c["id"]) for c in causes], "checks": [],
                            "watched": self._watched(m), "seconds": self.seconds}
        self._result = {"dataset": {}, "models": models}
        return self._result

    def _watched(self, m) -> dict:
        obs = self.observer
        losses = obs.losses()
        return {"model": m.name if m else None, "first_forward": m.site if m else None,
                "train_forwards": m.train_forwards if m else 0, "num_classes": obs.num_classes,
                "optimizer_steps": sum(o.steps for o in obs.opts.values()), "backward_passes": obs.backwards,
                "optimizers": [{"class": o.name, "defaults": o.defaults, "step_site": o.site} for o in obs.opts.values()],
                "loss_calls": [{"site": s, "func": c["func"], "options": c["options"], "input": c["input_kind"]}
                               for s, c in obs.loss_calls.items()],
                "first_loss": float(losses[0]) if len(losses) else None,
                "last_loss": float(losses[-1]) if len(losses) else None, "loss_values": len(losses)}

    def to_json(self) -> dict:
        from ..diagnosis.report import to_json
        return to_json(self.result())

    def report(self) -> str:
        r = self.result()
        lines = []
        for name, m in r["models"].items():
            w = m["watched"]
            lines.append(f"watch: {name}: {m['verdict']} ({m['learning']}; {w['optimizer_steps']} optimizer steps, "
                         f"{w['backward_passes']} backward passes, C = {w['num_classes']}; {m['seconds']:.1f} s)")
            lines += [f"  - {x}" for x in m["reasons"]]
            for rank, (c, s) in enumerate(zip(m["causes"], m["suggestions"]), 1):
                lines.append(f"  cause {rank}: {c['id']}")
                if c["where"]:
                    lines.append(f"      where: {', '.join(c['where'])}")
                lines += [f"      evidence: {e}" for e in c["evidence"]]
                lines.append(f"      suggestion: {s}")
            if not m["causes"] and m["verdict"] == "PASS":
                lines.append("  no loop or loss fault seen")
        return "\n".join(lines)

    # -------------------------------------------------------------------- hand-off to diagnose()
    def captured(self) -> dict | None:
        """The pieces diagnose() needs, or None when not enough was seen."""
        obs = self.observer
        model = next((m for m in obs.models.values() if m.train_forwards and m.initial is not None), None)
        if model is None or not obs.capture_x or not obs.loss_calls:
            return None
        x = torch.cat(obs.capture_x).cpu()
        y = torch.cat(obs.capture_y).cpu()
        call = next(c for c in obs.loss_calls.values())
        opt = next(iter(obs.opts.values()), None)
        initial = model.initial.cpu()
        factory = lambda: copy.deepcopy(initial)  # noqa: E731  the model's state at its first forward
        factory.__name__ = model.name
        optimizer = None
        if opt is not None:
            cls = getattr(torch.optim, opt.name, None)
            optimizer = (lambda params: cls(params, **opt.defaults)) if cls is not None else None  # noqa: E731
        return {"model": factory, "images": x, "labels": y, "loss": call["loss"], "optimizer": optimizer,
                "describe": f"model {model.name} as at its first forward ({model.site}); {len(y)} images and labels "
                            f"from the first batches; the loss {call['func']} with {call['options'] or 'no options'}; "
                            + (f"optimizer {opt.name}({opt.defaults})" if opt else "the recipe's optimizer")}

    def diagnose(self, epochs: int = 3, progress: bool = False) -> dict | None:
        """diagnose() on the captured pieces (split 3:1 into train and val); None when nothing was captured."""
        from torch.utils.data import TensorDataset

        from ..diagnosis import DiagnosisConfig, diagnose
        got = self.captured()
        if got is None:
            return None
        x, y = got["images"], got["labels"]
        c = self.observer.num_classes or int(y.max()) + 1
        n_train = math.ceil(0.75 * len(y))
        cfg = DiagnosisConfig(epochs=epochs, device="cpu" if x.device.type == "cpu" else "auto", progress=progress,
                              probe_per_class=1, control=True)
        result = diagnose(got["model"], train=TensorDataset(x[:n_train], y[:n_train]),
                          val=TensorDataset(x[n_train:], y[n_train:]), loss_fn=got["loss"], optimizer=got["optimizer"],
                          num_classes=c, config=cfg, name=got["model"].__name__)
        result["captured"] = got["describe"]
        return result


def watch(num_classes: int | None = None, capture: bool = True) -> Watch:
    """A context manager that watches the training inside it (see the module docstring)."""
    return Watch(num_classes=num_classes, capture=capture)
