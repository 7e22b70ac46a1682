#!/usr/bin/env python3
"""Array digest v2 (parallel tree hash) against one ``hashlib.sha256`` stream over the same bytes (issue 21).

For models of 64 MB to 1 GB (float32 arrays of a ResNet-like mix of sizes), in the same run:

* baseline: one ``hashlib.sha256`` fed the array stream (headers and every array's buffer, no copy);
  this is the v1 digest's work, so ``array_digest_v1`` is reported beside it;
* ``array_digest`` (v2) on 1, 2, ... threads up to the CPUs this process may use (and twice that,
  to show there is nothing to gain past the cores).

Target (issue 21): v2 at the default thread count >= 1.7x the baseline on 2 cores. Every thread count
must give the same digest (checked). Medians of ``--repeats`` runs after one warm-up, the variants run
round-robin so that other load on the machine hits them alike (the load average is recorded).

    python bench/bench_digest.py [--sizes-mb 64 256 1024] [--repeats 5]

Writes bench/results/digest.json (``--out`` elsewhere). Needs only numpy (arrays.py is loaded by file path), so
it also runs on a machine without the project's dependencies; ``taskset -c 0,1`` measures 2 cores of a bigger one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from standalone_arrays import arrays  # noqa: E402  (runs where only numpy is installed)

CHUNK_SIZE, array_digest, array_digest_v1 = arrays.CHUNK_SIZE, arrays.array_digest, arrays.array_digest_v1
default_threads, encode_arrays = arrays.default_threads, arrays.encode_arrays

RESULTS = Path(__file__).parent / "results"


def model_of(size_mb: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """float32 arrays adding up to ``size_mb`` MB: per block a 2.4 MB conv weight, a 9.4 MB dense
    weight and two small vectors (so chunks cross array boundaries as in a real model)."""
    rng = np.random.default_rng(seed)
    out, total, i = [], 0, 0
    target = size_mb * 1_000_000
    while total < target:
        for name, n in (
            (f"b{i}.conv.weight", 600_000),
            (f"b{i}.conv.bias", 256),
            (f"b{i}.fc.weight", 2_359_296),
            (f"b{i}.bn.running_mean", 512),
        ):
            n = min(n, max(1, (target - total) // 4))
            out.append((name, rng.standard_normal(n, dtype=np.float32)))
            total += 4 * n
        i += 1
    return out


def sha256_stream(named) -> bytes:
    """The baseline: one SHA-256 over the array stream, fed without copies (headers are tiny)."""
    h = hashlib.sha256()
    h.update(encode_arrays([]))  # the stream's domain tag and a count: the baseline hashes the same kind of bytes
    for name, a in named:
        h.update(name.encode())
        h.update(memoryview(a.reshape(-1)).cast("B"))
    return h.digest()


def timed(variants: dict, repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds and result of each variant, run round-robin (load changes hit every variant alike)."""
    out = {name: fn() for name, fn in variants.items()}  # warm-up (the thread pools start, pages are touched)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t = time.perf_counter()
            out[name] = fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}, out


def bench_size(size_mb: int, repeats: int, max_threads: int) -> dict:
    named = model_of(size_mb)
    nbytes = len(encode_arrays([])) + sum(31 + len(n.encode()) + a.nbytes for n, a in named)  # 1-d arrays
    mb = sum(a.nbytes for _, a in named) / 1e6
    counts = sorted({*range(1, max_threads + 1), 2 * max_threads})
    variants = {"sha256_stream": lambda: sha256_stream(named), "v1": lambda: array_digest_v1(named)}
    variants.update({f"v2_{t}": (lambda t=t: array_digest(named, threads=t)) for t in counts})
    secs, digests = timed(variants, repeats)
    base_s = secs["sha256_stream"]
    threads = {
        str(t): {
            "seconds": secs[f"v2_{t}"],
            "MBps": mb / secs[f"v2_{t}"],
            "ratio_to_sha256_stream": base_s / secs[f"v2_{t}"],
        }
        for t in counts
    }
    default = threads.get(str(default_threads()))
    return {
        "MB": mb,
        "arrays": len(named),
        "chunks": -(-nbytes // CHUNK_SIZE),
        "sha256_stream": {"seconds": base_s, "MBps": mb / base_s},
        "array_digest_v1": {
            "seconds": secs["v1"],
            "MBps": mb / secs["v1"],
            "ratio_to_sha256_stream": base_s / secs["v1"],
        },
        "array_digest_v2_by_threads": threads,
        "v2_default_threads_ratio": default["ratio_to_sha256_stream"] if default else None,
        "same_digest_on_every_thread_count": len({digests[f"v2_{t}"] for t in counts}) == 1,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "digest.json"))
    args = ap.parse_args()
    cores = default_threads()
    res = {
        "machine": {
            "cpus_usable": cores,
            "loadavg_at_start": os.getloadavg(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "chunk_size": CHUNK_SIZE,
        },
        "sizes": {},
    }
    for size in args.sizes_mb:
        res["sizes"][f"{size}MB"] = r = bench_size(
            size, args.repeats if size < 1000 else max(2, args.repeats // 2), cores
        )
        print(
            f"{size:5d} MB  sha256 stream {r['sha256_stream']['MBps']:7.0f} MB/s  v1 "
            f"{r['array_digest_v1']['MBps']:7.0f} MB/s  v2 "
            + "  ".join(
                f"{t}t {v['MBps']:6.0f} MB/s ({v['ratio_to_sha256_stream']:.2f}x)"
                for t, v in r["array_digest_v2_by_threads"].items()
            ),
            flush=True,
        )
    res["machine"]["loadavg_at_end"] = os.getloadavg()  # other processes on the machine skew the figures
    ratios = [r["v2_default_threads_ratio"] for r in res["sizes"].values()]
    res["summary"] = {
        "v2_default_threads_ratio_min": min(ratios),
        "v2_default_threads_ratio_max": max(ratios),
        "target": ">= 1.7x the sha256 stream on 2 cores",
        "target_met": min(ratios) >= 1.7 if cores == 2 else None,
        "same_digest_on_every_thread_count": all(r["same_digest_on_every_thread_count"] for r in res["sizes"].values()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["summary"], indent=2))


if __name__ == "__main__":
    main()
