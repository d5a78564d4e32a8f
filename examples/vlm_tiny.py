"""A tiny vision-language SFT run on the CPU, offline: teach a random tiny VLM to name the colour of an image.

The task is synthetic: each image is a small square of one of four colours (red, green, blue, yellow), shaded and
speckled at random so that no two are alike; the question is "What colour is this?" and the answer is one word.
Accuracy on held-out images is measured before and after training by scoring the four possible answers with the model
(the highest log-probability wins), so a random model sits near chance (25%).

Run:
    python examples/vlm_tiny.py                      # Qwen2-VL-style tiny model, ~1-2 minutes on a laptop CPU
    python examples/vlm_tiny.py --style llava        # or idefics3

The model and processor come from `trl/models/tiny_vlm.py`; the data path is `trl/data/vision.py`.
"""

from __future__ import annotations

import argparse
import random

import torch
from datasets import Dataset
from PIL import Image

from trl import SFTConfig, SFTTrainer
from trl.models.tiny_vlm import TINY_VLM_STYLES, tiny_vlm

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 40)}
QUESTION = "What colour is this?"


def make_image(colour: str, rng: random.Random, size: int = 28) -> Image.Image:
    """A square of `colour`, shaded by up to ±40 per channel and speckled with a few grey pixels."""
    base = [min(255, max(0, c + rng.randint(-40, 40))) for c in COLOURS[colour]]
    image = Image.new("RGB", (size, size), tuple(base))
    for _ in range(rng.randint(0, 20)):
        grey = rng.randint(60, 200)
        image.putpixel((rng.randrange(size), rng.randrange(size)), (grey, grey, grey))
    return image


def make_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    names = list(COLOURS)
    rows = []
    for i in range(n):
        colour = names[i % len(names)]
        rows.append({"prompt": [{"role": "user", "content": QUESTION}],
                     "completion": [{"role": "assistant", "content": colour}],
                     "images": [make_image(colour, rng)]})
    return rows


@torch.no_grad()
def accuracy(model, processor, rows: list[dict]) -> float:
    """The share of rows whose answer gets the highest log-probability among the four colours."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(processor)  # prompt-completion: labels on the answer only
    model.eval()
    correct = 0
    names = list(COLOURS)
    for row in rows:
        candidates = [{**row, "completion": [{"role": "assistant", "content": name}]} for name in names]
        batch = collator(candidates)
        labels = batch.pop("labels")
        inputs = {k: v for k, v in batch.items() if k != "mm_token_type_ids" or "Qwen2VL" in type(model).__name__}
        logps = torch.log_softmax(model(**inputs).logits[:, :-1].float(), -1)
        targets = labels[:, 1:]
        token = logps.gather(-1, targets.clamp(min=0)[..., None])[..., 0] * (targets != -100)
        # the answer word only: the end-of-turn tokens after it are the same for every candidate
        scores = token.sum(-1)
        correct += int(names[int(scores.argmax())] == row["completion"][0]["content"])
    model.train()
    return correct / len(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--style", choices=TINY_VLM_STYLES, default="qwen2_vl")
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--test-size", type=int, default=40)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="vlm-tiny-SFT")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model, processor = tiny_vlm(args.style, seed=args.seed)
    train, test = make_rows(args.train_size, args.seed), make_rows(args.test_size, args.seed + 1)
    before = accuracy(model, processor, test)
    print(f"held-out accuracy before training: {before:.0%} ({args.test_size} images, chance 25%)")

    config = SFTConfig(output_dir=args.output_dir, num_train_epochs=args.epochs, per_device_train_batch_size=16,
                       learning_rate=3e-3, lr_scheduler_type="constant", logging_steps=10, save_strategy="no",
                       report_to="none", seed=args.seed, max_length=64)
    trainer = SFTTrainer(model=model, processing_class=processor, args=config, train_dataset=Dataset.from_list(train))
    trainer.train()

    after = accuracy(trainer.model, processor, test)
    print(f"held-out accuracy before training: {before:.0%}, after: {after:.0%} ({args.test_size} images)")


if __name__ == "__main__":
    main()
