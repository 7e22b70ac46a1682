"""The bundled torch demo: a Flower App that trains CNNs on MNIST, Fashion-MNIST or CIFAR-10.

Needs the ``demo`` extra (``pip install "flower-chain[demo]"``: torch, torchvision, flwr-datasets,
mlxtend). The plugin itself (:mod:`flower_chain.clients`, :mod:`flower_chain.strategies`,
:mod:`flower_chain.ledger`, the CLI) never imports this package.

* :mod:`~flower_chain.app.data` -- datasets and partitions;
* :mod:`~flower_chain.app.model` -- the CNNs, training and evaluation;
* :mod:`~flower_chain.app.attacks` -- the malicious client mods of ``run.py --attack``;
* :mod:`~flower_chain.app.setup` -- demo keys and the ledger wiring of the ServerApp;
* :mod:`~flower_chain.app.server_app` and :mod:`~flower_chain.app.client_app` -- the Flower App
  (``[tool.flwr.app.components]`` in pyproject.toml);
* :mod:`~flower_chain.app.secagg_server` and :mod:`~flower_chain.app.secagg_client` -- the same App on
  Flower's legacy SecAgg+ path (run config ``secure-aggregation``, ``run.py --secure-aggregation``).
"""
