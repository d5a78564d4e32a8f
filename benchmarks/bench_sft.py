"""SFT throughput and memory: our fused LM head vs the naive full-logits loss, packing on and off.

Each configuration runs in its own process (so peak memory is its own) on a fixed random-token dataset and prints
tokens/s (non-pad input tokens) and step time (medians over the timed steps, so that a step slowed by another process
does not move them; `--repeats N` runs each configuration N times and prints the medians), and peak memory.

    python benchmarks/bench_sft.py                 # CPU: tiny Qwen3 (4 layers, hidden 128, vocab 32768), fp32
    python benchmarks/bench_sft.py --device cuda   # GPU: Qwen2.5-0.5B-shaped random model, bf16, 8 x 2048 packed
    python benchmarks/bench_sft.py --only ours-padded --steps 10
    python benchmarks/bench_sft.py --shape ref-cpu --repeats 3   # the reference library's measured CPU shape (issue 9)
    python benchmarks/bench_sft.py --repeats 3 --json sft.json  # medians of 3 runs; every figure in sft.json

Peak memory: on CPU, the largest resident set size (RSS) of the process during `trainer.train()` minus its RSS just
before it (`PeakRSS`: a background thread samples the RSS every 5 ms; where Linux lets us reset the kernel's
high-water mark, `VmHWM` also catches spikes shorter than a sample and the larger of the two is reported). Memory
held before training (the model's weights, a reference model) is not counted; the optimizer state, activations and
gradients are. On CUDA, `torch.cuda.max_memory_allocated()` during training (weights included).
The header prints the load average: on a shared machine, the figures are noisy; compare runs made side by side.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

CPU_SHAPE = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, vocab_size=32768)
# `--shape ref-cpu`: the shape the reference library (TRL 1.16) was measured on (docs/design.md "Performance targets",
# issue 9): a 7.2M-parameter Qwen3, untied, vocab 8000; SFT rows of ~230 tokens (200-260), prompts of 27-63 tokens.
REF_CPU_SHAPE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=64, vocab_size=8000, tie_word_embeddings=False)
GPU_SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, head_dim=64, vocab_size=151936, tie_word_embeddings=True)
CONFIGS = {
    "naive-padded": dict(naive=True, packing=False),
    "ours-padded": dict(naive=False, packing=False),
    "naive-packed": dict(naive=True, packing=True),
    "ours-packed": dict(naive=False, packing=True),
}


def _dataset(num_rows: int, min_len: int, max_len: int, vocab: int, seed: int = 0):
    from datasets import Dataset

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (num_rows,), generator=gen).tolist()
    return Dataset.from_dict({"input_ids": [torch.randint(4, vocab, (n,), generator=gen).tolist() for n in lengths]})


def _naive_trainer_class():
    """SFTTrainer whose loss comes from full `(B, T, V)` logits: the baseline every figure is compared with."""
    from trl import SFTTrainer
    from trl.losses.reduce import token_weight

    class NaiveSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]
            keys = ("input_ids", "attention_mask", "position_ids")
            logits = model(**{k: v for k, v in inputs.items() if k in keys}).logits
            loss_sum = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), reduction="sum"
            )
            return loss_sum * token_weight(num_items_in_batch, self.accelerator.num_processes)

    return NaiveSFTTrainer


class PeakRSS:
    """Peak resident set size of this process while a `with` block runs, minus the RSS at its start.

    A daemon thread samples the RSS (psutil) every `interval` seconds. Before the first sample, garbage is collected
    and freed heap memory is returned to the system (`malloc_trim`), so that the block's allocations show up as RSS
    growth instead of reusing pages freed earlier. Where `/proc/self/clear_refs` is writable (Linux), the kernel's
    high-water mark `VmHWM` is reset at the start too and read at the end: it sees spikes shorter than `interval`.

    Attributes (after the block): `before` (bytes), `peak` (bytes, the larger of the sampled peak and `VmHWM`),
    `sampled_peak`, `hwm_peak` (None where unavailable), `peak_mib` (`(peak - before) / 2**20`), `samples`.

    Example:
        ```python
        >>> with PeakRSS() as mem:
        ...     trainer.train()
        >>> mem.peak_mib
        ```
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._hwm_reset = False
        self.samples = 0

    def _sample(self) -> None:
        rss = self._process.memory_info().rss
        self.samples += 1
        if rss > self.sampled_peak:
            self.sampled_peak = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @staticmethod
    def _status_bytes(field: str) -> int:
        return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    def __enter__(self):
        gc.collect()
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self.before = self.sampled_peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, name="PeakRSS", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        self.hwm_peak = self._status_bytes("VmHWM") if self._hwm_reset else None
        self.peak = max(self.sampled_peak, self.hwm_peak or 0)
        self.peak_mib = (self.peak - self.before) / 2**20
        return False

    def summary(self) -> dict:
        """The measurements in MiB, for the JSON line of a benchmark child process."""
        return {"rss_before_mib": self.before / 2**20, "rss_peak_mib": self.peak / 2**20,
                "rss_sampled_peak_mib": self.sampled_peak / 2**20,
                "rss_hwm_peak_mib": None if self.hwm_peak is None else self.hwm_peak / 2**20,
                "rss_samples": self.samples}


def summarise_steps(times: list[float], tokens: list[int], warmup: int) -> dict:
    """Robust figures of the steps after `warmup`: the median step time, the median of the per-step throughputs
    (`tokens[i] / times[i]`, so one step slowed by another process on a shared machine does not move it), and the
    mean tokens per step. Means are kept too (`*_mean`)."""
    times, tokens = times[warmup:], tokens[warmup:]
    if not times or len(tokens) != len(times):
        raise RuntimeError(f"expected one token count per timed step after {warmup} warm-up steps; got "
                           f"{len(times)} steps and {len(tokens)} counts")
    return {"tokens_per_s": statistics.median(n / t for n, t in zip(tokens, times)),
            "step_time_s": statistics.median(times), "tokens_per_step": sum(tokens) / len(tokens),
            "tokens_per_s_mean": sum(tokens) / sum(times), "step_time_s_mean": sum(times) / len(times),
            "step_times_s": times}


def median_of_runs(runs: list[dict]) -> dict:
    """Per-key median of repeated runs of one configuration (numbers only; other values from the first run)."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [r[key] for r in runs if r.get(key) is not None]
            out[key] = statistics.median(values)
    out["repeats"] = len(runs)
    return out


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def load_average() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average n/a"


class _Timer:
    def __init__(self):
        self.times = []

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class StepTimer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                timer.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                timer.times.append(time.perf_counter() - timer.start)

        return StepTimer()


def run_one(name: str, cli) -> dict:
    from trl import SFTConfig, SFTTrainer
    from trl.models.tiny import tiny_model

    torch.manual_seed(0)
    cuda = cli.device == "cuda"
    if not cuda:
        torch.set_num_threads(cli.threads)
    shape = GPU_SHAPE if cuda else (REF_CPU_SHAPE if cli.shape == "ref-cpu" else CPU_SHAPE)
    config = CONFIGS[name]
    model = tiny_model("qwen3", seed=0, **shape)
    if cuda:
        model = model.to("cuda", torch.bfloat16)
    model.set_attn_implementation(cli.attn)
    tok = _Tok(shape["vocab_size"])
    rows = cli.batch_size * (cli.steps + cli.warmup) * (2 if config["packing"] else 1)
    data = _dataset(rows, cli.min_len, cli.max_len, shape["vocab_size"])
    args = SFTConfig(
        output_dir="/tmp/bench_sft", max_steps=cli.steps + cli.warmup, per_device_train_batch_size=cli.batch_size,
        max_length=cli.max_len, packing=config["packing"], gradient_checkpointing=cli.gradient_checkpointing,
        logging_steps=10_000, report_to="none", save_strategy="no", bf16=cuda, use_cpu=not cuda,
        dataloader_pin_memory=False, disable_tqdm=True,
    )
    trainer_class = _naive_trainer_class() if config["naive"] else SFTTrainer
    timer = _Timer()
    trainer = trainer_class(model=model, args=args, train_dataset=data, processing_class=tok,
                            callbacks=[timer.callback()])
    tokens = []
    original = trainer.training_step

    def counting_step(model, inputs, num_items_in_batch=None):
        mask = inputs.get("attention_mask")
        tokens.append(int(mask.sum()) if mask is not None else inputs["input_ids"].numel())
        return original(model, inputs, num_items_in_batch)

    trainer.training_step = counting_step
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as mem:
        trainer.train()
    peak_mib = torch.cuda.max_memory_allocated() / 2**20 if cuda else mem.peak_mib
    return {"config": name, **summarise_steps(timer.times, tokens, cli.warmup), "peak_mib": peak_mib,
            **mem.summary()}


class _Tok:
    """A stand-in tokenizer for pre-tokenised data: only the ids the trainer reads."""

    def __init__(self, vocab_size: int):
        self.pad_token_id, self.eos_token_id, self.pad_token, self.eos_token = 0, 1, "<pad>", "<eos>"
        self.chat_template = None
        self.vocab_size = vocab_size

    def get_vocab(self):
        return {"<pad>": 0, "<eos>": 1}

    def save_pretrained(self, *args, **kwargs):
        return ()


def run_child(argv: list[str]) -> dict:
    """Run one benchmark child process; its last stdout line is a JSON object. Raises `RuntimeError` on failure."""
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_configs(names: list[str], child_argv, repeats: int, print_row, json_path: str | None = None) -> list[dict]:
    """Each configuration `repeats` times, each run in its own process (round-robin over the configurations, so
    a burst of load from other processes does not fall on one configuration only); prints each configuration's
    per-key medians as soon as its last run ends (a run stopped by a time limit keeps the rows printed before), then
    the load average, and writes every result to `json_path` when given."""
    runs: dict[str, list[dict]] = {name: [] for name in names}
    failed: set[str] = set()
    results = []
    for round_ in range(repeats):
        for name in names:
            if name in failed:
                continue
            try:
                runs[name].append(run_child(child_argv(name)))
            except RuntimeError as error:
                failed.add(name)
                print(f"{name:16} failed:\n{error}", flush=True)
                continue
            if round_ == repeats - 1:
                r = median_of_runs(runs[name])
                print_row(r)
                results.append(r)
    print(f"(end: {load_average()})")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration (the median is printed)")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--shape", choices=["default", "ref-cpu"], default="default",
                        help="CPU model and data: the default (hidden 128, vocab 32768, rows of 64-512 tokens) or the "
                             "reference library's measured shape (7.2M Qwen3, vocab 8000, untied, rows of 200-260)")
    parser.add_argument("--json", help="also write every result (medians, per-step times, RSS details) to this file")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    cuda = cli.device == "cuda"
    if cuda and cli.shape != "default":
        parser.error("--shape ref-cpu is a CPU shape")
    cli.batch_size = 8
    cli.min_len, cli.max_len = (256, 2048) if cuda else ((200, 260) if cli.shape == "ref-cpu" else (64, 512))
    cli.steps = cli.steps or (10 if cuda else 6)
    if cli._child:
        print(json.dumps(run_one(cli.only, cli)))
        return
    names = [cli.only] if cli.only else list(CONFIGS)

    def child_argv(name):
        argv = [sys.executable, __file__, "--_child", "--only", name, "--device", cli.device, "--steps",
                str(cli.steps), "--warmup", str(cli.warmup), "--threads", str(cli.threads), "--attn", cli.attn,
                "--shape", cli.shape]
        return argv + (["--gradient_checkpointing"] if cli.gradient_checkpointing else [])

    def print_row(r):
        print(f"{r['config']:14} {r['tokens_per_s']:10.0f} {r['step_time_s']:9.3f} {r['tokens_per_step']:12.0f} "
              f"{r['peak_mib']:9.1f}", flush=True)

    print(f"device={cli.device} shape={cli.shape} attn={cli.attn} threads={cli.threads if not cuda else '-'} batch={cli.batch_size} "
          f"lengths={cli.min_len}-{cli.max_len} steps={cli.steps} (+{cli.warmup} warm-up) repeats={cli.repeats} "
          f"gradient_checkpointing={cli.gradient_checkpointing} | {load_average()}")
    print(f"{'config':14} {'tokens/s':>10} {'step (s)':>9} {'tokens/step':>12} {'peak MiB':>9}", flush=True)
    run_configs(names, child_argv, cli.repeats, print_row, cli.json)


if __name__ == "__main__":
    main()
