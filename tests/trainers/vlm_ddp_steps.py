"""Two GRPO steps of a tiny Qwen2-VL-style model with images, run under torchrun (see test_grpo_vlm.py):
    python -m torch.distributed.run --nproc_per_node 2 tests/trainers/vlm_ddp_steps.py OUT_PREFIX
Each rank saves its parameters after training, and whether they moved, to OUT_PREFIX.<rank>.pt."""

import sys

from datasets import Dataset
from PIL import Image

from trl import GRPOConfig, GRPOTrainer
from trl.models.tiny_vlm import tiny_vlm

COLOURS = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0)]

try:
    from .sft_one_step import leave, save_rank_params
except ImportError:  # run as a script
    from sft_one_step import leave, save_rank_params


def main(prefix: str) -> None:
    model, processor = tiny_vlm("qwen2_vl")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = [{"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}],
             "image": Image.new("RGB", (28, 28), COLOURS[i % 4])} for i in range(8)]
    args = GRPOConfig(output_dir=prefix + ".dir", max_steps=2, per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=6, learning_rate=1e-2, logging_steps=1, report_to="none",
                      save_strategy="no", seed=0, guards=False, gradient_checkpointing=False)
    trainer = GRPOTrainer(model=model, processing_class=processor, args=args, train_dataset=Dataset.from_list(rows),
                          reward_funcs=lambda completions, **kw: [float(len(c[-1]["content"])) for c in completions])
    trainer.train()
    save_rank_params(trainer, before, prefix)
    leave(trainer)


if __name__ == "__main__":
    main(sys.argv[1])
