"""The one exception type for bad user input to the diagnosis (data, model, loss, options).

    try:
        diagnose(MyNet, train, val, num_classes=10)
    except UserInputError as err:     # what was found, where (sample index, module, option), the fix
        print(err)

`UserInputError` is a ValueError, so code that caught ValueError before still does. The CLI
(quick_diagnosis.py) prints it as one `error:` line and exits 2. `UserTypeError` is the same for
an object of the wrong kind (also a TypeError). Bottom layer: imports nothing from the repo.
"""
from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from the user: the message names what was found, where, and the fix."""


class UserTypeError(UserInputError, TypeError):
    """A user object of the wrong kind (a model that is not an nn.Module, an Optimizer instance...)."""
