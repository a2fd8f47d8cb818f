"""Watch the user's own training script, unchanged: faults in the loop and in the loss.

    python -m tinyimagenet.watch [--json FILE] [--num-classes C] [--no-diagnose] SCRIPT.py [ARGS...]
    from tinyimagenet.watch import watch
    with watch() as w: <training loop>
    print(w.report())

Modules: `observe` (process-wide hooks: module forwards, optimizer steps, a TorchFunctionMode on
backward, loss and softmax calls), `rules` (observations -> causes with file:line), `session`
(the context manager, report, JSON and the hand-off to diagnose()), `__main__` (the command).
"""
from .session import Watch, watch

__all__ = ["Watch", "watch"]
