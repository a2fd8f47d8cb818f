"""The model's side of the contract: its output read as the user's code reads it, checked in seconds.

    make = reading_logits(make)                      # every model built by `make` returns its logits
    notes = check_model(raw_make, x, y, loss_fn, num_classes, device)   # before anything costly

`logits_of` reads a forward's output: a tensor as is; a tuple or list by its first element (as
`logits, features = model(x)` does); a dict by its "logits" key; an object by its `.logits`
attribute (Hugging Face outputs, torchvision's GoogLeNetOutputs). It is applied per call, so a
model whose output differs between train and eval mode (auxiliary heads in train mode only) is
read right in both. `reading_logits` installs it as a forward hook on the root module: module
names (where a cause is located) stay the user's own.

`check_model` runs the model once in train and once in eval mode on a few images, and the loss
once, and ends in one `UserInputError` naming the module and the fix for: a forward that fails
(the module that raised), an output that is not a float (batch, classes) tensor, an output
narrower than num_classes (the head named; cross-entropy would otherwise fail with "Target 4 is
out of bounds", a device-side assert on CUDA), a loss that does not return a scalar. A wider
output and a non-tensor output form are notes in the report. `check_config` refuses options
that cannot give a diagnosis (epochs < 1, fewer than 2 classes).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from .errors import UserInputError
from .measure import Check


def output_form(output) -> str:
    if torch.is_tensor(output):
        return "a tensor"
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)} (its first element read as the logits)"
    if isinstance(output, Mapping):
        return "a dict (its 'logits' read)"
    return f"a {type(output).__name__} (its .logits read)"


def logits_of(output):
    """The logits in a forward's output (tensor, tuple/list -> first, dict['logits'], .logits)."""
    if torch.is_tensor(output):
        return output
    if isinstance(output, (tuple, list)) and output:
        return logits_of(output[0])
    if isinstance(output, Mapping):
        if "logits" in output:
            return output["logits"]
        raise UserInputError(f"the model returned a dict with keys {sorted(map(str, output))}: expected a "
                             "'logits' key (or return the logits tensor itself)")
    if hasattr(output, "logits"):
        return output.logits
    raise UserInputError(f"the model returned a {type(output).__name__}: expected a logits tensor, a tuple whose "
                         "first element is the logits, a dict with 'logits', or an object with .logits")


def _tensors_in(output) -> list:
    if torch.is_tensor(output):
        return [output]
    if isinstance(output, Mapping):
        output = list(output.values())
    elif not isinstance(output, (tuple, list)):
        output = list(vars(output).values()) if hasattr(output, "__dict__") else []
    return [t for o in output for t in _tensors_in(o)]


def side_parameters(model: nn.Module, raw, logits) -> list[str]:
    """Parameters that feed only the other outputs (an auxiliary head): the diagnosis trains on the
    logits alone, so these never change in its runs, and must not read as frozen parameters."""
    others = [t for t in _tensors_in(raw) if t is not logits and t.requires_grad and t.is_floating_point()]
    if not others or not logits.requires_grad:
        return []
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    from_logits = torch.autograd.grad(logits.float().sum(), [p for _, p in named], allow_unused=True,
                                      retain_graph=True)
    from_all = torch.autograd.grad(sum(t.float().sum() for t in others), [p for _, p in named], allow_unused=True)
    return [n for (n, _), a, b in zip(named, from_logits, from_all) if a is None and b is not None]


def _logits_hook(module, args, output):
    return None if torch.is_tensor(output) else logits_of(output)


def reading_logits(make):
    """`make` whose models return their logits tensor (a forward hook on the root module)."""
    def make_reading():
        model = make()
        model.register_forward_hook(_logits_hook)
        return model
    return make_reading


def check_config(epochs: int, preflight_only: bool, num_classes) -> None:
    if not preflight_only and epochs < 1:
        raise UserInputError(f"epochs={epochs} (--epochs): the diagnosis trains for at least 1 epoch; "
                             "use --preflight-only (preflight_only=True) to stop before training")
    if num_classes is not None and (int(num_classes) != num_classes or num_classes < 2):
        raise UserInputError(f"num_classes={num_classes}: a classifier needs at least 2 classes")


def _head(model: nn.Module, width: int) -> str:
    """The last Linear/Conv layer with `width` outputs: the likely head, named as the model names it."""
    found = ""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == width or \
                isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == width:
            found = f"`{name}` = {m}"
    return found


def _forward(model: nn.Module, x: torch.Tensor, mode: str):
    """model(x) (with gradients in train mode), a failing forward named by the module that raised."""
    entered = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: entered.append(name))
             for name, m in model.named_modules() if name]
    try:
        with torch.set_grad_enabled(mode == "train"):
            return model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        where = f" in module `{entered[-1]}` ({type(model.get_submodule(entered[-1])).__name__})" if entered else ""
        raise UserInputError(f"the model's forward ({mode} mode) failed{where} on images of shape {tuple(x.shape)} "
                             f"{x.dtype}: {str(err).splitlines()[0] if str(err) else type(err).__name__}; the model "
                             "must take float N x C x H x W batches of these images") from None
    finally:
        for h in hooks:
            h.remove()


def check_model(make, x: torch.Tensor, y: torch.Tensor, loss_fn, num_classes: int, device) -> dict:
    """Notes on the model's output (a dict of Checks); UserInputError when the contract is broken."""
    device = torch.device(device)
    notes = {}
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        model = make().to(device)
        forms, side = {}, []
        for mode in ("train", "eval"):
            model.train(mode == "train")
            raw = _forward(model, x, mode)
            forms[mode] = output_form(raw)
            out = logits_of(raw)
            if mode == "train" and torch.is_tensor(out) and out.is_floating_point():
                side = side_parameters(model, raw, out)
            if not torch.is_tensor(out) or not out.is_floating_point():
                raise UserInputError(f"the model's output ({mode} mode, {forms[mode]}) is "
                                     f"{getattr(out, 'dtype', type(out).__name__)}, not float logits")
            if out.ndim != 2 or len(out) != len(x):
                raise UserInputError(f"the model's output ({mode} mode) has shape {tuple(out.shape)} for {len(x)} "
                                     "images: expected (batch, classes); flatten before the head "
                                     "(x.flatten(1)) and give one row per image")
            width = out.shape[1]
            if width < num_classes:
                head = _head(model, width)
                raise UserInputError(f"the model outputs {width} scores per image but the data has {num_classes} "
                                     f"classes (labels 0..{num_classes - 1}): its head "
                                     f"{head or '(a layer with ' + str(width) + ' outputs)'} is too narrow; build "
                                     f"it with {num_classes} outputs (num_classes={num_classes})")
        if width > num_classes:
            notes["output_width"] = Check("output_width", "note", f"the model outputs {width} scores per image for "
                                          f"{num_classes} classes: the last {width - num_classes} are never a target",
                                          {"width": width})
        if forms["train"] != "a tensor" or forms["eval"] != "a tensor":
            text = forms["train"] if forms["train"] == forms["eval"] else \
                f"in train mode {forms['train']}, in eval mode {forms['eval']}"
            extra = f"; parameters that feed only the other outputs are left out of the frozen check: " \
                    f"{', '.join(side[:6])}" if side else ""
            notes["output_form"] = Check("output_form", "note", f"the model returns {text}{extra}",
                                         {**forms, "side_params": side})
        try:
            loss = loss_fn(out.detach().float(), y)
        except Exception as err:  # noqa: BLE001 - the user's loss: whatever it raises is named as theirs
            raise UserInputError(f"the loss failed on logits {tuple(out.shape)} and labels {tuple(y.shape)} "
                                 f"{y.dtype}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; "
                                 "the loss is called as loss_fn(logits, targets)") from None
        if not torch.is_tensor(loss) or loss.numel() != 1:
            found = f"shape {tuple(loss.shape)}" if torch.is_tensor(loss) else type(loss).__name__
            raise UserInputError(f"the loss returned {found}, not a scalar tensor: reduce it (reduction='mean' or "
                                 ".mean()) and return a tensor, so backward() can run")
    return notes


__all__ = ["logits_of", "output_form", "reading_logits", "check_config", "check_model"]
