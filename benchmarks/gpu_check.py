"""Correctness checks on a CUDA device, before any GPU figure is trusted: the LM-head ops against a float64 reference,
padding-free (packed) against padded SFT loss with sdpa attention, and a few bf16 training steps of each trainer.

    python benchmarks/gpu_check.py            # needs a CUDA device; about a minute; exits non-zero on a failed check

Checks (each prints one line, `ok` or `FAIL`):
- `ops <dtype> <N>x<H>x<V>`: `chunked_token_stats` and `fused_token_loss` (default chunk size on this device) against
  `naive_token_stats` computed in float64 from the same inputs: relative error of the log-probs and of the gradients
  of `hidden` and `weight` (`||out - ref|| / ||ref||`). Tolerances: 1e-5 in float32, 2e-2 in bfloat16 (bf16 operands).
- `sft packed == padded`: the SFT loss of one batch as padded rows and as one padding-free row with `position_ids`,
  with sdpa and with FlexAttention (document masking), float32 on CUDA, relative difference <= 1e-4.
- `train <trainer> bf16`: 3 steps of SFT, DPO, KTO, Reward, GRPO and RLOO on the bundled tiny model in bf16 on CUDA:
  the loss is finite and the parameters moved.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FAILED = []
DEVICE = "cuda"  # `--device cpu` runs the same checks on the CPU (smaller shapes), to test this script


def report(name: str, ok: bool, detail: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check_ops(n: int, h: int, v: int, dtype: torch.dtype, tol: float) -> None:
    from trl.ops import chunked_token_stats, fused_token_loss, naive_token_stats

    gen = torch.Generator().manual_seed(n + v)
    hidden = torch.randn(n, h, generator=gen).to(DEVICE).to(dtype)
    weight = (torch.randn(v, h, generator=gen) / h**0.5).to(DEVICE).to(dtype)
    labels = torch.randint(0, v, (n,), generator=gen).to(DEVICE)
    coef = torch.randn(n, generator=gen).to(DEVICE)  # a per-token weight, so the gradient is not just the NLL's

    def grads(fn, x, w):
        x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        logps = fn(x, w)
        return logps.detach(), *torch.autograd.grad((coef.to(logps.dtype) * logps).sum(), (x, w))

    ref = grads(lambda x, w: naive_token_stats(x, w, labels).logps, hidden.double(), weight.double())
    chunked = grads(lambda x, w: chunked_token_stats(x, w, labels).logps, hidden, weight)
    x, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    loss, stats = fused_token_loss(x, w, labels, lambda logps: logps, coef)
    loss.backward()
    fused = (stats.logps, x.grad, w.grad)
    for name, out in (("chunked", chunked), ("fused", fused)):
        errors = [rel(o, r) for o, r in zip(out, ref)]
        finite = all(bool(torch.isfinite(o).all()) for o in out)
        report(f"ops {name} {str(dtype).removeprefix('torch.')} {n}x{h}x{v}", finite and max(errors) <= tol,
               "rel err logps {:.1e} grad_hidden {:.1e} grad_weight {:.1e} (tol {:.0e})".format(*errors, tol))


def check_packed_equals_padded(attn: str) -> None:
    from datasets import Dataset

    from trl import SFTConfig, SFTTrainer
    from trl.models.tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(4, len(tokenizer), (int(n),), generator=gen).tolist() for n in (37, 64, 12, 50)]
    losses = {}
    for packing in (False, True):
        model = tiny_model("qwen3", seed=0).to(DEVICE)
        model.set_attn_implementation(attn)
        args = SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=4, packing=packing,
                         padding_free=packing, max_length=256, report_to="none", bf16=False,
                         use_cpu=DEVICE == "cpu")
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": rows}),
                             processing_class=tokenizer)
        batch = next(iter(trainer.get_train_dataloader()))
        batch = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.no_grad():
            losses[packing] = float(trainer.compute_loss(model, batch))
    diff = abs(losses[True] - losses[False]) / abs(losses[False])
    report(f"sft packed == padded ({attn}, fp32)", diff <= 1e-4,
           f"padded {losses[False]:.6f} packed {losses[True]:.6f} rel diff {diff:.1e}")


def check_training() -> None:
    from datasets import Dataset

    import trl
    from trl.models.tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    gen = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(4, len(tokenizer), (n,), generator=gen).tolist()

    pairs = {"prompt_ids": [ids(8) for _ in range(16)], "chosen_ids": [ids(12) for _ in range(16)],
             "rejected_ids": [ids(10) for _ in range(16)]}
    kto = {"prompt_ids": pairs["prompt_ids"], "completion_ids": pairs["chosen_ids"],
           "label": [i % 2 == 0 for i in range(16)]}
    prompts = {"prompt": [f"Question {i}: what is {i} + {i}?" for i in range(16)]}
    common = dict(max_steps=3, per_device_train_batch_size=8, report_to="none", bf16=DEVICE == "cuda", use_cpu=DEVICE == "cpu", learning_rate=1e-3,
                  logging_steps=1, save_strategy="no", disable_tqdm=True)
    online = dict(num_generations=4, max_completion_length=16, guards=False)

    def reward(completions, **kwargs):
        return [len(str(c)) / 10 for c in completions]

    cases = {
        "sft": (trl.SFTTrainer, trl.SFTConfig, {}, Dataset.from_dict({"input_ids": pairs["chosen_ids"]})),
        "dpo": (trl.DPOTrainer, trl.DPOConfig, {}, Dataset.from_dict(pairs)),
        "kto": (trl.KTOTrainer, trl.KTOConfig, {}, Dataset.from_dict(kto)),
        "reward": (trl.RewardTrainer, trl.RewardConfig, {}, Dataset.from_dict(pairs)),
        "grpo": (trl.GRPOTrainer, trl.GRPOConfig, online, Dataset.from_dict(prompts)),
        "rloo": (trl.RLOOTrainer, trl.RLOOConfig, online, Dataset.from_dict(prompts)),
    }
    for name, (trainer_class, config_class, extra, data) in cases.items():
        try:
            if name == "reward":
                from transformers import AutoModelForSequenceClassification

                from trl.models.tiny import tiny_config

                torch.manual_seed(0)
                model = AutoModelForSequenceClassification.from_config(tiny_config("qwen3", num_labels=1))
                model.config.pad_token_id = tokenizer.pad_token_id
            else:
                model = tiny_model("qwen3", seed=0)
            model = model.to(DEVICE)
            before = {k: p.detach().clone() for k, p in model.named_parameters()}
            kwargs = {"reward_funcs": reward} if name in ("grpo", "rloo") else {}
            args = config_class(output_dir=tempfile.mkdtemp(), **common, **extra)
            trainer = trainer_class(model=model, args=args, train_dataset=data, processing_class=tokenizer, **kwargs)
            trainer.train()
            losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
            moved = sum(not torch.equal(before[k], p.detach()) for k, p in trainer.model.named_parameters())
            ok = len(losses) == 3 and all(math.isfinite(x) for x in losses) and moved > 0
            report(f"train {name} bf16", ok, f"losses {[round(x, 4) for x in losses]}, {moved} tensors moved, "
                   f"dtype {next(trainer.model.parameters()).dtype}")
        except Exception as error:  # noqa: BLE001 - every trainer is checked; the error is reported
            report(f"train {name} bf16", False, f"{type(error).__name__}: {str(error)[:500]}")


def main() -> None:
    global DEVICE
    if "--device" in sys.argv:
        DEVICE = sys.argv[sys.argv.index("--device") + 1]
    if DEVICE == "cuda":
        if not torch.cuda.is_available():
            sys.exit("gpu_check.py needs a CUDA device (or --device cpu to test the script)")
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, bf16: {torch.cuda.is_bf16_supported()}")
    shapes = [(4096, 896, 151936), (2048, 256, 32000)] if DEVICE == "cuda" else [(256, 64, 32000)]
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        for shape in shapes:
            check_ops(*shape, dtype, tol)
    checks = [(check_packed_equals_padded, "sdpa"), (check_packed_equals_padded, "flex_attention"), (check_training,)]
    for check, *args in checks:
        try:
            check(*args)
        except Exception as error:  # noqa: BLE001
            report(f"{check.__name__}{args}", False, f"{type(error).__name__}: {str(error)[:500]}")
    print(f"gpu_check: {len(FAILED)} failed {FAILED}")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
