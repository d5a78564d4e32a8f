"""Two distillation steps of an untied tiny student, run under torchrun (see test_distillation_trainer.py):
    python -m torch.distributed.run --nproc_per_node 2 tests/trainers/distillation_ddp_steps.py OUT_PREFIX
Each rank saves its student's parameters after training, and which moved, to OUT_PREFIX.<rank>.pt."""

import sys

from trl import DistillationConfig, DistillationTrainer
from trl.data.tiny import tiny_task_dataset
from trl.models.tiny import tiny_model, tiny_tokenizer

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             head_dim=32, tie_word_embeddings=False)

try:
    from .sft_one_step import leave, save_rank_params
except ImportError:  # run as a script
    from sft_one_step import leave, save_rank_params


def main(prefix: str) -> None:
    student = tiny_model(seed=0, **SMALL)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    args = DistillationConfig(output_dir=prefix + ".dir", max_steps=2, per_device_train_batch_size=2,
                              max_completion_length=6, learning_rate=1e-2, logging_steps=1, report_to="none",
                              save_strategy="no", seed=0, gradient_checkpointing=False)
    trainer = DistillationTrainer(model=student, teacher_model=tiny_model(seed=1, **SMALL), args=args,
                                  train_dataset=tiny_task_dataset("prompt_only", "train", num_rows=16),
                                  processing_class=tiny_tokenizer())
    trainer.train()
    save_rank_params(trainer, before, prefix)
    leave(trainer)


if __name__ == "__main__":
    main(sys.argv[1])
