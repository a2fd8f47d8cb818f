"""A user-style CNN with one planted bug: the features are detached from the graph.

Only the last layer ever learns; every conv weight stays at its random init. The diagnosis
measures which parameters never change during a fit, and why (no gradient reaches them).

    python quick_diagnosis.py --model examples/detached_features.py:build --data-dir /tmp/tin \
        --train-per-class 20 --val-per-class 50 --epochs 3
"""
import torch.nn as nn


class DetachedFeaturesCNN(nn.Module):
    def __init__(self, num_classes: int = 200):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        h = self.features(x).flatten(1).detach()  # BUG: no gradient reaches the features
        return self.fc(h)


def build(num_classes: int = 200) -> nn.Module:
    """A factory, as some users write them: the diagnosis calls it with num_classes=C."""
    return DetachedFeaturesCNN(num_classes)
