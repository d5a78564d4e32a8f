"""Multi-turn generation: each round continued from the KV cache vs the whole conversation re-prefilled.

The rounds of a tool-calling rollout (`trl.agents.multi_turn`) at the backend level: `P` prompts x `G` rollouts
generate a turn of exactly `T` tokens (the EOS id is one the model does not have, so a turn stops at its length: the
stop condition), then every row appends a fixed tool suffix (the same fake tool result every time; its length differs
per row, `S` = 'min-max') and generates again, for `R` rounds of tool calls after the first turn. Both modes sample
the same tokens (temperature 1, seeded); they differ in what is prefilled:

- `cached`: inside `TransformersBackend.continuation()`: round 1 prefills each prompt once; later rounds prefill only
  each row's suffix plus its last generated token, on top of its kept cache.
- `reprefill`: no session: later rounds prefill prompt + everything so far (rows with the same context would share it;
  here they never do).

    python benchmarks/bench_multi_turn.py                      # tiny Qwen3 (4 layers, hidden 256, vocab 448), CPU
    python benchmarks/bench_multi_turn.py --rounds 8 --calls 5

Columns: `rounds/s` generation rounds (1 + R) per second of a whole rollout and `tokens/s` generated tokens per second
(medians over `--calls` timed rollouts after one untimed warm-up), `prefill` prompt tokens fed to prefills per rollout
(padding excluded), `context` the tokens of the longest conversation at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_sft import load_average

PAD = 3


def _rollout(backend, prompts, cli, cached: bool, seed: int) -> tuple[int, int, int]:
    """One rollout of `1 + rounds` generation rounds; returns (generated tokens, prefilled tokens, longest context)."""
    from trl.generation.base import SamplingConfig

    vocab = backend.model.config.vocab_size
    sampling = SamplingConfig(max_completion_length=cli.turn, eos_token_ids=(vocab,), pad_token_id=PAD)
    generator = torch.Generator().manual_seed(seed)
    low, high = (int(x) for x in cli.suffix_len.split("-"))
    session = backend.continuation() if cached else None
    generated = prefilled = 0
    contexts = prompts
    for r in range(1 + cli.rounds):
        n = cli.generations if r == 0 else 1
        if session is not None:
            session.keep(contexts)
        else:
            prefilled += sum(map(len, contexts))
        out = backend.generate(contexts, n, sampling, generator)
        lengths = out.completion_lengths.tolist()
        generated += sum(lengths)
        if r == 0:
            contexts = [p for p in contexts for _ in range(n)]
        # the fake tool's result: the same tokens every round, a length that depends on the row
        contexts = [c + out.completion_ids[k, : lengths[k]].tolist() + list(range(10, 10 + low + (7 * k) % (high - low + 1)))
                    for k, c in enumerate(contexts)]
    if session is not None:
        prefilled = session.prefill_tokens
        session.close()
    return generated, prefilled, max(map(len, contexts))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of tool calls after the first turn")
    parser.add_argument("--turn", type=int, default=32, help="tokens generated per turn")
    parser.add_argument("--prompt_len", default="32-64")
    parser.add_argument("--suffix_len", default="16-48", help="tool suffix tokens per row ('min-max')")
    parser.add_argument("--calls", type=int, default=3, help="timed rollouts per mode")
    parser.add_argument("--threads", type=int, default=1)
    cli = parser.parse_args(argv)
    torch.set_num_threads(cli.threads)

    from trl.generation.transformers_backend import TransformersBackend
    from trl.models.tiny import tiny_model

    model = tiny_model("qwen3", seed=0).eval()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    low, high = (int(x) for x in cli.prompt_len.split("-"))
    prompts = [torch.randint(4, vocab, (int(n),), generator=gen).tolist()
               for n in torch.randint(low, high + 1, (cli.prompts,), generator=gen)]
    backend = TransformersBackend(model)
    print(f"tiny Qwen3 ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params), {cli.prompts} prompts x "
          f"{cli.generations} rollouts, 1 + {cli.rounds} rounds of {cli.turn} tokens, tool suffixes {cli.suffix_len}, "
          f"prompts {cli.prompt_len}, {cli.threads} thread(s), fp32, {load_average()}")
    times: dict[str, list[float]] = {"cached": [], "reprefill": []}
    stats = {}
    for mode in times:  # warm-up
        _rollout(backend, prompts, cli, mode == "cached", seed=0)
    for call in range(cli.calls):  # alternate the modes, so that load changes hit both
        for mode, seconds in times.items():
            start = time.perf_counter()
            stats[mode] = _rollout(backend, prompts, cli, mode == "cached", seed=call + 1)
            seconds.append(time.perf_counter() - start)
    print(f"{'mode':<10} {'rollout (s)':>11} {'rounds/s':>9} {'tokens/s':>9} {'prefill':>8} {'context':>8}")
    for mode, seconds in times.items():
        median = statistics.median(seconds)
        generated, prefilled, context = stats[mode]
        print(f"{mode:<10} {median:>11.3f} {(1 + cli.rounds) / median:>9.2f} {generated / median:>9.0f} "
              f"{prefilled:>8} {context:>8}")


if __name__ == "__main__":
    main()
