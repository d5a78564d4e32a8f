"""One SFT optimiser step over a fixed 8-row dataset, returning the logged loss and the gradients.

Used in-process by test_sft_invariance.py and, for the 2-process DDP case, run as a script under torchrun:
    python -m torch.distributed.run --nproc_per_node 2 tests/trainers/sft_one_step.py OUT.pt BS GA [padding_free]
"""

import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from trl import SFTConfig, SFTTrainer
from trl.data.tiny import tiny_task_dataset
from trl.models.tiny import tiny_model, tiny_tokenizer
from trl.scripts.utils import close_processes

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             head_dim=32)


def tiny_moe_model(seed: int = 0, router_aux_loss_coef: float = 0.01):
    """A tiny random `qwen3_moe` causal LM (4 experts, 2 per token) for the bundled tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "qwen3_moe", vocab_size=448, hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_experts=4,
        num_experts_per_tok=2, router_aux_loss_coef=router_aux_loss_coef, pad_token_id=3, eos_token_id=2,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


class _GradCatcher(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def dataset(num_rows: int = 8):
    return tiny_task_dataset("conversational_prompt_completion", "train", num_rows=num_rows)


def one_step(output_dir, batch_size, grad_accum, padding_free=False, packing=False, loss_type="nll", streaming=False):
    """Train one optimiser step covering all 8 rows; return (logged loss, {param name: grad}, trainer)."""
    catcher = _GradCatcher()
    args = SFTConfig(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size, gradient_accumulation_steps=grad_accum,
        max_steps=1, learning_rate=1e-3, logging_steps=1, report_to="none", save_strategy="no", max_grad_norm=0.0,
        padding_free=padding_free, packing=packing, max_length=256, loss_type=loss_type,
        gradient_checkpointing=False, seed=0, dataloader_drop_last=False,
    )
    data = dataset().to_iterable_dataset() if streaming else dataset()
    trainer = SFTTrainer(model=tiny_model(seed=0, **SMALL), args=args, train_dataset=data,
                         processing_class=tiny_tokenizer(), callbacks=[catcher])
    trainer.train()
    loss = next(log["loss"] for log in trainer.state.log_history if "loss" in log)
    return loss, catcher.grads, trainer


def run_two_ranks(*target: str) -> None:
    """Run `target` (a script of tests/trainers/ and its arguments, or `-m module ...`) as 2 CPU processes (gloo) under
    torchrun from the repository root, and assert that it exits cleanly (its stderr tail in the message)."""
    import subprocess

    here = Path(__file__).resolve().parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    script = [str(here / target[0]), *target[1:]] if target[0].endswith(".py") else list(target)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *script]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=here.parents[1],
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def leave(trainer) -> None:
    """End a torchrun script: release the process group, then exit without interpreter teardown. In CI a rank of
    the streaming run sometimes aborted in a C++ destructor at exit ("terminate called without an active exception")
    after everything had finished; the results are saved and the group released, so what follows could only turn a
    passing check into a flaky failure."""
    close_processes(trainer)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def save_rank_params(trainer, before: dict, prefix: str) -> None:
    """Save this rank's parameters after training, and the names of those that moved from `before`, to
    `prefix.<rank>.pt` (the DDP step scripts)."""
    after = {n: p.detach().clone() for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()}
    torch.save({"params": after, "moved": [n for n in after if not torch.equal(after[n], before[n])],
                "world_size": trainer.accelerator.num_processes}, f"{prefix}.{trainer.accelerator.process_index}.pt")


if __name__ == "__main__":
    out, bs, ga = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    loss, grads, trainer = one_step(out + ".dir", bs, ga, padding_free="padding_free" in sys.argv[4:],
                                    streaming="streaming" in sys.argv[4:])
    if trainer.accelerator.is_main_process:
        torch.save({"loss": loss, "grads": grads, "world_size": trainer.accelerator.num_processes}, out)
    leave(trainer)
