"""Tests for tinyimagenet.download and the download policy of tinyimagenet.loaders.load_data.

What this checks
----------------
Download/extraction from a local archive: a plain path (the real subset,
../shared/data/tiny-imagenet-200-subset.zip), a file:// URL, extract-once in
`ensure_downloaded`, and an md5 mismatch that leaves nothing behind (no folder, no
temporaries). `load_data` downloads only into the default location or when asked
(download=True, or a local archive); an explicit data dir without data is an error naming
--download and --archive, not a download. The network is never touched: `download._fetch` is
replaced by a copy of a small synthetic archive.

Run:  PYTHONPATH=. pytest -q tests/test_download.py   (CPU, under a minute on 2 cores, mostly
extracting the real subset; the tests that need it skip when ../shared/data is absent)
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tinyimagenet import download
from tinyimagenet.data import FOLDER_NAME, DatasetError, TinyImageNet, find_root
from tinyimagenet.loaders import load_data


def _files(folder: Path) -> list[str]:  # dot-files too: the temporaries are hidden ones
    return sorted(os.listdir(folder)) if folder.exists() else []


@pytest.fixture
def small_zip(synthetic_root, tmp_path) -> Path:
    """A tiny archive in the official layout: keeps the extra extraction tests fast."""
    return Path(shutil.make_archive(str(tmp_path / "small"), "zip", synthetic_root.parent,
                                    FOLDER_NAME))


def test_download_from_local_archive_path(subset_zip, tmp_path):
    root = download.download_and_extract(tmp_path, archive=str(subset_zip), md5=None)
    assert root == tmp_path / FOLDER_NAME and _files(tmp_path) == [FOLDER_NAME]  # no temporaries
    assert len(TinyImageNet(root, "val")) == 10_000


def test_download_from_file_url(subset_zip, small_zip, tmp_path):
    # URL handling does not depend on the archive's size: the small one checks it quickly.
    dest = tmp_path / "b"
    root = download.download_and_extract(dest, archive=small_zip.as_uri(), md5=None)
    assert root == dest / FOLDER_NAME and _files(dest) == [FOLDER_NAME]
    assert len(TinyImageNet(root, "val")) == 100


def test_ensure_downloaded_extracts_once(small_zip, tmp_path):
    root = download.ensure_downloaded(tmp_path / "x", archive=str(small_zip))
    assert root == tmp_path / "x" / FOLDER_NAME and find_root(tmp_path / "x") == root
    # Present now: a second call must not touch the (here nonexistent) archive.
    assert download.ensure_downloaded(tmp_path / "x", archive=str(tmp_path / "gone.zip")) == root


def test_md5_mismatch_keeps_nothing(subset_zip, tmp_path):
    got = hashlib.md5(subset_zip.read_bytes()).hexdigest()
    assert got != download.MD5  # the subset is not the official archive
    dest = tmp_path / "dl"
    with pytest.raises(DatasetError) as err:
        download.download_and_extract(dest, archive=str(subset_zip), md5=download.MD5)
    assert download.MD5 in str(err.value) and got in str(err.value)
    assert _files(dest) == []  # no tiny-imagenet-200, no temporaries


def test_load_data_explicit_dir_without_data_is_an_error_not_a_download(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "_fetch", lambda url, dest: pytest.fail(f"downloaded {url}"))
    missing = tmp_path / "typo"
    with pytest.raises(DatasetError) as err:
        load_data(missing, progress=False)
    for needle in (str(missing), "--download", "--archive"):
        assert needle in str(err.value), (needle, str(err.value))
    assert not missing.exists()


def test_load_data_downloads_into_default_location_or_when_asked(small_zip, tmp_path, monkeypatch):
    fetched = []

    def fetch(url, dest):  # the network, played by the small archive (its md5 made "official")
        fetched.append(url)
        shutil.copyfile(small_zip, dest)

    monkeypatch.setattr(download, "_fetch", fetch)
    monkeypatch.setattr(download, "MD5", hashlib.md5(small_zip.read_bytes()).hexdigest())
    monkeypatch.setenv("TINYIMAGENET_ROOT", str(tmp_path / "default"))
    data = load_data(progress=False)  # no data_dir: the default location, fetched without asking
    assert fetched == [download.URL] and Path(data.root) == tmp_path / "default" / FOLDER_NAME
    data = load_data(tmp_path / "asked", download=True, progress=False)
    assert len(fetched) == 2 and Path(data.root) == tmp_path / "asked" / FOLDER_NAME
    assert len(data.val_targets) == 100
    data = load_data(tmp_path / "local", archive=str(small_zip), progress=False)  # extracts, no fetch
    assert len(fetched) == 2 and Path(data.root) == tmp_path / "local" / FOLDER_NAME
