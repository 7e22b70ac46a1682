"""quickstart: the ClientApp (Message API), as in Flower's quickstart examples."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from quickstart.task import load_data, sgd

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
