"""A plain legacy Flower app (NumPyClient, client_fn, server_fn, flwr.server.strategy.FedAvg), no flower-chain.

test_swap_in.py applies the README's two-line change to this file and runs it.
"""

import os
import sys

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg

DIM, CLASSES = 20, 3


def load_data(partition_id: int, n: int = 200):
    rng = np.random.default_rng(partition_id)
    centers = np.random.default_rng(0).standard_normal((CLASSES, DIM)) * 2
    y = rng.integers(0, CLASSES, n)
    x = centers[y] + rng.standard_normal((n, DIM))
    return x.astype(np.float32), y


class LinearClient(NumPyClient):
    def __init__(self, partition_id):
        self.x, self.y = load_data(partition_id)

    def fit(self, parameters, config):
        w, b = (p.copy() for p in parameters)
        for _ in range(5):
            logits = self.x @ w + b
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(self.y)), self.y] -= 1
            w -= 0.5 * self.x.T @ p / len(self.y)
            b -= 0.5 * p.mean(0)
        return [w, b], len(self.y), {"train_loss": 0.0}

    def evaluate(self, parameters, config):
        w, b = parameters
        acc = float(((self.x @ w + b).argmax(1) == self.y).mean())
        return 1.0 - acc, len(self.y), {"accuracy": acc}


def client_fn(context: Context):
    return LinearClient(context.node_config["partition-id"]).to_client()


app = ClientApp(client_fn=client_fn)


class SavingFedAvg(FedAvg):
    def aggregate_fit(self, server_round, results, failures):
        params, metrics = super().aggregate_fit(server_round, results, failures)
        if params is not None:
            from flwr.common import parameters_to_ndarrays

            np.save(os.environ["QUICKSTART_OUT"], parameters_to_ndarrays(params)[0])
        return params, metrics


def server_fn(context: Context):
    initial = ndarrays_to_parameters([np.zeros((DIM, CLASSES), np.float32), np.zeros(CLASSES, np.float32)])
    strategy = SavingFedAvg(fraction_fit=1.0, fraction_evaluate=1.0, min_available_clients=2, initial_parameters=initial)
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=3))


server = ServerApp(server_fn=server_fn)


if __name__ == "__main__":
    from flwr.simulation import run_simulation

    run_simulation(server_app=server, client_app=app, num_supernodes=int(sys.argv[1]),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
