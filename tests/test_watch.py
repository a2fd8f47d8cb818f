"""The watcher on user-written training scripts: each planted loop or loss fault is the top cause,
healthy loops give no alarm, results are unchanged bit for bit, every hook is removed, and the
command keeps the script's exit status.

Scripts come from tests/watch_scripts.py (synthetic 5-class data, a few seconds each) and run
in-process through the command's `main()` (the same code path as `python -m tinyimagenet.watch`).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tinyimagenet.watch import watch
from tinyimagenet.watch.__main__ import main
from watch_scripts import FAULTS, HEALTHY, TEMPLATE, script_text

REPO = Path(__file__).resolve().parents[1]


def _watch_script(tmp_path, text, name="train.py", *extra):
    script = tmp_path / name
    script.write_text(text)
    out = tmp_path / "watch.json"
    status = main(["--no-diagnose", "--json", str(out), *extra, str(script)])
    return status, json.loads(out.read_text())


@pytest.mark.parametrize("cause", sorted(FAULTS))
def test_each_planted_fault_is_the_top_cause(tmp_path, cause):
    status, report = _watch_script(tmp_path, script_text(FAULTS[cause]), f"{cause}.py")
    (name, m), = report["models"].items()
    assert name == "Net" and m["verdict"] == "FAIL" and not m["passed"]
    assert m["causes"][0]["id"] == cause, [c["id"] for c in m["causes"]]
    assert any(Path(w).name.startswith(f"{cause}.py:") for w in m["causes"][0]["where"]), m["causes"][0]["where"]
    assert status == (1 if cause == "bad_labels" else 0)  # out-of-range labels make the script raise


@pytest.mark.parametrize("variant", sorted(HEALTHY))
def test_healthy_loops_pass_with_no_cause(tmp_path, variant):
    status, report = _watch_script(tmp_path, script_text(HEALTHY[variant]))
    m = report["models"]["Net"]
    assert (m["verdict"], m["causes"], status) == ("PASS", [], 0), m["causes"]
    assert m["watched"]["num_classes"] == 5  # from the model's output width


def test_results_unchanged_bit_for_bit(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TEMPLATE)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, check=True)
    watched = subprocess.run([sys.executable, "-m", "tinyimagenet.watch", "--no-diagnose", str(script)],
                             capture_output=True, text=True, env=env, check=True, cwd=tmp_path)
    lines = [ln for ln in plain.stdout.splitlines() if ln.startswith("epoch")]
    assert len(lines) == 3 and lines == [ln for ln in watched.stdout.splitlines() if ln.startswith("epoch")]


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))

    def forward(self, x):
        return self.body(x)


def _user_loop(zero_grad=True, steps=12):
    torch.manual_seed(1)
    model = UserNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 3, 4, 4), torch.randint(0, 4, (64,))
    losses = []
    for i in range(steps):
        idx = torch.randperm(64)[:16]
        if zero_grad:
            opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, torch.get_rng_state()


def test_context_manager_leaves_the_process_as_found():
    from torch.nn.modules import module as module_mod
    from torch.optim import optimizer as optimizer_mod
    step = torch.optim.lr_scheduler.LRScheduler.step
    plain_losses, plain_rng = _user_loop()
    with watch() as w:
        losses, rng = _user_loop()
    assert losses == plain_losses and torch.equal(rng, plain_rng)  # same results, no RNG consumed
    assert not module_mod._global_forward_hooks and not module_mod._global_forward_pre_hooks
    assert not optimizer_mod._global_optimizer_pre_hooks and not optimizer_mod._global_optimizer_post_hooks
    assert torch.optim.lr_scheduler.LRScheduler.step is step
    assert torch._C._len_torch_function_stack() == 0
    assert "UserNet" in w.report()


def test_context_manager_finds_missing_zero_grad_with_the_line():
    with watch() as w:
        _user_loop(zero_grad=False)
    cause = w.result()["models"]["UserNet"]["causes"][0]
    assert cause["id"] == "gradients_not_zeroed" and "test_watch.py:" in cause["where"][0]


def _run_status(tmp_path, body):
    script = tmp_path / "s.py"
    script.write_text(TEMPLATE.replace('    print(f"epoch', '    pass  # print(f"epoch') + body)
    return main(["--no-diagnose", str(script)])


def test_cli_keeps_exit_status_and_reports_after_failure(tmp_path, capsys):
    assert _run_status(tmp_path, "import sys\nsys.exit(3)\n") == 3
    assert "watch: Net: PASS" in capsys.readouterr().out
    assert _run_status(tmp_path, "raise RuntimeError('boom')\n") == 1
    out = capsys.readouterr()
    assert "watch: Net: PASS" in out.out and "boom" in out.err
    assert _run_status(tmp_path, "raise KeyboardInterrupt\n") == 130
    assert "watch: Net:" in capsys.readouterr().out


def test_cli_passes_arguments_and_script_folder(tmp_path):
    (tmp_path / "helper_mod.py").write_text("VALUE = 7\n")
    script = tmp_path / "args.py"
    script.write_text("import sys, helper_mod\nassert sys.argv[1:] == ['--epochs', '2'] and helper_mod.VALUE == 7\n"
                      "assert __name__ == '__main__'\n")
    assert main(["--no-diagnose", str(script), "--epochs", "2"]) == 0


def test_cli_bad_script_is_one_error_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tinyimagenet.watch", str(tmp_path / "missing.py")],
                       capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr


def test_stalled_run_without_loop_fault_goes_to_diagnose(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(TEMPLATE.replace("lr=0.05", "lr=1e-6"))
    with watch() as w:
        import runpy
        runpy.run_path(str(script), run_name="__main__")
    m = w.result()["models"]["Net"]
    assert m["learning"] == "stalled" and m["causes"] == [] and m["verdict"] == "INCONCLUSIVE"
    found = w.diagnose(epochs=2)
    assert "captured" in found and "SGD" in found["captured"]
    assert found["config"]["own_loss"] and found["config"]["own_optimizer"]


def test_autograd_backward_call_is_seen_too():
    torch.manual_seed(0)
    model = UserNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 3, 4, 4), torch.randint(0, 4, (32,))
    with watch() as w:
        for _ in range(8):
            model.train()
            torch.autograd.backward(nn.functional.cross_entropy(model(x), y))  # no zero_grad
            opt.step()
    assert w.result()["models"]["UserNet"]["causes"][0]["id"] == "gradients_not_zeroed"
