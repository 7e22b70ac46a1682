"""Data and training of the plain app: a linear softmax classifier on synthetic data, numpy only."""

import numpy as np

DIM, CLASSES = 20, 3


def load_data(partition_id: int, n: int = 200):
    rng = np.random.default_rng(partition_id)
    centers = np.random.default_rng(0).standard_normal((CLASSES, DIM)) * 2
    y = rng.integers(0, CLASSES, n)
    x = centers[y] + rng.standard_normal((n, DIM))
    return x.astype(np.float32), y


def sgd(w, b, x, y, lr=0.1, epochs=5):
    for _ in range(epochs):
        logits = x @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        w -= lr * x.T @ p / len(y)
        b -= lr * p.mean(0)
    return w, b
