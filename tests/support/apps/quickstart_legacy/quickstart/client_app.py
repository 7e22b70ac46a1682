"""quickstart: the ClientApp of a legacy app (NumPyClient, client_fn)."""

from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import Context

from quickstart.task import load_data, sgd


class LinearClient(NumPyClient):
    def __init__(self, partition_id: int):
        self.x, self.y = load_data(partition_id)

    def fit(self, parameters, config):
        w, b = (p.copy() for p in parameters)
        w, b = sgd(w, b, self.x, self.y, lr=float(config["lr"]))
        return [w, b], len(self.y), {"train_loss": 0.0}

    def evaluate(self, parameters, config):
        w, b = parameters
        acc = float(((self.x @ w + b).argmax(1) == self.y).mean())
        return 1.0 - acc, len(self.y), {"accuracy": acc}


def client_fn(context: Context):
    return LinearClient(context.node_config["partition-id"]).to_client()


app = ClientApp(client_fn=client_fn)
