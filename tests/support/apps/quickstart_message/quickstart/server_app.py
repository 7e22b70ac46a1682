"""quickstart: the ServerApp (Message API), as in Flower's quickstart examples."""

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from quickstart.task import CLASSES, DIM

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2)
    initial = ArrayRecord([np.zeros((DIM, CLASSES), np.float32), np.zeros(CLASSES, np.float32)])
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=context.run_config["num-server-rounds"],
                            train_config=ConfigRecord({"lr": context.run_config["lr"]}))
    if context.run_config["out-file"]:
        np.save(context.run_config["out-file"], result.arrays.to_numpy_ndarrays()[0])
