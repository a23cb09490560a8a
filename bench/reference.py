"""The reference notebook's training loop, rebuilt faithfully, as the speed baseline.

The batch-normalization chapter of *Dive into Deep Learning* (PyTorch) trains LeNet with
BatchNorm before each sigmoid, Adam lr=1e-3, batch 256, through torchvision's
FashionMNIST + ToTensor + DataLoader(shuffle=True, num_workers=4), reading every batch's
loss and accuracy to the host with `.item()`, and evaluates with eval()/train() toggled
around each test batch. This file keeps all of that, on purpose: it is what bnstudy is
measured against. (It also keeps the notebook's loss-logging bug — an epoch's loss sum
divided by a *cumulative* batch count — next to the correct per-epoch mean.)

    python bench/reference.py --epochs 2 [--device cpu|cuda] [--workers 4]

prints one JSON object per epoch: {"epoch", "train_seconds", "eval_seconds",
"epoch_seconds", "train_loss", "notebook_loss", "train_acc", "test_acc"}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bnstudy.engine.data import FILES, find_data_dir  # noqa: E402  (the same dataset bnstudy reads)

TORCHVISION_ROOT = Path("data/torchvision")


def torchvision_root(data_dir: str | None) -> Path:
    """A torchvision root holding FashionMNIST/raw/*-ubyte, decompressed from the dataset
    bnstudy finds (torchvision's own check wants the uncompressed files)."""
    raw = TORCHVISION_ROOT / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    source = find_data_dir(data_dir)
    for base in FILES.values():
        target = raw / base
        if target.exists():
            continue
        plain, packed = source / base, source / (base + ".gz")
        if plain.exists():
            shutil.copyfile(plain, target)
        else:
            with gzip.open(packed, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return TORCHVISION_ROOT


def notebook_lenet() -> nn.Sequential:
    """The notebook's network, layer for layer, in torch's stock modules (bnstudy's own
    LeNet computes the same function with a faster pooling path: not the baseline's)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), nn.BatchNorm2d(6), nn.Sigmoid(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16), nn.Sigmoid(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(),
        nn.Linear(84, 10),
    )  # fmt: skip


def accuracy(y_hat: torch.Tensor, y: torch.Tensor) -> float:
    """Number correct, read to the host (the notebook's d2l.accuracy)."""
    return float((y_hat.argmax(axis=1).type(y.dtype) == y).sum())


def evaluate_accuracy(net: nn.Module, test_iter, device) -> float:
    """The notebook's evaluation: eval() and train() toggled around every test batch."""
    correct, count = 0.0, 0
    with torch.no_grad():
        for X, y in test_iter:
            net.eval()
            X, y = X.to(device), y.to(device)
            correct += accuracy(net(X), y)
            count += y.numel()
            net.train()
    return correct / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device(args.device)
    root = torchvision_root(args.data)
    to_tensor = transforms.ToTensor()
    train = datasets.FashionMNIST(root=root, train=True, transform=to_tensor, download=False)
    test = datasets.FashionMNIST(root=root, train=False, transform=to_tensor, download=False)
    train_iter = DataLoader(train, args.batch_size, shuffle=True, num_workers=args.workers)
    test_iter = DataLoader(test, args.batch_size, shuffle=False, num_workers=args.workers)

    torch.manual_seed(args.seed)
    net = notebook_lenet().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    loss = nn.CrossEntropyLoss()
    batches_so_far = 0
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        loss_sum, correct, count = 0.0, 0.0, 0
        net.train()
        for X, y in train_iter:
            optimizer.zero_grad()
            X, y = X.to(device), y.to(device)
            y_hat = net(X)
            l = loss(y_hat, y)  # noqa: E741  (the notebook's name)
            l.backward()
            optimizer.step()
            with torch.no_grad():
                loss_sum += l.item() * X.shape[0]
                correct += accuracy(y_hat, y)
                count += X.shape[0]
            batches_so_far += 1
        trained = time.perf_counter()
        test_acc = evaluate_accuracy(net, test_iter, device)
        done = time.perf_counter()
        print(json.dumps({
            "epoch": epoch,
            "train_seconds": trained - start,
            "eval_seconds": done - trained,
            "epoch_seconds": done - start,
            "train_loss": loss_sum / count,
            "notebook_loss": loss_sum / args.batch_size / batches_so_far,  # the logging bug
            "train_acc": correct / count,
            "test_acc": test_acc,
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
