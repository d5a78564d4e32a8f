"""The API surface that scripts written for the reference library touch (issue 10 §2): reward module paths and the
`--reward_funcs get_soft_overlong_punishment` factory, the collators' signatures, the `trl.trainer.utils` helpers
(each checked against a naive implementation on small tensors), the row order of `unpair_preference_dataset`, and
KTO's KL completions always answering another prompt."""

import dataclasses
import importlib
import random

import pytest
import torch
from datasets import Dataset

from trl.data.collators import (
    DataCollatorForLanguageModeling,
    DataCollatorForPreference,
    DataCollatorForUnpairedPreference,
)
from trl.data.unpaired import add_kl_completions, kl_pairing
from trl.data_utils import unpair_preference_dataset
from trl.trainer import utils

# ---------------------------------------------------------------- 1. reward module paths and the CLI factory


@pytest.mark.parametrize(
    "module, names",
    [
        ("trl.rewards.accuracy_rewards", ["accuracy_reward", "reasoning_accuracy_reward", "get_cosine_scaled_reward"]),
        ("trl.rewards.format_rewards", ["think_format_reward"]),
        ("trl.rewards.other_rewards", ["get_soft_overlong_punishment", "get_repetition_penalty_reward"]),
    ],
)
def test_reference_reward_module_paths_reexport_our_functions(module, names):
    import trl.rewards

    mod = importlib.import_module(module)
    for name in names:
        assert getattr(mod, name) is getattr(trl.rewards, name)


def test_cli_accepts_the_soft_overlong_factory_with_the_reference_parameters():
    from trl.scripts.utils import resolve_reward_funcs  # the resolver `trl grpo`/`trl rloo` use

    overlong, think = resolve_reward_funcs(["get_soft_overlong_punishment", "think_format_reward"])
    assert (overlong.max_completion_len, overlong.soft_punish_cache) == (1280, 256)
    assert overlong.__name__ == "soft_overlong_punishment_reward"
    assert overlong(completion_ids=[[0] * 1024, [0] * 1152, [0] * 1281]) == [0.0, -0.5, -1.0]
    assert think.__name__ == "think_format_reward"


def test_trainers_still_reject_factory_names():
    from trl.rewards._resolve import resolve_reward_func

    with pytest.raises(ValueError, match="is a factory"):
        resolve_reward_func("get_soft_overlong_punishment")


# ---------------------------------------------------------------- 2. collator signatures


def test_language_modeling_collator_fields_in_the_reference_order():
    fields = [f.name for f in dataclasses.fields(DataCollatorForLanguageModeling)]
    assert fields == ["pad_token_id", "completion_only_loss", "padding_free", "return_position_ids",
                      "pad_to_multiple_of", "return_tensors", "return_token_counts"]  # ours comes last
    rows = [{"input_ids": [1, 2, 3]}, {"input_ids": [4]}]
    positional = DataCollatorForLanguageModeling(0, True, False, False, 4)(rows)  # the reference's positions
    assert "position_ids" not in positional and positional["input_ids"].shape == (2, 4)
    assert DataCollatorForLanguageModeling(0)(rows, return_tensors="pt")["position_ids"].tolist() == [
        [0, 1, 2], [0, 0, 1]]  # padding continues as a fresh sequence


def test_return_position_ids_false_is_refused_where_positions_separate_documents():
    with pytest.raises(ValueError, match="padding_free=True, return_position_ids=False"):
        DataCollatorForLanguageModeling(0, padding_free=True, return_position_ids=False)
    packed = [{"input_ids": [1, 2, 3], "seq_lengths": [2, 1]}]
    with pytest.raises(ValueError, match="packed rows"):
        DataCollatorForLanguageModeling(0, return_position_ids=False)(packed)


@pytest.mark.parametrize("collator", [DataCollatorForPreference, DataCollatorForUnpairedPreference])
def test_preference_collators_take_return_tensors(collator):
    assert collator(pad_token_id=0, return_tensors="pt").return_tensors == "pt"
    with pytest.raises(ValueError, match="Only return_tensors='pt'"):
        collator(pad_token_id=0, return_tensors="np")
    row = {"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3], "completion_ids": [2], "kl_completion_ids": [3],
           "label": True}
    with pytest.raises(ValueError, match="Only return_tensors='pt'"):
        collator(pad_token_id=0)([row], return_tensors="np")


def test_reward_preference_collator_without_prompt_ids():
    rows = [{"chosen_ids": [1, 2, 3], "rejected_ids": [4], "margin": 0.5},
            {"chosen_ids": [5], "rejected_ids": [6, 7]}]
    rows[1]["margin"] = 1.0
    batch = DataCollatorForPreference(pad_token_id=0, pad_to_multiple_of=4)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [5, 0, 0, 0], [4, 0, 0, 0], [6, 7, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert batch["completion_mask"].tolist() == batch["attention_mask"].tolist()
    assert batch["margin"].tolist() == [0.5, 1.0]


# ---------------------------------------------------------------- 3. trl.trainer.utils helpers vs naive versions


def _logits(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_selective_log_softmax(dtype):
    logits = _logits(2, 3, 11, dtype=dtype) * 4
    index = torch.randint(0, 11, (2, 3), generator=torch.Generator().manual_seed(1))
    naive = torch.log_softmax(logits.double(), -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    out = utils.selective_log_softmax(logits, index)
    assert out.dtype == dtype and out.shape == (2, 3)
    if dtype == torch.bfloat16:  # computed in float32, rounded once to bfloat16
        torch.testing.assert_close(out, naive.to(dtype), rtol=2**-7, atol=0)  # one bfloat16 step
    else:
        torch.testing.assert_close(out.double(), naive, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("chunk_size", [1, 2, 128])
def test_entropy_from_logits(chunk_size):
    logits = _logits(3, 5, 7, dtype=torch.float64)
    p = torch.softmax(logits, -1)
    naive = -(p * torch.log(p)).sum(-1)
    torch.testing.assert_close(utils.entropy_from_logits(logits, chunk_size=chunk_size), naive, rtol=0, atol=1e-12)
    torch.testing.assert_close(utils.entropy_from_logits(torch.zeros(4, 8))[0], torch.tensor(8.0).log())


def test_pad():
    a, b = torch.tensor([[1, 2], [3, 4]]), torch.tensor([[5, 6, 7]])
    assert utils.pad([a, b]).tolist() == [[[1, 2, 0], [3, 4, 0]], [[5, 6, 7], [0, 0, 0]]]
    assert utils.pad([a, b], padding_value=9, padding_side="left").tolist() == [
        [[1, 2, 9], [3, 4, 9]], [[9, 9, 9], [5, 6, 7]]]
    out = utils.pad([torch.tensor([1, 2, 3]), torch.tensor([4])], pad_to_multiple_of=4)
    assert out.tolist() == [[1, 2, 3, 0], [4, 0, 0, 0]] and out.dtype == torch.long


def _naive_flush_left(mask, *tensors):
    rows = []
    for r in range(mask.shape[0]):
        nz = mask[r].nonzero()
        start = int(nz[0]) if len(nz) else 0
        rows.append(start)
    rolled = [torch.stack([t[r].roll(-rows[r], 0) for r in range(t.shape[0])]) for t in (mask, *tensors)]
    width = max((int(m.nonzero()[-1]) + 1 for m in rolled[0] if m.any()), default=0)
    out = [t[:, :width] for t in rolled]
    return out[0] if not tensors else tuple(out)


def test_flush_left_and_right():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0]])
    values = torch.arange(18).reshape(3, 6)
    new_mask, new_values = utils.flush_left(mask, values)
    ref_mask, ref_values = _naive_flush_left(mask, values)
    assert new_mask.tolist() == ref_mask.tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0]]
    assert new_values.tolist() == ref_values.tolist()
    assert new_values[new_mask.bool()].tolist() == values[mask.bool()].tolist()
    assert utils.flush_left(mask).tolist() == ref_mask.tolist()
    right_mask, right_values = utils.flush_right(mask, values)
    assert right_mask.tolist() == [[1, 1, 1], [0, 1, 1], [0, 0, 1]]
    assert right_values[right_mask.bool()].tolist() == values[mask.bool()].tolist()


def test_nan_statistics():
    x = torch.tensor([3.0, float("nan"), -1.0, 2.0])
    finite = x[~x.isnan()]
    assert utils.nanmin(x) == finite.min() and utils.nanmax(x) == finite.max()
    mean = finite.mean()
    naive_std = ((finite - mean) ** 2).sum().div(len(finite) - 1).sqrt()
    torch.testing.assert_close(utils.nanstd(x), naive_std)
    all_nan = torch.full((3,), float("nan"))
    assert utils.nanmin(all_nan).isnan() and utils.nanmax(all_nan).isnan() and utils.nanstd(all_nan).isnan()


def test_split_tensor_dict():
    data = {"x": torch.arange(6).reshape(6, 1), "y": list("abcdef"), "scalar": torch.tensor(3.0), "none": None}
    chunks = utils.split_tensor_dict(data, 3)
    assert [c["x"].flatten().tolist() for c in chunks] == [[0, 1], [2, 3], [4, 5]]
    assert [c["y"] for c in chunks] == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert all(c["scalar"] is data["scalar"] and c["none"] is None for c in chunks)


def test_shuffle_sequence_dict_keeps_rows_aligned():
    torch.manual_seed(0)
    data = {"x": torch.arange(8), "y": [f"r{i}" for i in range(8)], "scalar": torch.tensor(1.0), "none": None}
    out = utils.shuffle_sequence_dict(data)
    assert sorted(out["x"].tolist()) == list(range(8)) and out["x"].tolist() != list(range(8))
    assert out["y"] == [f"r{i}" for i in out["x"].tolist()]
    assert out["scalar"] is data["scalar"] and out["none"] is None


def test_repeat_sampler_reference_constructor():
    from trl.trainer.online import RepeatSampler as OnlineRepeatSampler

    sampler = utils.RepeatSampler(["a", "b", "c", "d", "e"], mini_repeat_count=2, batch_size=2, repeat_count=2,
                                  shuffle=False)
    assert isinstance(sampler, OnlineRepeatSampler)
    naive = [i for chunk in ([0, 1], [2, 3]) for _ in range(2) for i in chunk for _ in range(2)]
    assert list(sampler) == naive and len(sampler) == len(naive)  # the partial last chunk [4] is dropped
    seeded = [list(utils.RepeatSampler(range(6), 3, batch_size=3, seed=7)) for _ in range(2)]
    assert seeded[0] == seeded[1] and sorted(set(seeded[0])) == list(range(6))


def test_print_prompt_completions_sample(capsys):
    utils.print_prompt_completions_sample(["p0", "p1", "p2"], ["c0", "c1", "c2"], {"acc": [1.0, 0.0, 0.5]},
                                          [0.1, -0.2, 0.3], step=42, num_samples=2)
    out = capsys.readouterr().out
    assert "42" in out and "acc" in out and sum(f"c{i}" in out for i in range(3)) == 2


def test_generate_model_card(tmp_path):
    card = utils.generate_model_card(
        base_model="org/base", model_name="tiny", hub_model_id="me/tiny", dataset_name="org/data",
        tags=["trl", "dpo"], wandb_url="https://wandb.ai/run", trainer_name="DPO",
        trainer_citation="@article{dpo, title={DPO}}", paper_title="Direct Preference Optimization",
        paper_id="2305.18290",
    )
    assert card.data.base_model == "org/base" and card.data.tags == ["trl", "dpo"]
    assert card.data.datasets == "org/data"
    text = str(card)
    for fragment in ("me/tiny", "https://wandb.ai/run", "huggingface.co/papers/2305.18290", "@article{dpo"):
        assert fragment in text
    card.save(tmp_path / "README.md")
    assert (tmp_path / "README.md").read_text().startswith("---")


# ---------------------------------------------------------------- 4. unpairing order and KTO's KL pairing


def test_unpair_lists_a_batchs_chosen_rows_then_its_rejected_rows():
    paired = Dataset.from_dict({"prompt": ["p0", "p1", "p2"], "chosen": ["c0", "c1", "c2"],
                                "rejected": ["r0", "r1", "r2"], "id": [0, 1, 2]})
    out = unpair_preference_dataset(paired).to_dict()
    assert out == {"prompt": ["p0", "p1", "p2"] * 2, "completion": ["c0", "c1", "c2", "r0", "r1", "r2"],
                   "label": [True] * 3 + [False] * 3, "id": [0, 1, 2] * 2}
    rows = unpair_preference_dataset(paired.to_iterable_dataset())  # streamed: the same order
    assert [r["completion"] for r in rows] == ["c0", "c1", "c2", "r0", "r1", "r2"]


def _assert_kl_from_other_prompts(prompts, partner):
    assert sorted(partner) == list(range(len(prompts)))  # each completion used once
    assert all(prompts[i] != prompts[j] for i, j in enumerate(partner))


@pytest.mark.parametrize("seed", range(5))
def test_kl_pairing_never_pairs_a_row_with_its_own_prompt(seed):
    rng = random.Random(seed)
    prompts = [f"p{k}" for k in range(7) for _ in range(rng.randint(1, 3))]  # up to 3 rows per prompt
    rng.shuffle(prompts)  # whatever the row order
    _assert_kl_from_other_prompts(prompts, kl_pairing(prompts))


def test_kl_pairing_distinct_prompts_is_the_next_row_and_dominant_prompt_borrows():
    assert kl_pairing(["a", "b", "c"]) == [1, 2, 0]
    partner = kl_pairing(["a", "a", "a", "b", "c"])  # "a" holds more than half: no one-to-one pairing exists
    assert all(["a", "a", "a", "b", "c"][j] != p for p, j in zip(["a", "a", "a", "b", "c"], partner))
    with pytest.warns(UserWarning, match="share one prompt"):
        assert kl_pairing([[1], [1]]) == [1, 0]


def test_kto_kl_completions_of_unpaired_preference_data_answer_another_prompt():
    from trl.data.preference import PreferenceDataOptions
    from trl.data.tiny import tiny_task_dataset
    from trl.data.unpaired import prepare_unpaired_dataset
    from trl.models.tiny import tiny_tokenizer

    data, _ = prepare_unpaired_dataset(tiny_task_dataset("preference", num_rows=4), tiny_tokenizer(),
                                       PreferenceDataOptions(max_length=64), "KTOTrainer")
    prompts, completions, kl = data["prompt_ids"], data["completion_ids"], data["kl_completion_ids"]
    assert data["label"] == [True] * 4 + [False] * 4
    for i in range(len(data)):
        sources = [j for j, c in enumerate(completions) if c == kl[i]]
        assert sources and all(prompts[j] != prompts[i] for j in sources)
    # the same holds after any reordering of the rows, and for streamed data
    shuffled = data.remove_columns("kl_completion_ids").shuffle(seed=0)
    again = add_kl_completions(shuffled)
    streamed = list(add_kl_completions(shuffled.to_iterable_dataset()))
    for rows in (list(again), streamed):
        by_completion = {tuple(r["completion_ids"]): r["prompt_ids"] for r in rows}
        assert all(by_completion[tuple(r["kl_completion_ids"])] != r["prompt_ids"] for r in rows)


# ---------------------------------------------------------------- 5. callbacks, trl.models helpers, trl.import_utils


def test_callbacks_models_helpers_and_import_utils_are_public():
    import trl
    import trl.models
    import trl.trainer
    from trl.trainer import callbacks

    for name in ("BEMACallback", "LogCompletionsCallback", "RichProgressCallback", "SyncRefModelCallback",
                 "WeaveCallback"):
        assert getattr(trl, name) is getattr(trl.trainer, name) is getattr(callbacks, name)
    for name in ("create_reference_model", "enable_selective_activation_checkpointing",
                 "get_act_offloading_ctx_manager", "prepare_deepspeed", "prepare_fsdp", "unwrap_model_for_generation"):
        assert callable(getattr(trl.models, name)), name
    assert trl.create_reference_model is trl.models.create_reference_model
    assert issubclass(trl.import_utils.TRLExperimentalWarning, UserWarning)
    for package in ("aiohttp", "deepspeed", "harbor", "jmespath", "liger_kernel", "math_verify", "mergekit",
                    "openreward", "requests", "unsloth", "vllm", "weave"):
        assert callable(getattr(trl.import_utils, f"is_{package}_available")), package
    assert callable(trl.import_utils.suppress_experimental_warning)
