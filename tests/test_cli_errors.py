"""Bad input to the command lines ends in one line `error: ...` on stderr and exit code 2.

What this checks
----------------
`python quick_diagnosis.py` and `python -m tinyimagenet.train`, each run as a subprocess from the
repository root, on input that cannot work: an `--archive` that is not a zip file, a `--data-dir`
that does not exist (which must be an error naming it, not a 248 MB download into a new folder),
and (train) an invalid option value. Each must exit 2, as argparse does for a bad option, with
stderr a single `error:` line naming the offending path or option, and leave nothing behind.
All of them fail before any data is decoded or model trained: a few seconds each, mostly
`import torch`.

Run:  pytest -q tests/test_cli_errors.py   (CPU, about half a minute on 2 cores)
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLIS = {
    "quick_diagnosis": [sys.executable, "quick_diagnosis.py", "--device", "cpu", "--no-progress"],
    "train": [sys.executable, "-m", "tinyimagenet.train", "--device", "cpu", "--no-progress"],
}


def _run(cli: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = CLIS[cli] + args + (["--out", str(tmp_path / "out")] if cli == "train" else [])
    env = {**os.environ, "PYTHONPATH": str(REPO),
           # The default data location is empty, so nothing is found there by accident.
           "TINYIMAGENET_ROOT": str(tmp_path / "default"),
           "TINYIMAGENET_CACHE": str(tmp_path / "cache"),
           # Should a regression start a download, it fails at once instead of waiting on a
           # network these machines do not have (urllib honours the proxy variables).
           "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_archive_that_is_not_a_zip(cli, tmp_path):
    bad = tmp_path / "tiny-imagenet-200.zip"
    bad.write_text("this is not a zip archive\n")
    proc = _run(cli, ["--archive", str(bad)], tmp_path)
    _assert_one_line_error(proc, str(bad), "not a valid zip")
    default = tmp_path / "default"
    assert not default.exists() or os.listdir(default) == []  # no partial extraction left
    assert not (tmp_path / "out").exists()  # failed before the run wrote anything


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_nonexistent_data_dir_is_an_error_not_a_download(cli, tmp_path):
    missing = tmp_path / "nonexistent"
    proc = _run(cli, ["--data-dir", str(missing)], tmp_path)
    _assert_one_line_error(proc, str(missing), "--download", "--archive")
    assert not missing.exists()  # nothing created, nothing downloaded


def test_train_invalid_option_value_exits_2(tmp_path):
    # A ValueError from the config's validation: same one-line form and code as argparse's errors.
    proc = _run("train", ["--epochs", "0"], tmp_path)
    _assert_one_line_error(proc, "epochs")


def test_diagnosis_negative_headroom_budget_exits_2(tmp_path):
    # Checked before any data is looked for: the one line names the option and what to give.
    proc = _run("quick_diagnosis", ["--headroom-budget", "-1"], tmp_path)
    _assert_one_line_error(proc, "--headroom-budget -1", "0 or more")
