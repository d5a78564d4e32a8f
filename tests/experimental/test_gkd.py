"""GKDTrainer on the tiny model: off-policy (dataset completions), on-policy and seq_kd batches train the student
towards the teacher (finite loss, student moves, teacher frozen); lmbda picks the source; bad inputs."""

import math

import pytest

from trl.data.tiny import tiny_task_dataset
from trl.experimental.gkd import GKDConfig, GKDTrainer
from trl.models.tiny import tiny_model, tiny_tokenizer

from .helpers import SMALL, changed, logged, params, small_model


def _args(tmp_path, **overrides):
    values = {"output_dir": str(tmp_path / "out"), "max_steps": 3, "per_device_train_batch_size": 4,
              "max_new_tokens": 8, "learning_rate": 1e-3, "logging_steps": 1, "report_to": "none",
              "save_strategy": "no", "seed": 0, "gradient_checkpointing": False, "guards": False}
    values.update(overrides)
    return GKDConfig(**values)


def _conversations(n=12):
    return tiny_task_dataset("conversational", "train", num_rows=n)  # `messages`: the last one is the completion


@pytest.mark.parametrize(("lmbda", "seq_kd", "on_policy"), [(0.0, False, 0.0), (1.0, False, 1.0), (0.0, True, 0.0)])
def test_trains(tmp_path, lmbda, seq_kd, on_policy):
    student, teacher = small_model(seed=0), small_model(seed=1)
    before, teacher_before = params(student), params(teacher)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=_args(tmp_path, lmbda=lmbda, seq_kd=seq_kd),
                         train_dataset=_conversations(), processing_class=tiny_tokenizer())
    trainer.train()
    logs = logged(trainer)
    assert logs and all(math.isfinite(log["loss"]) and log["loss"] >= 0 for log in logs)
    assert {"on_policy", "entropy", "num_tokens"} <= set(logs[0]), set(logs[0])
    assert all(log["on_policy"] == on_policy for log in logs)
    assert changed(trainer.model, before), "the student did not move"
    assert not changed(teacher, teacher_before), "the teacher moved"


def test_dataset_completions_are_the_rows_completions(tmp_path):
    data = _conversations(4)
    trainer = GKDTrainer(model=small_model(), teacher_model=small_model(seed=1), args=_args(tmp_path, lmbda=0.0),
                         train_dataset=data, processing_class=tiny_tokenizer())
    rows = [dict(trainer.train_dataset[i]) for i in range(2)]
    rollout = trainer._sample(rows, trainer._generator, "train")
    tok = tiny_tokenizer()
    full = tok.apply_chat_template(data[0]["messages"], tokenize=False)
    prompt = tok.apply_chat_template(data[0]["messages"][:-1], tokenize=False, add_generation_prompt=True)
    ids = rollout.completion_ids[0][rollout.completion_mask[0].bool()]
    assert tok.decode(ids) == full[len(prompt):][: len(tok.decode(ids))]


def test_lmbda_mixes_sources_reproducibly(tmp_path):
    trainer = GKDTrainer(model=small_model(), teacher_model=small_model(seed=1),
                         args=_args(tmp_path, lmbda=0.5, max_steps=8), train_dataset=_conversations(),
                         processing_class=tiny_tokenizer())
    trainer.train()
    fractions = [log["on_policy"] for log in logged(trainer)]
    assert 0 < sum(fractions) < len(fractions)  # both sources were used


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"`lmbda`.*\[0, 1\]; got 1.5"):
        _args(tmp_path, lmbda=1.5)
    with pytest.raises(ValueError, match=r"`beta` must be in \[0, 1\]"):
        _args(tmp_path, beta=-0.1)
    with pytest.raises(ValueError, match=r"needs a 'completion' column"):
        GKDTrainer(model=small_model(), teacher_model=small_model(seed=1), args=_args(tmp_path),
                   train_dataset=tiny_task_dataset("prompt_only", "train", num_rows=8), processing_class=tiny_tokenizer())
    other_vocab = tiny_model(seed=1, **{**SMALL, "vocab_size": 600})
    with pytest.raises(ValueError, match=r"vocabulary"):
        GKDTrainer(model=small_model(), teacher_model=other_vocab, args=_args(tmp_path), train_dataset=_conversations(),
                   processing_class=tiny_tokenizer())


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    """lmbda's draws depend on the run's position, so a resumed run picks the same sources and logs the same losses."""
    def run(resume=None):
        trainer = GKDTrainer(model=small_model(), teacher_model=small_model(seed=1),
                             args=_args(tmp_path, lmbda=0.5, max_steps=4, save_strategy="steps", save_steps=1),
                             train_dataset=_conversations(), processing_class=tiny_tokenizer())
        trainer.train(resume_from_checkpoint=resume)
        return {log["step"]: (log["loss"], log["on_policy"]) for log in logged(trainer)}

    full = run()
    resumed = run(resume=str(tmp_path / "out" / "checkpoint-2"))
    for step in (3, 4):
        assert resumed[step][1] == full[step][1]
        assert resumed[step][0] == pytest.approx(full[step][0], rel=1e-5, abs=1e-7)


def test_student_is_required(tmp_path):
    with pytest.raises(ValueError, match=r"needs the student `model`"):
        GKDTrainer(teacher_model=small_model(), args=_args(tmp_path), train_dataset=_conversations())


def test_seq_kd_off_policy_batches_are_sampled_by_the_teacher(tmp_path, monkeypatch):
    """With seq_kd the off-policy completions come from the teacher's sampling, not from the dataset: the rollout is
    the teacher backend's own output for these prompts."""
    trainer = GKDTrainer(model=small_model(), teacher_model=small_model(seed=1),
                         args=_args(tmp_path, lmbda=0.0, seq_kd=True), train_dataset=_conversations(4),
                         processing_class=tiny_tokenizer())
    calls = []
    original = trainer._teacher_rollout
    monkeypatch.setattr(trainer, "_teacher_rollout", lambda rows, gen: calls.append(len(rows)) or original(rows, gen))
    monkeypatch.setattr(trainer, "_dataset_rollout", lambda rows: pytest.fail("seq_kd read the dataset completions"))
    rows = [dict(trainer.train_dataset[i]) for i in range(2)]
    rollout = trainer._sample(rows, trainer._generator, "train")
    assert calls == [2]
    from accelerate.utils import extract_model_from_parallel

    assert trainer._teacher_backend.model is extract_model_from_parallel(trainer.teacher_model)  # the teacher
    assert rollout.completion_ids.shape[0] == 2 and rollout.prompts == [row["prompt"] for row in rows]
