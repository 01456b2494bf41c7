"""Benchmark of whole-brain inference (issue 6): the exact fast kernel against the original per-voxel
procedure, the plain batched conv2d port, a dense 576 x 576-matrix formulation, and this machine's
practical fp32 GEMM peak, all in one run so that the ratios hold on a shared, noisy machine.

    python Testing/benchmarks/bench_infer.py [--depths 5 30] [--device cpu|cuda] [--json out.json]

Volume: the 200 x 280 x 128 grid of the shipped anatomy, brain = ``nf_brain_C1 > 0`` (about 2.1 M
voxels), 67 random input channels (the content does not change the work). Whole-brain runs use
``predict_array`` (fast kernel, chunked) and report time, voxels/s and the peak memory above the
inputs (sampled from /proc every 10 ms); the other methods run on a sample of voxels and are
extrapolated. Rates on the sample are best-of-``--repeats``, interleaved.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

import numpy as np
import torch

from MRHNetLib.network.fastconv import PatchNet
from MRHNetLib.network.infer import default_chunk, patch_batch, predict_array
from MRHNetLib.network.model import MRHNet, init_weights
from MRHNetLib.resources import resource


class PeakRSS:
    """Peak resident memory above the level at entry, sampled in a thread (Linux /proc)."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak, self.base = interval, 0, 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.base = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def above_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def dense_layers(net: MRHNet, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each 3 x 3 layer as a dense (9 C_in) x (9 C_out) matrix on row-major flattened patches."""
    out = []
    for conv in net.convs():
        w = conv.weight.detach()
        c_out, c_in = w.shape[:2]
        m = torch.zeros(9, c_in, 9, c_out)
        for pi in range(9):
            for po in range(9):
                dr, dc = pi // 3 - po // 3, pi % 3 - po % 3
                if abs(dr) <= 1 and abs(dc) <= 1:
                    m[pi, :, po, :] = w[:, :, dr + 1, dc + 1].T
        out.append((m.reshape(9 * c_in, 9 * c_out).to(device), conv.bias.detach().repeat(9).to(device)))
    return out


def dense_forward(layers, depth: int, x: torch.Tensor) -> torch.Tensor:
    """The network on (N, 9 C) patches with one dense GEMM per layer (81 products per channel pair)."""
    lin = lambda t, k: torch.addmm(layers[k][1], t, layers[k][0])  # noqa: E731
    a = lin(lin(x, 0).relu_(), 1).relu_()
    y = lin(lin(a, 2).relu_(), 3) + a
    k = 4
    for _ in range(depth):
        r = y.relu_()
        y = lin(lin(r, k).relu_(), k + 1) + r
        k += 2
    z = lin(y.relu_(), k).relu_()
    return z @ layers[k + 1][0][:, 4] + layers[k + 1][1][4]  # centre output only


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def gemm_peak(device: torch.device, repeats: int) -> float:
    """Practical fp32 GEMM rate (GFLOP/s) for (8192 x 576) @ (576 x 576), best of ``repeats``."""
    a = torch.randn(8192, 576, device=device)
    b = torch.randn(576, 576, device=device)
    o = torch.mm(a, b)
    best = min(timed(lambda: [torch.mm(a, b, out=o) for _ in range(5)], device) for _ in range(repeats)) / 5
    rate = 2 * 8192 * 576 * 576 / best / 1e9
    if device.type == "cpu":  # also as inference runs: one single-threaded GEMM per worker
        halves = [(a[: 4096], o[: 4096]), (a[4096:], o[4096:])] * 5
        best = min(timed(lambda: pooled(lambda x: torch.mm(x[0], b, out=x[1]), halves, device), device)
                   for _ in range(repeats)) / 5
        rate = max(rate, 2 * 8192 * 576 * 576 / best / 1e9)
    return rate


def pooled(fn, chunks: list, device: torch.device) -> list:
    """``fn`` over ``chunks`` as inference runs them on the CPU: torch's thread count of workers, each
    single-threaded (on CUDA: in order on the calling thread)."""
    from concurrent.futures import ThreadPoolExecutor

    if device.type != "cpu":
        return [fn(x) for x in chunks]
    n = torch.get_num_threads()

    def work(part):
        torch.set_num_threads(1)
        with torch.no_grad():
            return [fn(x) for x in part]

    with ThreadPoolExecutor(n) as pool:
        parts = list(pool.map(work, [chunks[i::n] for i in range(n)]))
    out = [None] * len(chunks)
    for i in range(n):
        out[i::n] = parts[i]
    return out


def brain_mask() -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(resource("anatomy", "nf_brain_C1.nii.gz"))).dataobj) > 0


def random_stack(shape, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stack = np.empty((67,) + tuple(shape), dtype=np.float32)
    for c in range(67):
        stack[c] = rng.random(shape, dtype=np.float32)
    return stack


def whole_brain(depth: int, chunk: int, device: str, quarter: bool) -> dict:
    """Time and peak memory above the inputs of ``predict_array`` on the whole (or a quarter) brain."""
    mask = brain_mask()
    if quarter:
        keep = np.zeros_like(mask)
        keep[: mask.shape[0] // 2, : mask.shape[1] // 2] = True
        mask &= keep
    stack = random_stack(mask.shape)
    torch.manual_seed(depth)
    net = init_weights(MRHNet(67, depth)).eval()
    dev = torch.device(device)
    with PeakRSS() as mem:
        t = timed(lambda: predict_array(net, stack, mask, (1, 0, 2), 1, device=dev, chunk_voxels=chunk), dev)
    n = int(mask.sum())
    out = {"voxels": n, "seconds": t, "voxels_per_s": n / t, "peak_mb_above_inputs": mem.above_mb,
           "chunk_voxels": chunk, "depth": depth}
    if dev.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def whole_brain_subprocess(depth: int, chunk: int, device: str, quarter: bool) -> dict:
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "--whole-only", "--depths", str(depth), "--chunk", str(chunk), "--device", device]
    if quarter:
        cmd.append("--quarter")
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[5, 30])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sample", type=int, default=None,
                    help="voxels for the sample comparisons (default 32768 on the CPU, 262144 on a GPU)")
    ap.add_argument("--per-voxel", type=int, default=200, help="voxels for the per-voxel procedure")
    ap.add_argument("--chunk", type=int, default=None, help="voxels per chunk (default: predict's, 2048 CPU / 65536 GPU)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-whole", action="store_true", help="skip the whole-brain runs")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--whole-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quarter", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.chunk = args.chunk or default_chunk(torch.device(args.device))
    args.sample = args.sample or (262144 if torch.device(args.device).type == "cuda" else 32768)
    if args.whole_only:
        print(json.dumps(whole_brain(args.depths[0], args.chunk, args.device, args.quarter)))
        return
    device = torch.device(args.device)
    mask = brain_mask()
    shape = mask.shape
    n_brain = int(mask.sum())
    axes = (1, 0, 2)  # coronal slices of this grid (A-P axis), rows L-R, columns I-S
    rng = np.random.default_rng(0)
    stack = random_stack(shape)
    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                                 "torch": torch.__version__, "device": str(device),
                                 "load_average_start": os.getloadavg()},
                     "volume": {"shape": list(shape), "brain_voxels": n_brain, "channels": 67}}
    print(f"volume {shape}, {n_brain:,} brain voxels, device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")
    peak = gemm_peak(device, args.repeats)
    results["gemm_peak_gflops"] = peak
    print(f"fp32 GEMM (8192x576 @ 576x576): {peak:.0f} GFLOP/s")
    flat = torch.from_numpy(stack.reshape(67, -1)).to(device)
    centres_all = np.flatnonzero(mask)
    sample = torch.as_tensor(np.sort(rng.choice(centres_all, min(args.sample, n_brain), replace=False)), device=device)
    for depth in args.depths:
        torch.manual_seed(depth)
        net = init_weights(MRHNet(67, depth)).eval().to(device)
        pn = PatchNet(net, device)
        layers = dense_layers(net, device)
        r: dict = {}
        # --- sample: fast kernel, conv2d port, dense GEMM form, interleaved ---------------------
        # patches are cut once (excluded from these timings; the whole-brain run includes them)
        xs = [patch_batch(flat, sample[i:i + args.chunk], shape, axes, 1) for i in range(0, len(sample), args.chunk)]
        xc = [x.permute(2, 3, 0, 1).contiguous() for x in xs]  # (N, C, 3, 3) for conv2d
        xd = [x.permute(2, 0, 1, 3).reshape(x.shape[2], -1).contiguous() for x in xs]  # (N, 9 C), row-major
        port = lambda x: net(x)[:, 0, 1, 1]  # noqa: E731
        dense = lambda x: dense_forward(layers, depth, x)  # noqa: E731
        pnb = PatchNet(net, device, "bf16")
        pnt = PatchNet(net, device, "tf32") if device.type == "cuda" else None
        gemm_a = [torch.randn(x.shape[2], 576, device=device) for x in xs]
        gemm_b = torch.randn(576, 576, device=device)
        gemm_o = [torch.empty(len(a), 576, device=device) for a in gemm_a]  # outputs reused: no allocation
        gemm_reps = max(1, round(pn.flops(1) / (2 * 576 * 576)))  # about the same work as the network
        with torch.no_grad():
            runs = {"fast": lambda: pooled(pn, xs, device),
                    "conv2d_port": lambda: [port(x) for x in xc],  # the plain port: torch's own threading
                    "conv2d_pooled": lambda: pooled(port, xc, device),
                    "dense_pooled": lambda: pooled(dense, xd, device),
                    "fast_bf16": lambda: pooled(pnb, xs, device),
                    **({"fast_tf32": lambda: pooled(pnt, xs, device)} if device.type == "cuda" else {}),
                    # a plain fp32 GEMM of comparable shape, run the same way: the practical peak
                    "gemm": lambda: pooled(lambda ao: [torch.mm(ao[0], gemm_b, out=ao[1]) for _ in range(gemm_reps)],
                                           list(zip(gemm_a, gemm_o)), device)}
            ref = torch.cat([port(x) for x in xc])
            err = {k: (torch.cat(runs[k]()) - ref).abs().max().item()
                   for k in ("fast", "dense_pooled", "fast_bf16", "fast_tf32") if k in runs}
            best = {k: float("inf") for k in runs}
            cpu = {k: float("inf") for k in runs}
            for _ in range(args.repeats):
                for k, fn in runs.items():
                    c = time.process_time()
                    best[k] = min(best[k], timed(fn, device))
                    cpu[k] = min(cpu[k], time.process_time() - c)
            # per-voxel procedure: one patch at a time through the network
            pv = xc[0][: args.per_voxel]
            tp = timed(lambda: [net(pv[i:i + 1]) for i in range(len(pv))], device)
        n = len(sample)
        peak_here = 2 * n * 576 * 576 * gemm_reps / best.pop("gemm") / 1e9
        peak_cpu = 2 * n * 576 * 576 * gemm_reps / cpu.pop("gemm") / 1e9  # per CPU-second: robust to sharing
        r["gemm_peak_gflops"] = peak_here
        r["gemm_gflops_per_cpu_second"] = peak_cpu
        rates = {k: n / t for k, t in best.items()}
        rates["per_voxel"] = len(pv) / tp
        scale = ref.abs().max().item()
        r["sample_voxels"] = n
        r["rates_voxels_per_s"] = rates
        r["rates_per_cpu_second"] = {k: n / t for k, t in cpu.items()}
        useful = pn.flops(n)
        dense_flops = 2 * n * (sum(m.numel() for m, _ in layers[:-1]) + layers[-1][0].shape[0])
        r["gflops_counting_products_done"] = {"fast": useful / best["fast"] / 1e9,
                                              "dense_pooled": dense_flops / best["dense_pooled"] / 1e9,
                                              "conv2d_port_useful_taps": useful / best["conv2d_port"] / 1e9}
        r["fraction_of_gemm_peak"] = {k: v / peak_here for k, v in r["gflops_counting_products_done"].items()}
        r["fraction_of_gemm_peak_cpu_time"] = {"fast": useful / cpu["fast"] / 1e9 / peak_cpu,
                                               "dense_pooled": dense_flops / cpu["dense_pooled"] / 1e9 / peak_cpu,
                                               "conv2d_pooled_useful_taps": useful / cpu["conv2d_pooled"] / 1e9 / peak_cpu}
        r["speedup_vs_conv2d_pooled_cpu_time"] = cpu["conv2d_pooled"] / cpu["fast"]
        r["speedup_vs_conv2d_port"] = rates["fast"] / rates["conv2d_port"]
        r["speedup_vs_conv2d_pooled"] = rates["fast"] / rates["conv2d_pooled"]
        r["max_abs_error_vs_conv2d"] = dict(err, output_scale=scale)
        r["whole_brain_extrapolated_s"] = {k: n_brain / v for k, v in rates.items()}
        print(f"\ndepth {depth}: sample of {n:,} voxels (best of {args.repeats}, interleaved); fp32 GEMM "
              f"(N x 576 @ 576 x 576, same workers) {peak_here:.0f} GFLOP/s")
        for k, v in rates.items():
            print(f"  {k:14s} {v:9.0f} voxels/s   whole brain ~ {n_brain / v / 60:7.1f} min"
                  + (f"   ({r['rates_per_cpu_second'][k]:.0f} voxels per CPU-second)" if k in cpu else ""))
        print(f"  fast = {r['speedup_vs_conv2d_port']:.2f}x the conv2d port ({r['speedup_vs_conv2d_pooled']:.2f}x the "
              f"port run on the same single-thread workers); {r['gflops_counting_products_done']['fast']:.0f} GFLOP/s "
              f"counting the products done = {100 * r['fraction_of_gemm_peak']['fast']:.0f} % of the GEMM peak "
              f"(dense form {100 * r['fraction_of_gemm_peak']['dense_pooled']:.0f} %)")
        print(f"  by CPU time (robust to sharing): fast = {r['speedup_vs_conv2d_pooled_cpu_time']:.2f}x the pooled port; "
              f"fast {100 * r['fraction_of_gemm_peak_cpu_time']['fast']:.0f} %, dense "
              f"{100 * r['fraction_of_gemm_peak_cpu_time']['dense_pooled']:.0f} % of the GEMM's "
              f"{peak_cpu:.0f} GFLOP per CPU-second")
        print("  max |error| vs conv2d: " + ", ".join(f"{k} {v:.2e}" for k, v in err.items())
              + f" (outputs up to {scale:.3g})")
        del xs, xc, xd
        # --- whole brain, in a fresh process (clean memory baseline) ------------------------------
        if not args.no_whole:
            r["whole_brain"] = whole_brain_subprocess(depth, args.chunk, args.device, quarter=False)
            w = r["whole_brain"]
            print(f"  whole brain (fast, chunk {args.chunk}): {w['seconds']:.1f} s = {w['voxels_per_s']:.0f} voxels/s, "
                  f"peak memory above inputs {w['peak_mb_above_inputs']:.0f} MB")
        results[f"depth_{depth}"] = r
    if not args.no_whole:  # memory does not grow with the volume: a quarter of the brain, same chunk
        q = whole_brain_subprocess(args.depths[0], args.chunk, args.device, quarter=True)
        results["quarter_brain"] = q
        print(f"\nquarter brain ({q['voxels']:,} voxels), depth {args.depths[0]}: {q['seconds']:.1f} s, peak memory above "
              f"inputs {q['peak_mb_above_inputs']:.0f} MB")
    results["machine"]["load_average_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
