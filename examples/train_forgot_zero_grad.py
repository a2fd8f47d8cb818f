"""A user's own training script with one planted loop bug: optimizer.zero_grad() is never called.

Gradients add up across steps, so every step follows the sum of all past gradients. The
diagnosis (quick_diagnosis.py) runs its own loop and cannot see this; the watcher runs this
script unchanged and names the line:

    python -m tinyimagenet.watch examples/train_forgot_zero_grad.py --data-dir /tmp/tin
    python examples/train_forgot_zero_grad.py --data-dir /tmp/tin          # the same run, unwatched

It trains a small CNN on the first --classes classes of the real Tiny ImageNet train split
(--per-class images each, torchvision transforms, a DataLoader), as a new user would write it;
--synthetic uses generated images in the same folder layout instead (offline, for the notebook).
"""
import argparse

import torch
import torch.nn as nn
import torchvision.transforms as T
from torch.utils.data import DataLoader, Subset

from tinyimagenet.data import TinyImageNet

parser = argparse.ArgumentParser()
parser.add_argument("--data-dir", default="data")
parser.add_argument("--classes", type=int, default=10)
parser.add_argument("--per-class", type=int, default=100)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--synthetic", action="store_true", help="generated images instead of --data-dir (offline demo)")
args = parser.parse_args()
if args.synthetic:
    import tempfile

    from tinyimagenet.synthetic import make_synthetic
    args.data_dir = make_synthetic(tempfile.mkdtemp(), num_classes=args.classes, train_per_class=args.per_class,
                                   val_per_class=1)

torch.manual_seed(0)
transform = T.Compose([T.RandomHorizontalFlip(), T.ToTensor(),
                       T.Normalize((0.480, 0.448, 0.398), (0.277, 0.269, 0.282))])
full = TinyImageNet(args.data_dir, "train", transform=transform, per_class=args.per_class)
train = Subset(full, [i for i, t in enumerate(full.targets) if t < args.classes])
loader = DataLoader(train, batch_size=32, shuffle=True)


class SmallCNN(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


model = SmallCNN(args.classes)
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
criterion = nn.CrossEntropyLoss()
for epoch in range(args.epochs):
    model.train()
    total, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        outputs = model(images)
        loss = criterion(outputs, labels)
        loss.backward()          # BUG: no optimizer.zero_grad() before this line
        optimizer.step()
        total += loss.item() * len(labels)
        correct += int((outputs.argmax(1) == labels).sum())
        seen += len(labels)
    print(f"epoch {epoch}: train loss {total / seen:.4f}, train accuracy {100 * correct / seen:.1f}%")
