"""Peak memory and time of the distillation divergence: naive full logits vs `trl.ops.divergence.chunked_divergence`.

One measurement is a forward + backward of the summed per-token generalized JSD between a student head `(V, Hs)` and a
teacher head `(V, Ht)` over `N` tokens (gradients of the student's hidden states and head weight; the teacher gets
none), fp32 on CPU (`--dtype` on CUDA):

- `naive`: `trl.ops.divergence.naive_divergence`, both models' full `(N, V)` logits and autograd;
- `chunked@R`: `chunked_divergence` with `R` rows per chunk (`default` is what `chunk_size=None` picks), whose
  backward recomputes both heads' logits chunk by chunk.

Peak memory is the growth of peak RSS during the call on CPU (the `PeakMemory` of `benchmarks/bench_ops.py`) and of
`torch.cuda.max_memory_allocated` on CUDA. Times are medians of `--repeats` calls, interleaved between methods.

Usage:
    python benchmarks/bench_divergence.py                              # N=4096, Hs=Ht=512, V=32000; beta 1 and 0.5
    python benchmarks/bench_divergence.py --shape 4096x512x768x32000 --betas 0,0.5,1 --rows default,64,1024
    python benchmarks/bench_divergence.py --device cuda --shape 16384x896x1536x151936 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ops import MB, PeakMemory

from trl.ops.divergence import chunked_divergence, naive_divergence
from trl.ops.logprobs import default_chunk_size


def make_inputs(n, hs, ht, v, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(n, hs, generator=g).to(device, dtype).requires_grad_()
    student_weight = (torch.randn(v, hs, generator=g) / hs**0.5).to(device, dtype).requires_grad_()
    teacher_hidden = torch.randn(n, ht, generator=g).to(device, dtype)
    teacher_weight = (torch.randn(v, ht, generator=g) / ht**0.5).to(device, dtype)
    return student_hidden, student_weight, teacher_hidden, teacher_weight


def call(method, rows, inputs, beta):
    hs, ws, ht, wt = inputs
    hs.grad = ws.grad = None
    if method == "naive":
        out = naive_divergence(hs, ws, ht, wt, beta=beta)
    else:
        out = chunked_divergence(hs, ws, ht, wt, beta=beta, chunk_size=rows)
    out.divergence.sum().backward()
    return out.divergence.detach().sum().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="4096x512x512x32000", help="NxHsxHtxV")
    parser.add_argument("--betas", default="1,0.5")
    parser.add_argument("--rows", default="default", help="chunk sizes of the chunked method ('default' or ints)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    n, hs, ht, v = (int(x) for x in args.shape.split("x"))
    default_rows = default_chunk_size(v, device)
    rows = [default_rows if r == "default" else int(r) for r in args.rows.split(",")]
    methods = [("naive", None)] + [(f"chunked@{r}" + (" (default)" if r == default_rows else ""), r) for r in rows]
    inputs = make_inputs(n, hs, ht, v, device, dtype)
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(f"N={n} Hs={hs} Ht={ht} V={v} {args.dtype} on {device}, {torch.get_num_threads()} thread(s), load {load}; "
          f"one (N, V) float32 logits tensor = {n * v * 4 / MB:.0f} MB")
    print(f"{'beta':>5} {'method':<24} {'peak MB':>9} {'ms (median)':>12} {'|sum - naive|':>14}")
    for beta in (float(b) for b in args.betas.split(",")):
        peaks, times, sums = {}, {name: [] for name, _ in methods}, {}
        for name, r in methods:  # a first call per method measures the peak (and warms up)
            with PeakMemory(device) as peak:
                sums[name] = call(name if r is None else "chunked", r, inputs, beta)
            peaks[name] = peak.peak
        for _ in range(args.repeats):
            for name, r in methods:  # interleaved, so that load changes hit every method alike
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                call(name if r is None else "chunked", r, inputs, beta)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
        for name, _ in methods:
            print(f"{beta:>5g} {name:<24} {peaks[name] / MB:>9.0f} {statistics.median(times[name]) * 1e3:>12.0f} "
                  f"{abs(sums[name] - sums['naive']):>14.3g}")


if __name__ == "__main__":
    main()
