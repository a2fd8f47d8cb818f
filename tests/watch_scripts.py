"""User-style training scripts for the watcher: one healthy template, one planted fault per cause.

    from watch_scripts import FAULTS, HEALTHY, script_text
    path.write_text(script_text(FAULTS["gradients_not_zeroed"]))

The template is what a user writes: their own nn.Module (BatchNorm and dropout), a TensorDataset
of synthetic class prototypes plus noise (5 classes, 16x16; learnable within an epoch), a
DataLoader, nn.CrossEntropyLoss, SGD, a train/eval loop printing the loss. Each fault is a few
textual edits of it, as the bug would be written. Used by tests/test_watch.py and
benchmarks/watch_faults.py (recall per cause, false alarms on the healthy variants).
"""
from __future__ import annotations

TEMPLATE = '''\
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
C = 5
protos = torch.randn(C, 3, 16, 16)
y = torch.arange(C).repeat_interleave(80)
x = protos[y] + torch.randn(len(y), 3, 16, 16)
train = TensorDataset(x, y)
loader = DataLoader(train, batch_size=32, shuffle=True)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(4))
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(256, C)

    def forward(self, x):
        return self.fc(self.drop(self.conv(x).flatten(1)))


model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
criterion = nn.CrossEntropyLoss()
for epoch in range(3):
    model.train()
    for xb, yb in loader:
        opt.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        val_loss = criterion(model(x), y)
        acc = (model(x).argmax(1) == y).float().mean()
    print(f"epoch {epoch}: train loss {loss.item():.6f} val loss {val_loss.item():.6f} acc {acc.item():.4f}")
'''

FAULTS = {  # cause id -> edits (old, new) of the template
    "gradients_not_zeroed": [("        opt.zero_grad()\n", "")],
    "optimizer_not_stepping": [("        opt.step()\n", "")],
    "optimizer_not_tracking_model": [("criterion = nn.CrossEntropyLoss()\n",
                                      "criterion = nn.CrossEntropyLoss()\nmodel = Net()  # re-created after its optimizer\n")],
    "train_in_eval_mode": [("    model.train()\n", ""), ("model = Net()\n", "model = Net()\nmodel.eval()\n")],
    "eval_in_train_mode": [("    model.eval()\n", "")],
    "lr_schedule_collapsed": [("criterion = nn.CrossEntropyLoss()\n", "criterion = nn.CrossEntropyLoss()\n"
                               "sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)  # 3 epochs\n"),
                              ("        opt.step()\n", "        opt.step()\n        sched.step()\n")],
    "batches_not_shuffled": [("shuffle=True", "shuffle=False")],
    "bad_labels": [("criterion(model(xb), yb)", "criterion(model(xb), yb + 1)")],
    "train_labels_unlearnable": [("    for xb, yb in loader:\n",
                                  "    for (xb, _), (_, yb) in zip(loader, DataLoader(train, batch_size=32, shuffle=True)):\n")],
    "non_finite_loss": [("train = TensorDataset(x, y)\n", "x[7, 0, 3, 3] = float('nan')  # one corrupt image\n"
                         "train = TensorDataset(x, y)\n")],
    "outputs_are_probabilities": [("        return self.fc(self.drop(self.conv(x).flatten(1)))",
                                   "        return F.softmax(self.fc(self.drop(self.conv(x).flatten(1))), dim=1)")],
    "loss_saturates": [("criterion = nn.CrossEntropyLoss()\n",
                        "def criterion(logits, targets):\n    return F.cross_entropy(F.softmax(logits, dim=1), targets)\n")],
    "loss_ignores_labels": [("nn.CrossEntropyLoss()", "nn.CrossEntropyLoss(label_smoothing=1.0)")],
    "loss_unbounded": [("criterion = nn.CrossEntropyLoss()\n", "criterion = nn.NLLLoss()\n")],
}

HEALTHY = {  # variants a user writes on purpose: none is a fault
    "template": [],
    "scheduler_per_epoch": [("criterion = nn.CrossEntropyLoss()\n", "criterion = nn.CrossEntropyLoss()\n"
                             "sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)\n"),
                            ("    model.eval()\n", "    sched.step()\n    model.eval()\n")],
    "gradient_accumulation": [("    for xb, yb in loader:\n        opt.zero_grad()\n        loss = criterion(model(xb), yb)\n"
                               "        loss.backward()\n        opt.step()\n",
                               "    for i, (xb, yb) in enumerate(loader):\n        loss = criterion(model(xb), yb) / 2\n"
                               "        loss.backward()\n        if i % 2 == 1:\n            opt.step()\n"
                               "            opt.zero_grad()\n")],
    "model_zero_grad_keep_zeros": [("        opt.zero_grad()\n", "        model.zero_grad(set_to_none=False)\n")],
    "adam_label_smoothing": [("torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)",
                              "torch.optim.Adam(model.parameters(), lr=3e-3)"),
                             ("nn.CrossEntropyLoss()", "nn.CrossEntropyLoss(label_smoothing=0.1)")],
    "validation_with_grad_unshuffled": [("    with torch.no_grad():\n        val_loss = criterion(model(x), y)\n"
                                         "        acc = (model(x).argmax(1) == y).float().mean()\n",
                                         "    for xv, yv in DataLoader(train, batch_size=32):  # no no_grad, class-sorted\n"
                                         "        val_loss = criterion(model(xv), yv)\n"
                                         "    acc = (model(x).argmax(1) == y).float().mean()\n")],
    "grads_set_to_none_by_hand": [("        opt.zero_grad()\n", "        for p in model.parameters():\n"
                                   "            p.grad = None\n")],
    "functional_loss_log_softmax": [("criterion = nn.CrossEntropyLoss()\n",
                                     "def criterion(logits, targets):\n"
                                     "    return F.nll_loss(F.log_softmax(logits, dim=1), targets)\n")],
}


def script_text(edits) -> str:
    text = TEMPLATE
    for old, new in edits:
        if old not in text:
            raise ValueError(f"edit does not apply: {old!r}")
        text = text.replace(old, new)
    return text
