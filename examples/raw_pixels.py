"""A user-style set-up with one planted bug: raw 0..255 pixels (no Normalize) under SGD.

The model, the data and the optimizer are all the user's: the first 20 classes of the subset
($TINYIMAGENET_ROOT or ./data), 100 train and 50 val images per class, as float tensors with no
scaling. The diagnosis measures the input statistics and confirms the cause with a control run
on standardized inputs (the figures issue 16 was about).

    TINYIMAGENET_ROOT=/tmp/tin python quick_diagnosis.py --model examples/raw_pixels.py:SmallNet \
        --data examples/raw_pixels.py:get_splits --optimizer examples/raw_pixels.py:sgd --epochs 5 \
        --device cpu --out figs
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from tinyimagenet.loaders import load_data

C = 20  # classes used: a CPU-sized task


def get_splits():
    d = load_data(os.environ.get("TINYIMAGENET_ROOT", "data"), train_per_class=100, val_per_class=50, progress=False)

    def split(x, y):
        keep = y < C
        return TensorDataset(x[keep].permute(0, 3, 1, 2).float(), y[keep])  # the bug: 0..255, no Normalize
    return (DataLoader(split(d.train_images, d.train_targets), batch_size=32, shuffle=True),
            split(d.val_images, d.val_targets), C)


class SmallNet(nn.Module):
    def __init__(self, num_classes: int = C):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 4)
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.c2(x)), 1).flatten(1))


def sgd(params):
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)
