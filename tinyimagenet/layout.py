"""Where the dataset lives: the folder name, the environment variable, and `find_root`.

    from tinyimagenet.layout import find_root, DatasetError
    root = find_root("data")            # data/tiny-imagenet-200, or $TINYIMAGENET_ROOT when None

The bottom of the data modules: data.py and download.py both import it, and it imports neither,
so the two have one direction (data.py uses download.py, never the reverse).
"""
from __future__ import annotations

import os
from pathlib import Path

FOLDER_NAME = "tiny-imagenet-200"
ENV_ROOT = "TINYIMAGENET_ROOT"
DEFAULT_ROOT = Path("data") / FOLDER_NAME


class DatasetError(RuntimeError):
    """A problem with the data on disk; the message names the path and what to do."""


def find_root(root: str | os.PathLike | None) -> Path:
    """The `tiny-imagenet-200` folder: `root` itself or the folder inside it.

    `root=None` means `$TINYIMAGENET_ROOT` or `./data/tiny-imagenet-200`.
    """
    if root is None:
        root = os.environ.get(ENV_ROOT) or DEFAULT_ROOT
    root = Path(root).expanduser()
    for candidate in (root, root / FOLDER_NAME):
        if (candidate / "wnids.txt").is_file() or (candidate / "train").is_dir():
            return candidate
    raise DatasetError(
        f"No Tiny ImageNet at {root}: expected {root / FOLDER_NAME}/wnids.txt. Pass --download "
        f"(download=True) to fetch the official archive into it, or --archive PATH (archive=PATH) "
        f"to extract a local tiny-imagenet-200.zip there, or point --data-dir / ${ENV_ROOT} at an "
        f"extracted copy."
    )
