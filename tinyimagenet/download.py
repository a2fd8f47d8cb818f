"""Fetch and extract the official Tiny ImageNet archive, or use a local copy of it.

    from tinyimagenet.download import ensure_downloaded
    root = ensure_downloaded("data")                                  # official URL, md5 checked
    root = ensure_downloaded("data", archive="/mnt/tiny-imagenet-200.zip")   # offline / mirror

Extraction goes to a temporary folder beside the destination and is renamed into place only when
complete, so an interrupted or failed download never leaves a half-written dataset. Under
torch.distributed only rank 0 downloads; the other ranks wait at a barrier.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from .layout import ENV_ROOT, FOLDER_NAME, DatasetError, find_root

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
SIZE = 248_100_043


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, dest: Path) -> None:
    """Stream `url` into `dest` with a progress bar."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {url}") as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except OSError as err:
        raise DatasetError(
            f"Could not download {url}: {err}. If this machine is offline, fetch "
            f"{FOLDER_NAME}.zip elsewhere and pass archive=PATH (--archive PATH), or extract it "
            f"and point --data-dir or ${ENV_ROOT} at it."
        ) from err


def _local_path(archive: str) -> Path | None:
    if archive.startswith("file://"):
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(archive).path))
    if "://" not in archive:
        return Path(archive).expanduser()
    return None


def extract_archive(zip_path: Path, parent: Path) -> Path:
    """Extract `zip_path` (which holds `tiny-imagenet-200/`) to `parent/tiny-imagenet-200` atomically."""
    final = parent / FOLDER_NAME
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}.extract-", dir=parent))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                for member in zf.namelist():  # refuse absolute paths and ".." (zip slip)
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise DatasetError(f"{zip_path}: unsafe path {member!r} in archive.")
                zf.extractall(tmp)
        except zipfile.BadZipFile as err:
            raise DatasetError(f"{zip_path} is not a valid zip archive ({err}): pass the path of "
                               f"{FOLDER_NAME}.zip, or download it again if it is that file.") from err
        inner = tmp / FOLDER_NAME
        if not (inner / "wnids.txt").is_file():
            raise DatasetError(f"{zip_path} does not contain {FOLDER_NAME}/wnids.txt: not a Tiny "
                               "ImageNet archive.")
        os.replace(inner, final)  # atomic on one filesystem; fails if `final` appeared meanwhile
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_and_extract(parent: str | os.PathLike, url: str = URL, md5: str | None = "auto",
                         archive: str | None = None) -> Path:
    """Put Tiny ImageNet at `parent/tiny-imagenet-200` from `archive` (path or file:// URL) or `url`.

    `md5="auto"` checks the official checksum when downloading the official URL and nothing for a
    local archive or a mirror (a cut or repacked copy has its own checksum); pass a checksum to
    check any source, None to check none. A mismatch raises and keeps nothing.
    """
    if md5 == "auto":
        md5 = MD5 if not archive and url == URL else None
    parent = Path(parent).expanduser()
    parent.mkdir(parents=True, exist_ok=True)
    local = _local_path(archive) if archive else None
    if archive and local is None:  # a mirror URL: download it like the official one
        url, archive = archive, None
    part = None
    try:
        if local is not None:
            if not local.is_file():
                raise DatasetError(f"Archive {local} does not exist: pass the path of "
                                   f"{FOLDER_NAME}.zip (or a file:// URL).")
            zip_path = local
        else:
            fd, name = tempfile.mkstemp(prefix=f".{FOLDER_NAME}.", suffix=".zip.part", dir=parent)
            os.close(fd)
            part = zip_path = Path(name)
            _fetch(url, zip_path)
        if md5 is not None:
            got = _md5(zip_path)
            if got != md5:
                raise DatasetError(f"md5 mismatch for {archive or url}: expected {md5}, got {got}. "
                                   "The file is corrupt or not the official archive; nothing was "
                                   "extracted. Download it again.")
        return extract_archive(zip_path, parent)
    finally:
        if part is not None:
            part.unlink(missing_ok=True)


def ensure_downloaded(root=None, archive: str | None = None, url: str = URL,
                      md5: str | None = "auto") -> Path:
    """The dataset folder under `root`, downloading/extracting it first if it is absent.

    `md5="auto"`: the official checksum for the official URL, no check for a local archive.
    """
    if root is None:
        root = os.environ.get(ENV_ROOT) or Path("data")
    root = Path(root).expanduser()
    try:
        return find_root(root)
    except DatasetError:
        pass
    parent = root.parent if root.name == FOLDER_NAME else root
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    if not distributed or dist.get_rank() == 0:
        try:
            download_and_extract(parent, url=url, md5=md5, archive=archive)
        finally:
            if distributed:
                dist.barrier()  # release the other ranks even when the download failed
    else:
        dist.barrier()
    return find_root(root)
