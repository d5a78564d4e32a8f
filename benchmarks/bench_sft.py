"""SFT throughput and memory: our fused LM head vs the naive full-logits loss, packing on and off.

Each configuration runs in its own process (so peak memory is its own) on a fixed random-token dataset and prints
tokens/s (non-pad input tokens), step time and peak memory.

    python benchmarks/bench_sft.py                 # CPU: tiny Qwen3 (4 layers, hidden 128, vocab 32768), fp32
    python benchmarks/bench_sft.py --device cuda   # GPU: Qwen2.5-0.5B-shaped random model, bf16, 8 x 2048 packed
    python benchmarks/bench_sft.py --only ours-padded --steps 10

CPU peak memory is the process's maximum resident set size during training minus its size just before training.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import psutil
import torch


CPU_SHAPE = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, vocab_size=32768)
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
    shape = GPU_SHAPE if cuda else CPU_SHAPE
    config = CONFIGS[name]
    model = tiny_model("qwen3", seed=0, **shape)
    if cuda:
        model = model.to("cuda", torch.bfloat16)
        model.config._attn_implementation = cli.attn
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
    rss_before = psutil.Process().memory_info().rss
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    steady = timer.times[cli.warmup :]
    step_time = sum(steady) / len(steady)
    tokens_per_step = sum(tokens[cli.warmup :]) / len(steady)
    if cuda:
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before) / 2**20
    return {"config": name, "tokens_per_s": tokens_per_step / step_time, "step_time_s": step_time,
            "tokens_per_step": tokens_per_step, "peak_mib": peak_mib}


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    cuda = cli.device == "cuda"
    cli.batch_size = 8
    cli.min_len, cli.max_len = (256, 2048) if cuda else (64, 512)
    cli.steps = cli.steps or (10 if cuda else 6)
    if cli._child:
        print(json.dumps(run_one(cli.only, cli)))
        return
    names = [cli.only] if cli.only else list(CONFIGS)
    print(f"device={cli.device} threads={cli.threads if not cuda else '-'} batch={cli.batch_size} "
          f"lengths={cli.min_len}-{cli.max_len} steps={cli.steps} (+{cli.warmup} warm-up) "
          f"gradient_checkpointing={cli.gradient_checkpointing}")
    print(f"{'config':14} {'tokens/s':>10} {'step (s)':>9} {'tokens/step':>12} {'peak MiB':>9}")
    for name in names:
        argv = [sys.executable, __file__, "--_child", "--only", name, "--device", cli.device, "--steps",
                str(cli.steps), "--warmup", str(cli.warmup), "--threads", str(cli.threads), "--attn", cli.attn]
        if cli.gradient_checkpointing:
            argv.append("--gradient_checkpointing")
        out = subprocess.run(argv, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name:14} failed:\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:14} {r['tokens_per_s']:10.0f} {r['step_time_s']:9.3f} {r['tokens_per_step']:12.0f} "
              f"{r['peak_mib']:9.1f}")


if __name__ == "__main__":
    main()
