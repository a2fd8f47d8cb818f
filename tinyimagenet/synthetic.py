"""Write small Tiny ImageNet copies in exactly the official folder layout.

    from tinyimagenet.synthetic import make_synthetic, make_subset_copy
    root = make_synthetic("/tmp/syn", num_classes=10, train_per_class=50, val_per_class=10)
    root = make_subset_copy("data/tiny-imagenet-200", "/tmp/small", num_classes=10,
                            train_per_class=50, val_per_class=20)

`make_synthetic` draws images with learnable class structure (a class colour and an oriented
stripe pattern, randomly shifted, with noise; some saved as grayscale JPEGs like the real data),
for tests and for the offline demo (`--synthetic`). `make_subset_copy` cuts a real copy down (fewer
classes / images) for fast tests or to ship a slice of the data to another machine. Both write
into a temporary folder and rename it into place, so a failure leaves nothing half-written.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .data import FOLDER_NAME, IMAGE_SIZE, TinyImageNet, find_root


def _atomic_folder(out_dir, build) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / FOLDER_NAME
    if final.exists():
        raise FileExistsError(f"{final} already exists; remove it or choose another folder.")
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out_dir))
    try:
        build(tmp)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _class_image(rng: np.random.Generator, colour: np.ndarray, angle: float, freq: float) -> np.ndarray:
    """One 64x64 RGB image of a class: its colour and stripe orientation, a random phase and shift."""
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    shift = rng.uniform(-6, 6, size=2)
    proj = (xx + shift[0]) * np.cos(angle) + (yy + shift[1]) * np.sin(angle)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * proj + rng.uniform(0, 2 * np.pi))
    img = colour[None, None, :] * (0.55 + 0.45 * stripes[..., None])
    img = img + rng.normal(0, 0.08, size=img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_synthetic(out_dir, num_classes: int = 10, train_per_class: int = 50,
                   val_per_class: int = 10, test_images: int = 10, grayscale_every: int = 20,
                   seed: int = 0) -> Path:
    """Create `out_dir/tiny-imagenet-200` with synthetic but learnable classes; returns its path."""
    rng = np.random.default_rng(seed)
    wnids = [f"n{90000000 + 7919 * i:08d}" for i in range(num_classes)]
    colours = rng.uniform(0.15, 1.0, size=(num_classes, 3))
    angles = np.linspace(0, np.pi, num_classes, endpoint=False)
    freqs = rng.uniform(0.05, 0.2, size=num_classes)
    count = [0]

    def save(arr: np.ndarray, path: Path) -> None:
        count[0] += 1
        img = Image.fromarray(arr)
        if count[0] % grayscale_every == 0:  # like the real data: some JPEGs are mode "L"
            img = img.convert("L")
        img.save(path, quality=90)

    def build(root: Path) -> None:
        order = list(rng.permutation(num_classes))  # wnids.txt is not sorted in the real data
        (root / "wnids.txt").write_text("".join(f"{wnids[i]}\n" for i in order))
        (root / "words.txt").write_text("".join(f"{w}\tsynthetic class {i}, extra name\n"
                                                for i, w in enumerate(wnids)))
        for c, wnid in enumerate(wnids):
            folder = root / "train" / wnid / "images"
            folder.mkdir(parents=True)
            boxes = []
            for k in range(train_per_class):
                name = f"{wnid}_{k}.JPEG"
                save(_class_image(rng, colours[c], angles[c], freqs[c]), folder / name)
                boxes.append(f"{name}\t0\t0\t63\t63\n")
            (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
        (root / "val" / "images").mkdir(parents=True)
        labels = rng.permutation(np.repeat(np.arange(num_classes), val_per_class))
        lines = []
        for k, c in enumerate(labels):
            save(_class_image(rng, colours[c], angles[c], freqs[c]), root / "val" / "images" / f"val_{k}.JPEG")
            lines.append(f"val_{k}.JPEG\t{wnids[c]}\t0\t0\t63\t63\n")
        (root / "val" / "val_annotations.txt").write_text("".join(lines))
        (root / "test" / "images").mkdir(parents=True)
        for k in range(test_images):
            c = rng.integers(num_classes)
            save(_class_image(rng, colours[c], angles[c], freqs[c]), root / "test" / "images" / f"test_{k}.JPEG")

    return _atomic_folder(out_dir, build)


def make_subset_copy(src_root, out_dir, num_classes: int | None = None,
                     train_per_class: int | None = None, val_per_class: int | None = None,
                     test_images: int = 0) -> Path:
    """Copy the first `num_classes` sorted classes and the first K images per class of each split."""
    src = find_root(src_root)
    train = TinyImageNet(src, "train", per_class=train_per_class)
    val = TinyImageNet(src, "val", per_class=val_per_class)
    keep = set(train.classes[:num_classes] if num_classes else train.classes)

    def build(root: Path) -> None:
        wnids = [w for w in (src / "wnids.txt").read_text().split() if w in keep]
        (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))  # official order kept
        if (src / "words.txt").is_file():
            shutil.copy2(src / "words.txt", root / "words.txt")
        for path, t in train.samples:
            wnid = train.classes[t]
            if wnid in keep:
                dst = root / "train" / wnid / "images" / Path(path).name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dst)
        (root / "val" / "images").mkdir(parents=True)
        kept_val = {Path(p).name for p, t in val.samples if val.classes[t] in keep}
        annotations = (src / "val" / "val_annotations.txt").read_text().splitlines(keepends=True)
        lines = [line for line in annotations if line.split("\t")[0] in kept_val]
        for name in kept_val:
            shutil.copy2(src / "val" / "images" / name, root / "val" / "images" / name)
        (root / "val" / "val_annotations.txt").write_text("".join(lines))
        (root / "test" / "images").mkdir(parents=True)
        test = TinyImageNet(src, "test").samples[:test_images] if test_images else []
        for path, _ in test:
            shutil.copy2(path, root / "test" / "images" / Path(path).name)

    return _atomic_folder(out_dir, build)

