"""Preference training throughput and memory: DPO (reference model, precomputed reference, naive full logits), Reward
and KTO (reference model, precomputed reference).

Each configuration runs in its own process (so peak memory is its own) on a fixed random-token, pre-tokenised dataset
(`prompt_ids`/`chosen_ids`/`rejected_ids` for DPO and Reward; for KTO the same pairs unpaired into `prompt_ids`/
`completion_ids`/`label` rows, chosen -> desirable, rejected -> undesirable), and prints tokens/s, step time and
peak memory, in the format of `bench_sft.py`:

    python benchmarks/bench_preference.py                # CPU: tiny Qwen3 (4 layers, hidden 128, vocab 32768), fp32
    python benchmarks/bench_preference.py --device cuda  # GPU: Qwen2.5-0.5B-shaped random model, bf16, 8 pairs x 1024
    python benchmarks/bench_preference.py --only dpo-ref-model dpo-naive --steps 6 --repeats 3
    python benchmarks/bench_preference.py --shape ref-cpu --only dpo-ref-model reward kto-ref-model --repeats 3

Configurations (per-device batch: 8 pairs for DPO and Reward, 8 rows for KTO):
- `dpo-ref-model`: sigmoid DPO, the reference (a frozen copy of the policy) forwarded at every step;
- `dpo-precomputed`: `precompute_ref_log_probs=True`: one reference pass over the whole dataset before training
  (timed on its own, column `precompute s`; `TRL_CACHE_DIR` is a fresh temporary folder, so it always runs cold),
  then steps with no reference forward;
- `dpo-naive`: the baseline. A `DPOTrainer` whose `_sequence_logps` takes full `(2B, T, V)` logits from a plain
  forward, then `log_softmax` + `gather` (policy and reference alike; `naive_completion_logps`); the loss, its
  reduction and the metrics are the trainer's own;
- `reward`: `RewardTrainer`, a sequence classifier (the same backbone with a 1-output `score` head);
- `kto-ref-model`, `kto-precomputed`: `KTOTrainer` (loss `kto`), as for DPO. Each step also forwards one KL
  completion per row (the completion of another prompt), which is not counted in tokens/s.

Columns: `tokens/s` is the median over the timed steps of (non-pad input tokens of the step / step time), counting
the prompt + completion tokens of both the chosen and the rejected sequence of each pair (DPO, Reward) or of each
row (KTO); `step (s)` is the median step time (`on_step_begin` -> `on_step_end`: forward, backward, optimiser);
`tokens/step` the mean tokens per timed step; `peak MiB` the peak memory during `trainer.train()` (CPU: peak RSS
minus the RSS just before, see `bench_sft.PeakRSS`; CUDA: `max_memory_allocated`, weights included); `RSS MiB` the
absolute peak RSS of the process during training (it includes what was built before training, such as a reference
model); `precompute s` the one-off reference pass (precomputed configurations only). The header prints the load
average: on a shared machine, the figures are noisy; use `--repeats` (medians) and compare runs made side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sft import CPU_SHAPE, GPU_SHAPE, REF_CPU_SHAPE, PeakRSS, _Timer, _Tok, load_average, run_configs, summarise_steps


CONFIGS = {
    "dpo-ref-model": dict(trainer="dpo", precompute=False, naive=False),
    "dpo-precomputed": dict(trainer="dpo", precompute=True, naive=False),
    "dpo-naive": dict(trainer="dpo", precompute=False, naive=True),
    "reward": dict(trainer="reward", precompute=False, naive=False),
    "kto-ref-model": dict(trainer="kto", precompute=False, naive=False),
    "kto-precomputed": dict(trainer="kto", precompute=True, naive=False),
}


def _lengths(spec: str) -> tuple[int, int]:
    low, _, high = spec.partition("-")
    return int(low), int(high or low)


def pair_rows(num_pairs: int, prompt_len: tuple[int, int], completion_len: tuple[int, int], vocab: int,
              seed: int = 0) -> dict[str, list]:
    """Random-token preference pairs: lengths uniform in the given inclusive ranges, ids in `[4, vocab)` (0-3 are
    special ids, so no real token is ever the pad id); chosen and rejected always differ."""
    gen = torch.Generator().manual_seed(seed)

    def ids(low, high):
        n = int(torch.randint(low, high + 1, (1,), generator=gen))
        return torch.randint(4, vocab, (n,), generator=gen).tolist()

    rows = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for _ in range(num_pairs):
        rows["prompt_ids"].append(ids(*prompt_len))
        rows["chosen_ids"].append(ids(*completion_len))
        rows["rejected_ids"].append(ids(*completion_len))
    return rows


def unpaired_rows(pairs: dict[str, list], num_rows: int) -> dict[str, list]:
    """KTO rows from pairs: (prompt, chosen, desirable), (prompt, rejected, undesirable), ... The KL completion of row
    `i` is the completion of row `i + 2` (another prompt), as the trainer pairs unpaired preference data."""
    rows = {"prompt_ids": [], "completion_ids": [], "label": []}
    for prompt, chosen, rejected in zip(pairs["prompt_ids"], pairs["chosen_ids"], pairs["rejected_ids"]):
        rows["prompt_ids"] += [prompt, prompt]
        rows["completion_ids"] += [chosen, rejected]
        rows["label"] += [True, False]
    rows = {k: v[:num_rows] for k, v in rows.items()}
    completions = rows["completion_ids"]
    rows["kl_completion_ids"] = completions[2:] + completions[:2]
    return rows


def naive_completion_logps(model, input_ids, attention_mask, completion_mask, layout=None, **request):
    """`trl.trainer.fused_head.completion_logps` the naive way: a plain forward that returns `(B, T, V)` logits, then
    `log_softmax` over the whole vocabulary and `gather` (the metrics the fused head reports, from the same tensor).
    Padded batches only."""
    from trl.trainer.fused_head import CompletionLogps, FusedCausalLMOutput

    if layout is not None:
        raise NotImplementedError("the naive baseline scores padded batches only (no padding_free)")
    if request.get("router_aux_loss"):
        raise NotImplementedError("the naive baseline has no MoE load-balancing loss")
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    temperature = request.get("temperature", 1.0)
    if temperature != 1.0:
        logits = logits / temperature
    logps = logits.float().log_softmax(-1)  # (B, T-1, V)
    targets = input_ids[:, 1:]
    mask = completion_mask[:, 1:].bool()
    token_logps = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0.0)
    sum_sq = None
    if request.get("with_sum_sq"):
        sum_sq = torch.logsumexp(2 * logps, dim=-1).masked_fill(~mask, 0.0)
    with torch.no_grad():
        scored = logps[mask]  # (N, V)
        outputs = FusedCausalLMOutput(
            logps=token_logps[mask], entropy=-(scored.exp() * scored).sum(-1), correct=scored.argmax(-1) == targets[mask],
            mean_logits=logits[mask].float().mean(-1), label_mask=mask,
        )
    return CompletionLogps(token_logps=token_logps, mask=mask, outputs=outputs, log_sum_sq_probs=sum_sq)


def _naive_dpo_class():
    """DPOTrainer whose log-probs (policy and reference) come from full `(2B, T, V)` logits: the baseline DPO figures
    are compared with. Only the log-prob path is swapped (`naive_completion_logps` for the fused head, inside the
    trainer's own `_sequence_logps`), so the loss, its reduction and the metrics are the trainer's."""
    import contextlib

    import trl.trainer.dpo_trainer as dpo_module
    from trl import DPOTrainer

    if not hasattr(dpo_module, "completion_logps"):
        raise RuntimeError("trl.trainer.dpo_trainer no longer scores through `completion_logps`; update the baseline")

    @contextlib.contextmanager
    def naive_log_probs():
        fused = dpo_module.completion_logps
        dpo_module.completion_logps = naive_completion_logps
        try:
            yield
        finally:
            dpo_module.completion_logps = fused

    class NaiveDPOTrainer(DPOTrainer):
        def _sequence_logps(self, model, batch, **request):
            with naive_log_probs():
                return super()._sequence_logps(model, batch, **request)

    return NaiveDPOTrainer


def _timed_precompute(trainer_class, record: dict):
    """`trainer_class` whose precompute pass (`_with_ref_logps`, run in `__init__`) is timed into `record`."""

    class Timed(trainer_class):
        def _with_ref_logps(self, dataset, *args, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = super()._with_ref_logps(dataset, *args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            record["precompute_s"] = record.get("precompute_s", 0.0) + time.perf_counter() - start
            record["precompute_rows"] = record.get("precompute_rows", 0) + len(dataset)
            return out

    Timed.__name__ = trainer_class.__name__
    return Timed


def run_one(name: str, cli) -> dict:
    from datasets import Dataset

    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, RewardConfig, RewardTrainer
    from trl.models.tiny import tiny_config, tiny_model

    torch.manual_seed(0)
    cuda = cli.device == "cuda"
    if not cuda:
        torch.set_num_threads(cli.threads)
    shape = GPU_SHAPE if cuda else (REF_CPU_SHAPE if cli.shape == "ref-cpu" else CPU_SHAPE)
    config = CONFIGS[name]
    cache = tempfile.mkdtemp(prefix="bench_pref_cache_")
    os.environ["TRL_CACHE_DIR"] = cache  # a cold cache: the precompute pass always runs
    try:
        if config["trainer"] == "reward":
            from transformers import AutoModelForSequenceClassification

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = AutoModelForSequenceClassification.from_config(tiny_config("qwen3", num_labels=1, **shape))
        else:
            model = tiny_model("qwen3", seed=0, **shape)
        if cuda:
            model = model.to("cuda", torch.bfloat16)
        model.set_attn_implementation(cli.attn)
        tok = _Tok(shape["vocab_size"])
        total_steps = cli.steps + cli.warmup
        rows = cli.batch_size * total_steps
        max_length = cli.prompt_len[1] + cli.completion_len[1]  # nothing is truncated or filtered
        pairs = pair_rows(rows, cli.prompt_len, cli.completion_len, shape["vocab_size"])
        common = dict(
            output_dir=tempfile.mkdtemp(prefix="bench_pref_out_"), max_steps=total_steps,
            per_device_train_batch_size=cli.batch_size, max_length=max_length,
            gradient_checkpointing=cli.gradient_checkpointing, logging_steps=10_000, report_to="none",
            save_strategy="no", bf16=cuda, use_cpu=not cuda, dataloader_pin_memory=False, disable_tqdm=True,
        )
        record: dict = {}
        if config["trainer"] == "reward":
            args = RewardConfig(**common, share_prompt_forward=cli.share_prompt_forward)
            trainer_class, extra = RewardTrainer, {}
            data = Dataset.from_dict(pairs)
        elif config["trainer"] == "dpo":
            args = DPOConfig(precompute_ref_log_probs=config["precompute"], share_prompt_forward=cli.share_prompt_forward,
                             **common)
            trainer_class = _naive_dpo_class() if config["naive"] else DPOTrainer
            extra, data = {"ref_model": None}, Dataset.from_dict(pairs)
        else:
            args = KTOConfig(precompute_ref_log_probs=config["precompute"], **common)
            trainer_class, extra = KTOTrainer, {"ref_model": None}
            data = Dataset.from_dict(unpaired_rows(pairs, rows))
        if config["precompute"]:
            trainer_class = _timed_precompute(trainer_class, record)
        timer = _Timer()
        trainer = trainer_class(model=model, args=args, train_dataset=data, processing_class=tok,
                                callbacks=[timer.callback()], **extra)
        if config["precompute"] and (trainer.ref_model is not None or "precompute_s" not in record):
            raise RuntimeError("the precompute pass did not run, or a reference model was kept")
        if config["precompute"] and not any(Path(cache).rglob("*.pt")):
            raise RuntimeError(f"no cached reference log-probs were written in {cache}")

        tokens = []
        original = trainer.training_step
        kto = config["trainer"] == "kto"

        def counting_step(model, inputs, num_items_in_batch=None):
            mask = inputs["attention_mask"]
            if kto:  # rows, then their KL completions: only the rows are data
                mask = mask[: inputs["label"].shape[0]]
            tokens.append(int(mask.sum()))
            return original(model, inputs, num_items_in_batch)

        trainer.training_step = counting_step
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with PeakRSS() as mem:
            trainer.train()
        peak_mib = torch.cuda.max_memory_allocated() / 2**20 if cuda else mem.peak_mib
        return {"config": name, **summarise_steps(timer.times, tokens, cli.warmup), "peak_mib": peak_mib,
                **mem.summary(), **record}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if "common" in locals():
            shutil.rmtree(common["output_dir"], ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="configurations to run (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 10 on CUDA)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration (the median is printed)")
    parser.add_argument("--batch_size", type=int, default=8, help="pairs (DPO, Reward) or rows (KTO) per step")
    parser.add_argument("--prompt_len", type=_lengths, default=None, help="'min-max' prompt tokens")
    parser.add_argument("--completion_len", type=_lengths, default=None, help="'min-max' tokens of each completion")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--shape", choices=["default", "ref-cpu"], default="default",
                        help="CPU model and data: the default, or the reference library's measured shape (7.2M Qwen3, "
                             "vocab 8000, untied; prompts 27-63, completions 160-210 tokens unless given)")
    parser.add_argument("--json", help="also write every result (medians, per-step times, RSS details) to this file")
    parser.add_argument("--share_prompt_forward", choices=["auto", "true", "false"], default="auto",
                        help="DPO and Reward: share_prompt_forward (auto: None, one row per pair where it pays)")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    share_flag = cli.share_prompt_forward
    cli.share_prompt_forward = {"auto": None, "true": True, "false": False}[share_flag]
    cuda = cli.device == "cuda"
    # GPU: every sequence is 512 prompt + 512 completion tokens (8 pairs x 1024); CPU: random lengths, <= 256.
    if cuda and cli.shape != "default":
        parser.error("--shape ref-cpu is a CPU shape")
    ref = cli.shape == "ref-cpu"  # ~230-token sequences: prompt 27-63 + completion 160-210
    cli.prompt_len = cli.prompt_len or ((512, 512) if cuda else ((27, 63) if ref else (16, 64)))
    cli.completion_len = cli.completion_len or ((512, 512) if cuda else ((160, 210) if ref else (16, 192)))
    cli.steps = cli.steps or (10 if cuda else 3)
    if cli._child:
        print(json.dumps(run_one(cli.only[0], cli)))
        return
    names = cli.only or list(CONFIGS)

    def child_argv(name):
        argv = [sys.executable, __file__, "--_child", "--only", name, "--device", cli.device, "--steps",
                str(cli.steps), "--warmup", str(cli.warmup), "--threads", str(cli.threads), "--batch_size",
                str(cli.batch_size), "--prompt_len", "-".join(map(str, cli.prompt_len)), "--completion_len",
                "-".join(map(str, cli.completion_len)), "--attn", cli.attn, "--shape", cli.shape,
                "--share_prompt_forward", share_flag]
        return argv + (["--gradient_checkpointing"] if cli.gradient_checkpointing else [])

    def print_row(r):
        pre = f"{r['precompute_s']:12.2f}" if "precompute_s" in r else f"{'-':>12}"
        print(f"{r['config']:16} {r['tokens_per_s']:10.0f} {r['step_time_s']:9.3f} {r['tokens_per_step']:12.0f} "
              f"{r['peak_mib']:9.1f} {r['rss_peak_mib']:8.0f} {pre}", flush=True)

    lengths = "-".join(map(str, cli.prompt_len)), "-".join(map(str, cli.completion_len))
    print(f"device={cli.device} shape={cli.shape} threads={cli.threads if not cuda else '-'} batch={cli.batch_size} "
          f"prompt={lengths[0]} completion={lengths[1]} steps={cli.steps} (+{cli.warmup} warm-up) "
          f"repeats={cli.repeats} gradient_checkpointing={cli.gradient_checkpointing} | {load_average()}")
    print(f"{'config':16} {'tokens/s':>10} {'step (s)':>9} {'tokens/step':>12} {'peak MiB':>9} {'RSS MiB':>8} "
          f"{'precompute s':>12}", flush=True)
    run_configs(names, child_argv, cli.repeats, print_row, cli.json)


if __name__ == "__main__":
    main()
