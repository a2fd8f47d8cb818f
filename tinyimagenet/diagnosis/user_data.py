"""The user's data, read as their own code reads it, checked, and turned into the Subject's data.

    fields, checks = user_data_subject(train_loader, val_loader, 10, probe_per_class=None, batch_size=64,
                                       seed=0, device="cpu", keys=("img", "target"), iterable_cap=20_000)

What is accepted (each split on its own; README "Diagnose your own model" has the table):
- a DataLoader is iterated as given, in this process: its sampler, batch sampler, collate_fn,
  batch size and order are the user's own. A sampler-made split (SubsetRandomSampler over one
  dataset) therefore gives that split only, never the whole dataset behind it.
- a map-style Dataset (Subset and random_split included) is read index by index, in full.
- an IterableDataset (or a DataLoader over one, or any other iterable) is read up to
  `iterable_cap` samples; the report says how many were read and whether more were left.
- samples or batches (x, y), (x, y, *extra), or dicts with the usual keys (IMAGE_KEYS,
  LABEL_KEYS); `keys=(image_key, label_key)` names them (ints for positions in a tuple).
Anything else, and images that are not float N x C x H x W (channels-last is detected and named;
so are mixed image shapes, with the first index of each), is a `UserInputError` naming the split,
the sample index, what was found and the fix. Labels that are not integers are one too; integral
floats are accepted with a note; label *values* (1-based, out of range, one-hot) are left to
subject.check_labels, whose findings are a verdict (bad_labels), not an error.

Train and val are also compared by hashing the image tensors: val images that are exact copies
of train images (a leaky split) make the check `val_overlaps_train`, a decisive cause from
thresholds.OVERLAP_SHARE up (its rule: rules.judge_val_overlap). Random augmentation inside the
dataset makes copies differ, so such a leak is then not seen (an honest gap).

Shuffling: a loader whose sampler is random (RandomSampler, SubsetRandomSampler,
WeightedRandomSampler, or any sampler that gives two different orders) is reshuffled every epoch
by the diagnosis; any other loader, and an iterable, keeps the order it was read in, so sorted
batches show as they are in the user's loop. A Dataset given without a loader is shuffled.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch.utils.data import (DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler,
                              SubsetRandomSampler, WeightedRandomSampler)

from .errors import UserInputError, UserTypeError
from .thresholds import OVERLAP_SHARE
from .measure import Check
from .subject import BadLabels, TensorBatches, check_labels, probe_indices

IMAGE_KEYS = ("image", "img", "pixel_values", "input", "x")
LABEL_KEYS = ("label", "labels", "target", "y")
ITERABLE_CAP = 20_000     # samples read at most from an IterableDataset (CLI --iterable-cap)
_HINT = "name them with keys=(IMAGE, LABEL) in diagnose() or --keys IMAGE,LABEL on the command line"


def parse_keys(text: str | None) -> tuple | None:
    """'img,target' -> ('img', 'target'); '0,2' -> (0, 2) (tuple positions). None stays None."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2 or not all(parts):
        raise UserInputError(f"--keys {text!r}: expected IMAGE,LABEL, e.g. --keys img,target or --keys 0,2")
    return tuple(int(p) if p.isdigit() else p for p in parts)


def _describe(obj) -> str:
    if torch.is_tensor(obj):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, Mapping):
        return f"a dict with keys {sorted(map(str, obj))}"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)}"
    return f"a {type(obj).__module__}.{type(obj).__name__}"


def split_sample(sample, keys, where: str):
    """(image, label) of one sample or batch, by position or dict key; UserInputError otherwise."""
    if isinstance(sample, Mapping):
        if keys is not None:
            missing = [k for k in keys if k not in sample]
            if missing:
                raise UserInputError(f"{where} is a dict with keys {sorted(map(str, sample))}: no {missing[0]!r} "
                                     f"(from keys={tuple(keys)})")
            return sample[keys[0]], sample[keys[1]]
        image = next((k for k in IMAGE_KEYS if k in sample), None)
        label = next((k for k in LABEL_KEYS if k in sample), None)
        if image is None or label is None:
            raise UserInputError(f"{where} is a dict with keys {sorted(map(str, sample))}: expected an image key "
                                 f"({', '.join(IMAGE_KEYS)}) and a label key ({', '.join(LABEL_KEYS)}); {_HINT}")
        return sample[image], sample[label]
    if isinstance(sample, (tuple, list)) and len(sample) >= 2:
        if keys is not None:
            if not all(isinstance(k, int) and 0 <= k < len(sample) for k in keys):
                raise UserInputError(f"{where} is {_describe(sample)}: keys={tuple(keys)} must be positions "
                                     f"0..{len(sample) - 1} for a tuple (names are for dict samples)")
            return sample[keys[0]], sample[keys[1]]
        return sample[0], sample[1]
    raise UserInputError(f"{where} is {_describe(sample)}: expected (image, label), (image, label, *extra) or a "
                         f"dict with an image key ({', '.join(IMAGE_KEYS)}) and a label key ({', '.join(LABEL_KEYS)})")


def _as_tensor(value, what: str, where: str) -> torch.Tensor:
    if torch.is_tensor(value):
        return value
    if isinstance(value, str) or (isinstance(value, (list, tuple)) and value and isinstance(value[0], str)):
        raise UserInputError(f"{where}: the {what} is text ({str(value)[:40]!r}); labels must be class indices "
                             "0..C-1 (map each class name to its index)")
    if type(value).__module__.startswith("PIL"):
        raise UserInputError(f"{where}: the {what} is a PIL image; add transforms.ToTensor() to the dataset's transform")
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise UserInputError(f"{where}: the {what} is {_describe(value)}, which is not a tensor, array or number") from None


# ------------------------------------------------------------------------------------- reading
class _Reader:
    """Collects images and labels of one split, remembering the first position of each image shape."""

    def __init__(self, split: str, keys):
        self.split, self.keys = split, keys
        self.xs, self.ys, self.first_of_shape, self.n = [], [], {}, 0

    def add(self, item, batched: bool) -> None:
        where = f"{self.split} {'batch starting at sample' if batched else 'sample'} {self.n}"
        x, y = split_sample(item, self.keys, where)
        x, y = _as_tensor(x, "image", where), _as_tensor(y, "label", where)
        if not batched:
            x, y = x.unsqueeze(0), y.reshape(1, *y.shape)
        elif y.ndim == 0 or len(y) != len(x):
            raise UserInputError(f"{where}: {len(x)} images but labels of shape {tuple(y.shape)}")
        self.first_of_shape.setdefault(tuple(x.shape[1:]), self.n)
        self.xs.append(x)
        self.ys.append(y)
        self.n += len(x)

    def result(self, source: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n == 0:
            raise UserInputError(f"the {self.split} split is empty: no samples read from {source}")
        if len(self.first_of_shape) > 1:
            raise _mixed_shapes(self.split, self.first_of_shape, "in the order read")
        return torch.cat(self.xs), torch.cat(self.ys)


def _mixed_shapes(split: str, first_of_shape: dict, order: str) -> UserInputError:
    listing = ", ".join(f"{shape} first at sample {i}" for shape, i in first_of_shape.items())
    channels_only = len({s[1:] for s in first_of_shape}) == 1
    fix = ("grayscale (or RGBA) files among RGB ones: open each with Image.open(path).convert('RGB')"
           if channels_only else "resize every image to one size (transforms.Resize((H, W)))")
    return UserInputError(f"{split} images differ in shape: {listing} ({order}); {fix}")


def _scan_shapes(dataset, split: str, keys) -> dict:
    """First index of each image shape in a map-style dataset (after a collate failed on mixed shapes)."""
    found = {}
    for i in range(len(dataset)):
        x, _ = split_sample(dataset[i], keys, f"{split} sample {i}")
        found.setdefault(tuple(_as_tensor(x, "image", f"{split} sample {i}").shape), i)
    return found


def _shuffles(loader: DataLoader) -> bool:
    """Does this loader give a new order every pass? Known random samplers, else two passes compared."""
    if isinstance(loader.dataset, IterableDataset):
        return False
    sampler = loader.batch_sampler if loader.batch_size is None and loader.batch_sampler is not None \
        else loader.sampler
    if isinstance(sampler, (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)):
        return True
    if isinstance(sampler, SequentialSampler):
        return False
    return list(iter(sampler)) != list(iter(sampler))  # indices only: cheap


def read_split(data, split: str, *, keys=None, iterable_cap: int = ITERABLE_CAP):
    """(images, labels, batch size or None, shuffled, notes) of one split, read as the user's code reads it."""
    notes, reader = [], _Reader(split, keys)
    iterable = isinstance(data, IterableDataset) or isinstance(getattr(data, "dataset", None), IterableDataset)
    if isinstance(data, DataLoader):
        kind = "DataLoader over an IterableDataset" if iterable else "DataLoader"
        batched = data.batch_sampler is not None  # False: batch_size=None, samples come one by one
        try:
            for batch in data:
                reader.add(batch, batched=batched)
                if iterable and reader.n >= iterable_cap:
                    break
        except RuntimeError as err:
            if "stack expects each tensor to be equal size" not in str(err) or iterable:
                raise
            raise _mixed_shapes(split, _scan_shapes(data.dataset, split, keys),
                                "indices of the DataLoader's dataset") from None
        x, y = reader.result(f"the {kind}")
        batch_size = data.batch_size or (len(reader.xs[0]) if batched else None)
        shuffled = _shuffles(data)
        order = "predicted in the order read" if split != "train" else \
            "reshuffled every epoch, as its sampler does" if shuffled else "kept in the order it gave"
        if not iterable:
            notes.append(f"{split}: {len(y)} samples read through your {kind} (its sampler, batch sampler and "
                         f"collate_fn; batch size {batch_size}), {order}")
    elif iterable or (hasattr(data, "__iter__") and not hasattr(data, "__getitem__")):
        iterable, kind = True, type(data).__name__
        for item in data:
            reader.add(item, batched=False)
            if reader.n >= iterable_cap:
                break
        x, y = reader.result(f"the {kind}")
        batch_size, shuffled = None, False
    elif isinstance(data, Dataset) or hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        for i in range(len(data)):
            reader.add(data[i], batched=False)
        x, y = reader.result(f"the {type(data).__name__} (len 0)")
        batch_size, shuffled = None, True
        notes.append(f"{split}: {len(y)} samples read from your {type(data).__name__} by index; "
                     + ("its batches shuffled every epoch, as DataLoader(shuffle=True) does" if split == "train"
                        else "predicted in index order"))
    else:
        raise UserTypeError(f"{split} data is {_describe(data)}: expected a DataLoader, a map-style Dataset "
                            "(Subset and random_split included) or an IterableDataset")
    if iterable:
        capped = len(y) >= iterable_cap
        x, y = x[:iterable_cap], y[:iterable_cap]
        notes.append(f"{split}: your {kind}, read up to the cap of {iterable_cap:,} samples (iterable_cap, "
                     "--iterable-cap): " + ("stopped at the cap, it may hold more" if capped else f"all {len(y):,} read")
                     + "; kept in the order it gave")
    return _checked_images(x, split, notes), _checked_labels(y, split, notes), batch_size, shuffled, notes


def _checked_images(x: torch.Tensor, split: str, notes: list) -> torch.Tensor:
    shape = tuple(x.shape[1:])
    if x.ndim == 3:
        raise UserInputError(f"{split} images are {shape[0]} x {shape[1]} with no channel dimension: give "
                             "C x H x W tensors (x.unsqueeze(0) for grayscale, or transforms.ToTensor())")
    if x.ndim != 4:
        raise UserInputError(f"{split} images have shape {shape}: expected C x H x W tensors (float)")
    if shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4):
        raise UserInputError(f"{split} images are height x width x channels {shape} (channels last, as numpy/PIL "
                             "give them): give C x H x W, e.g. transforms.ToTensor() or "
                             "torch.from_numpy(a).permute(2, 0, 1).float() / 255")
    if not x.is_floating_point():
        raise UserInputError(f"{split} images are {x.dtype} {shape}, not float: use transforms.ToTensor() "
                             "(scales to [0, 1]) or x.float() / 255, then Normalize(mean, std)")
    if x.dtype != torch.float32:
        notes.append(f"{split} images are {x.dtype}: fed to the model as float32")
    return x.float()


def _checked_labels(y: torch.Tensor, split: str, notes: list) -> torch.Tensor:
    if y.dtype == torch.bool or y.is_complex():
        raise UserInputError(f"{split} labels are {y.dtype}: give integer class indices 0..C-1")
    if y.is_floating_point() and y.ndim == 1:
        bad = (~torch.isfinite(y) | (y != y.round())).nonzero().flatten()
        if len(bad):
            i = int(bad[0])
            raise UserInputError(f"{split} labels are not integers: sample {i} has label {float(y[i]):g} "
                                 f"({len(bad)} such); give class indices 0..C-1 (soft labels: y.argmax())")
        notes.append(f"{split} labels are {y.dtype} with integral values: read as class indices (int64)")
        return y.long()
    return y


# ------------------------------------------------------------------------------- the subject
def image_hashes(x: torch.Tensor) -> list[bytes]:
    return [hashlib.blake2b(img.contiguous().numpy().tobytes(), digest_size=16).digest() for img in x.cpu()]


def overlap_check(train_x: torch.Tensor, val_x: torch.Tensor, shown: int = 5) -> Check:
    """Val images that are exact copies of train images (the same tensor, by hash)."""
    first_in_train = {}
    for i, h in enumerate(image_hashes(train_x)):
        first_in_train.setdefault(h, i)
    pairs = [(j, first_in_train[h]) for j, h in enumerate(image_hashes(val_x)) if h in first_in_train]
    share = len(pairs) / max(1, len(val_x))
    examples = ", ".join(f"val {j} = train {i}" for j, i in pairs[:shown])
    status = "fail" if share >= OVERLAP_SHARE else "warn" if pairs else "pass"
    detail = (f"{len(pairs)} of {len(val_x)} val images ({100 * share:.1f}%) are exact copies of train images "
              f"(hashes of the image tensors, positions in the order read)")
    if pairs:
        detail += (f", e.g. {examples}: val accuracy on them measures memory, not learning, and is no evidence "
                   "that the model learns; make the splits disjoint (one index list each, split before sampling)")
    return Check("val_overlaps_train", status, detail,
                 {"share": share, "count": len(pairs), "pairs": pairs[:shown]})


def user_data_subject(train, val, num_classes, *, probe_per_class, batch_size, seed, device, keys=None,
                      iterable_cap: int = ITERABLE_CAP) -> tuple[dict, dict]:
    """(the Subject's data fields, checks to report) from the user's splits; BadLabels first."""
    tx, ty, loader_bs, shuffled, notes = read_split(train, "train", keys=keys, iterable_cap=iterable_cap)
    vx, vy, _, _, val_notes = read_split(val, "val", keys=keys, iterable_cap=iterable_cap)
    if tx.shape[1:] != vx.shape[1:]:
        raise UserInputError(f"train images are {tuple(tx.shape[1:])} but val images {tuple(vx.shape[1:])}: "
                             "give both splits the same transform")
    problems = check_labels(ty, num_classes, "train") + check_labels(vy, num_classes, "val")
    if problems:
        raise BadLabels("; ".join(problems))
    checks = {"user_data": Check("user_data", "note", "; ".join(notes + val_notes))}
    overlap = overlap_check(tx, vx)
    checks[overlap.name] = overlap
    ty, vy = ty.long(), vy.long()
    probe = probe_indices(ty, num_classes, probe_per_class)
    keep = torch.ones(len(ty), dtype=torch.bool)
    keep[probe] = False
    bs = loader_bs or batch_size
    px, py, tx, ty = tx[probe].to(device), ty[probe], tx[keep].to(device), ty[keep]  # once, not per run
    vx = vx.to(device)

    def loaders(shuffle: bool | None = None):
        return (TensorBatches(tx, ty, bs, shuffle=shuffled if shuffle is None else shuffle, device=device, seed=seed),
                TensorBatches(px, py, 256, shuffle=False, device=device, drop_single=False),
                TensorBatches(vx, vy, 256, shuffle=False, device=device, drop_single=False))
    fields = dict(train_images=tx, train_y=ty, probe_y=py, val_images=vx, val_y=vy, batch_size=bs, loaders=loaders,
                  shuffled=shuffled)
    return fields, checks


__all__ = ["IMAGE_KEYS", "LABEL_KEYS", "ITERABLE_CAP", "parse_keys", "split_sample", "read_split",
           "overlap_check", "user_data_subject"]
