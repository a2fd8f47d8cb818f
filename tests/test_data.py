"""Tests for the data layer: tinyimagenet.data, cache and synthetic.

What this checks
----------------
On the real subset (../shared/data/tiny-imagenet-200-subset.zip, see its README): split sizes,
the sorted-wnid label order, val labels taken from val_annotations.txt (not the folder: the
"every val image is class 0" trap), grayscale JPEGs loading as RGB, the unlabelled test split,
the decoded cache being pixel-exact, reused, rebuilt on change and never half-written, and the
MEAN/STD constants. The val folder in each accepted layout (official `val/images`; rearranged
into `val/<wnid>/images` with the annotation file, agreeing or not; rearranged without it).
Broken copies of synthetic data check that each bad input names the offending path.
Download/extraction and `load_data`'s download policy are in tests/test_download.py; the
batched loader (crop/flip, Normalizer, BatchLoader) in tests/test_loaders.py.

Run:  PYTHONPATH=. pytest -q tests/test_data.py   (CPU, about a minute on 2 cores; the real-data
tests skip when ../shared/data is absent)
"""
from __future__ import annotations

import os
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import ToTensor

from tinyimagenet import cache
from tinyimagenet.cache import cached_images, load_split
from tinyimagenet.data import (FOLDER_NAME, MEAN, STD, DatasetError, TinyImageNet,
                               per_class_indices, require_labels)
from tinyimagenet.synthetic import make_subset_copy


def _pil_rgb(path) -> np.ndarray:  # the reference decode: plain PIL, no project code
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _files(folder: Path) -> list[str]:  # dot-files too: the temporaries are hidden ones
    return sorted(os.listdir(folder)) if folder.exists() else []


def _modes(ds: TinyImageNet) -> tuple[Counter, list[int]]:
    """PIL mode counts of the dataset's files, and the indices of the grayscale ones."""
    modes, gray = Counter(), []
    for i, (path, _) in enumerate(ds.samples):
        with Image.open(path) as img:  # open() reads the header only: cheap
            modes[img.mode] += 1
            if img.mode == "L":
                gray.append(i)
    return modes, gray


@pytest.fixture(scope="module")
def real_train(real_root):
    return TinyImageNet(real_root, "train")


@pytest.fixture(scope="module")
def real_val(real_root):
    return TinyImageNet(real_root, "val")


@pytest.fixture
def syn_copy(synthetic_root, tmp_path) -> Path:
    """A private copy of the synthetic data that a test may break."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "copy" / "tiny-imagenet-200"))


# ------------------------------------------------------------------------------ real subset
def test_real_sizes_and_sorted_class_order(real_root, real_train, real_val):
    test = TinyImageNet(real_root, "test")
    assert (len(real_train), len(real_val), len(test)) == (20_000, 10_000, 500)
    wnids = (real_root / "wnids.txt").read_text().split()
    assert len(real_train.classes) == 200 and real_train.classes == sorted(wnids)
    assert wnids != sorted(wnids)  # the file's own order must not be used for labels
    assert real_val.classes == real_train.classes
    assert real_val.class_to_idx == real_train.class_to_idx
    assert real_train.class_names[real_train.class_to_idx["n01443537"]] == "goldfish"


def test_real_val_labels_come_from_annotations(real_root, real_val):
    lines = (real_root / "val" / "val_annotations.txt").read_text().splitlines()
    wnid_of = dict(line.split("\t")[:2] for line in lines)  # file name -> wnid, parsed here
    assert {os.path.basename(p) for p, _ in real_val.samples} == set(wnid_of)
    for path, target in real_val.samples:
        assert real_val.classes[target] == wnid_of[os.path.basename(path)], path
    first = [t for p, t in real_val.samples if os.path.basename(p) == "val_0.JPEG"]
    assert first == [real_val.class_to_idx["n03444034"]]
    # The val-folder trap would give one class 10,000 times; the truth is 50 of each.
    assert torch.bincount(torch.tensor(real_val.targets), minlength=200).tolist() == [50] * 200


def test_real_grayscale_images_load_as_rgb(real_root, real_train, real_val):
    for ds, expected in ((real_train, 380), (real_val, 168)):
        modes, gray = _modes(ds)
        assert modes["L"] == expected and set(modes) <= {"L", "RGB"}
        ds = TinyImageNet(real_root, ds.split, transform=ToTensor())
        for i in gray:
            x, _ = ds[i]
            assert x.shape == (3, 64, 64) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_real_test_split_has_no_labels(real_root, real_val):
    test = TinyImageNet(real_root, "test")
    assert set(test.targets) == {-1} and test[0][1] == -1 and not test.has_labels
    with pytest.raises(ValueError, match="test"):
        require_labels(test.targets, "test")
    require_labels(real_val.targets, "val")  # a labelled split passes


def test_real_val_cache_is_pixel_exact(val_cache, real_val):
    images, targets, ds = val_cache
    assert images.dtype == torch.uint8 and images.shape == (10_000, 64, 64, 3)
    assert targets.tolist() == real_val.targets
    reference = np.stack([_pil_rgb(p) for p, _ in ds.samples])  # all 10,000
    assert np.array_equal(images.numpy(), reference)


def test_mean_std_match_real_train_subset(real_root, tmp_path):
    images, _, _ = load_split(real_root, "train", cache_dir=tmp_path, progress=False)
    # Exact statistics from per-channel 256-bin histograms: fast, and no float copy of 1 GB.
    hist = torch.stack([torch.bincount(images[..., c].flatten(), minlength=256) for c in range(3)])
    values = torch.arange(256, dtype=torch.float64) / 255
    n = hist.sum(1, keepdim=True).double()
    mean = (hist * values).sum(1) / n[:, 0]
    std = ((hist * (values - mean[:, None]) ** 2).sum(1) / n[:, 0]).sqrt()
    assert torch.allclose(mean, torch.tensor(MEAN, dtype=torch.float64), atol=0.01), mean
    assert torch.allclose(std, torch.tensor(STD, dtype=torch.float64), atol=0.01), std


def test_per_class_keeps_first_k(real_root, real_val):
    train = TinyImageNet(real_root, "train", per_class=3)
    names = [os.path.basename(p) for p, _ in train.samples]
    assert sorted(names) == sorted(f"{w}_{k}.JPEG" for w in train.classes for k in range(3))
    val = TinyImageNet(real_root, "val", per_class=2)
    expected = [real_val.samples[i] for i in per_class_indices(real_val.targets, 2)]
    assert val.samples == expected and len(val) == 400
    assert per_class_indices([0, 1, 0, 0, 1, 2, 1], 2) == [0, 1, 2, 4, 5]
    with pytest.raises(ValueError):
        per_class_indices([0], 0)


def test_make_subset_copy_of_real_data(real_root, tmp_path):
    root = make_subset_copy(real_root, tmp_path, num_classes=3, train_per_class=5, val_per_class=2)
    train, val = TinyImageNet(root, "train"), TinyImageNet(root, "val")
    assert train.classes == val.classes == sorted((real_root / "wnids.txt").read_text().split())[:3]
    assert (len(train), len(val)) == (15, 6)
    original = set((real_root / "val" / "val_annotations.txt").read_text().splitlines())
    lines = (root / "val" / "val_annotations.txt").read_text().splitlines()
    assert len(lines) == 6 and set(lines) <= original  # whole lines kept, boxes included


# -------------------------------------------------------------------------------- the cache
def test_cache_reused_then_rebuilt_when_a_file_changes(real_root, tmp_path, monkeypatch):
    root = make_subset_copy(real_root, tmp_path / "data", num_classes=3, train_per_class=5,
                            val_per_class=2)
    cache_dir = tmp_path / "cache"
    first = np.array(cached_images(TinyImageNet(root, "val"), cache_dir, progress=False))
    [built] = _files(cache_dir)
    stamp = (cache_dir / built).stat().st_mtime_ns
    # Second call: a decode would be a bug, so make any decode fail loudly.
    with monkeypatch.context() as m:
        m.setattr(cache, "_decode", lambda path: pytest.fail(f"cache not reused: decoded {path}"))
        again = cached_images(TinyImageNet(root, "val"), cache_dir, progress=False)
    assert np.array_equal(again, first) and _files(cache_dir) == [built]
    assert (cache_dir / built).stat().st_mtime_ns == stamp
    # Replace one image (new pixels, new mtime): the next call must decode the new file.
    ds = TinyImageNet(root, "val")
    target_path, donor = ds.samples[0][0], ds.samples[1][0]
    shutil.copyfile(donor, target_path)
    os.utime(target_path, ns=(stamp + 10**9, stamp + 10**9))
    rebuilt = cached_images(TinyImageNet(root, "val"), cache_dir, progress=False)
    assert np.array_equal(rebuilt[0], _pil_rgb(donor)) and not np.array_equal(rebuilt[0], first[0])
    assert len(_files(cache_dir)) == 2 and not any(f.endswith(".tmp") for f in _files(cache_dir))


def test_truncated_jpeg_is_named_and_leaves_no_partial_cache(syn_copy, tmp_path):
    ds = TinyImageNet(syn_copy, "val")
    bad = ds.samples[5][0]
    Path(bad).write_bytes(Path(bad).read_bytes()[: os.path.getsize(bad) // 2])  # truncated
    with pytest.raises(DatasetError, match="Cannot decode") as err:
        ds[5]
    assert bad in str(err.value)
    cache_dir = tmp_path / "cache"
    with pytest.raises(DatasetError) as err:
        cached_images(TinyImageNet(syn_copy, "val"), cache_dir, progress=False)
    assert bad in str(err.value)
    assert _files(cache_dir) == []  # neither a final .npy nor a .tmp left behind


# ------------------------------------------------------------------------------- bad inputs
def test_missing_root_says_how_to_get_the_data(tmp_path):
    with pytest.raises(DatasetError) as err:
        TinyImageNet(tmp_path / "nowhere", "train")
    for needle in (str(tmp_path / "nowhere"), "download", "--data-dir"):
        assert needle in str(err.value)


def _no_wnids(root):
    (root / "wnids.txt").unlink()
    return "train", [str(root / "wnids.txt"), "missing"]


def _no_annotations(root):
    (root / "val" / "val_annotations.txt").unlink()
    return "val", [str(root / "val" / "val_annotations.txt"), "missing"]


def _no_class_folder(root):
    wnid = sorted((root / "wnids.txt").read_text().split())[3]
    shutil.rmtree(root / "train" / wnid)
    return "train", [str(root / "train" / wnid / "images"), "missing"]


def _unknown_wnid(root):
    path = root / "val" / "val_annotations.txt"
    lines = path.read_text().splitlines(keepends=True)
    parts = lines[2].split("\t")
    lines[2] = "\t".join([parts[0], "n99999999"] + parts[2:])
    path.write_text("".join(lines))
    return "val", [str(path), parts[0], "n99999999"]


def _no_val_images(root):
    shutil.rmtree(root / "val" / "images")
    return "val", [str(root / "val"), "<wnid>/images", "Re-extract"]


def _half_rearranged_without_annotations(root):
    # An interrupted rearrangement: some images moved to their class folder, the rest unlabelled.
    val = root / "val"
    name, wnid = (val / "val_annotations.txt").read_text().split("\t")[:2]
    (val / wnid / "images").mkdir(parents=True)
    shutil.move(val / "images" / name, val / wnid / "images" / name)
    (val / "val_annotations.txt").unlink()
    return "val", [str(val / "val_annotations.txt"), "missing", str(val / "images"), "no label"]


def _unknown_val_class_folder(root):
    folder = root / "val" / "n99999999" / "images"
    folder.mkdir(parents=True)
    shutil.copy2(root / "val" / "images" / "val_0.JPEG", folder / "val_1000.JPEG")
    return "val", [str(folder.parent), "wnids.txt"]


def _val_image_twice(root):
    wnid = (root / "val" / "val_annotations.txt").read_text().split("\t")[1]
    (root / "val" / wnid / "images").mkdir(parents=True)
    shutil.copy2(root / "val" / "images" / "val_0.JPEG", root / "val" / wnid / "images")
    return "val", ["val_0.JPEG", str(root / "val" / "images"), str(root / "val" / wnid / "images")]


@pytest.mark.parametrize("breaker", [_no_wnids, _no_annotations, _no_class_folder, _unknown_wnid,
                                     _no_val_images, _half_rearranged_without_annotations,
                                     _unknown_val_class_folder, _val_image_twice])
def test_broken_copy_gives_a_clear_error(syn_copy, breaker):
    split, needles = breaker(syn_copy)
    with pytest.raises(DatasetError) as err:
        TinyImageNet(syn_copy, split)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


# ------------------------------------------------------------------------------- val layouts
def _rearrange_val(root: Path) -> None:
    """What the PyPI package `tinyimagenet` does to val: every image moved to val/<wnid>/images/,
    a <wnid>_boxes.txt per class, val/images removed, val_annotations.txt kept."""
    val, boxes = root / "val", {}
    for line in (val / "val_annotations.txt").read_text().splitlines():
        name, wnid, *box = line.split("\t")
        (val / wnid / "images").mkdir(parents=True, exist_ok=True)
        shutil.move(val / "images" / name, val / wnid / "images" / name)
        boxes.setdefault(wnid, []).append("\t".join([name, *box]) + "\n")
    for wnid, lines in boxes.items():
        (val / wnid / f"{wnid}_boxes.txt").write_text("".join(lines))
    (val / "images").rmdir()


@pytest.fixture
def val_copy(real_small_root, tmp_path) -> Path:
    """A private copy of what a val load reads (wnids.txt, val/) from the 10-class real cut."""
    root = tmp_path / FOLDER_NAME
    shutil.copytree(real_small_root / "val", root / "val")
    shutil.copy2(real_small_root / "wnids.txt", root / "wnids.txt")
    return root


@pytest.mark.parametrize("layout", ["official", "rearranged", "rearranged_no_annotations"])
def test_val_layouts_give_the_same_samples_and_labels(val_copy, real_small_root, layout, tmp_path):
    # The truth, parsed here from the official copy's file and put in val_<k> order.
    rows = [line.split("\t")[:2] for line in
            (real_small_root / "val" / "val_annotations.txt").read_text().splitlines()]
    truth = sorted(map(tuple, rows), key=lambda r: int(r[0][len("val_"):-len(".JPEG")]))
    assert len(truth) == 500 and len({w for _, w in truth}) == 10
    if layout != "official":
        _rearrange_val(val_copy)
    annotations = val_copy / "val" / "val_annotations.txt"
    if layout == "rearranged_no_annotations":
        annotations.unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's own setting: a repeated warning shows once
        val = TinyImageNet(val_copy, "val")
        again = TinyImageNet(val_copy, "val", per_class=2)
        images, targets, _ = load_split(val_copy, "val", cache_dir=tmp_path / "cache", progress=False)
    assert [(Path(p).name, val.classes[t]) for p, t in val.samples] == truth
    # Same order as the official layout, so Data.val_files and the cache line up with it.
    assert again.samples == [val.samples[i] for i in per_class_indices(val.targets, 2)]
    folders = {Path(p).parent.relative_to(val_copy / "val") for p, _ in val.samples}
    if layout == "official":
        assert folders == {Path("images")}
    else:
        assert folders == {Path(w) / "images" for _, w in truth}
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if layout == "rearranged_no_annotations":  # said once for three loads, naming the absent file
        assert len(notes) == 1 and str(annotations) in notes[0] and "folder names" in notes[0]
    else:
        assert notes == []
    official = TinyImageNet(real_small_root, "val")
    assert targets.tolist() == official.targets
    for i in (0, 123, 499):  # the same pixels as the official copy's file of that name
        assert np.array_equal(images[i].numpy(), _pil_rgb(official.samples[i][0]))


def test_rearranged_val_disagreeing_with_annotations_is_refused(val_copy):
    _rearrange_val(val_copy)
    val = val_copy / "val"
    wnids = sorted(d.name for d in val.iterdir() if d.is_dir())
    moved = sorted((val / wnids[0] / "images").iterdir())[:3]  # filed under the wrong class
    for path in moved:
        shutil.move(path, val / wnids[1] / "images" / path.name)
    stray = val / wnids[2] / "images" / "val_9999.JPEG"  # an image the file does not list
    shutil.copy2(val / wnids[1] / "images" / moved[0].name, stray)
    with pytest.raises(DatasetError) as err:
        TinyImageNet(val_copy, "val")
    msg = str(err.value)
    assert str(val / "val_annotations.txt") in msg and "disagree on 4 of 501 images" in msg, msg
    for path in moved:
        assert f"{val / wnids[1] / 'images' / path.name} (annotated {wnids[0]})" in msg, msg
    stray.unlink()  # the fourth disagreement gone: still refused, now 3 of 500
    with pytest.raises(DatasetError, match="disagree on 3 of 500 images"):
        TinyImageNet(val_copy, "val")


# -------------------------------------------------------------------------------- synthetic
def test_synthetic_data_parses_like_the_real_layout(synthetic_root):
    wnids = (synthetic_root / "wnids.txt").read_text().split()
    train, val = TinyImageNet(synthetic_root, "train"), TinyImageNet(synthetic_root, "val")
    test = TinyImageNet(synthetic_root, "test", transform=ToTensor())
    assert train.classes == val.classes == sorted(wnids) and len(wnids) == 10
    assert (len(train), len(val), len(test)) == (10 * 40, 10 * 10, 10)
    assert torch.bincount(torch.tensor(val.targets)).tolist() == [10] * 10
    assert set(test.targets) == {-1}
    modes, gray = _modes(train)
    assert gray and modes["RGB"] > len(gray)  # some, not all, are grayscale JPEGs
    assert all(np.asarray(train[i][0]).shape == (64, 64, 3) for i in gray)
    assert test[0][0].shape == (3, 64, 64)
