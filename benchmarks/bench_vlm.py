"""SFT step of a tiny Qwen2-VL-style model: our fused-head loss against a naive full-logits loss.

Both losses are computed on the same collated batch (8 rows of one 56x56 image and ~60 words, rendered by the model's
processor through `DataCollatorForVisionLanguageModeling`). One measurement is a forward + backward; times are medians
of `--repeats` calls, interleaved between the two methods, at one thread. Memory is the largest single CPU allocation
of a step as torch's profiler records it (the naive loss's `(B, T, V)` logits; the fused head never builds them).

Usage:
    python benchmarks/bench_vlm.py                  # vocab 32000, text hidden 128
    python benchmarks/bench_vlm.py --vocab 8000 --repeats 9
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = "the quick brown fox jumps over a lazy dog while red green blue squares float".split()


def build(vocab: int, output_dir: str):
    import transformers
    from datasets import Dataset
    from PIL import Image

    from trl import SFTConfig, SFTTrainer
    from trl.models.tiny_vlm import tiny_vlm_config, tiny_vlm_processor

    processor = tiny_vlm_processor("qwen2_vl")
    config = tiny_vlm_config("qwen2_vl", processor)
    text = config.text_config
    text.vocab_size, text.hidden_size, text.intermediate_size = vocab, 128, 384
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 8, 4, 16
    config.vision_config.hidden_size = 128
    torch.manual_seed(0)
    model = transformers.Qwen2VLForConditionalGeneration(config)
    rng = random.Random(0)
    rows = [
        {"messages": [{"role": "user", "content": "Describe the picture."},
                      {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(60))}],
         "images": [Image.new("RGB", (56, 56), (rng.randrange(256), 0, 0))]}
        for _ in range(8)
    ]
    trainer = SFTTrainer(model=model, processing_class=processor, train_dataset=Dataset.from_list(rows),
                         args=SFTConfig(output_dir=output_dir, report_to="none", max_length=512))
    return trainer, model, trainer.data_collator(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer, model, batch = build(args.vocab, output_dir)
    tokens = int(batch["attention_mask"].sum())
    model.train()
    loss_tokens = (batch["labels"][:, 1:] != -100).sum()

    def fused():
        return trainer.compute_loss(model, dict(batch), num_items_in_batch=loss_tokens)

    def naive():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                                                 ignore_index=-100)

    def step(fn):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = fn()
        loss.backward()
        return time.perf_counter() - start, loss.item()

    def largest_allocation(fn) -> float:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step(fn)
        return max(event.cpu_memory_usage for event in prof.key_averages()) / 2**20

    methods = {"fused": fused, "naive": naive}
    losses = {name: step(fn)[1] for name, fn in methods.items()}  # warm-up
    times = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            times[name].append(step(fn)[0])
    print(f"vocab {args.vocab}, batch 8 x ~{tokens // 8} tokens; loss fused {losses['fused']:.6f}, "
          f"naive {losses['naive']:.6f}")
    print("| loss | tokens/s | largest CPU allocation (MiB) |\n| --- | --- | --- |")
    for name, fn in methods.items():
        print(f"| {name} | {tokens / statistics.median(times[name]):.0f} | {largest_allocation(fn):.1f} |")


if __name__ == "__main__":
    main()
