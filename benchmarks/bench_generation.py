"""Generation throughput and memory: our `TransformersBackend` vs plain `model.generate` on the same prompts.

One online step's worth of sampling: `P` prompts x `G` completions of up to `L` tokens, temperature 1, no filtering.
`generate` gets each prompt repeated `G` times (left-padded, as an online trainer without prefix sharing would call
it); our backend gets the `P` prompts and `n=G`.

    python benchmarks/bench_generation.py                 # CPU: tiny Qwen3 (4 layers, hidden 256, vocab 448), fp32
    python benchmarks/bench_generation.py --device cuda   # GPU: Qwen2.5-0.5B-shaped random model, bf16
    python benchmarks/bench_generation.py --only ours-eos --compact-fraction 0.5 --repeats 3
    python benchmarks/bench_generation.py --config ref-cpu --only ours-noeos --generation_compile true  # compiled
    python benchmarks/bench_generation.py --config ref-cpu --only ours-noeos --cache_implementation dynamic

`--config ref-cpu` is one GRPO step of `bench_online.py --shape ref-cpu` (issue 9's 7.2M Qwen3, 2 prompts x 4
completions x 64 tokens). `--cache_implementation` / `--generation_compile` choose our backend's decode path (the
`GRPOConfig` fields of the same names); one backend serves the whole run, as in a trainer.

Configurations (each in its own process, so its peak memory and warm-up are its own):
- `*-noeos`: the EOS id is `vocab_size`, a token that does not exist, so every completion runs to `L` tokens in
  both engines: the same work, a like-for-like comparison of the decode loops.
- `*-eos`: a realistic EOS: the first `k` token ids count as EOS, with `k = vocab / (L / 2)`; the random model's
  next-token distribution is close to uniform, so a completion ends with probability ~2/L per step and completions
  end at different steps (mean length about 0.4 L). Our backend drops finished rows from the batch; `generate`
  keeps decoding them (as padding) until the last one ends. Tokens/s counts only real tokens (up to and including
  EOS), so both rows are comparable.

Columns: `compl/s` completions per second and `tokens/s` generated tokens (up to and including EOS) per second,
medians over the timed calls (`--calls`, after one untimed warm-up call); `call (s)` the median wall time of one
call; `warm-up s` the wall time of the warm-up call (with `--generation_compile true`, the compilation of the decode
step's graphs); `tokens` generated tokens per call; `peak MiB`: CPU, the peak RSS during the timed calls minus the RSS before
them (`bench_sft.PeakRSS`); CUDA, `torch.cuda.max_memory_allocated()` during the timed calls, weights included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sft import REF_CPU_SHAPE, PeakRSS, load_average, run_configs

SHAPES = {
    # the bundled tiny Qwen3 (4 layers, hidden 256, vocab 448)
    "tiny": {"arch": "qwen3", "overrides": {}},
    # Qwen2.5-0.5B: 24 layers, hidden 896, 14 heads, 2 KV heads, intermediate 4864, vocab 151936, tied embeddings
    "0.5b": {"arch": "qwen2", "overrides": {
        "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768, "tie_word_embeddings": True,
    }},
    # issue 9's reference shape (bench_sft.REF_CPU_SHAPE): 7.2M Qwen3, hidden 256, 4 layers, vocab 8000, untied
    "ref-cpu": {"arch": "qwen3", "overrides": REF_CPU_SHAPE},
}
DEFAULTS = {  # prompts, generations per prompt, max completion tokens, prompt lengths
    "tiny": {"prompts": 8, "generations": 8, "max_new": 64, "prompt_len": "24-36"},
    "0.5b": {"prompts": 8, "generations": 8, "max_new": 256, "prompt_len": "96-160"},
    "ref-cpu": {"prompts": 2, "generations": 4, "max_new": 64, "prompt_len": "27-63"},  # one GRPO step of bench_online
}
CONFIGS = ["ours-noeos", "generate-noeos", "ours-eos", "generate-eos"]
PAD = 3


def _prompts(cli, vocab: int) -> list[list[int]]:
    low, high = (int(x) for x in cli.prompt_len.split("-"))
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(low, high + 1, (cli.prompts,), generator=gen).tolist()
    return [torch.randint(4, vocab, (n,), generator=gen).tolist() for n in lengths]


def _eos_ids(name: str, vocab: int, max_new: int) -> list[int]:
    if name.endswith("noeos"):
        return [vocab]  # not a token of the model: never sampled
    k = max(1, round(vocab / (max_new / 2)))
    return list(range(k))


def _ours(model, prompts, cli, eos, seed):
    from trl.generation.base import SamplingConfig
    from trl.generation.transformers_backend import TransformersBackend

    sampling = SamplingConfig(max_completion_length=cli.max_new, eos_token_ids=tuple(eos), pad_token_id=PAD)
    backend = _BACKENDS.get(id(model))
    if backend is None:  # one backend for the run, as in a trainer (a compiled decode keeps its graphs and caches)
        backend = _BACKENDS[id(model)] = TransformersBackend(
            model, max_batch_size=cli.max_batch_size, cache_implementation=cli.cache_implementation,
            compile=cli.generation_compile)
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    rollout = backend.generate(prompts, n=cli.generations, sampling=sampling, generator=generator)
    return int(rollout.completion_mask.sum())


_BACKENDS = {}


def _generate(model, prompts, cli, eos, seed):
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    rows = [p for p in prompts for _ in range(cli.generations)]
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in rows], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows], device=device)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=cli.max_new,
                             eos_token_id=eos, pad_token_id=PAD, temperature=1.0, top_k=0, top_p=1.0)
    completions = out[:, width:]
    is_eos = torch.isin(completions, torch.tensor(eos, device=device))
    # tokens up to and including the first EOS (generate pads after it)
    ended_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return int((~ended_before).sum())


def run_one(name: str, cli) -> dict:
    from trl.models.tiny import tiny_model

    cuda = cli.device == "cuda"
    if not cuda:
        torch.set_num_threads(cli.threads)
    if cli.compact_fraction is not None:
        import trl.generation.transformers_backend as backend_module

        backend_module._COMPACT_FRACTION = cli.compact_fraction
    shape = SHAPES[cli.config]
    model = tiny_model(shape["arch"], seed=0, **shape["overrides"])
    dtype = getattr(torch, cli.dtype)
    model = model.to("cuda" if cuda else "cpu", dtype).eval()
    model.set_attn_implementation(cli.attn)
    vocab = model.config.vocab_size
    prompts = _prompts(cli, vocab)
    eos = _eos_ids(name, vocab, cli.max_new)
    fn = _ours if name.startswith("ours") else _generate
    started = time.perf_counter()
    fn(model, prompts, cli, eos, seed=0)  # warm-up (compiles the decode step with --generation_compile true)
    warmup_s = time.perf_counter() - started
    times, tokens = [], []
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as mem:
        for call in range(cli.calls):
            start = time.perf_counter()
            tokens.append(fn(model, prompts, cli, eos, seed=call + 1))
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    completions = cli.prompts * cli.generations
    return {
        "config": name, "completions_per_s": statistics.median(completions / t for t in times),
        "tokens_per_s": statistics.median(n / t for n, t in zip(tokens, times)),
        "call_s": statistics.median(times), "tokens": statistics.mean(tokens), "warmup_s": warmup_s,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else mem.peak_mib,
        "times": times, "token_counts": tokens, **mem.summary(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", choices=list(SHAPES), default=None, help="tiny on CPU, 0.5b on CUDA by default")
    parser.add_argument("--dtype", default=None, help="float32 on CPU, bfloat16 on CUDA by default")
    parser.add_argument("--only", nargs="+", choices=CONFIGS)
    parser.add_argument("--prompts", type=int)
    parser.add_argument("--generations", type=int)
    parser.add_argument("--max_new", type=int)
    parser.add_argument("--prompt_len", help="'min-max' prompt tokens")
    parser.add_argument("--max_batch_size", type=int, default=None, help="our backend's max_batch_size")
    parser.add_argument("--compact-fraction", dest="compact_fraction", type=float, default=None,
                        help="override the backend's _COMPACT_FRACTION (to measure the compaction policy)")
    parser.add_argument("--calls", type=int, default=3, help="timed calls after one warm-up call")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration (the median is printed)")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--cache_implementation", choices=["static", "dynamic"], default=None,
                        help="our backend's KV cache (default None: static when the model supports it)")
    parser.add_argument("--generation_compile", choices=["auto", "true", "false"], default="auto",
                        help="compile our static decode step (default 'auto': CUDA only)")
    parser.add_argument("--json", help="also write every result to this file")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    cli.generation_compile = {"true": True, "false": False}.get(cli.generation_compile, cli.generation_compile)
    cuda = cli.device == "cuda"
    cli.config = cli.config or ("0.5b" if cuda else "tiny")
    cli.dtype = cli.dtype or ("bfloat16" if cuda else "float32")
    for key, value in DEFAULTS[cli.config].items():
        if getattr(cli, key) is None:
            setattr(cli, key, value)
    if cli._child:
        print(json.dumps(run_one(cli.only[0], cli)))
        return
    names = cli.only or CONFIGS

    def child_argv(name):
        argv = [sys.executable, __file__, "--_child", "--only", name, "--device", cli.device, "--config", cli.config,
                "--dtype", cli.dtype, "--prompts", str(cli.prompts), "--generations", str(cli.generations),
                "--max_new", str(cli.max_new), "--prompt_len", cli.prompt_len, "--calls", str(cli.calls),
                "--threads", str(cli.threads), "--attn", cli.attn,
                "--generation_compile", str(cli.generation_compile).lower()]
        if cli.cache_implementation is not None:
            argv += ["--cache_implementation", cli.cache_implementation]
        if cli.max_batch_size is not None:
            argv += ["--max_batch_size", str(cli.max_batch_size)]
        if cli.compact_fraction is not None:
            argv += ["--compact-fraction", str(cli.compact_fraction)]
        return argv

    def print_row(r):
        print(f"{r['config']:16} {r['completions_per_s']:9.1f} {r['tokens_per_s']:10.0f} {r['call_s']:9.3f} "
              f"{r['tokens']:8.0f} {r['peak_mib']:9.1f} {r.get('warmup_s', float('nan')):9.2f}", flush=True)

    print(f"device={cli.device} config={cli.config} dtype={cli.dtype} threads={cli.threads if not cuda else '-'} "
          f"prompts={cli.prompts} x generations={cli.generations} x max_new={cli.max_new} "
          f"prompt_len={cli.prompt_len} calls={cli.calls} (+1 warm-up) repeats={cli.repeats} "
          f"compact_fraction={cli.compact_fraction if cli.compact_fraction is not None else 'default'} | "
          f"{load_average()}")
    print(f"{'config':16} {'compl/s':>9} {'tokens/s':>10} {'call (s)':>9} {'tokens':>8} {'peak MiB':>9} "
          f"{'warm-up s':>9}", flush=True)
    run_configs(names, child_argv, cli.repeats, print_row, cli.json)


if __name__ == "__main__":
    main()
