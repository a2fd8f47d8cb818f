"""A user-style CNN with one planted bug: forward() returns softmax probabilities.

nn.CrossEntropyLoss applies log-softmax itself, so it sees log(softmax(z)) of probabilities: the
loss is squeezed into about [ln C - 1, ln C] and training barely moves (the seed's "5.30 -> 5.29").

    python quick_diagnosis.py --model examples/softmax_head.py:SoftmaxHeadCNN --data-dir /tmp/tin \
        --train-per-class 20 --val-per-class 50 --epochs 3
"""
import torch.nn as nn
import torch.nn.functional as F


class SoftmaxHeadCNN(nn.Module):
    def __init__(self, num_classes: int = 200):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        logits = self.fc(self.features(x).flatten(1))
        return F.softmax(logits, dim=1)  # BUG: the loss wants logits
