"""Tiny ImageNet as a torchvision-style dataset, parsed from the official folder layout.

    from tinyimagenet.data import TinyImageNet
    train = TinyImageNet("data", split="train")          # "data" or "data/tiny-imagenet-200"
    val = TinyImageNet("data", split="val", per_class=10)
    img, target = val[0]                                 # PIL RGB image (or transform(img)), int

The traps this file exists to get right (see ../shared/data/README.md):
- label indices are positions in the *sorted* wnids (ImageFolder's order) for train and val alike;
  `wnids.txt` itself is not sorted;
- val labels come from `val/val_annotations.txt`; all val images sit in one folder, so
  treating `val/` as an ImageFolder silently gives every image the same label (0.5% accuracy).
  A val folder that another tool rearranged into `val/<wnid>/images/` (what the PyPI package
  `tinyimagenet` leaves behind) is read too: its folder names are cross-checked against the
  annotation file when it is there, and are the labels (with a warning) when it is not;
- the test split has no labels: it yields target -1 and `require_labels` refuses to score it;
- about 1.8% of the JPEGs are grayscale: every image is converted to RGB.

Fast training does not decode JPEGs every epoch: see `tinyimagenet.cache`.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image
from torchvision.datasets import VisionDataset

from .download import ensure_downloaded
from .layout import DEFAULT_ROOT, ENV_ROOT, FOLDER_NAME, DatasetError, find_root  # noqa: F401 (this module's API)

SPLITS = ("train", "val", "test")
# Per-channel mean/std of the Tiny ImageNet train split (RGB, [0,1] scale). Checked against the
# real subset in tests/test_data.py (within 0.01), so a wrong constant cannot go unnoticed.
MEAN = (0.4802, 0.4481, 0.3975)
STD = (0.2770, 0.2691, 0.2821)
IMAGE_SIZE = 64


def _natural_key(path: str) -> tuple:
    # "x_10.JPEG" after "x_9.JPEG": the official files are numbered, keep their order.
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path))


def read_classes(root: Path) -> list[str]:
    """Sorted wnids from `wnids.txt` (the file itself is not sorted)."""
    path = root / "wnids.txt"
    if not path.is_file():
        raise DatasetError(f"{path} is missing: the folder is not a complete Tiny ImageNet copy; "
                           "re-extract the archive or download it again.")
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not wnids:
        raise DatasetError(f"{path} lists no classes.")
    if len(set(wnids)) != len(wnids):
        raise DatasetError(f"{path} lists some wnids twice.")
    return sorted(wnids)


def read_class_names(root: Path, classes: Sequence[str]) -> list[str]:
    """First name of each wnid from `words.txt` ("n01443537 -> goldfish"); the wnid if absent."""
    names: dict[str, str] = {}
    path = root / "words.txt"
    if path.is_file():
        wanted = set(classes)
        for line in path.read_text().splitlines():
            wnid, _, words = line.partition("\t")
            if wnid in wanted:
                names[wnid] = words.split(",")[0].strip()
    return [names.get(w, w) for w in classes]


def read_val_annotations(root: Path) -> list[tuple[str, str]]:
    """(file name, wnid) for every line of `val/val_annotations.txt`, in file order."""
    path = root / "val" / "val_annotations.txt"
    if not path.is_file():
        raise DatasetError(f"{path} is missing: it is the official source of val labels. "
                           "Re-extract the archive.")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise DatasetError(f"{path}:{number}: expected 'file<TAB>wnid<TAB>box', got {line!r}.")
        rows.append((parts[0], parts[1]))
    return rows


def _locate_val_images(root: Path, class_to_idx: dict[str, int]) -> dict[str, tuple[Path, str | None]]:
    """file name -> (path, wnid of its class folder or None) for every val image.

    Two layouts, mixed too (a rearrangement interrupted half-way): `val/images/` (the official
    archive; the folder says nothing about the label) and `val/<wnid>/images/` (what the PyPI
    package `tinyimagenet` and similar scripts leave behind; the folder is a claimed label).
    """
    val = root / "val"
    sources = [(val / "images", None)] if (val / "images").is_dir() else []
    if val.is_dir():
        sources += [(d / "images", d.name) for d in sorted(val.iterdir())
                    if d.name != "images" and not d.name.startswith(".") and (d / "images").is_dir()]
    if not sources:
        raise DatasetError(f"{val} holds no val images: expected {val / 'images'}/*.JPEG (the official "
                           f"archive) or {val}/<wnid>/images/*.JPEG (as the `tinyimagenet` PyPI package "
                           "leaves it). Re-extract the archive.")
    located: dict[str, tuple[Path, str | None]] = {}
    for folder, wnid in sources:
        if wnid is not None and wnid not in class_to_idx:
            raise DatasetError(f"{folder.parent} is not a class of {root / 'wnids.txt'} ({wnid} is "
                               "not listed there): remove it or re-extract the archive.")
        for name in _list_images(folder):
            if name in located:  # two copies: which label holds is anyone's guess
                raise DatasetError(f"{name} is in both {located[name][0].parent} and {folder}: "
                                   "delete one copy or re-extract the archive.")
            located[name] = (folder / name, wnid)
    return located


def read_val_samples(root: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) of every val image, ordered by file name (val_0, val_1, ...) whatever the layout.

    Labels come from `val/val_annotations.txt`. In a folder rearranged into `val/<wnid>/images/`
    each image's folder must agree with the file (any disagreement is an error: one of the two is
    wrong and nothing here can tell which); without the file the folder names are the labels, and
    a warning says so. The order, and so `samples`, is the same for both layouts.
    """
    val = root / "val"
    located = _locate_val_images(root, class_to_idx)
    in_folders = [name for name, (_, wnid) in located.items() if wnid is not None]
    ann_path = val / "val_annotations.txt"
    if ann_path.is_file():
        samples, annotated, disagree = [], {}, []
        for name, wnid in read_val_annotations(root):
            if wnid not in class_to_idx:
                raise DatasetError(f"{ann_path}: {name} has wnid {wnid}, which is not in wnids.txt.")
            if name in annotated:
                raise DatasetError(f"{ann_path} lists {name} twice; re-extract the archive.")
            if name not in located:
                looked = f"{val / 'images'}" + (f" or {val}/<wnid>/images" if in_folders else "")
                raise DatasetError(f"{ann_path} lists {name}, which is not in {looked}. Re-extract "
                                   "the archive.")
            annotated[name] = wnid
            path, folder_wnid = located[name]
            if folder_wnid is not None and folder_wnid != wnid:
                disagree.append(f"{path} (annotated {wnid})")
            samples.append((str(path), class_to_idx[wnid]))
        disagree += [f"{located[n][0]} (not listed)" for n in in_folders if n not in annotated]
        if disagree:
            raise DatasetError(
                f"{ann_path} and the class folders {val}/<wnid>/images disagree on {len(disagree)} of "
                f"{len(in_folders)} images, e.g. {'; '.join(disagree[:3])}. One of them is wrong; "
                "re-extract the archive for a copy whose val labels can be trusted.")
    else:
        unlabelled = [name for name, (_, wnid) in located.items() if wnid is None]
        if unlabelled or not in_folders:
            raise DatasetError(f"{ann_path} is missing, and without it the {len(unlabelled)} images "
                               f"in {val / 'images'} have no label. Re-extract the archive.")
        # Said once per folder and process (Python's default warning filter), not per split load.
        warnings.warn(f"{ann_path} is absent: val labels are taken from the folder names "
                      f"({val}/<wnid>/images/), which nothing can cross-check.")
        samples = [(str(path), class_to_idx[wnid]) for path, wnid in located.values()]
    return sorted(samples, key=lambda s: _natural_key(os.path.basename(s[0])))


def _list_images(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted((e.name for e in os.scandir(folder) if e.name.lower().endswith((".jpeg", ".jpg"))),
                  key=_natural_key)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode one JPEG as RGB (grayscale ones too); a bad file raises DatasetError naming it."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here and not mid-epoch
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"Cannot decode image {path}: {err}. The file is unreadable or "
                           "truncated; re-extract the archive (or delete this file).") from err


def per_class_indices(targets: Sequence[int], per_class: int) -> list[int]:
    """Indices of the first `per_class` samples of each class (samples keep their order)."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    seen: dict[int, int] = {}
    keep = []
    for i, t in enumerate(targets):
        if seen.get(t, 0) < per_class:
            seen[t] = seen.get(t, 0) + 1
            keep.append(i)
    return keep


def require_labels(targets, split: str = "?") -> None:
    """Refuse to score a split without labels instead of silently comparing against class 0."""
    import torch

    t = torch.as_tensor(targets)
    if t.numel() == 0 or bool((t < 0).any()):
        raise ValueError(f"The {split!r} split has no labels (targets are -1): accuracy cannot be "
                         "computed on it. Evaluate on 'val' instead.")


class TinyImageNet(VisionDataset):
    """Tiny ImageNet-200 in torchvision's VisionDataset style.

    Args:
        root: the `tiny-imagenet-200` folder or the folder that holds it (None: $TINYIMAGENET_ROOT
            or ./data/tiny-imagenet-200).
        split: "train", "val" or "test" (test has no labels: targets are -1).
        transform / target_transform: applied to the PIL image / the int target.
        download: fetch and extract the official archive into `root` when it is absent.
        archive: a local path or file:// URL of the archive to use instead of the official URL.
        per_class: keep only the first K images of each class (train/val); None keeps all.
    """

    def __init__(self, root=None, split: str = "train", transform: Callable | None = None,
                 target_transform: Callable | None = None, download: bool = False,
                 archive: str | None = None, per_class: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if download or archive:
            root = ensure_downloaded(root, archive=archive)
        root = find_root(root)
        super().__init__(str(root), transform=transform, target_transform=target_transform)
        self.split = split
        self.classes = read_classes(root)
        self.class_to_idx = {wnid: i for i, wnid in enumerate(self.classes)}
        self.class_names = read_class_names(root, self.classes)
        self.samples = self._make_samples(root)
        if per_class is not None and split != "test":
            self.samples = [self.samples[i] for i in per_class_indices(self.targets, per_class)]
        if not self.samples:
            raise DatasetError(f"No images found for split {split!r} under {root / split}.")

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    @property
    def has_labels(self) -> bool:
        return self.split != "test"

    def _make_samples(self, root: Path) -> list[tuple[str, int]]:
        if self.split == "train":
            samples = []
            for wnid in self.classes:
                folder = root / "train" / wnid / "images"
                if not folder.is_dir():
                    raise DatasetError(f"Class folder {folder} is missing ({wnid} is listed in "
                                       f"{root / 'wnids.txt'}). Re-extract the archive.")
                samples += [(str(folder / f), self.class_to_idx[wnid]) for f in _list_images(folder)]
            return samples
        if self.split == "val":
            return read_val_samples(root, self.class_to_idx)
        folder = root / "test" / "images"
        if not folder.is_dir():
            raise DatasetError(f"{folder} is missing. Re-extract the archive.")
        return [(str(folder / f), -1) for f in _list_images(folder)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        img = load_image(path)
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def extra_repr(self) -> str:
        return f"Split: {self.split}\nClasses: {len(self.classes)}"
