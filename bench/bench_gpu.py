#!/usr/bin/env python3
"""The ledger's cost next to one local epoch on a GPU (issue 21's table), v1 and v2 array digests.

For each model (torchvision, ``weights=None``, fp32, synthetic data of the real shapes, already on
the device; SGD with momentum, cross-entropy):

=================  ==========================  =======
model              data                        batch
=================  ==========================  =======
demo CNN           5,000 images 32x32x3        32
ResNet-18          5,000 images 32x32x3        32
ResNet-50          5,000 images 32x32x3        128
ViT-B/16           512 images 224x224x3        32
=================  ==========================  =======

it measures, after a warm-up of 3 batches:

* ``epoch_s``: one local epoch (median of two; CUDA synchronized);
* ``epoch_with_background_digest_s``: the same epoch while another thread digests the received
  global model (v2), as the signing mod does off the critical path (issue 21 §2);
* the client's ledger work: 2 array digests (the received model and the update), v1 and v2, and
  its critical path once the received model is digested during training (the update's digest);
* the server's work for 10 replies: their array digests (v1 and v2 on 1 thread, v2 on all threads),
  and the judge's whole array work (digest + the finite-value scan it runs on every reply) with its
  reply pool of min(8, CPUs) workers (v2 also hashes each reply's chunks on one thread per CPU);
* the server's critical path: the judge's array work on the last reply only (v2, all threads) — a
  ``LedgerStrategy`` starts each reply's work as Flower pulls it (``ArrivalGrid``), so what the
  round waits for after its last reply is that reply's work (with replies arriving together, as
  in a simulation, the 10-reply column is the bound).

Percentages are of ``epoch_s``. Targets (issue 21): client <= 1 % of the epoch for ResNet-50 and
ViT-B/16; server <= 5 % (judged on both the 10-reply column and the critical path, reported apart).

It needs only Python, numpy, torch and torchvision: ``flower_chain/ledger/arrays.py`` and
``errors.py`` are loaded by file path, so neither ``flower_chain.ledger.__init__`` (cryptography)
nor flwr is imported (checked). Time is capped: models that would start after ``--budget-s``
seconds (default 330, so the whole run ends within 6 minutes on an H200) are skipped and listed.

    python bench/bench_gpu.py                 # on a GPU machine; JSON to $OUT/gpu.json or bench/results/gpu.json
    python bench/bench_gpu.py --smoke         # tiny models and data, CPU is fine (checks that it runs)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from standalone_arrays import arrays  # noqa: E402  (no cryptography, no flwr)
from standalone_arrays import load as _load

assert "flower_chain.ledger" not in sys.modules and "cryptography" not in sys.modules and "flwr" not in sys.modules

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

REPLIES = 10
RESULTS = ROOT / "bench" / "results"


def models(smoke: bool) -> list[dict]:
    """name, builder, images, side, batch, classes."""
    from torchvision.models import resnet18, resnet50, vit_b_16
    from torchvision.models.vision_transformer import VisionTransformer

    demo = _load("flower_chain_bench_demo_model", ROOT / "flower_chain" / "app" / "model.py")
    if smoke:
        return [
            dict(name="demo CNN", build=lambda: demo.Net((32, 32, 3)), images=64, side=32, batch=32),
            dict(name="ResNet-18", build=lambda: resnet18(weights=None, num_classes=10), images=8, side=32, batch=8),
            dict(name="ResNet-50", build=lambda: resnet50(weights=None, num_classes=10), images=8, side=32, batch=8),
            dict(
                name="ViT (tiny)",
                build=lambda: VisionTransformer(32, 16, 2, 2, 32, 64, num_classes=10),
                images=8,
                side=32,
                batch=4,
            ),
        ]
    return [
        dict(name="demo CNN", build=lambda: demo.Net((32, 32, 3)), images=5000, side=32, batch=32),
        dict(name="ResNet-18", build=lambda: resnet18(weights=None, num_classes=10), images=5000, side=32, batch=32),
        dict(name="ResNet-50", build=lambda: resnet50(weights=None, num_classes=10), images=5000, side=32, batch=128),
        dict(name="ViT-B/16", build=lambda: vit_b_16(weights=None, num_classes=10), images=512, side=224, batch=32),
    ]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run_epoch(model, x, y, batch: int, opt, dev, max_batches: int | None = None) -> float:
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    sync(dev)
    t = time.perf_counter()
    for b, i in enumerate(range(0, len(x), batch)):
        if max_batches is not None and b >= max_batches:
            break
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[i : i + batch]), y[i : i + batch]).backward()
        opt.step()
    sync(dev)
    return time.perf_counter() - t


def named_arrays(model) -> list[tuple[str, np.ndarray]]:
    """What a client sends and receives: the state dict as numpy arrays (BatchNorm counters are 0-d)."""
    return [(k, v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items()]  # never a view of weights


def median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def server_work(reply, version: int, threads: int, workers: int, scan: bool = True) -> float:
    """Seconds for the judge's per-reply array work on REPLIES replies: the digest (and the finite scan)."""

    def one(_):
        arrays.array_digest(reply, version, threads=threads)
        return arrays.first_nonfinite(reply) if scan else None

    if workers == 1:
        return median_time(lambda: [one(i) for i in range(REPLIES)], 2)
    with ThreadPoolExecutor(workers) as pool:
        return median_time(lambda: list(pool.map(one, range(REPLIES))), 2)


def bench_model(spec: dict, dev: torch.device, cpus: int) -> dict:
    torch.manual_seed(0)
    model = spec["build"]().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    n, side = spec["images"], spec["side"]
    x = torch.randn(n, 3, side, side, device=dev)
    y = torch.randint(0, 10, (n,), device=dev)
    run_epoch(model, x, y, spec["batch"], opt, dev, max_batches=3)  # warm-up: kernels, cuDNN autotuning
    received = named_arrays(model)  # the global model the client received
    nbytes = sum(a.nbytes for _, a in received)
    epochs = [run_epoch(model, x, y, spec["batch"], opt, dev)]
    bg: dict = {}

    def digest_received() -> None:
        t = time.perf_counter()
        bg["digest"] = arrays.array_digest(received, 2)
        bg["seconds"] = time.perf_counter() - t

    worker = threading.Thread(target=digest_received)
    t = time.perf_counter()
    worker.start()
    with_bg = run_epoch(model, x, y, spec["batch"], opt, dev)
    worker.join()
    with_bg_total = time.perf_counter() - t
    epochs.append(run_epoch(model, x, y, spec["batch"], opt, dev))
    epoch_s = statistics.median(epochs)
    update = named_arrays(model)
    assert bg["digest"] == arrays.array_digest(received, 2, threads=1)
    client = {
        f"v{v}": median_time(lambda v=v: (arrays.array_digest(received, v), arrays.array_digest(update, v)))
        for v in (1, 2)
    }
    update_v2 = median_time(lambda: arrays.array_digest(update, 2))
    judge_workers = min(8, cpus)
    server = {
        "digests_v1_1_thread": server_work(update, 1, 1, 1, scan=False),
        "digests_v2_1_thread": server_work(update, 2, 1, 1, scan=False),
        "digests_v2_all_threads": server_work(update, 2, cpus, 1, scan=False),
        f"judge_v1_{judge_workers}_reply_workers": server_work(update, 1, 1, judge_workers),
        f"judge_v2_all_threads_{judge_workers}_reply_workers": server_work(update, 2, cpus, judge_workers),
    }
    last_reply = median_time(lambda: (arrays.array_digest(update, 2, threads=cpus), arrays.first_nonfinite(update)))
    pct = {f"client_2_digests_{k}": 100 * s / epoch_s for k, s in client.items()}
    pct["client_critical_path_v2_received_digested_during_training"] = 100 * update_v2 / epoch_s
    pct.update({f"server_10_replies_{k}": 100 * s / epoch_s for k, s in server.items()})
    pct["server_critical_path_last_reply_v2_all_threads"] = 100 * last_reply / epoch_s
    del model, opt, x, y
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "model": spec["name"],
        "parameters": int(sum(a.size for _, a in received)),
        "MB": nbytes / 1e6,
        "images": n,
        "side": side,
        "batch": spec["batch"],
        "epoch_s": epoch_s,
        "epochs_s": epochs,
        "epoch_with_background_digest_s": with_bg,
        "background_digest_s": bg["seconds"],
        "background_digest_done_before_epoch_end": bg["seconds"] <= with_bg,
        "with_background_total_s": with_bg_total,
        "client_2_digests_s": client,
        "client_update_digest_v2_s": update_v2,
        "server_10_replies_s": server,
        "server_last_reply_s": last_reply,
        "percent_of_epoch": pct,
    }


def table(rows: list[dict]) -> str:
    head = (
        "| model | MB | epoch s | client 2 digests v1 | v2 | client critical path v2 (received digested "
        "during training) | server 10 digests v1, 1 thread | v2, 1 thread | v2, all threads | judge work "
        "(digest + finite scan) v1, reply pool | v2, all threads | server critical path (last reply, v2) |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        p = r["percent_of_epoch"]
        keys = [k for k in p if k.startswith("server_10_replies_")] + ["server_critical_path_last_reply_v2_all_threads"]
        lines.append(
            f"| {r['model']} | {r['MB']:.1f} | {r['epoch_s']:.2f} | {p['client_2_digests_v1']:.1f} % | "
            f"{p['client_2_digests_v2']:.1f} % | "
            f"{p['client_critical_path_v2_received_digested_during_training']:.2f} % | "
            + " | ".join(f"{p[k]:.1f} %" for k in keys)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models and data (any machine, ~1 minute on CPU)")
    ap.add_argument("--budget-s", type=float, default=330.0, help="start no model after this many seconds")
    ap.add_argument("--out", help="JSON path (default: $OUT/gpu.json, else bench/results/gpu[-smoke].json)")
    args = ap.parse_args()
    start = time.perf_counter()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cpus = arrays.default_threads()
    rows, skipped = [], []
    for spec in models(args.smoke):
        if time.perf_counter() - start > args.budget_s:
            skipped.append(spec["name"])
            continue
        rows.append(bench_model(spec, dev, cpus))
        print(
            f"{rows[-1]['model']}: epoch {rows[-1]['epoch_s']:.3f} s, {rows[-1]['MB']:.1f} MB "
            f"({time.perf_counter() - start:.0f} s elapsed)",
            flush=True,
        )
    res = {
        "machine": {
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "cpus_usable": cpus,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        },
        "smoke": args.smoke,
        "replies": REPLIES,
        "models": rows,
        "skipped_over_budget": skipped,
        "total_s": time.perf_counter() - start,
        "targets": {
            "client_le_1pct_resnet50_vit": all(
                r["percent_of_epoch"]["client_critical_path_v2_received_digested_during_training"] <= 1.0
                for r in rows
                if r["model"] in ("ResNet-50", "ViT-B/16")
            )
            if not args.smoke
            else None,
            "server_le_5pct_all_threads": all(
                p <= 5.0
                for r in rows
                for k, p in r["percent_of_epoch"].items()
                if k.startswith("server_10_replies_judge_v2_all")
            )
            if not args.smoke
            else None,
            "server_critical_path_le_5pct": all(
                r["percent_of_epoch"]["server_critical_path_last_reply_v2_all_threads"] <= 5.0 for r in rows
            )
            if not args.smoke
            else None,
        },
    }
    out = (
        Path(args.out)
        if args.out
        else (
            Path(os.environ["OUT"]) / "gpu.json"
            if os.environ.get("OUT")
            else RESULTS / ("gpu-smoke.json" if args.smoke else "gpu.json")
        )
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(table(rows))
    print(
        f"skipped (over the {args.budget_s:.0f} s budget): {skipped or 'none'}; total {res['total_s']:.0f} s; "
        f"JSON: {out}"
    )


if __name__ == "__main__":
    main()
