"""ORPOTrainer and CPOTrainer on the tiny model: they train (finite loss, weights move, documented metrics), their
first loss equals a naive full-logits float64 computation, truncation follows the reference, bad inputs fail early."""

import math

import pytest
import torch
from datasets import Dataset

from trl.data.tiny import tiny_task_dataset
from trl.experimental._preference import truncate_pair
from trl.experimental.cpo import CPOConfig, CPOTrainer
from trl.experimental.orpo import ORPOConfig, ORPOTrainer
from trl.models.tiny import tiny_tokenizer

from .helpers import changed, common_args, logged, params, small_model

SHARED = {"loss", "nll_loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
          "logps/chosen", "logps/rejected", "entropy", "num_tokens"}
ORPO_METRICS = SHARED | {"log_odds_ratio", "log_odds_chosen"}


def _orpo(tmp_path, **overrides):
    return ORPOConfig(**common_args(tmp_path, **{"max_length": 64, "max_prompt_length": 32, **overrides}))


def _cpo(tmp_path, **overrides):
    return CPOConfig(**common_args(tmp_path, **{"max_length": 64, "max_prompt_length": 32, **overrides}))


def _data(n=16):
    return tiny_task_dataset("preference", num_rows=n)


def test_orpo_trains(tmp_path):
    model = small_model()
    before = params(model)
    trainer = ORPOTrainer(model=model, args=_orpo(tmp_path), train_dataset=_data(), processing_class=tiny_tokenizer())
    trainer.train()
    logs = logged(trainer)
    assert len(logs) == 3 and all(math.isfinite(log["loss"]) for log in logs)
    assert ORPO_METRICS <= set(logs[0]), set(logs[0])
    assert changed(trainer.model, before), "the policy did not move"
    assert trainer.ref_model is None  # no reference model
    assert logs[-1]["nll_loss"] < logs[0]["nll_loss"]  # lr 1e-3 on the same 16 rows: the chosen NLL drops


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "simpo"])
def test_cpo_every_loss_type_trains(tmp_path, loss_type):
    model = small_model()
    before = params(model)
    extra = {"alpha": 0.5} if loss_type == "simpo" else {}
    trainer = CPOTrainer(model=model, args=_cpo(tmp_path, loss_type=loss_type, max_steps=2, **extra),
                         train_dataset=_data(8), processing_class=tiny_tokenizer())
    trainer.train()
    logs = logged(trainer)
    assert all(math.isfinite(log["loss"]) for log in logs)
    assert SHARED <= set(logs[0]), set(logs[0])
    assert changed(trainer.model, before)


def _naive_scores(model, batch):
    """Float64 log-softmax of full logits at the completion positions: per-completion sums, averages, NLL."""
    with torch.no_grad():
        logits = model.double()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    model.float()
    logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    mask = batch["completion_mask"][:, 1:].double()
    sums, lengths = (logps * mask).sum(-1), mask.sum(-1)
    half = sums.shape[0] // 2
    nll = -sums[:half].sum() / lengths[:half].sum()
    return sums, sums / lengths, nll


def _first_batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return {k: v.to(trainer.model.device) for k, v in batch.items()}


def test_orpo_loss_matches_naive_float64(tmp_path):
    trainer = ORPOTrainer(model=small_model(), args=_orpo(tmp_path, beta=0.5), train_dataset=_data(8),
                          processing_class=tiny_tokenizer())
    batch = _first_batch(trainer)
    trainer.model.eval()
    with torch.no_grad():
        loss, _ = trainer._loss(trainer.model, batch)
    _, averages, nll = _naive_scores(trainer.model, batch)
    c, r = averages.chunk(2)
    odds = lambda lp: lp.exp() / (1 - lp.exp())
    expected = nll - 0.5 * torch.log(torch.sigmoid(torch.log(odds(c) / odds(r)))).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize(("loss_type", "averaged"), [("sigmoid", False), ("simpo", True)])
def test_cpo_loss_matches_naive_float64(tmp_path, loss_type, averaged):
    args = _cpo(tmp_path, loss_type=loss_type, beta=0.3, cpo_alpha=0.7, simpo_gamma=0.2)
    trainer = CPOTrainer(model=small_model(), args=args, train_dataset=_data(8), processing_class=tiny_tokenizer())
    batch = _first_batch(trainer)
    trainer.model.eval()
    with torch.no_grad():
        loss, _ = trainer._loss(trainer.model, batch)
    sums, averages, nll = _naive_scores(trainer.model, batch)
    c, r = (averages if averaged else sums).chunk(2)
    margin = 0.3 * (c - r) - (0.2 if loss_type == "simpo" else 0.0)
    expected = -torch.log(torch.sigmoid(margin)).mean() + 0.7 * nll
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_loss_is_invariant_to_gradient_accumulation(tmp_path):
    """4 pairs in one micro-batch or in 4 accumulated micro-batches of 1: the same gradient (the pair term is a mean
    over the step's pairs, the NLL a mean over the step's chosen tokens, not means of micro-batch means)."""
    trainer = ORPOTrainer(model=small_model(), args=_orpo(tmp_path), train_dataset=_data(4),
                          processing_class=tiny_tokenizer())
    rows = [trainer.train_dataset[i] for i in range(4)]
    assert len({len(r["chosen_ids"]) for r in rows}) > 1  # unequal lengths, or the check would be vacuous

    def gradient(batches):
        trainer.model.zero_grad()
        count = trainer._get_num_items_in_batch(batches, "cpu")
        for batch in batches:
            trainer.compute_loss(trainer.model, batch, num_items_in_batch=count).backward()
        return torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])

    whole = gradient([trainer.data_collator(rows)])
    split = gradient([trainer.data_collator([row]) for row in rows])
    torch.testing.assert_close(whole, split, rtol=1e-4, atol=1e-6)


def test_truncate_pair_as_the_reference():
    row = {"prompt_ids": list(range(10)), "chosen_ids": [20, 21, 22, 23], "rejected_ids": [30, 31]}
    # 10 + 4 > 8: prompt cut to its last 3 tokens; 3 + 4 <= 8: completions kept
    out = truncate_pair(row, max_length=8, max_prompt_length=3, truncation_mode="keep_end")
    assert out == {"prompt_ids": [7, 8, 9], "chosen_ids": [20, 21, 22, 23], "rejected_ids": [30, 31]}
    # keep_start keeps the first tokens; then 3 + 4 > 6: completions cut to 6 - 3 = 3
    out = truncate_pair(row, max_length=6, max_prompt_length=3, truncation_mode="keep_start")
    assert out == {"prompt_ids": [0, 1, 2], "chosen_ids": [20, 21, 22], "rejected_ids": [30, 31]}
    assert truncate_pair(row, max_length=100, max_prompt_length=3, truncation_mode="keep_end")["prompt_ids"] == row[
        "prompt_ids"]


def test_long_prompts_are_cut_not_dropped(tmp_path):
    long = Dataset.from_list([{"prompt": "x " * 80 + f"q{i}", "chosen": " yes", "rejected": " no"} for i in range(4)])
    trainer = ORPOTrainer(model=small_model(), args=_orpo(tmp_path, max_length=40, max_prompt_length=24),
                          train_dataset=long, processing_class=tiny_tokenizer())
    assert len(trainer.train_dataset) == 4
    assert all(len(p) == 24 for p in trainer.train_dataset["prompt_ids"])
    assert trainer.train_dataset[0]["prompt_ids"][-1] != trainer.train_dataset[1]["prompt_ids"][-1]  # end kept


def test_bad_inputs(tmp_path):
    tok = tiny_tokenizer()
    missing = Dataset.from_list([{"prompt": "a", "chosen": "b"}] * 4)
    with pytest.raises(ValueError, match=r"ORPOTrainer does not accept.*\[.chosen., .prompt.\].*preference"):
        ORPOTrainer(model=small_model(), args=_orpo(tmp_path), train_dataset=missing, processing_class=tok)
    with pytest.raises(ValueError, match=r"Unknown CPO loss_type 'dpo'"):
        _cpo(tmp_path, loss_type="dpo")
    with pytest.raises(ValueError, match=r"max_prompt_length.*smaller than `max_length`"):
        _orpo(tmp_path, max_length=32, max_prompt_length=32)
    with pytest.raises(ValueError, match=r"decoder-only"):
        _orpo(tmp_path, is_encoder_decoder=True)
    with pytest.raises(ValueError, match=r"cpo_alpha.*>= 0; got -1"):
        _cpo(tmp_path, cpo_alpha=-1.0)
    with pytest.raises(ValueError, match=r"train_dataset"):
        ORPOTrainer(model=small_model(), args=_orpo(tmp_path), processing_class=tok)
    with pytest.raises(ValueError, match=r"model_init"):
        CPOTrainer(model=small_model(), args=_cpo(tmp_path), train_dataset=_data(4), processing_class=tok,
                   model_init=lambda: None)


def test_evaluate_reports_the_documented_metrics(tmp_path):
    trainer = CPOTrainer(model=small_model(), args=_cpo(tmp_path, per_device_eval_batch_size=4), train_dataset=_data(8),
                         eval_dataset=_data(6), processing_class=tiny_tokenizer(),
                         compute_metrics=lambda p: {"pairs": float(len(p.predictions))})
    metrics = trainer.evaluate()
    for key in ("eval_loss", "eval_nll_loss", "eval_rewards/accuracies", "eval_logps/chosen", "eval_pairs"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["eval_pairs"] == 6.0


def test_ignored_compatibility_fields_warn(tmp_path):
    with pytest.warns(UserWarning, match=r"max_completion_length=16` is ignored"):
        _orpo(tmp_path, max_completion_length=16)
    with pytest.warns(UserWarning, match=r"label_pad_token_id` is ignored"):
        _cpo(tmp_path, label_pad_token_id=0)


def test_alphapo_on_summed_logps_warns(tmp_path):
    with pytest.warns(UserWarning, match=r"AlphaPO is meant with loss_type='simpo'"):
        _cpo(tmp_path, alpha=0.5)


def test_moe_load_balancing_loss_is_added_and_logged(tmp_path):
    from tests.trainers.sft_one_step import tiny_moe_model

    trainer = CPOTrainer(model=tiny_moe_model(), args=_cpo(tmp_path, max_steps=1, router_aux_loss_coef=0.5),
                         train_dataset=_data(4), processing_class=tiny_tokenizer())
    trainer.train()
    log = logged(trainer)[0]
    assert log["aux_loss"] > 0 and math.isfinite(log["loss"])
