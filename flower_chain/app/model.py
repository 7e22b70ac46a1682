"""CNNs for 28x28x1 and 32x32x3 images, train/test loops, seeds and devices (PyTorch).

Only the bundled clients need torch; the signing mod, the strategies and the
ledger do not import this module.
"""

from __future__ import annotations

import random
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Net(nn.Module):
    """Two 5x5 conv layers with max-pooling, one hidden dense layer (LeNet-style).

    184,586 parameters on 28x28x1 input, 259,914 on 32x32x3.
    """

    def __init__(self, in_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10) -> None:
        super().__init__()
        h, _w, c = in_shape
        self.conv1 = nn.Conv2d(c, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        side = ((h - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(64 * side * side, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 NHWC images -> float NCHW in [0, 1], normalised to mean 0.5 / std 0.5."""
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255.0)
    return (t - 0.5) / 0.5


def get_weights(net: nn.Module) -> OrderedDict[str, np.ndarray]:
    return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in net.state_dict().items())


def set_weights(net: nn.Module, weights: dict[str, np.ndarray]) -> None:
    state = net.state_dict()
    if list(weights) != list(state):
        raise ValueError(f"model has arrays {list(state)}, got {list(weights)}")
    net.load_state_dict(OrderedDict((k, torch.from_numpy(np.asarray(v).copy())) for k, v in weights.items()))


def train(
    net: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    momentum: float = 0.9,
) -> float:
    """Local SGD; returns the mean training loss of the last epoch."""
    dev = device()
    net.to(dev).train()
    g = torch.Generator().manual_seed(seed)
    xs, ys = to_tensor(x), torch.from_numpy(y)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    loss_sum, n = 0.0, 0
    for _ in range(max(1, epochs)):
        loss_sum, n = 0.0, 0
        perm = torch.randperm(len(xs), generator=g)
        for i in range(0, len(xs), batch_size):
            b = perm[i : i + batch_size]
            xb, yb = xs[b].to(dev), ys[b].to(dev)
            opt.zero_grad()
            loss = F.cross_entropy(net(xb), yb)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(b)
            n += len(b)
    return loss_sum / max(n, 1)


@torch.no_grad()
def test(net: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> tuple[float, float]:
    """Returns (mean loss, accuracy)."""
    dev = device()
    net.to(dev).eval()
    xs, ys = to_tensor(x), torch.from_numpy(y)
    loss_sum, correct = 0.0, 0
    for i in range(0, len(xs), batch_size):
        xb, yb = xs[i : i + batch_size].to(dev), ys[i : i + batch_size].to(dev)
        out = net(xb)
        loss_sum += F.cross_entropy(out, yb, reduction="sum").item()
        correct += (out.argmax(1) == yb).sum().item()
    n = max(len(xs), 1)
    return loss_sum / n, correct / n
