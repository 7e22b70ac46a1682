"""A plain Flower app in the style of Flower's quickstart examples (Message API), with no flower-chain.

A linear softmax classifier on synthetic data, trained with numpy only.
test_swap_in.py applies the README's two-line change to this file and runs it.
"""

import os
import sys

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

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


app = ClientApp()


@app.train()
def train(msg: Message, context: Context):
    x, y = load_data(context.node_config["partition-id"])
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    w, b = sgd(arrays[0].copy(), arrays[1].copy(), x, y, lr=msg.content["config"]["lr"])
    content = RecordDict({"arrays": ArrayRecord([w, b]), "metrics": MetricRecord({"num-examples": len(y)})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    x, y = load_data(context.node_config["partition-id"] + 100)
    w, b = msg.content["arrays"].to_numpy_ndarrays()
    acc = float(((x @ w + b).argmax(1) == y).mean())
    return Message(RecordDict({"metrics": MetricRecord({"accuracy": acc, "num-examples": len(y)})}), reply_to=msg)


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2)
    initial = ArrayRecord([np.zeros((DIM, CLASSES), np.float32), np.zeros(CLASSES, np.float32)])
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=3, train_config=ConfigRecord({"lr": 0.5}))
    np.save(os.environ["QUICKSTART_OUT"], result.arrays.to_numpy_ndarrays()[0])


if __name__ == "__main__":
    from flwr.simulation import run_simulation

    run_simulation(server_app=server, client_app=app, num_supernodes=int(sys.argv[1]),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
