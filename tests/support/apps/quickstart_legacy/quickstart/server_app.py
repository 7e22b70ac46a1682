"""quickstart: the ServerApp of a legacy app (server_fn, flwr.server.strategy)."""

import numpy as np
from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg

from quickstart.task import CLASSES, DIM


class SavingFedAvg(FedAvg):
    """FedAvg that saves the first array of each round's aggregate (the test compares it)."""

    def __init__(self, out_file: str, **kw):
        super().__init__(**kw)
        self.out_file = out_file

    def aggregate_fit(self, server_round, results, failures):
        params, metrics = super().aggregate_fit(server_round, results, failures)
        if params is not None and self.out_file:
            np.save(self.out_file, parameters_to_ndarrays(params)[0])
        return params, metrics


def server_fn(context: Context):
    lr = float(context.run_config["lr"])
    initial = ndarrays_to_parameters([np.zeros((DIM, CLASSES), np.float32), np.zeros(CLASSES, np.float32)])
    strategy = SavingFedAvg(context.run_config["out-file"], fraction_fit=1.0, fraction_evaluate=1.0,
                            min_available_clients=2, initial_parameters=initial,
                            on_fit_config_fn=lambda rnd: {"lr": lr})
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=context.run_config["num-server-rounds"]))


app = ServerApp(server_fn=server_fn)
