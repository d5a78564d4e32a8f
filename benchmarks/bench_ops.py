"""Time and memory of the LM head + per-token loss: naive full logits vs `trl.ops` chunked and fused, on CPU (or CUDA).

Each measurement is one forward + backward of a summed NLL over `N` target tokens with hidden size `H` and vocabulary
`V`, in fp32 on CPU (the dtype of `--dtype` on CUDA):

- `naive_ce`: `F.cross_entropy(F.linear(hidden, weight).float(), labels)`, the plain LM head;
- `naive_stats`: `trl.ops.naive_token_stats` (also computes entropy and accuracy, like the trainers' metrics);
- `chunked@R`: `trl.ops.chunked_token_stats` with `R` rows per chunk (its backward recomputes the logits);
- `fused@R`: `trl.ops.fused_token_loss` with `R` rows per chunk (the gradient is computed during the forward pass).
`R = default` is what `chunk_size=None` picks on this device; the default run adds `fused` at 32 and 1024 rows on the
faster shapes, and `--rows` / `--budgets` (MB of float32 logits) pick other chunk sizes.

Peak memory is the growth of the process's peak RSS during the call on CPU (`/proc/self/clear_refs` resets it, and
`malloc_trim` returns freed heap memory first, so earlier calls do not hide allocations), and
`torch.cuda.max_memory_allocated` growth on CUDA. `logits MB` is the float32 logits block a method holds at once. The
header prints the load average: on a shared machine, 2-thread figures are only meaningful when it is below ~1.

Usage:
    python benchmarks/bench_ops.py                 # the default grid, about 3 minutes on 2 CPU cores
    python benchmarks/bench_ops.py --full          # + N=8192 at V=151936, 1-64 MB blocks, 64-1024 rows
    python benchmarks/bench_ops.py --shapes 2048x256x32000 --threads 1 --rows 64,128,256,512
    python benchmarks/bench_ops.py --device cuda --dtype bfloat16 --shapes 16384x896x151936 --budgets 128,512,2048
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trl.ops import chunked_token_stats, default_chunk_size, fused_token_loss, naive_token_stats


MB = 2**20
DEFAULT_SHAPES = ["2048x256x448", "8192x256x448", "2048x256x32000", "8192x256x32000", "2048x64x151936"]
# 8192 x 64 x 151936: naive is skipped there (5 GB of logits, ~15 GB for its forward + backward)
FULL_SHAPES = DEFAULT_SHAPES + ["8192x64x151936"]
# above this many bytes of float32 logits the naive methods are skipped (they hold ~3 such tensors at once): 2 GB on
# CPU; 10 GB on CUDA, so the naive head of a packed 8 x 2048 batch at V = 151936 (~30 GB in all) runs on an 80 GB card
NAIVE_LIMIT = {"cpu": 2 * 2**30, "cuda": 10 * 2**30}


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


class PeakMemory:
    """Peak memory growth of a block of code: CUDA allocator stats, or peak RSS on Linux CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = float("nan")

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        elif Path("/proc/self/clear_refs").exists():
            if _LIBC is not None:
                _LIBC.malloc_trim(0)
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                self.start = self._status("VmRSS")
            except OSError:
                self.start = None
        else:
            self.start = None
        return self

    @staticmethod
    def _status(field):
        return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        elif self.start is not None:
            self.peak = self._status("VmHWM") - self.start


def make_inputs(n, h, v, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(device, dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) / h**0.5).to(device, dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=gen).to(device)
    return hidden, weight, labels


def nll(logps):
    return -logps


def run_method(method, rows, hidden, weight, labels):
    if method == "naive_ce":
        loss = F.cross_entropy(F.linear(hidden, weight).float(), labels, reduction="sum")
    elif method == "naive_stats":
        stats = naive_token_stats(hidden, weight, labels)
        loss = -stats.logps.sum()
    elif method == "chunked":
        loss = -chunked_token_stats(hidden, weight, labels, chunk_size=rows).logps.sum()
    else:
        loss, _ = fused_token_loss(hidden, weight, labels, nll, 1.0, chunk_size=rows)
    loss.backward()
    hidden.grad = weight.grad = None


def time_once(method, rows, inputs, device):
    start = time.perf_counter()
    run_method(method, rows, *inputs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(methods, inputs, calls, device):
    """Median time and peak memory of `calls` calls of each method. The methods take turns, so a change of load on a
    shared machine hits all of them alike. Every call is timed: a training step calls the head once, so the page
    faults of its first touch of fresh memory belong in the figure."""
    times, peaks = {m: [] for m in methods}, {m: [] for m in methods}
    for _ in range(calls):
        for method, rows in methods:
            with PeakMemory(device) as mem:
                elapsed = time_once(method, rows, inputs, device)
            times[(method, rows)].append(elapsed)
            peaks[(method, rows)].append(mem.peak)
    return {m: (statistics.median(times[m]) * 1e3, max(peaks[m]) / MB) for m in methods}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every shape, more block sizes, naive_stats everywhere")
    parser.add_argument("--shapes", help="comma-separated NxHxV shapes")
    parser.add_argument("--threads", help="comma-separated torch.set_num_threads values (CPU), default 1,2")
    parser.add_argument("--budgets", help="comma-separated float32 logits block sizes in MB for extra fused runs")
    parser.add_argument("--rows", help="comma-separated chunk sizes in rows for extra fused runs")
    parser.add_argument("--calls", type=int, help="timed calls per method (median printed)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", help="dtype on CUDA (CPU always runs fp32)")
    return parser.parse_args()


def methods_for(n, v, default_rows, args):
    big = n * v > 2048 * 32000  # several seconds per call on CPU: the default run skips the extras there
    methods = []
    if n * v * 4 <= NAIVE_LIMIT.get(args.device.split(":")[0], NAIVE_LIMIT["cpu"]):
        methods.append(("naive_ce", n))
        if args.full or n * v < 2048 * 32000:
            methods.append(("naive_stats", n))
    methods += [("chunked", default_rows), ("fused", default_rows)]
    if args.rows or args.budgets:
        extra = [int(r) for r in args.rows.split(",")] if args.rows else []
        extra += [max(1, int(float(b) * MB) // (4 * v)) for b in (args.budgets.split(",") if args.budgets else [])]
    elif args.full:
        extra = [max(1, int(b * MB) // (4 * v)) for b in (1, 4, 16, 64)] + [64, 128, 512, 1024]
    else:
        extra = [] if big else [32, 1024]
    for rows in dict.fromkeys(extra):
        if rows != default_rows and rows < n:
            methods.append(("fused", rows))
    return methods


def main():
    args = parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if device.type == "cuda" else torch.float32
    shapes = args.shapes.split(",") if args.shapes else (FULL_SHAPES if args.full else DEFAULT_SHAPES)
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [1, 2]
    if device.type == "cuda":
        threads = [torch.get_num_threads()]
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"device={device} dtype={dtype} torch={torch.__version__} cpus={os.cpu_count()} load_avg={load}")
    header = (
        f"{'N':>5} {'H':>4} {'V':>7} {'thr':>3}  {'method':<15} {'rows':>5} {'logits MB':>9} {'ms':>9} {'peak MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for method in ("naive_ce", "chunked", "fused"):  # warm up kernels and thread pools once
        time_once(method, 8, make_inputs(16, 8, 32, device, dtype), device)
    for shape in shapes:
        n, h, v = (int(x) for x in shape.split("x"))
        inputs = make_inputs(n, h, v, device, dtype)
        default_rows = default_chunk_size(v, device)
        methods = methods_for(n, v, default_rows, args)
        calls = args.calls or (1 if n * v > 2048 * 32000 else 2 if n * v >= 2048 * 32000 else 5)
        for num_threads in threads:
            if device.type == "cpu":
                torch.set_num_threads(num_threads)
            for (method, rows), (ms, peak) in measure(methods, inputs, calls, device).items():
                tag = "default" if rows == default_rows else str(rows)
                label = method if method.startswith("naive") else f"{method}@{tag}"
                print(
                    f"{n:>5} {h:>4} {v:>7} {num_threads:>3}  {label:<15} {min(rows, n):>5} "
                    f"{min(rows, n) * v * 4 / MB:>9.1f} {ms:>9.1f} {peak:>8.1f}",
                    flush=True,
                )
            print()
        del inputs
        gc.collect()


if __name__ == "__main__":
    main()
