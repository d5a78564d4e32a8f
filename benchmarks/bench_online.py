"""Online RL step time: GRPO and RLOO, split into generation / reference+old log-probs / scoring / training, with
plain `model.generate` on the same prompts as the baseline for the generation backend.

Each configuration runs in its own process (peak memory is its own):

    python benchmarks/bench_online.py                  # CPU: tiny Qwen3 (4 layers, hidden 256, vocab 448), fp32
    python benchmarks/bench_online.py --device cuda    # GPU: Qwen2.5-0.5B-shaped random model, bf16
    python benchmarks/bench_online.py --only grpo generate --steps 5
    python benchmarks/bench_online.py --shape sft-cpu --prompts 1   # bench_sft.py's 7M shape, 8 completions a step
    python benchmarks/bench_online.py --shape ref-cpu --repeats 3   # the reference library's measured shape (issue 9)
    python benchmarks/bench_online.py --shape ref-cpu --only grpo --cache_implementation dynamic  # the dynamic cache
    python benchmarks/bench_online.py --device cuda --generation_compile false   # the static decode uncompiled
    python benchmarks/bench_online.py --shape ref-cpu --only grpo --share_prompt_forward false  # one row per completion

`--cache_implementation` and `--generation_compile` set the `GRPOConfig`/`RLOOConfig` fields of the same names (the
generation backend's decode path; defaults: static cache when the model supports it, compiled on CUDA only).

`--shape ref-cpu` is the shape the reference library (TRL 1.16) was measured on (docs/design.md, "Performance
targets"): a 7.2M-parameter Qwen3 (hidden 256, 4 layers, 4 / 2 kv heads, head_dim 64, intermediate 768, vocab 8000,
untied), fp32, batch 8 = 2 prompts x `num_generations=4`, prompts of 27-63 tokens (uniform, random ids), 64
completion tokens, temperature 1, completions that never end; 5 timed steps after 1 warm-up step by default.

Workload per step: `prompts x num_generations` completions of exactly `completion_len` tokens (the end-of-sequence
check is switched off so that every run generates the same number of tokens; CPU 8 x 8 x 64, GPU 8 x 8 x 256 =
64 completions of 256 tokens), random prompts of `prompt_len` tokens, one reward function on the token ids.

Configurations:
- `grpo`: `GRPOTrainer`, loss `dapo`, `beta=0` (no reference), one optimiser step per generation batch;
- `grpo-beta`: the same with `beta=0.04` (a reference forward per generation batch);
- `rloo`: `RLOOTrainer` (its default `beta=0.05`: reference and old log-probs are used by the KL reward penalty);
- `generate`: the baseline, `model.generate(do_sample=True)` on the same prompts, each prompt repeated
  `num_generations` times in one left-padded batch, same number of new tokens (no training).

Columns: `step (s)` median step time; `gen`, `logps`, `score` the medians of the trainer's `timing/*` metrics
(generation, reference/old log-probs, rewards) and `train` = step − those (forward, backward, optimiser);
`compl/s` completions per second of step time; `tok/s` prompt + completion tokens per second of step time;
`gen tok/s` generated tokens per second of generation time;
`peak MiB` as in `bench_sft.py` (CPU: peak RSS minus the RSS before training; CUDA: `max_memory_allocated`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sft import CPU_SHAPE as SFT_CPU_SHAPE
from bench_sft import REF_CPU_SHAPE, PeakRSS, load_average, run_configs

CONFIGS = ("grpo", "grpo-beta", "rloo", "generate")
CPU_SHAPE = {"arch": "qwen3"}  # the bundled tiny config: 4 layers, hidden 256, vocab 448
GPU_SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True)


def _model(cuda: bool, shape: str = "tiny"):
    from transformers import AutoConfig, AutoModelForCausalLM

    from trl.models.tiny import tiny_model

    if not cuda and shape == "tiny":
        return tiny_model("qwen3", seed=0)
    if not cuda and shape == "ref-cpu":
        return tiny_model("qwen3", seed=0, **REF_CPU_SHAPE)
    if not cuda:  # the 7M-parameter shape of bench_sft.py / docs/design.md's CPU figures (vocab 32768)
        return tiny_model("qwen3", seed=0, **SFT_CPU_SHAPE)
    config = AutoConfig.for_model("qwen2", pad_token_id=3, eos_token_id=2, **GPU_SHAPE)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()


def _prompts(n: int, length: tuple[int, int], vocab: int, seed: int = 0) -> list[list[int]]:
    """`n` random prompts, lengths uniform in `length` (inclusive `(min, max)`), ids in `[4, vocab)`."""
    generator = torch.Generator().manual_seed(seed)
    if length[0] == length[1]:
        return torch.randint(4, vocab, (n, length[0]), generator=generator).tolist()
    sizes = torch.randint(length[0], length[1] + 1, (n,), generator=generator).tolist()
    return [torch.randint(4, vocab, (k,), generator=generator).tolist() for k in sizes]


def _lengths(spec: str) -> tuple[int, int]:
    low, _, high = spec.partition("-")
    return int(low), int(high or low)


def _tokens_per_step(prompts: list[list[int]], cli) -> float:
    """Mean prompt + completion tokens of a timed step (prompts are consumed in order, `cli.prompts` a step, each
    repeated `num_generations` times; every completion is `completion_len` tokens)."""
    timed = prompts[cli.warmup * cli.prompts : (cli.warmup + cli.steps) * cli.prompts]
    per_completion = sum(len(p) for p in timed) / len(timed) + cli.completion_len
    return cli.prompts * cli.num_generations * per_completion


def _token_reward(completion_ids, **kwargs):
    return [sum(ids) % 7 / 7 for ids in completion_ids]


def run_one(name: str, cli) -> dict:
    from datasets import Dataset

    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
    from trl.models.tiny import tiny_tokenizer

    cuda = cli.device == "cuda"
    torch.set_num_threads(cli.threads)
    model = _model(cuda, cli.shape)
    tokenizer = tiny_tokenizer()
    vocab = min(model.config.vocab_size, len(tokenizer))
    prompts = _prompts(cli.prompts * (cli.steps + cli.warmup), cli.prompt_len, vocab)
    completions = cli.prompts * cli.num_generations
    tokens_per_step = _tokens_per_step(prompts, cli)
    if name == "generate":
        return _run_generate(model, prompts, cli, completions, tokens_per_step)
    # pre-tokenised prompts (`prompt_ids`): generation starts from exactly these random ids
    dataset = Dataset.from_list([{"prompt_ids": p} for p in prompts])
    common = dict(
        output_dir="/tmp/bench-online", max_steps=cli.steps + cli.warmup, per_device_train_batch_size=completions,
        num_generations=cli.num_generations, max_completion_length=cli.completion_len, learning_rate=1e-6,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, guards=False, seed=0,
        gradient_checkpointing=cli.gradient_checkpointing, bf16=cuda, shuffle_dataset=False,
        cache_implementation=cli.cache_implementation, generation_compile=cli.generation_compile,
        share_prompt_forward=cli.share_prompt_forward,
    )
    if name == "rloo":
        trainer = RLOOTrainer(model=model, reward_funcs=_token_reward, args=RLOOConfig(**common),
                              train_dataset=dataset, processing_class=tokenizer)
    else:
        config = GRPOConfig(**common, beta=0.04 if name == "grpo-beta" else 0.0)
        trainer = GRPOTrainer(model=model, reward_funcs=_token_reward, args=config, train_dataset=dataset,
                              processing_class=tokenizer)
    trainer.sampling = dataclasses.replace(trainer.sampling, eos_token_ids=(-1,))  # fixed-length completions
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        trainer.train()
    logs = [log for log in trainer.state.log_history if "step_time" in log][cli.warmup :]

    def median(key):
        values = sorted(log.get(key, 0.0) for log in logs)
        return values[len(values) // 2] if values else float("nan")

    step, gen, logps, score = median("step_time"), median("timing/generate"), median("timing/logps"), median("timing/score")
    return {
        "config": name, "step_s": step, "gen_s": gen, "logps_s": logps, "score_s": score,
        "train_s": step - gen - logps - score, "completions_per_s": completions / step,
        "tokens_per_s": tokens_per_step / step, "tokens_per_step": tokens_per_step,
        "gen_tokens_per_s": completions * cli.completion_len / gen,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else (rss.peak - rss.before) / 2**20,
    }


def _run_generate(model, prompts, cli, completions, tokens_per_step) -> dict:
    cuda = cli.device == "cuda"
    model.eval()
    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss, torch.no_grad():
        for step in range(cli.steps + cli.warmup):
            batch = prompts[step * cli.prompts : (step + 1) * cli.prompts]
            width = max(len(p) for p in batch)  # left-padded with 3 (the pad id) when prompt lengths vary
            rows = [[3] * (width - len(p)) + p for p in batch for _ in range(cli.num_generations)]
            ids = torch.tensor(rows, device=model.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch
                                 for _ in range(cli.num_generations)], device=model.device)
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                 max_new_tokens=cli.completion_len, min_new_tokens=cli.completion_len,
                                 pad_token_id=3, eos_token_id=None)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
            assert out.shape[1] - ids.shape[1] == cli.completion_len
    gen = sorted(times[cli.warmup :])[len(times[cli.warmup :]) // 2]
    return {
        "config": "generate", "step_s": gen, "gen_s": gen, "logps_s": 0.0, "score_s": 0.0, "train_s": 0.0,
        "completions_per_s": completions / gen, "gen_tokens_per_s": completions * cli.completion_len / gen,
        "tokens_per_s": tokens_per_step / gen, "tokens_per_step": tokens_per_step,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else (rss.peak - rss.before) / 2**20,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="+", choices=CONFIGS, help="configurations to run (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 3; ref-cpu 5)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=None, help="prompts per step (default 8; ref-cpu 2)")
    parser.add_argument("--num_generations", type=int, default=None, help="default 8; ref-cpu 4")
    parser.add_argument("--prompt_len", type=_lengths, default=None,
                        help="tokens per prompt, N or 'min-max' (CPU 32, GPU 128, ref-cpu 27-63)")
    parser.add_argument("--completion_len", type=int, default=None, help="tokens per completion (CPU 64, GPU 256)")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--cache_implementation", choices=["static", "dynamic"], default=None,
                        help="the generation backend's KV cache (default: the config's None, static when supported)")
    parser.add_argument("--generation_compile", choices=["auto", "true", "false"], default="auto",
                        help="compile the static decode step (default 'auto': CUDA only)")
    parser.add_argument("--shape", choices=["tiny", "sft-cpu", "ref-cpu"], default="tiny",
                        help="CPU model: the bundled tiny config, bench_sft.py's 7M shape (vocab 32768), or the "
                             "reference library's measured shape (7.2M Qwen3, vocab 8000, untied; see above)")
    parser.add_argument("--share_prompt_forward", choices=["auto", "true", "false"], default="auto",
                        help="the config field of the same name (auto: None, shared where the model supports it)")
    parser.add_argument("--json")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    cli.generation_compile = {"auto": "auto", "true": True, "false": False}.get(cli.generation_compile, cli.generation_compile)
    cli.share_prompt_forward = {"auto": None, "true": True, "false": False}[cli.share_prompt_forward]
    cuda = cli.device == "cuda"
    if cuda and cli.shape == "ref-cpu":
        parser.error("--shape ref-cpu is a CPU shape")
    ref = cli.shape == "ref-cpu"
    cli.steps = cli.steps or (5 if ref else 3)
    cli.prompts = cli.prompts or (2 if ref else 8)
    cli.num_generations = cli.num_generations or (4 if ref else 8)
    cli.prompt_len = cli.prompt_len or ((128, 128) if cuda else ((27, 63) if ref else (32, 32)))
    cli.completion_len = cli.completion_len or (256 if cuda else 64)
    if cli._child:
        print(json.dumps(run_one(cli.only[0], cli)))
        return

    def child_argv(name):
        argv = [sys.executable, __file__, "--_child", "--only", name, "--device", cli.device, "--steps",
                str(cli.steps), "--warmup", str(cli.warmup), "--threads", str(cli.threads), "--prompts",
                str(cli.prompts), "--num_generations", str(cli.num_generations), "--prompt_len", "-".join(map(str, cli.prompt_len)),
                "--completion_len", str(cli.completion_len), "--shape", cli.shape]
        argv += ["--generation_compile", str(cli.generation_compile).lower()]
        argv += ["--share_prompt_forward", {None: "auto", True: "true", False: "false"}[cli.share_prompt_forward]]
        argv += ["--cache_implementation", cli.cache_implementation] if cli.cache_implementation else []
        return argv + (["--gradient_checkpointing"] if cli.gradient_checkpointing else [])

    def print_row(r):
        print(f"{r['config']:10} {r['step_s']:8.3f} {r['gen_s']:7.3f} {r['logps_s']:7.3f} {r['score_s']:7.3f} "
              f"{r['train_s']:7.3f} {r['completions_per_s']:8.1f} {r['tokens_per_s']:8.0f} {r['gen_tokens_per_s']:10.0f} "
              f"{r['peak_mib']:9.1f}",
              flush=True)

    print(f"device={cli.device} shape={cli.shape if not cuda else '0.5b'} threads={cli.threads if not cuda else '-'} {cli.prompts} prompts x "
          f"{cli.num_generations} generations x {cli.completion_len} tokens (prompt {'-'.join(map(str, sorted(set(cli.prompt_len))))}) "
          f"steps={cli.steps} (+{cli.warmup} warm-up) | {load_average()}")
    print(f"{'config':10} {'step (s)':>8} {'gen':>7} {'logps':>7} {'score':>7} {'train':>7} {'compl/s':>8} "
          f"{'tok/s':>8} {'gen tok/s':>10} {'peak MiB':>9}", flush=True)
    run_configs(cli.only or list(CONFIGS), child_argv, cli.repeats, print_row, cli.json)


if __name__ == "__main__":
    main()
