"""End-to-end SFT on the bundled tiny default, offline, on a CPU in a few minutes.

Writes a randomly initialised tiny Qwen3 to a local folder, measures exact-match on 200 held-out "reverse"/"sort"
questions, trains it with `SFTTrainer` on the bundled conversational dataset, and measures again.

    python examples/sft_tiny.py [--output_dir outputs/sft-tiny] [--epochs 2]
"""

import argparse
import time

import torch

from trl import SFTConfig, SFTTrainer
from trl.data.tiny import tiny_task_dataset
from trl.models.tiny import save_tiny_model


@torch.no_grad()
def exact_match(model, tokenizer, dataset, batch_size: int = 100) -> tuple[float, list[tuple[str, str, str]]]:
    """Greedy-decode each question and compare with the reference answer. Returns the score and a few samples."""
    model.eval()
    tokenizer.padding_side = "left"
    hits, samples = 0, []
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        prompts = [[m[0]] for m in rows["messages"]]
        batch = tokenizer.apply_chat_template(
            prompts, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
        )
        out = model.generate(**batch, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for messages, answer in zip(rows["messages"], answers):
            hits += answer.strip() == messages[1]["content"]
            if len(samples) < 4:
                samples.append((messages[0]["content"], messages[1]["content"], answer.strip()))
    return hits / len(dataset), samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/sft-tiny")
    parser.add_argument("--epochs", type=float, default=2.0)
    cli = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    model_dir = save_tiny_model(f"{cli.output_dir}/base-model", arch="qwen3", seed=0)
    train, test = tiny_task_dataset("conversational", "train"), tiny_task_dataset("conversational", "test")
    args = SFTConfig(
        output_dir=cli.output_dir,
        num_train_epochs=cli.epochs,
        per_device_train_batch_size=32,
        learning_rate=2e-3,
        lr_scheduler_type="cosine",
        warmup_steps=20,
        logging_steps=25,
        save_strategy="no",
        report_to="none",
        assistant_only_loss=True,
        gradient_checkpointing=False,  # a 3M-parameter model: speed matters more than memory here
        seed=0,
    )
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=train)
    before, _ = exact_match(trainer.model, trainer.processing_class, test)
    print(f"\nExact-match on {len(test)} held-out questions before training: {before:.1%}\n")
    start = time.time()
    trainer.train()
    trainer.save_model()
    after, samples = exact_match(trainer.model, trainer.processing_class, test)
    print(f"\nTrained in {time.time() - start:.0f} s; model saved to {cli.output_dir}")
    for question, reference, answer in samples:
        print(f"  {question!r:28} -> {answer!r:18} (reference {reference!r})")
    print(f"Exact-match on {len(test)} held-out questions: {before:.1%} before -> {after:.1%} after training")


if __name__ == "__main__":
    main()
