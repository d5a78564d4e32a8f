"""GRPO on the bundled tiny task, offline, on a CPU in a few minutes: the mean reward rises as it trains.

Starts from a briefly SFT-warmed tiny Qwen3 (or from `--model`, e.g. the output of `examples/sft_tiny.py`), then
trains it with `GRPOTrainer` on the prompt-only "reverse/sort letters" questions with two reward functions: exact
match of the answer and per-letter accuracy. Sampled completions and their rewards are printed along the way, and
greedy exact-match on 200 held-out questions is measured before and after.

    python examples/grpo_tiny.py [--model outputs/sft-tiny] [--max_steps 60] [--output_dir outputs/grpo-tiny]
"""

import argparse
import time

import torch

from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
from trl.data.tiny import tiny_task_dataset
from trl.models.tiny import save_tiny_model


def _text(completion) -> str:
    return (completion[-1]["content"] if isinstance(completion, list) else completion).strip()


def exact_match_reward(completions, answer, **kwargs) -> list[float]:
    """1.0 when the completion is exactly the reference answer.

    Example:
        >>> exact_match_reward([[{"role": "assistant", "content": "a b"}]], ["a b"])
        [1.0]
    """
    return [float(_text(c) == a) for c, a in zip(completions, answer)]


def letter_accuracy_reward(completions, answer, **kwargs) -> list[float]:
    """Fraction of the answer's letters that the completion has at the right position (partial credit).

    Example:
        >>> letter_accuracy_reward(["a c"], ["a b"])
        [0.5]
    """
    scores = []
    for completion, reference in zip(completions, answer):
        got, want = _text(completion).split(), reference.split()
        hits = sum(g == w for g, w in zip(got, want))
        scores.append(hits / max(len(want), len(got), 1))
    return scores


@torch.no_grad()
def exact_match(model, tokenizer, dataset, batch_size: int = 100) -> float:
    """Greedy exact-match on prompt-only rows with an `answer` column."""
    model.eval()
    tokenizer.padding_side = "left"
    hits = 0
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        batch = tokenizer.apply_chat_template(
            rows["prompt"], add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
        )
        out = model.generate(**batch, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        hits += sum(a.strip() == ref for a, ref in zip(answers, rows["answer"]))
    return hits / len(dataset)


def warm_up(output_dir: str, steps: int) -> str:
    """A short SFT run from a random tiny model, so that GRPO starts from a model that sometimes answers right."""
    model_dir = save_tiny_model(f"{output_dir}/base-model", arch="qwen3", seed=0)
    args = SFTConfig(
        output_dir=f"{output_dir}/warm-up", max_steps=steps, per_device_train_batch_size=32, learning_rate=2e-3,
        lr_scheduler_type="constant_with_warmup", warmup_steps=10, logging_steps=20, save_strategy="no",
        report_to="none", assistant_only_loss=True, gradient_checkpointing=False, seed=0,
    )
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=tiny_task_dataset("conversational", "train"))
    trainer.train()
    trainer.save_model()
    return f"{output_dir}/warm-up"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="start from this model folder (default: a short SFT warm-up)")
    parser.add_argument("--warm_up_steps", type=int, default=60)
    parser.add_argument("--max_steps", type=int, default=150)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--output_dir", default="outputs/grpo-tiny")
    cli = parser.parse_args()

    started = time.time()
    model = cli.model or warm_up(cli.output_dir, cli.warm_up_steps)
    train, test = tiny_task_dataset("prompt_only", "train"), tiny_task_dataset("prompt_only", "test")
    args = GRPOConfig(
        output_dir=cli.output_dir,
        max_steps=cli.max_steps,
        per_device_train_batch_size=64,  # completions per step: 8 prompts x 8 samples
        num_generations=8,
        max_completion_length=16,
        temperature=1.0,
        learning_rate=cli.learning_rate,
        lr_scheduler_type="constant",
        beta=0.0,
        reward_weights=[1.0, 1.0],
        logging_steps=15,
        log_completions=True,
        num_completions_to_print=4,
        save_strategy="no",
        report_to="none",
        gradient_checkpointing=False,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=[exact_match_reward, letter_accuracy_reward], args=args, train_dataset=train
    )
    before = exact_match(trainer.model, trainer.processing_class, test)
    print(f"\nGreedy exact-match on {len(test)} held-out questions before GRPO: {before:.1%}\n")
    grpo_started = time.time()
    trainer.train()
    trainer.save_model()
    after = exact_match(trainer.model, trainer.processing_class, test)

    rewards = [(log["step"], log["reward"]) for log in trainer.state.log_history if "reward" in log]
    print(f"\nGRPO: {cli.max_steps} steps in {time.time() - grpo_started:.0f} s (total {time.time() - started:.0f} s)")
    print("Mean reward (exact match + letter accuracy, max 2.0) by step:")
    print("  " + "  ".join(f"{step}: {reward:.2f}" for step, reward in rewards))
    print(f"Greedy exact-match on {len(test)} held-out questions: {before:.1%} before -> {after:.1%} after GRPO")


if __name__ == "__main__":
    main()
