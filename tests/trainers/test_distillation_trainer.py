"""DistillationTrainer on tiny random models: a few CPU steps; the student moves, the teacher does not, the documented
metrics are logged; the loss of a step equals a naive float64 full-logits divergence; resume; PEFT; bad inputs."""

import math

import pytest
import torch
from datasets import Dataset

from trl.data.tiny import tiny_task_dataset
from trl.models.tiny import save_tiny_model, tiny_model, tiny_tokenizer
from trl.rollout import StepCounts
from trl.trainer.distillation_config import DistillationConfig
from trl.trainer.distillation_trainer import DistillationTrainer

from .sft_one_step import SMALL, _GradCatcher

METRICS = {
    "loss", "num_tokens", "entropy", "step_time", "completions/mean_length", "completions/min_length",
    "completions/max_length", "completions/clipped_ratio",
}
TEACHER = {"num_hidden_layers": 2}  # the bundled config with 2 layers: wider than the student, same vocabulary


def _config(tmp_path, **overrides):
    values = {
        "output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 4,
        "max_completion_length": 8, "learning_rate": 1e-2, "logging_steps": 1, "report_to": "none",
        "save_strategy": "no", "seed": 0, "gradient_checkpointing": False, "guards": False,
    }
    values.update(overrides)
    return DistillationConfig(**values)


def _prompts(num_rows=16, form="prompt_only"):
    return tiny_task_dataset(form, "train", num_rows=num_rows)


def _trainer(tmp_path, teacher=None, dataset=None, student=None, **overrides):
    return DistillationTrainer(
        model=student if student is not None else tiny_model(seed=0, **SMALL),
        teacher_model=teacher if teacher is not None else tiny_model(seed=1, **TEACHER),
        args=_config(tmp_path, **overrides), train_dataset=dataset if dataset is not None else _prompts(),
        processing_class=tiny_tokenizer(),
    )


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _moved(before, model):
    return any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)


def _logged(trainer):
    return [log for log in trainer.state.log_history if "loss" in log]


@pytest.mark.parametrize("beta", [1.0, 0.0, 0.5])
def test_trains_the_student_keeps_the_teacher_and_logs_the_documented_metrics(tmp_path, beta):
    teacher = tiny_model(seed=1, **TEACHER)
    trainer = _trainer(tmp_path, teacher=teacher, beta=beta, temperature=0.9)
    student_before, teacher_before = _params(trainer.model), _params(teacher)
    trainer.train()
    logs = _logged(trainer)
    assert len(logs) == 2 and all(math.isfinite(log["loss"]) and log["loss"] > 0 for log in logs)
    assert METRICS <= set(logs[0])
    assert logs[-1]["num_tokens"] > logs[0]["num_tokens"] > 0
    assert _moved(student_before, trainer.model)
    assert not _moved(teacher_before, teacher) and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert trainer.ref_model is None and trainer.reward_funcs == []


def _naive_loss(trainer, rollout, beta, temperature, mask=None):
    """Token mean over the completion tokens (`mask`) of the divergence of full float64 logits of both models."""
    ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], 1)
    attention = torch.cat([rollout.prompt_mask, rollout.completion_mask], 1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    width = rollout.prompt_ids.shape[1]

    def logps(model):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits.double()
        return torch.log_softmax(logits[:, width - 1 : -1] / temperature, -1)

    s, t = logps(trainer.model), logps(trainer.teacher_model)
    p, q = s.exp(), t.exp()
    if beta == 1.0:
        per_token = (p * (s - t)).sum(-1)
    elif beta == 0.0:
        per_token = (q * (t - s)).sum(-1)
    else:
        m = (beta * q + (1 - beta) * p).log()
        per_token = beta * (q * (t - m)).sum(-1) + (1 - beta) * (p * (s - m)).sum(-1)
    mask = (rollout.completion_mask if mask is None else mask).double()
    return (per_token * mask).sum() / mask.sum()


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_the_loss_is_the_naive_full_logits_divergence(tmp_path, beta):
    trainer = _trainer(tmp_path, beta=beta, temperature=0.7)
    rollout = trainer._make_rollout([trainer.train_dataset[i] for i in range(4)])
    tokens = rollout.completion_mask.sum()
    rollout.step_counts = StepCounts(tokens=tokens.double(), sequences=torch.tensor(4.0), micro_batches=1)
    loss = trainer.compute_loss(trainer.model, rollout)
    assert rollout.completion_mask.sum() > 0
    assert loss.item() == pytest.approx(_naive_loss(trainer, rollout, beta, 0.7).item(), rel=1e-5)


def test_tool_results_stay_out_of_the_loss(tmp_path, monkeypatch):
    """With tools the rollouts are multi-turn (the online core's tool loop); the loss averages the divergence over the
    tokens the student generated, not over the tool results, and the tool metrics are logged."""
    from .test_grpo_tools import Calculator, Scripted, _questions, _tool_tokenizer

    tokenizer = _tool_tokenizer()
    trainer = DistillationTrainer(
        model=tiny_model(seed=0, **SMALL), teacher_model=tiny_model(seed=1, **TEACHER), train_dataset=_questions(),
        args=_config(tmp_path, max_completion_length=256, max_steps=1), processing_class=tokenizer,
        tools=Calculator().tools(),
    )
    monkeypatch.setattr(trainer.backend, "generate", Scripted(tokenizer))  # each rollout: a call, then an answer
    rollout = trainer._make_rollout([trainer.train_dataset[i] for i in range(4)])
    assert rollout.tool_mask is not None and bool((rollout.tool_mask[rollout.completion_mask.bool()] == 0).any())
    mask = rollout.completion_mask * rollout.tool_mask
    rollout.step_counts = StepCounts(tokens=mask.sum().double(), sequences=torch.tensor(4.0), micro_batches=1)
    loss = trainer.compute_loss(trainer.model, rollout)
    assert loss.item() == pytest.approx(_naive_loss(trainer, rollout, 1.0, 1.0, mask).item(), rel=1e-5)
    assert loss.item() != pytest.approx(_naive_loss(trainer, rollout, 1.0, 1.0).item(), rel=1e-3)
    trainer.train()
    assert _logged(trainer)[0]["tools/call_frequency"] > 0


def test_teacher_loaded_from_a_folder_with_init_kwargs_and_from_the_config(tmp_path):
    path = save_tiny_model(tmp_path / "teacher", seed=1, **TEACHER)
    trainer = DistillationTrainer(
        model=tiny_model(seed=0, **SMALL), teacher_model=str(path), train_dataset=_prompts(),
        args=_config(tmp_path, teacher_model_init_kwargs='{"dtype": "bfloat16"}', max_steps=1),
        processing_class=tiny_tokenizer(),
    )
    assert next(trainer.teacher_model.parameters()).dtype == torch.bfloat16
    trainer.train()
    assert math.isfinite(_logged(trainer)[0]["loss"])
    from_config = DistillationTrainer(
        model=tiny_model(seed=0, **SMALL), train_dataset=_prompts(), processing_class=tiny_tokenizer(),
        args=_config(tmp_path, teacher_model_name_or_path=str(path)),
    )
    assert from_config.teacher_model.config.num_hidden_layers == 2


def test_evaluation_reports_the_divergence_as_eval_loss(tmp_path):
    trainer = DistillationTrainer(
        model=tiny_model(seed=0, **SMALL), teacher_model=tiny_model(seed=1, **TEACHER), train_dataset=_prompts(),
        eval_dataset=tiny_task_dataset("prompt_only", "test", num_rows=6), processing_class=tiny_tokenizer(),
        args=_config(tmp_path, per_device_eval_batch_size=4),
    )
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] > 0
    assert {"eval_entropy", "eval_completions/mean_length"} <= set(metrics)


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    """Stop after step 1 (in the middle of a generation batch used for two steps) and resume: steps 2 and 3 log the
    same losses as the run that was never stopped (buffer, sampling generator and RNG states are saved)."""
    def run(resume=None):
        trainer = _trainer(tmp_path, output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=2,
                           steps_per_generation=2, save_strategy="steps", save_steps=1)
        trainer.train(resume_from_checkpoint=resume)
        return {log["step"]: log["loss"] for log in _logged(trainer)}

    full = run()
    resumed = run(resume=str(tmp_path / "run" / "checkpoint-1"))
    assert {2, 3} <= set(resumed)
    for step in (2, 3):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-7)


def test_peft_student(tmp_path):
    peft = pytest.importorskip("peft")
    trainer = DistillationTrainer(
        model=tiny_model(seed=0, **SMALL), teacher_model=tiny_model(seed=1, **TEACHER), train_dataset=_prompts(),
        args=_config(tmp_path), processing_class=tiny_tokenizer(),
        peft_config=peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    trainer.train()
    assert lora and any(not torch.equal(lora[n], p) for n, p in trainer.model.named_parameters() if n in lora)
    assert all(torch.equal(frozen[n], p) for n, p in trainer.model.named_parameters() if n in frozen)
    assert math.isfinite(_logged(trainer)[-1]["loss"])


def test_untied_student_text_prompts_gradient_checkpointing_and_completion_tables(tmp_path):
    rows = [{"prompt": f"reverse: {' '.join('abcdefgh'[i:i + 3])}\nanswer:"} for i in range(6)] * 2
    student = tiny_model(seed=0, tie_word_embeddings=False, **SMALL)
    trainer = _trainer(tmp_path, student=student, dataset=Dataset.from_list(rows), gradient_checkpointing=True,
                       log_completions=True)
    head = student.lm_head.weight.detach().clone()
    trainer.train()
    assert not torch.equal(head, student.lm_head.weight)
    tables = sorted((tmp_path / "out" / "completions").glob("completions_*.parquet"))
    assert len(tables) == 2
    import pandas as pd

    assert list(pd.read_parquet(tables[0]).columns) == ["step", "prompt", "completion"]


# ---- bad inputs ----------------------------------------------------------------------------------------------------


def test_teacher_with_another_vocabulary_names_both_sizes(tmp_path):
    with pytest.raises(ValueError, match=r"teacher's vocabulary \(512 LM-head rows.*student's \(448\)"):
        _trainer(tmp_path, teacher=tiny_model(seed=1, vocab_size=512, **TEACHER))


def test_missing_prompt_column(tmp_path):
    with pytest.raises(ValueError, match="prompt"):
        _trainer(tmp_path, dataset=Dataset.from_list([{"question": "hi"}] * 8))


@pytest.mark.parametrize("beta", [-0.1, 1.5])
def test_beta_outside_zero_one(tmp_path, beta):
    with pytest.raises(ValueError, match=rf"`beta` must be in \[0, 1\].*{beta}"):
        _config(tmp_path, beta=beta)


def test_no_teacher_and_teacher_is_the_student(tmp_path):
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationTrainer(model=tiny_model(seed=0, **SMALL), args=_config(tmp_path), train_dataset=_prompts(),
                            processing_class=tiny_tokenizer())
    student = tiny_model(seed=0, **SMALL)
    with pytest.raises(ValueError, match="student object itself"):
        DistillationTrainer(model=student, teacher_model=student, args=_config(tmp_path), train_dataset=_prompts(),
                            processing_class=tiny_tokenizer())


def test_config_has_no_num_generations_or_lmbda(tmp_path):
    for name in ("num_generations", "lmbda"):
        with pytest.raises(TypeError, match=name):
            _config(tmp_path, **{name: 2})
    config = DistillationConfig(output_dir=str(tmp_path))
    defaults = (config.beta, config.temperature, config.learning_rate, config.max_completion_length,
                config.disable_dropout, config.remove_unused_columns, config.num_generations)
    assert defaults == (1.0, 1.0, 1e-6, 512, False, False, 1)


def test_prompts_that_do_not_fit_the_teachers_context(tmp_path):
    """The teacher reads prompt + completion too: a teacher with a shorter context than the student is checked like
    the student (it would otherwise score positions past its context without a word)."""
    rows = Dataset.from_list([{"prompt": "hello " * 10}] * 8)  # 40 tokens
    with pytest.raises(ValueError, match=r"teacher \(Qwen3ForCausalLM\) has a shorter context.*context of 64 tokens"):
        _trainer(tmp_path, teacher=tiny_model(seed=1, max_position_embeddings=64, **TEACHER), dataset=rows,
                 max_completion_length=32)
    trainer = _trainer(tmp_path, teacher=tiny_model(seed=1, max_position_embeddings=64, **TEACHER), dataset=rows,
                       max_completion_length=8)
    assert trainer.teacher_model.config.max_position_embeddings == 64


def test_gradient_is_the_same_however_the_generation_batch_is_cut(tmp_path):
    """8 completions as 1 micro-batch of 8, or 2 / 4 accumulated micro-batches: the same completions (one generation
    batch) and one token mean over the optimiser step (trl.losses.reduce), so the same gradient. Dividing each
    micro-batch by its own token count would weight the tokens of short micro-batches more."""
    grads, lengths = [], []
    for batch_size, accumulation in ((8, 1), (4, 2), (2, 4)):
        catcher = _GradCatcher()
        student = tiny_model(seed=0, **SMALL)
        with torch.no_grad():  # a larger end-of-sequence row: completions of 2 to 8 tokens, not all of 8
            student.get_output_embeddings().weight[tiny_tokenizer().eos_token_id] *= 40
        trainer = DistillationTrainer(
            model=student, teacher_model=tiny_model(seed=1, **TEACHER), train_dataset=_prompts(),
            args=_config(tmp_path / str(batch_size), per_device_train_batch_size=batch_size, beta=0.5,
                         gradient_accumulation_steps=accumulation, max_steps=1, max_grad_norm=0.0),
            processing_class=tiny_tokenizer(), callbacks=[catcher],
        )
        make_rollout = trainer._make_rollout

        def recording(rows, make=make_rollout):
            rollout = make(rows)
            lengths.append(rollout.completion_mask.sum(-1).tolist())
            return rollout

        trainer._make_rollout = recording
        trainer.train()
        grads.append(catcher.grads)
    assert len(lengths) == 3 and len(set(lengths[0])) > 1 and lengths[1] == lengths[0] == lengths[2]
    for other in grads[1:]:
        for name, grad in grads[0].items():
            torch.testing.assert_close(other[name], grad, rtol=1e-4, atol=1e-6)


def test_two_processes_train_an_untied_student_in_sync(tmp_path):
    """Under DDP (2 gloo processes, each with its own prompts) the student's LM head is applied inside its forward,
    so the wrapper averages its gradient too (applied after the forward, an untied head was 'marked ready twice'):
    both ranks end with the same, moved, weights."""
    from .sft_one_step import run_two_ranks

    prefix = str(tmp_path / "distil")
    run_two_ranks("distillation_ddp_steps.py", prefix)
    ranks = [torch.load(f"{prefix}.{rank}.pt") for rank in (0, 1)]
    assert ranks[0]["world_size"] == 2
    assert "lm_head.weight" in ranks[0]["moved"]
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name


def test_vision_inputs_are_refused_at_construction(tmp_path):
    """A multimodal processor and an image column are errors that name DistillationTrainer (docs/distillation.md:
    the teacher would not get the pixel inputs)."""
    from trl.models.tiny_vlm import tiny_vlm

    model, processor = tiny_vlm("llava")
    teacher, _ = tiny_vlm("llava", seed=1)
    with pytest.raises(ValueError, match=r"DistillationTrainer got a multimodal processor.*DistillationTrainer"):
        DistillationTrainer(model=model, teacher_model=teacher, args=_config(tmp_path), train_dataset=_prompts(),
                            processing_class=processor)
    from PIL import Image

    rows = Dataset.from_list([{"prompt": "describe", "image": Image.new("RGB", (8, 8))}] * 4)
    with pytest.raises(ValueError, match=r"DistillationTrainer got an 'image' column.*remove_columns\('image'\)"):
        _trainer(tmp_path, dataset=rows)


def test_teacher_that_is_the_base_of_a_peft_student_is_refused(tmp_path):
    """The base model a PEFT student wraps carries the adapters in its modules: as a teacher it scored completions as
    the student did (loss 0 at every step, nothing learned)."""
    peft = pytest.importorskip("peft")
    base = tiny_model(seed=0, **SMALL)
    student = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with pytest.raises(ValueError, match=r"shares \d+ parameters with the student.*nothing would be learned"):
        _trainer(tmp_path, student=student, teacher=base)
    assert any(p.requires_grad for p in student.parameters())  # refused before the teacher was frozen


def test_teacher_fields_ignored_for_a_teacher_object_are_warned_about(tmp_path):
    with pytest.warns(UserWarning, match=r"`teacher_model_revision`, `teacher_model_name_or_path` of the "
                                         r"DistillationConfig are ignored: `teacher_model` is already a model"):
        _trainer(tmp_path, teacher_model_revision="v1", teacher_model_name_or_path="some/teacher")


def test_beta_from_a_sweep_script_and_beta_of_the_wrong_type(tmp_path):
    import numpy as np

    assert _config(tmp_path, beta=np.float32(0.25)).beta == 0.25  # was refused as "outside [0, 1]"
    assert type(_config(tmp_path, beta=np.float32(0.25)).beta) is float
    for beta in (True, "0.5"):
        with pytest.raises(TypeError, match=r"`beta` must be a number in \[0, 1\].*got (bool True|str '0.5')"):
            _config(tmp_path, beta=beta)
