"""Training throughput (samples/s) and peak memory of ``MRHNetLib.network.train`` for several depths.

Each configuration runs in its own process (so the peak resident memory is its own) on a simulated
brain from :mod:`MRHNetLib.simulation.phantom`, with the real training loop (sampling, batching, SGD with
clipping, validation, checkpoint every epoch). Throughput is the mean over the epochs after the first.

    python Testing/benchmarks/bench_train.py                         # CPU, depth 5 and 30
    python Testing/benchmarks/bench_train.py --threads 1 2           # thread counts to compare
    python Testing/benchmarks/bench_train.py --device cuda --size medium --stride 4 3 --epochs 4 --amp
    python Testing/benchmarks/bench_train.py --device cuda --original   # ~54,000 patches, depth 30

Prints a Markdown table (and JSON lines with ``--json``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(spec: dict) -> dict:
    import torch

    from MRHNetLib.simulation.phantom import simulate_subject
    from MRHNetLib.network.modelfile import read_info
    from MRHNetLib.network.train import TrainConfig, read_log, train

    t0 = time.perf_counter()
    size = spec["size"] if isinstance(spec["size"], str) else tuple(spec["size"])
    subject = simulate_subject("C1", seed=0, size=size)
    t_data = time.perf_counter() - t0
    config = TrainConfig(depth=spec["depth"], epochs=spec["epochs"], batch_size=spec["batch"],
                         num_threads=spec["threads"], device=spec["device"], amp=spec["amp"],
                         val_samples=spec["val_samples"], seed=0,
                         sampling={"stride0": spec["stride"][0], "stride_fine": spec["stride"][1]})
    if config.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        out = train([subject], "af", Path(tmp) / "bench.mrhnet", config)
        wall = time.perf_counter() - t1
        log = read_log(Path(tmp) / "bench.run")
        info = read_info(out)
    steady = log[1:] or log
    rate = sum(r["samples_per_s"] for r in steady) / len(steady)
    result = {**spec, "samples": info.training["samples"], "val_samples_used": info.training["val_samples"],
              "samples_per_s": round(rate, 1), "epoch_s": round(sum(r["seconds"] for r in steady) / len(steady), 2),
              "train_wall_s": round(wall, 1), "phantom_s": round(t_data, 1),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "final_train_loss": log[-1]["train_loss"], "final_val_loss": log[-1]["val_loss"]}
    if config.device.startswith("cuda"):
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
        result["gpu"] = torch.cuda.get_device_name()
    return result


def machine() -> str:
    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f} at start"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[5, 30])
    p.add_argument("--threads", type=int, nargs="+", default=[2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--size", default="small", help="phantom size: small, medium or X,Y,Z")
    p.add_argument("--stride", type=int, nargs=2, default=[1, 1], metavar=("STRIDE0", "FINE"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--val-samples", type=int, default=1000)
    p.add_argument("--original", action="store_true",
                   help="the original's scale: medium phantom sampled to ~54,000 patches, depth 30, and the "
                        "time of 300 epochs of 40,000 patches at the measured rate")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.original:
        args.size, args.stride, args.depths = "medium", [3, 2], [30]  # about 54,000 training patches
    size = args.size if args.size in ("small", "medium", "full") else [int(v) for v in args.size.split(",")]
    print(f"machine: {machine()}; torch {__import__('torch').__version__}")
    rows = []
    for depth in args.depths:
        for threads in args.threads:
            spec = {"depth": depth, "threads": threads, "device": args.device, "amp": args.amp, "size": size,
                    "stride": args.stride, "epochs": args.epochs, "batch": args.batch,
                    "val_samples": args.val_samples}
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                                  capture_output=True, text=True)
            line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
            if done.returncode or line is None:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            rows.append(json.loads(line[7:]))
            if args.json:
                print(json.dumps(rows[-1]))
    print("\n| depth | device | threads | AMP | samples | batch | samples/s | s/epoch | peak RSS MB | peak GPU MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['depth']} | {r.get('gpu', r['device'])} | {r['threads']} | {'yes' if r['amp'] else 'no'} | "
              f"{r['samples']} (+{r['val_samples_used']} val) | {r['batch']} | {r['samples_per_s']:.0f} | "
              f"{r['epoch_s']} | {r['peak_rss_mb']:.0f} | {r.get('peak_gpu_mb', '-')} |")
    if args.original:
        r = rows[0]
        print(f"\n300 epochs of 40,000 samples at depth 30: about {300 * 40000 / r['samples_per_s'] / 60:.1f} min "
              f"(at {r['samples_per_s']:.0f} samples/s; measured on {r['samples']} samples, {r['epoch_s']} s per epoch)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
