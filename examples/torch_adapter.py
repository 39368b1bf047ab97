"""softmaxloss as the loss of a PyTorch model: the one-line change.

    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.05)          # before
    criterion = softmaxloss.torch.CrossEntropyLoss(label_smoothing=0.05) # after

Trains the same MLP on scikit-learn's digits twice, from the same initial weights, with
PyTorch's loss and with softmaxloss's, and prints both runs side by side: the losses
agree to float32 rounding. Then a run with inplace_grad=True, where the loss writes its
gradient over the logits' storage instead of allocating a new tensor.

Run: python examples/torch_adapter.py   (needs torch and scikit-learn)
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import softmaxloss.torch


def train(model: torch.nn.Module, criterion: torch.nn.Module, x, y, epochs: int, batch_size: int = 128):
    """Mini-batch SGD with momentum; returns the loss of every epoch's last batch and
    the seconds taken."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(0)  # the same batches for every run
    losses = []
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for begin in range(0, len(x), batch_size):
            batch = order[begin : begin + batch_size]
            optimizer.zero_grad()
            loss = criterion(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
        losses.append(loss.item())
    return losses, time.perf_counter() - start


def accuracy(model: torch.nn.Module, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def main() -> None:
    features, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = (
        torch.from_numpy(a) for a in train_test_split(
            (features / 16.0).astype(np.float32), labels, test_size=0.25, random_state=0, stratify=labels
        )
    )
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    runs = {
        "torch.nn.CrossEntropyLoss": torch.nn.CrossEntropyLoss(label_smoothing=0.05),
        "softmaxloss.torch.CrossEntropyLoss": softmaxloss.torch.CrossEntropyLoss(label_smoothing=0.05),
        "  ... with inplace_grad=True": softmaxloss.torch.CrossEntropyLoss(label_smoothing=0.05, inplace_grad=True),
    }
    epochs = 12
    results = {}
    for name, criterion in runs.items():
        trained = copy.deepcopy(model)  # the same initial weights for every run
        losses, seconds = train(trained, criterion, x_train, y_train, epochs)
        results[name] = losses
        print(f"{name:36s} last-batch loss at epochs 1/4/8/12: "
              f"{' '.join(f'{losses[i]:.4f}' for i in (0, 3, 7, 11))}; "
              f"test accuracy {accuracy(trained, x_test, y_test):.3f}; {seconds:.2f} s")
    reference, *others = results.values()
    difference = max(np.max(np.abs(np.subtract(other, reference))) for other in others)
    print(f"largest difference between the loss curves: {difference:.1e}")
    assert difference < 1e-3, difference


if __name__ == "__main__":
    main()
