"""The diagnosis must find each injected fault by itself: inject it, run, assert the top cause.

Faults are injected the way they happen in practice, on disk (a shuffled annotation file, images
in the wrong class folders) or through the options a user would get wrong (legacy dropout, a
learning rate off by orders of magnitude). Real images (10 classes of the subset) where CPU time
allows, synthetic data elsewhere; every run is small enough for CI on two cores.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from tinyimagenet.diagnosis import DiagnosisConfig, format_report, run_diagnosis
from tinyimagenet.diagnosis.stats import above_chance, binomial_sf

SMALL = dict(models=["BaselineCNN"], epochs=2, device="cpu", progress=False, fit_batch=8,
             fit_steps=50, probe_per_class=5)


def diagnose(root, **kw) -> dict:
    cfg = DiagnosisConfig(data_dir=str(root), **{**SMALL, **kw})
    report = run_diagnosis(cfg)
    print(format_report(report))  # shown by pytest on failure: the evidence, not just the assert
    return report["models"]["BaselineCNN"]


def copy_root(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "tiny-imagenet-200"
    shutil.copytree(root, dst)
    return dst


def permute_val_annotations(root: Path, seed: int = 0) -> None:
    """Shuffle the wnid column of val_annotations.txt: every image keeps a line, labels are random."""
    path = root / "val" / "val_annotations.txt"
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    wnids = [r[1] for r in rows]
    random.Random(seed).shuffle(wnids)
    path.write_text("".join("\t".join([r[0], w, *r[2:]]) + "\n" for r, w in zip(rows, wnids)))


def permute_train_folders(root: Path, seed: int = 0) -> None:
    """Move train images at random across class folders (counts kept): labels carry no signal."""
    files = sorted((root / "train").glob("*/images/*.JPEG"))
    folders = [f.parent for f in files]
    random.Random(seed).shuffle(folders)
    staged = [f.rename(f.with_name(f.name + ".moving")) for f in files]
    for k, (f, folder) in enumerate(zip(staged, folders)):
        f.rename(folder / f"moved_{k}.JPEG")


def test_binomial_test_against_chance():
    assert binomial_sf(3, 10, 0.5) == pytest.approx(0.9453125)
    assert not above_chance(0.5, 10_000, 200).significant      # exactly chance
    assert above_chance(2.05, 2_000, 200).significant          # the legacy run's epoch 5 level
    assert not above_chance(1.0, 2_000, 200).significant       # 20 of 2000: p ~ 3e-3 > 1e-3


def _evidence(val_acc, probe_acc, label_signal="pass", control=None, n_val=500, n_probe=50, base_losses=None):
    """Evidence for 10 classes as the verdict sees it, from the numbers of a measured run."""
    from tinyimagenet.diagnosis.checks import Check
    from tinyimagenet.diagnosis.interventions import FitRun
    from tinyimagenet.diagnosis.verdict import Evidence

    base = FitRun("base", 1e-4, base_losses or [2.3, 1.0, 0.1, 0.1, 0.1], target=0.5)
    ev = Evidence(10, {"train_label_signal": Check("train_label_signal", label_signal, "1-NN ...")}, base, [],
                  [{"epoch": 1, "val_acc": val_acc, "probe_acc": probe_acc}], above_chance(val_acc, n_val, 10),
                  above_chance(probe_acc, n_probe, 10), full_data=False)
    if control is not None:
        ev.control = {"cause": "dropout_too_strong", "change": "the fixed dropout", "val_acc": control, "epochs": []}
    return ev


def test_control_gain_is_measured_above_chance():
    from tinyimagenet.diagnosis.verdict import control_gain

    # The legacy run on 10 real classes: 11.0% vs control 17.2% is 1.6x raw, 7.2x above chance.
    assert control_gain(_evidence(11.0, 10.0, control=17.2)) == pytest.approx(7.2)
    assert control_gain(_evidence(9.0, 10.0, control=17.2)) == float("inf")   # only the control learned
    assert control_gain(_evidence(11.0, 10.0, control=12.0)) == 0.0           # control not above chance


def test_val_above_chance_without_learnable_train_labels_is_not_learning():
    from tinyimagenet.diagnosis.verdict import judge_learning

    # Measured (synthetic, train images shuffled across folders): val 22% on 100, probe 4% on 50.
    learning, reasons = judge_learning(_evidence(22.0, 4.0, label_signal="warn", n_val=100))
    assert learning == "stuck" and "held-out train" in reasons[0]
    # The same val and probe, but the labels carry signal: a small probe alone proves nothing.
    assert judge_learning(_evidence(22.0, 4.0, label_signal="pass", n_val=100))[0] == "learning"


# Every model, fixed dropout, the seed recipe: pre-flight passes with no cause. On the real subset
# (README "The quick diagnosis") CNNWithSEAttention, ResidualCNN and BestModel fit the batch only at
# 10x the seed's lr: a "warn" (slow, not broken), which must not fail the pre-flight.
@pytest.mark.parametrize("name", ["BaselineCNN", "DeeperWiderCNN", "CNNWithSEAttention", "ResidualCNN", "BestModel"])
def test_fixed_configuration_passes_preflight(synthetic_root, name):
    cfg = DiagnosisConfig(data_dir=str(synthetic_root), models=[name], preflight_only=True, device="cpu",
                          progress=False, fit_batch=8, fit_steps=50)
    report = run_diagnosis(cfg)
    print(format_report(report))
    m = report["models"][name]
    checks = {c["name"]: c["status"] for c in m["checks"]}
    assert checks["fit_batch"] in ("pass", "warn"), name
    assert checks["dropout_audit"] == "pass", name
    assert checks["output_shape"] == "pass", name
    assert checks["vanishing_gradients"] == "pass", name  # zero-init residual branches are by design
    assert m["passed"] and m["causes"] == [], name


def test_legacy_dropout_is_found_on_real_images(real_small_root):
    m = diagnose(real_small_root, dropout="legacy", recipe="seed")
    assert not m["passed"]
    assert m["causes"][0]["id"] == "dropout_too_strong"
    assert any("no_dropout" in e for e in m["causes"][0]["evidence"])  # the intervention is the evidence
    audit = next(c for c in m["checks"] if c["name"] == "dropout_audit")
    assert audit["status"] == "warn" and "6 dropout layers" in audit["detail"]
    assert m["control"] is not None and m["control"]["change"] == "the fixed dropout"


def test_fixed_dropout_passes_on_real_images(real_small_root):
    m = diagnose(real_small_root, dropout="fixed", recipe="seed", control=False)
    assert m["passed"], m["reasons"]
    assert m["causes"] == []


def test_permuted_val_annotations_are_found(synthetic_root, tmp_path):
    root = copy_root(synthetic_root, tmp_path)
    permute_val_annotations(root)
    m = diagnose(root)
    assert not m["passed"] and m["learning"] == "stuck"
    assert m["causes"][0]["id"] == "val_labels_misaligned"


def test_permuted_train_labels_are_found(synthetic_root, tmp_path):
    root = copy_root(synthetic_root, tmp_path)
    permute_train_folders(root)
    m = diagnose(root)
    assert not m["passed"]
    assert m["causes"][0]["id"] == "train_labels_unlearnable"


def test_learning_rate_far_too_high_is_found(synthetic_root):
    m = diagnose(synthetic_root, lr=1.0)
    assert not m["passed"]
    assert m["causes"][0]["id"] in ("learning_rate_too_high", "non_finite_loss")


def test_learning_rate_far_too_low_is_found(synthetic_root):
    m = diagnose(synthetic_root, lr=1e-7)
    assert not m["passed"] and m["learning"] == "stuck"
    assert m["causes"][0]["id"] == "learning_rate_too_low"
    assert "lr" in m["suggestions"][0]


def test_quick_diagnosis_cli_json_and_strict(synthetic_root, tmp_path, capsys):
    import quick_diagnosis

    out = tmp_path / "report.json"
    report = quick_diagnosis.main(["--data-dir", str(synthetic_root), "--models", "BaselineCNN", "--epochs", "1",
                                   "--lr", "1e-7", "--device", "cpu", "--no-progress", "--no-control",
                                   "--fit-steps", "20", "--json", str(out), "--out", str(tmp_path / "plots"),
                                   "--strict"])
    assert report["exit_code"] == 1  # --strict and a failing model
    data = json.loads(out.read_text())
    m = data["models"]["BaselineCNN"]
    assert set(m) >= {"config", "checks", "epochs", "passed", "causes", "suggestions"}
    assert set(m["epochs"][0]) >= {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5"}
    assert all(set(c) >= {"name", "status", "detail"} for c in m["checks"])
    assert m["passed"] is False and m["causes"][0]["id"] == "learning_rate_too_low"
    assert (tmp_path / "plots" / "val_accuracy.png").is_file()
    assert "FAIL" in capsys.readouterr().out
