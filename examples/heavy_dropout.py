"""A user-style CNN with one planted bug: functional dropout of 0.8 after every stage.

No nn.Dropout module anywhere, so a module audit sees nothing; the diagnosis switches off every
dropout call (functional ones included) and names the lines.

    python quick_diagnosis.py --model examples/heavy_dropout.py:HeavyDropoutCNN --data-dir /tmp/tin \
        --train-per-class 20 --val-per-class 50 --epochs 3 --lr 1e-3
"""
import torch.nn as nn
import torch.nn.functional as F


class HeavyDropoutCNN(nn.Module):
    def __init__(self, num_classes: int = 200):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.dropout(x, 0.8, training=self.training)  # BUG: far too strong, and after every stage
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.dropout(x, 0.8, training=self.training)
        x = F.adaptive_avg_pool2d(F.relu(self.conv3(x)), 1).flatten(1)
        x = F.dropout(x, 0.8, training=self.training)
        return self.fc(x)
