"""RewardTrainer on a tiny sequence classifier: a few CPU steps each; loss finite and falling, parameters moved,
metrics logged; the loss against a hand computation, gradient-accumulation invariance, margins, legacy columns, loading
from a folder, LoRA. Bad inputs (and the max_length filter) are rows of tests/bad_inputs/test_reward.py."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from trl import RewardConfig, RewardTrainer
from trl.data.tiny import tiny_task_dataset
from trl.models.tiny import save_tiny_model, tiny_config, tiny_tokenizer

from .sft_one_step import SMALL, _GradCatcher


METRICS = {"loss", "accuracy", "margin", "min_reward", "mean_reward", "max_reward", "num_tokens", "grad_norm"}


def _reward_model(num_labels=1, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForSequenceClassification.from_config(tiny_config("qwen3", num_labels=num_labels, **SMALL))


def _config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), max_steps=5, per_device_train_batch_size=8, learning_rate=3e-3,
                  logging_steps=1, report_to="none", save_strategy="no", max_length=128, seed=0)
    values.update(overrides)
    return RewardConfig(**values)


def _pairs(form="preference", num_rows=8, split="train"):
    return tiny_task_dataset(form, split, num_rows=num_rows)  # the first 32 train rows have no identical pair


def _train(tmp_path, dataset, model=None, **overrides):
    model = model if model is not None else _reward_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = RewardTrainer(model=model, args=_config(tmp_path, **overrides), train_dataset=dataset,
                            processing_class=tiny_tokenizer())
    trainer.train()
    return trainer, before


def _assert_trained(trainer, before, falling=True):
    logs = [log for log in trainer.state.log_history if "loss" in log]
    losses = [log["loss"] for log in logs]
    assert all(math.isfinite(loss) for loss in losses), losses
    if falling:
        assert losses[-1] < losses[0], losses
    assert METRICS <= set(logs[0]), set(logs[0])
    for log in logs:
        assert 0.0 <= log["accuracy"] <= 1.0
        assert log["min_reward"] <= log["mean_reward"] <= log["max_reward"]
    assert logs[-1]["num_tokens"] > logs[0]["num_tokens"] > 0  # cumulative
    model = trainer.accelerator.unwrap_model(trainer.model)
    moved = [n for n, p in model.named_parameters() if n in before and not torch.equal(p.detach(), before[n])]
    assert moved, "no parameter changed"
    return logs, moved


# ---------------------------------------------------------------------------------------------------- config


def test_config_defaults():
    # the config's bad values are rows of tests/bad_inputs/test_reward.py
    args = RewardConfig(output_dir="out")
    assert args.learning_rate == 1e-4 and args.max_length == 1024 and args.disable_dropout is True
    assert args.center_rewards_coefficient is None and args.pad_to_multiple_of is None and args.guards is True
    assert args.activation_offloading is False and args.chat_template_path is None


# ---------------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("form", ["preference", "standard_preference"])
def test_trains_on_preference_data(tmp_path, form):
    trainer, before = _train(tmp_path, _pairs(form))
    _assert_trained(trainer, before)
    assert set(trainer.train_dataset.column_names) == {"prompt_ids", "chosen_ids", "rejected_ids"}


def test_implicit_prompt_and_centring_train(tmp_path):
    rows = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in _pairs(num_rows=8)]
    trainer, before = _train(tmp_path, Dataset.from_list(rows), center_rewards_coefficient=0.01,
                             gradient_accumulation_steps=2, per_device_train_batch_size=4)
    _assert_trained(trainer, before)
    assert all(len(p) > 0 for p in trainer.train_dataset["prompt_ids"])  # the shared start became the prompt


def test_chat_template_path_and_eos_token(tmp_path):
    # A tokenizer without a template gets one from a .jinja file; eos_token works on a model that does not generate.
    tokenizer = tiny_tokenizer()
    template = tmp_path / "chatml.jinja"
    template.write_text(tokenizer.chat_template)
    tokenizer.chat_template = None
    trainer = RewardTrainer(model=_reward_model(), processing_class=tokenizer, train_dataset=_pairs(),
                            args=_config(tmp_path, max_steps=1, chat_template_path=str(template),
                                         eos_token="<|im_end|>"))
    assert trainer.processing_class.chat_template == template.read_text()
    trainer.train()


def test_loss_matches_hand_computation(tmp_path):
    # Eval on one batch of 4 pairs with a margin column and centring: the trainer's loss must equal
    #   mean_i [ -log σ(r_c,i - r_r,i - m_i) + c (r_c,i + r_r,i)² ]
    # with each reward read by hand from the per-token scores at the last real token of the sequence.
    margins = [0.0, 0.5, -1.0, 2.0]
    dataset = _pairs(num_rows=4).add_column("margin", margins)
    model = _reward_model()
    seen = []
    trainer = RewardTrainer(
        model=model, processing_class=tiny_tokenizer(), train_dataset=dataset, eval_dataset=dataset,
        compute_metrics=lambda prediction: seen.append(prediction) or {},
        args=_config(tmp_path, center_rewards_coefficient=0.1, per_device_eval_batch_size=4),
    )
    batch = next(iter(trainer.get_eval_dataloader()))
    assert torch.equal(batch["margin"], torch.tensor(margins))
    model.eval()
    with torch.no_grad():
        hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        scores = model.score(hidden).squeeze(-1)  # (2B, T)
        last = batch["attention_mask"].sum(-1) - 1  # right padding: the last real token
        rewards = scores[torch.arange(scores.shape[0]), last]
    chosen, rejected = rewards[:4], rewards[4:]
    expected = (-F.logsigmoid(chosen - rejected - torch.tensor(margins)) + 0.1 * (chosen + rejected) ** 2).mean()

    metrics = trainer.evaluate()
    with torch.no_grad():
        loss = trainer.compute_loss(model.eval(), batch)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert metrics["eval_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert metrics["eval_accuracy"] == pytest.approx(float((chosen > rejected).float().mean()))
    assert metrics["eval_margin"] == pytest.approx(float((chosen - rejected).mean()), rel=1e-5, abs=1e-6)
    assert metrics["eval_min_reward"] == pytest.approx(float(rewards.min()), rel=1e-5, abs=1e-6)
    assert metrics["eval_max_reward"] == pytest.approx(float(rewards.max()), rel=1e-5, abs=1e-6)
    assert metrics["eval_mean_reward"] == pytest.approx(float(rewards.mean()), rel=1e-5, abs=1e-6)
    assert metrics["eval_num_tokens"] == int(batch["attention_mask"].sum())
    # compute_metrics gets (N, 2) rewards [chosen, rejected] and labels 0 (the preferred column)
    (prediction,) = seen
    torch.testing.assert_close(torch.as_tensor(prediction.predictions), torch.stack([chosen, rejected], 1),
                               rtol=1e-5, atol=1e-6)
    assert prediction.label_ids.tolist() == [0, 0, 0, 0]


def _one_step_grads(tmp_path, num_rows, batch_size, grad_accum):
    catcher = _GradCatcher()
    args = _config(tmp_path / f"{batch_size}x{grad_accum}", max_steps=1, per_device_train_batch_size=batch_size,
                   gradient_accumulation_steps=grad_accum, max_grad_norm=0.0, gradient_checkpointing=False)
    trainer = RewardTrainer(model=_reward_model(), args=args, train_dataset=_pairs(num_rows=num_rows),
                            processing_class=tiny_tokenizer(), callbacks=[catcher])
    trainer.train()
    return next(log["loss"] for log in trainer.state.log_history if "loss" in log), catcher.grads


@pytest.mark.parametrize("num_rows, split", [(4, (2, 2)), (6, (4, 2))], ids=["4=2x2", "6=4+2"])
def test_gradient_accumulation_gives_the_full_batch_gradient(tmp_path, num_rows, split):
    # One optimiser step over all rows, in one micro-batch or in two. The loss is a mean over the pairs of the whole
    # step, so the gradients agree; with uneven micro-batches (4 + 2) a mean per micro-batch would not.
    full_loss, full = _one_step_grads(tmp_path, num_rows, num_rows, 1)
    split_loss, split_grads = _one_step_grads(tmp_path, num_rows, split[0], len(split))
    assert full.keys() == split_grads.keys() and full
    for name in full:
        torch.testing.assert_close(split_grads[name], full[name], rtol=1e-4, atol=1e-6, msg=name)
    assert split_loss == pytest.approx(full_loss, rel=1e-5)


# ---------------------------------------------------------------------------------------------------- data


def test_streamed_dataset_trains_and_filters_lazily(tmp_path):
    rows = [{"chosen_ids": [5, 6, 7], "rejected_ids": [5, 6, 8]}, {"chosen_ids": [5] * 40, "rejected_ids": [5, 9]}] * 4
    stream = Dataset.from_list(rows).to_iterable_dataset()
    trainer, before = _train(tmp_path, stream, max_steps=2, per_device_train_batch_size=2, max_length=16)
    _assert_trained(trainer, before, falling=False)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[1] <= 16  # the 40-token pairs were dropped, not truncated


def test_margin_column_reaches_the_loss(tmp_path):
    dataset = _pairs("standard_preference").add_column("margin", [1.0] * 8)
    trainer, before = _train(tmp_path, dataset, max_steps=3)
    _assert_trained(trainer, before, falling=False)
    assert "margin" in trainer.train_dataset.column_names
    batch = next(iter(trainer.get_train_dataloader()))
    assert torch.equal(batch["margin"], torch.ones(8))
    # a margin of 1 makes every pair's loss larger than without it (−log σ is decreasing)
    model = trainer.model.eval()
    with torch.no_grad():
        with_margin = trainer.compute_loss(model, batch)
        without = trainer.compute_loss(model, {k: v for k, v in batch.items() if k != "margin"})
    assert with_margin > without


def test_pretokenised_legacy_columns_are_renamed(tmp_path):
    tokenizer = tiny_tokenizer()
    rows = [
        {"chosen_input_ids": tokenizer(r["prompt"] + r["chosen"])["input_ids"],
         "rejected_input_ids": tokenizer(r["prompt"] + r["rejected"])["input_ids"]}
        for r in _pairs("standard_preference")
    ]
    with pytest.warns(FutureWarning, match="legacy column names"):
        trainer, before = _train(tmp_path, Dataset.from_list(rows), max_steps=3)
    _assert_trained(trainer, before, falling=False)
    assert trainer.train_dataset["chosen_ids"][0] == rows[0]["chosen_input_ids"]


# ---------------------------------------------------------------------------------------------------- models


def test_model_from_a_local_folder(tmp_path):
    # A causal LM checkpoint becomes a sequence classifier with a new score head, loaded quietly in float32; the
    # tokenizer comes from the same folder and its pad id is the model's.
    path = save_tiny_model(tmp_path / "sft-model", **SMALL)
    reports = []
    handler = logging.Handler()
    handler.emit = reports.append
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(handler)
    try:
        trainer = RewardTrainer(model=str(path), args=_config(tmp_path, max_steps=2), train_dataset=_pairs())
    finally:
        logger.removeHandler(handler)
    assert not [r for r in reports if "LOAD REPORT" in r.getMessage()], [r.getMessage() for r in reports]
    model = trainer.model
    assert type(model).__name__ == "Qwen3ForSequenceClassification" and model.config.num_labels == 1
    assert model.dtype == torch.float32
    assert model.config.pad_token_id == trainer.processing_class.pad_token_id
    trainer.train()
    trainer.save_model()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "reward-trainer" in card and "text-classification" in card
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert reloaded.config.num_labels == 1


def test_lora_trains_adapter_and_score_head(tmp_path):
    from peft import LoraConfig

    model = _reward_model()
    trainer = RewardTrainer(
        model=model, processing_class=tiny_tokenizer(), train_dataset=_pairs(), args=_config(tmp_path, max_steps=3),
        peft_config=LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    _, moved = _assert_trained(trainer, before, falling=False)
    assert any("lora_" in n for n in moved) and any("score" in n for n in moved)
    assert all("lora_" in n or "score" in n for n in moved), moved  # the backbone stays frozen

    with pytest.warns(UserWarning, match="score"):
        RewardTrainer(model=_reward_model(), processing_class=tiny_tokenizer(), train_dataset=_pairs(),
                      args=_config(tmp_path), peft_config=LoraConfig(r=4, target_modules=["q_proj"]))
