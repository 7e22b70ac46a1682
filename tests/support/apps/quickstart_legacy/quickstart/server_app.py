"""quickstart: the ServerApp of a legacy app (server_fn, flwr.server.strategy)."""

import numpy as np
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg

from quickstart.task import CLASSES, DIM


def server_fn(context: Context):
    lr = float(context.run_config["lr"])
    out_file = context.run_config["out-file"]

    def save(server_round, arrays, config):
        """Centralized evaluation hook: saves the first array of each round's global model (the test reads it)."""
        if out_file:
            np.save(out_file, arrays[0])

    initial = ndarrays_to_parameters([np.zeros((DIM, CLASSES), np.float32), np.zeros(CLASSES, np.float32)])
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=1.0, min_available_clients=2, initial_parameters=initial,
                      on_fit_config_fn=lambda rnd: {"lr": lr}, evaluate_fn=save)
    config = ServerConfig(num_rounds=context.run_config["num-server-rounds"])
    return ServerAppComponents(strategy=strategy, config=config)


app = ServerApp(server_fn=server_fn)
