"""A two-layer network in NumPy, trained on scikit-learn's digits, with softmaxloss's
Softmax-with-Loss layer as the last layer: the textbook network, with the layer whose
forward pass already computes the gradient that its backward pass returns.

    Affine -> ReLU -> Affine -> SoftmaxWithLoss

Run: python examples/numpy_two_layer_net.py   (needs scikit-learn for the data)
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import softmaxloss as sml


class Affine:
    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        self.params = {"W": weight, "b": bias}
        self.grads: dict[str, np.ndarray] = {}
        self.x: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        return x @ self.params["W"] + self.params["b"]

    def backward(self, dout: np.ndarray) -> np.ndarray:
        assert self.x is not None
        self.grads = {"W": self.x.T @ dout, "b": dout.sum(axis=0)}
        return dout @ self.params["W"].T


class Relu:
    def __init__(self) -> None:
        self.mask: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.mask = x <= 0
        return np.where(self.mask, 0.0, x)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return np.where(self.mask, 0.0, dout)


class TwoLayerNet:
    def __init__(self, n_in: int, n_hidden: int, n_out: int, rng: np.random.Generator) -> None:
        self.layers = [
            Affine(rng.standard_normal((n_in, n_hidden)) * np.sqrt(2.0 / n_in), np.zeros(n_hidden)),
            Relu(),
            Affine(rng.standard_normal((n_hidden, n_out)) * np.sqrt(2.0 / n_hidden), np.zeros(n_out)),
        ]
        self.last_layer = sml.SoftmaxWithLoss()  # one fused pass: loss and d(loss)/d(scores)

    def predict(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def loss(self, x: np.ndarray, t: np.ndarray) -> float:
        return float(self.last_layer.forward(self.predict(x), t))

    def accuracy(self, x: np.ndarray, t: np.ndarray) -> float:
        return float(np.mean(self.predict(x).argmax(axis=1) == t))

    def gradient(self, x: np.ndarray, t: np.ndarray) -> float:
        """Forward and backward; the parameters' gradients are left in the Affine layers."""
        loss = self.loss(x, t)
        dout = self.last_layer.backward()
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return loss

    def affines(self) -> list[Affine]:
        return [layer for layer in self.layers if isinstance(layer, Affine)]


def gradient_check(net: TwoLayerNet, x: np.ndarray, t: np.ndarray, h: float = 1e-5) -> float:
    """Largest relative difference between backprop and central differences, over a few
    entries of every parameter (the textbook's check that backward is right)."""
    net.gradient(x, t)
    worst = 0.0
    for affine in net.affines():
        for name, param in affine.params.items():
            analytic = affine.grads[name]
            for index in list(np.ndindex(param.shape))[:: max(1, param.size // 5)]:
                saved = param[index]
                param[index] = saved + h
                plus = net.loss(x, t)
                param[index] = saved - h
                minus = net.loss(x, t)
                param[index] = saved
                numeric = (plus - minus) / (2 * h)
                worst = max(worst, abs(numeric - analytic[index]) / max(1e-8, abs(numeric) + abs(analytic[index])))
    return worst


def main() -> None:
    features, labels = load_digits(return_X_y=True)
    x_train, x_test, t_train, t_test = train_test_split(
        features / 16.0, labels, test_size=0.25, random_state=0, stratify=labels
    )
    rng = np.random.default_rng(0)
    net = TwoLayerNet(64, 50, 10, rng)

    error = gradient_check(net, x_train[:20], t_train[:20])
    print(f"gradient check: largest relative difference {error:.1e}")
    assert error < 1e-6, error

    learning_rate, batch_size, epochs = 0.1, 64, 20
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        for begin in range(0, len(order), batch_size):
            batch = order[begin : begin + batch_size]
            net.gradient(x_train[batch], t_train[batch])
            for affine in net.affines():
                for name in affine.params:
                    affine.params[name] -= learning_rate * affine.grads[name]
        if epoch % 5 == 0 or epoch == 1:
            print(f"epoch {epoch:2d}: train loss {net.loss(x_train, t_train):.4f}, "
                  f"train accuracy {net.accuracy(x_train, t_train):.3f}, "
                  f"test accuracy {net.accuracy(x_test, t_test):.3f}")
    seconds = time.perf_counter() - start
    accuracy = net.accuracy(x_test, t_test)
    print(f"test accuracy {accuracy:.3f} after {epochs} epochs ({seconds:.1f} s)")
    assert accuracy > 0.9, accuracy


if __name__ == "__main__":
    main()
