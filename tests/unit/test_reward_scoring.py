"""`RewardScorer`: calling sync/async reward functions and reward models, validating what they return."""

import asyncio
import functools
import math
import time
import warnings

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from trl.models.tiny import tiny_config, tiny_model, tiny_tokenizer
from trl.rewards.scoring import RewardScorer, RewardScores

TOL = {"rtol": 1e-5, "atol": 1e-5}

PROMPTS = ["The sky is", "Two plus two is", "Hello"]
COMPLETIONS = [" blue.", " four, obviously.", " world"]
COMPLETION_IDS = [[1, 2], [3, 4, 5], [6]]

CHAT_PROMPTS = [[{"role": "user", "content": "hi"}], [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "2+2?"}]]
CHAT_COMPLETIONS = [[{"role": "assistant", "content": "yo"}], [{"role": "assistant", "content": "four"}]]


def length_reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


def score(scorer, prompts=PROMPTS, completions=COMPLETIONS, completion_ids=COMPLETION_IDS, columns=None, **kwargs):
    return scorer.score(prompts, completions, completion_ids, columns or {}, **kwargs)


def seq_clf_model(seed=0, **overrides):
    config = tiny_config("qwen3", num_hidden_layers=2, num_labels=1, **overrides)  # pad_token_id 3 unless overridden
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForSequenceClassification.from_config(config)


# Standard rows are scored as RewardTrainer tokenises them: prompt + completion + eos.
TEXTS = [p + c + "<|im_end|>" for p, c in zip(PROMPTS, COMPLETIONS)]


@torch.no_grad()
def manual_scores(model, texts, add_special_tokens=True):
    """One unpadded forward per text: the reward is the score head on the last token."""
    tokenizer = tiny_tokenizer()
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=add_special_tokens, return_tensors="pt")["input_ids"]
        out.append(model(input_ids=ids).logits[0, 0].item())
    return torch.tensor(out)


def record_inputs(model):
    """Capture the `input_ids`/`attention_mask` of every forward of `model`."""
    seen = []

    def hook(module, args, kwargs):
        input_ids = kwargs["input_ids"]
        seen.append((input_ids.clone(), kwargs.get("attention_mask", torch.ones_like(input_ids)).clone()))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def decoded_rows(seen):
    tokenizer = tiny_tokenizer()
    input_ids, attention_mask = seen[0]  # the scorer's batch (later forwards are the manual check's)
    return [tokenizer.decode(ids[mask.bool()], skip_special_tokens=False) for ids, mask in zip(input_ids, attention_mask)]


# ----------------------------------------------------------------------------------------------------------------------
# Callables


def test_sync_callable():
    scores = score(RewardScorer(length_reward))
    assert isinstance(scores, RewardScores)
    assert scores.rewards.dtype == torch.float32 and scores.rewards.shape == (3, 1)
    torch.testing.assert_close(scores.rewards[:, 0], torch.tensor([6.0, 17.0, 6.0]), **TOL)
    assert scores.extra_columns == {} and scores.metrics == {}


def test_callables_receive_every_argument_columns_and_trainer_state():
    received = {}

    def spy(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, **columns):
        received.update(prompts=prompts, completions=completions, completion_ids=completion_ids,
                        trainer_state=trainer_state, columns=columns)
        assert callable(log_extra) and callable(log_metric)
        return [0.0] * len(prompts)

    state = object()
    columns = {"answer": ["blue", "4", "world"], "difficulty": [1, 2, 3]}
    score(RewardScorer(spy), columns=columns, trainer_state=state)
    assert received["prompts"] == PROMPTS and received["completions"] == COMPLETIONS
    assert received["completion_ids"] == COMPLETION_IDS
    assert received["trainer_state"] is state
    assert received["columns"] == columns


def test_sync_functions_run_in_order_in_calling_thread():
    import threading

    calls = []

    def make(tag):
        def f(prompts, **kwargs):
            calls.append((tag, threading.current_thread()))
            return [0.0] * len(prompts)

        return f

    score(RewardScorer([make("a"), make("b"), make("c")]))
    assert [tag for tag, _ in calls] == ["a", "b", "c"]
    assert all(thread is threading.current_thread() for _, thread in calls)


def test_accepted_return_types():
    returns = [
        [1, 2.5, True],
        (1.0, 2.0, 3.0),
        torch.tensor([1.0, 2.0, 3.0], requires_grad=True),
        np.array([1.0, 2.0, 3.0], dtype=np.float32),
        [np.float32(1.0), np.int64(2), np.bool_(True)],
        [torch.tensor(1.0), torch.tensor(2), None],
    ]
    funcs = [functools.partial(lambda value, **kw: value, value) for value in returns]
    rewards = score(RewardScorer(funcs)).rewards
    expected = torch.tensor([[1, 2.5, 1], [1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 1], [1, 2, math.nan]]).T
    torch.testing.assert_close(rewards, expected.float(), equal_nan=True, **TOL)


def test_none_and_nan_become_nan():
    def sometimes(prompts, **kwargs):
        return [1.0, None, float("nan")]

    with pytest.warns(UserWarning, match=r"'sometimes' \(reward_funcs\[0\]\) returned NaN for 1 of 3 completions"):
        rewards = score(RewardScorer([sometimes, length_reward])).rewards
    assert rewards[0, 0] == 1.0
    assert torch.isnan(rewards[1:, 0]).all()
    assert not torch.isnan(rewards[:, 1]).any()


def test_warns_once_when_every_function_returned_none():
    def first_missing(prompts, **kwargs):
        return [None, 1.0, None]

    def last_missing(prompts, **kwargs):
        return [None, None, 2.0]

    with pytest.warns(UserWarning, match=r"1 of 3 completions got no reward") as record:
        score(RewardScorer([first_missing, last_missing]))
    assert len([w for w in record if "no reward" in str(w.message)]) == 1

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        score(RewardScorer([first_missing, length_reward]))  # every completion has some reward: no warning


def test_log_extra_and_log_metric():
    def logging_reward(prompts, log_extra, log_metric, **kwargs):
        log_extra("first", ["x"] * len(prompts))
        log_extra("first", ["a", "b", "c"])  # replaces
        log_metric("accuracy", 0.5)
        log_metric("accuracy", np.float32(1.0))
        return [0.0] * len(prompts)

    async def async_logging_reward(prompts, log_extra, log_metric, **kwargs):
        log_extra("second", (1, 2, 3))
        log_metric("latency", 2)
        return [0.0] * len(prompts)

    scores = score(RewardScorer([logging_reward, async_logging_reward]))
    assert scores.extra_columns == {"first": ["a", "b", "c"], "second": [1, 2, 3]}
    assert scores.metrics == {"accuracy": [0.5, 1.0], "latency": [2.0]}
    assert all(type(v) is float for values in scores.metrics.values() for v in values)
    # Nothing leaks into the next call.
    assert score(RewardScorer(length_reward)).metrics == {}


def test_log_extra_wrong_length_and_log_metric_not_a_number():
    def bad_extra(prompts, log_extra, **kwargs):
        log_extra("col", [1, 2])
        return [0.0] * len(prompts)

    def bad_metric(prompts, log_metric, **kwargs):
        log_metric("m", "high")
        return [0.0] * len(prompts)

    with pytest.raises(RuntimeError, match="'bad_extra'") as info:
        score(RewardScorer(bad_extra))
    assert isinstance(info.value.__cause__, ValueError)
    assert "got 2 values for 3 completions" in str(info.value.__cause__)
    with pytest.raises(RuntimeError, match="'bad_metric'") as info:
        score(RewardScorer(bad_metric))
    assert isinstance(info.value.__cause__, TypeError)


def test_weights():
    assert RewardScorer([length_reward, length_reward]).weights.tolist() == [1.0, 1.0]
    weights = RewardScorer([length_reward, length_reward], reward_weights=[0.5, 2]).weights
    assert weights.dtype == torch.float32 and weights.tolist() == [0.5, 2.0]
    assert RewardScorer(length_reward, reward_weights=torch.tensor([3.0])).weights.tolist() == [3.0]


# ----------------------------------------------------------------------------------------------------------------------
# Async


async def slow_async_a(prompts, **kwargs):
    await asyncio.sleep(0.3)
    return [1.0] * len(prompts)


async def slow_async_b(prompts, **kwargs):
    await asyncio.sleep(0.3)
    return [2.0] * len(prompts)


def test_async_callable():
    async def async_length(completions, **kwargs):
        await asyncio.sleep(0)
        return [float(len(c)) for c in completions]

    scorer = RewardScorer(async_length)
    torch.testing.assert_close(score(scorer).rewards[:, 0], torch.tensor([6.0, 17.0, 6.0]), **TOL)


def test_async_functions_run_concurrently():
    scorer = RewardScorer([slow_async_a, slow_async_b])
    score(RewardScorer(slow_async_a))  # the event loop thread exists already; this measures only the calls
    start = time.perf_counter()
    rewards = score(scorer).rewards
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"two 0.3 s async rewards took {elapsed:.2f} s: they did not overlap"
    assert rewards[:, 0].tolist() == [1.0] * 3 and rewards[:, 1].tolist() == [2.0] * 3


def test_async_work_overlaps_sync_work():
    def slow_sync(prompts, **kwargs):
        time.sleep(0.3)
        return [3.0] * len(prompts)

    scorer = RewardScorer([slow_sync, slow_async_a])  # the async one comes second but starts first
    score(scorer)
    start = time.perf_counter()
    rewards = score(scorer).rewards
    assert time.perf_counter() - start < 0.5
    assert rewards[0].tolist() == [3.0, 1.0]


def test_async_callable_object_and_partial_are_detected():
    class AsyncJudge:
        async def __call__(self, prompts, bonus=0.0, **kwargs):
            await asyncio.sleep(0)
            return [1.0 + bonus] * len(prompts)

    async def scaled(prompts, scale, **kwargs):
        return [scale] * len(prompts)

    scorer = RewardScorer([AsyncJudge(), functools.partial(scaled, scale=4.0), length_reward])
    assert scorer._is_async == [True, True, False]
    assert score(scorer).rewards[0].tolist() == [1.0, 4.0, 6.0]


def test_error_in_sync_function_cancels_running_async_ones():
    finished = []

    async def slow(prompts, **kwargs):
        await asyncio.sleep(0.2)
        finished.append(True)
        return [0.0] * len(prompts)

    def broken(prompts, **kwargs):
        raise KeyError("answer")

    with pytest.raises(RuntimeError, match="'broken'"):
        score(RewardScorer([slow, broken]))
    time.sleep(0.3)
    assert finished == []


# ----------------------------------------------------------------------------------------------------------------------
# Names


def test_names():
    class Judge:
        __name__ = "llm_judge"

        def __call__(self, prompts, **kwargs):
            return [0.0] * len(prompts)

    class Unnamed:
        def __call__(self, prompts, **kwargs):
            return [0.0] * len(prompts)

    def base(prompts, scale=1.0, **kwargs):
        return [scale] * len(prompts)

    model = seq_clf_model()
    funcs = [length_reward, functools.partial(functools.partial(base, scale=2.0)), Judge(), Unnamed(), model]
    scorer = RewardScorer(funcs, reward_processing_classes=tiny_tokenizer())
    assert scorer.names == ["length_reward", "base", "llm_judge", "Unnamed", "Qwen3ForSequenceClassification"]


def test_duplicate_names_get_suffixes():
    def f_1(prompts, **kwargs):
        return [0.0] * len(prompts)

    scorer = RewardScorer([length_reward, length_reward, f_1, functools.partial(f_1), length_reward])
    # The first keeps its name; later ones count up, skipping names already taken.
    assert scorer.names == ["length_reward", "length_reward_1", "f_1", "f_1_1", "length_reward_2"]


# ----------------------------------------------------------------------------------------------------------------------
# Reward models


def test_mix_of_sync_async_and_model():
    model = seq_clf_model()
    model.train()  # the scorer puts it in eval mode

    async def async_const(prompts, **kwargs):
        return [-1.0] * len(prompts)

    scorer = RewardScorer([length_reward, async_const, model], reward_weights=[1.0, 0.5, 2.0],
                          reward_processing_classes=[None, None, tiny_tokenizer()])
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert scorer.names == ["length_reward", "async_const", "Qwen3ForSequenceClassification"]
    rewards = score(scorer).rewards
    torch.testing.assert_close(rewards[:, 0], torch.tensor([6.0, 17.0, 6.0]), **TOL)
    assert rewards[:, 1].tolist() == [-1.0] * 3
    expected = manual_scores(model, TEXTS)
    torch.testing.assert_close(rewards[:, 2], expected, **TOL)
    assert rewards[:, 2].std() > 0  # a random head still tells the texts apart


def test_standard_text_is_prompt_plus_completion_right_padded():
    model = seq_clf_model()
    seen = record_inputs(model)
    score(RewardScorer(model, reward_processing_classes=tiny_tokenizer()))
    assert decoded_rows(seen) == TEXTS
    input_ids, attention_mask = seen[0]
    lengths = attention_mask.sum(1)
    assert attention_mask.shape[0] == 3 and len(seen) == 1  # one batch
    for row, length in zip(attention_mask, lengths):  # right padding: ones, then zeros
        assert row[:length].all() and not row[length:].any()
    assert (input_ids[attention_mask == 0] == model.config.pad_token_id).all()


def test_conversational_data_uses_the_chat_template():
    model = seq_clf_model()
    seen = record_inputs(model)
    rewards = score(RewardScorer(model, reward_processing_classes=tiny_tokenizer()), CHAT_PROMPTS, CHAT_COMPLETIONS,
                    [[1], [2]]).rewards
    expected_texts = [
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n",
        (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
            "<|im_start|>assistant\nfour<|im_end|>\n"
        ),
    ]
    assert decoded_rows(seen) == expected_texts
    torch.testing.assert_close(rewards[:, 0], manual_scores(model, expected_texts, add_special_tokens=False), **TOL)


def test_model_pad_id_differing_from_tokenizer_pad_is_respected():
    # The tokenizer pads with <|pad|> (3) but the model looks for eos (2): padded positions must carry the model's id,
    # or the model would read its score at the last padding position.
    model = seq_clf_model(pad_token_id=2)
    rewards = score(RewardScorer(model, reward_processing_classes=tiny_tokenizer())).rewards
    expected = manual_scores(model, TEXTS)
    torch.testing.assert_close(rewards[:, 0], expected, **TOL)


def test_missing_pad_token_falls_back_to_eos():
    model = seq_clf_model()
    model.config.pad_token_id = None
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    scorer = RewardScorer(model, reward_processing_classes=tokenizer)
    assert tokenizer.pad_token == tokenizer.eos_token
    assert model.config.pad_token_id == tokenizer.eos_token_id
    assert score(scorer).rewards.shape == (3, 1)


@pytest.fixture
def saved_reward_model(tmp_path):
    model = seq_clf_model(seed=1)
    path = tmp_path / "tiny-rm"
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return model, path


def test_reward_model_from_a_local_path(saved_reward_model):
    model, path = saved_reward_model
    scorer = RewardScorer(str(path), model_init_kwargs={"dtype": "float32"})
    assert scorer.names == ["tiny-rm"]
    loaded = scorer._funcs[0].model
    assert loaded.dtype == torch.float32 and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    rewards = score(scorer).rewards
    torch.testing.assert_close(rewards[:, 0], manual_scores(model, TEXTS),
                               **TOL)


def test_model_init_kwargs_are_used(saved_reward_model):
    _, path = saved_reward_model
    scorer = RewardScorer([length_reward, str(path)], model_init_kwargs={"dtype": "bfloat16"})
    assert scorer._funcs[1].model.dtype == torch.bfloat16
    assert score(scorer).rewards.dtype == torch.float32


def test_model_object_tokenizer_is_loaded_from_name_or_path(saved_reward_model):
    _, path = saved_reward_model
    model = AutoModelForSequenceClassification.from_pretrained(path)
    scorer = RewardScorer([length_reward, model])  # no reward_processing_classes
    assert scorer.names == ["length_reward", "tiny-rm"]
    assert scorer._funcs[1].tokenizer.eos_token == "<|im_end|>"
    assert score(scorer).rewards.shape == (3, 2)


def test_single_processing_class_serves_the_one_model():
    tokenizer = tiny_tokenizer()
    scorer = RewardScorer([length_reward, seq_clf_model(0)], reward_processing_classes=tokenizer)
    assert scorer._funcs[1].tokenizer is tokenizer


def test_single_processing_class_for_two_models_raises():
    """The counts differ: one tokenizer is not silently applied to two reward models (issue 10)."""
    with pytest.raises(ValueError, match=r"single tokenizer but `reward_funcs` has 2 reward models \(positions \[0, 2\]\)"):
        RewardScorer([seq_clf_model(0), length_reward, seq_clf_model(1)], reward_processing_classes=tiny_tokenizer())
    tokenizer = tiny_tokenizer()
    scorer = RewardScorer([seq_clf_model(0), length_reward, seq_clf_model(1)],
                          reward_processing_classes=[tokenizer, None, tokenizer])
    assert scorer.names == ["Qwen3ForSequenceClassification", "length_reward", "Qwen3ForSequenceClassification_1"]


def test_processing_class_for_a_callable_is_ignored_with_a_warning():
    with pytest.warns(UserWarning, match=r"reward_processing_classes\[0\] is ignored"):
        RewardScorer([length_reward], reward_processing_classes=[tiny_tokenizer()])


def test_to_moves_reward_models():
    scorer = RewardScorer([seq_clf_model(), length_reward], reward_processing_classes=tiny_tokenizer(), device="cpu")
    assert scorer.device == torch.device("cpu")
    scorer.to("cpu")
    assert next(scorer._funcs[0].model.parameters()).device == torch.device("cpu")


# ----------------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("reward_funcs", [None, []])
def test_no_reward_function(reward_funcs):
    with pytest.raises(ValueError, match="GRPOTrainer needs at least one reward function.*environments"):
        RewardScorer(reward_funcs)
    with pytest.raises(ValueError, match="RLOOTrainer needs at least one reward function"):
        RewardScorer(reward_funcs, trainer_name="RLOOTrainer")


def test_bad_reward_funcs_element():
    with pytest.raises(TypeError, match=r"reward_funcs\[1\] is a int"):
        RewardScorer([length_reward, 3])
    with pytest.raises(TypeError, match=r"reward_funcs\[0\] is a type.*instance, not the class"):
        RewardScorer([RewardScorer])
    with pytest.raises(TypeError, match=r"reward_funcs\[0\] is a Linear"):
        RewardScorer(torch.nn.Linear(2, 1))
    with pytest.raises(TypeError, match=r"reward_funcs\[0\] is a generative model \(Qwen3ForCausalLM\)"):
        RewardScorer(tiny_model("qwen3", num_hidden_layers=1), reward_processing_classes=tiny_tokenizer())


def test_bad_lengths_of_weights_and_processing_classes():
    with pytest.raises(ValueError, match="`reward_weights` has 3 values but there are 2 reward functions"):
        RewardScorer([length_reward, length_reward], reward_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="`reward_weights` must be finite"):
        RewardScorer(length_reward, reward_weights=[math.inf])
    with pytest.raises(ValueError, match="`reward_processing_classes` has 1 entries but `reward_funcs` has 2"):
        RewardScorer([length_reward, length_reward], reward_processing_classes=[None])


def test_raising_function_is_named():
    def broken(prompts, **kwargs):
        raise ZeroDivisionError("division by zero")

    async def broken_async(prompts, **kwargs):
        raise KeyError("answer")

    with pytest.raises(RuntimeError, match=r"Reward function 'broken' \(reward_funcs\[1\]\) raised ZeroDivisionError"
                       ) as info:
        score(RewardScorer([length_reward, broken]))
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    with pytest.raises(RuntimeError, match=r"'broken_async' \(reward_funcs\[0\]\) raised KeyError") as info:
        score(RewardScorer(broken_async))
    assert isinstance(info.value.__cause__, KeyError)


def test_wrong_signature_is_a_named_runtime_error():
    def no_kwargs(completions):
        return [0.0] * len(completions)

    with pytest.raises(RuntimeError, match="'no_kwargs'.*TypeError"):
        score(RewardScorer(no_kwargs))


def test_wrong_length():
    def short(prompts, **kwargs):
        return [1.0, 2.0]

    async def long(prompts, **kwargs):
        return [1.0] * 8

    with pytest.raises(ValueError, match=r"'short' \(reward_funcs\[0\]\) returned 2 rewards for 3 completions"):
        score(RewardScorer(short))
    with pytest.raises(ValueError, match=r"'long' \(reward_funcs\[0\]\) returned 8 rewards for 3 completions"):
        score(RewardScorer(long))


@pytest.mark.parametrize(
    "value, error, message",
    [
        (1.0, TypeError, "returned a float; expected a list"),
        ({"a": 1.0}, TypeError, "returned a dict; expected a list"),
        (torch.ones(3, 1), TypeError, r"returned a Tensor of shape \(3, 1\)"),
        (np.ones((1, 3)), TypeError, r"returned a ndarray of shape \(1, 3\)"),
        ([1.0, "2", 3.0], TypeError, "returned a str .* for completion 1; each reward must be an int, float, bool or"),
        ([1.0, 2.0, [3.0]], TypeError, "returned a list .* for completion 2"),
        ([1.0, torch.ones(2), 3.0], TypeError, "returned a Tensor .* for completion 1"),
        ([1.0, float("inf"), 3.0], ValueError, "returned inf for completion 1; rewards must be finite"),
        (np.array([1.0, 2.0, -np.inf]), ValueError, "returned -inf for completion 2"),
    ],
)
def test_bad_return_values(value, error, message):
    def bad(prompts, **kwargs):
        return value

    with pytest.raises(error, match=r"Reward function 'bad' \(reward_funcs\[0\]\) " + message):
        score(RewardScorer(bad))


def test_bad_score_inputs():
    scorer = RewardScorer(length_reward)
    with pytest.raises(ValueError, match=r"one value per completion \(3 prompts\).*'completion_ids': 2"):
        score(scorer, completion_ids=[[1], [2]])
    with pytest.raises(ValueError, match=r"\"column 'answer'\": 1"):
        score(scorer, columns={"answer": ["x"]})
    with pytest.raises(ValueError, match=r"\['trainer_state'\] clash"):
        score(scorer, columns={"trainer_state": [1, 2, 3]})


def test_empty_batch():
    scores = RewardScorer([length_reward, length_reward]).score([], [], [], {})
    assert scores.rewards.shape == (0, 2)


# ----------------------------------------------------------------------------------------------------------------------
# NaN rewards


def test_nan_reward_is_named_with_its_rows():
    def flaky(prompts, **kwargs):
        return [float("nan"), 1.0, float("nan")]

    def partial_credit(prompts, **kwargs):
        return [None, 0.5, 0.5]

    with pytest.warns(UserWarning) as record:
        rewards = score(RewardScorer([partial_credit, flaky])).rewards
    messages = [str(w.message) for w in record]
    nan_messages = [m for m in messages if "returned NaN for" in m]
    assert len(nan_messages) == 1, messages
    assert "Reward function 'flaky' (reward_funcs[1]) returned NaN for 2 of 3 completions (rows [0, 2])" in nan_messages[0]
    assert "return None" in nan_messages[0]
    assert not any("partial_credit" in m for m in messages)  # None is "no reward", not a NaN
    assert torch.isnan(rewards[[0, 2], 1]).all() and rewards[1, 1] == 1.0
    # row 0 got no reward (None from one function, NaN from the other), and the message does not blame None alone
    assert any("1 of 3 completions got no reward: every reward function returned None (or NaN)" in m for m in messages)


def test_nan_rows_are_listed_up_to_five():
    def mostly_nan(prompts, **kwargs):
        return [float("nan")] * 7 + [1.0]

    with pytest.warns(UserWarning, match=r"returned NaN for 7 of 8 completions \(rows \[0, 1, 2, 3, 4, ...\]\)"):
        RewardScorer([mostly_nan]).score(["p"] * 8, ["c"] * 8, [[1]] * 8, {})


def test_nan_from_a_reward_model_is_named(monkeypatch):
    from trl.rewards import scoring as reward_scoring

    monkeypatch.setattr(reward_scoring, "_score_with_model", lambda model, prompts, completions, columns=None: [0.5, math.nan, 0.1])
    scorer = RewardScorer([seq_clf_model()], reward_processing_classes=tiny_tokenizer())
    with pytest.warns(UserWarning, match=r"'Qwen3ForSequenceClassification' \(reward_funcs\[0\]\) returned NaN for 1 of "
                                         r"3 completions \(rows \[1\]\)"):
        score(scorer)


def test_every_reward_nan_is_named_and_counted():
    # the scorer names each NaN and counts them; the online trainers stop on a batch with no usable reward and some
    # NaN (they see every process's rewards, so every process stops together)
    def all_nan(prompts, **kwargs):
        return [float("nan")] * len(prompts)

    def abstains(prompts, **kwargs):
        return [None] * len(prompts)

    def zero_weight(prompts, **kwargs):  # logged only: its weight is 0, so it is no usable reward
        return [1.0] * len(prompts)

    with pytest.warns(UserWarning, match=r"'all_nan' \(reward_funcs\[0\]\) returned NaN for 3 of 3 completions "
                                         r"\(rows \[0, 1, 2\]\)"):
        scores = score(RewardScorer([all_nan, abstains, zero_weight], reward_weights=[1.0, 1.0, 0.0]))
    assert scores.nan_count == 3
    with pytest.warns(UserWarning, match="3 of 3 completions got no reward"):  # None everywhere: "no reward", no NaN
        assert score(RewardScorer([abstains])).nan_count == 0


# ----------------------------------------------------------------------------------------------------------------------
# Reward functions given by name (as the CLI resolves them)


def test_builtin_reward_name_and_dotted_path_resolve_to_functions(tmp_path, monkeypatch):
    from trl.rewards import think_format_reward

    (tmp_path / "my_scoring_rewards.py").write_text(
        "def answer_len(completions, **kwargs):\n    return [float(len(c)) for c in completions]\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    scorer = RewardScorer(["think_format_reward", "trl.rewards.think_format_reward", "my_scoring_rewards.answer_len"])
    assert scorer._funcs[0] is think_format_reward and scorer._funcs[1] is think_format_reward
    assert scorer.names == ["think_format_reward", "think_format_reward_1", "answer_len"]
    torch.testing.assert_close(score(scorer).rewards[:, 2], torch.tensor([6.0, 17.0, 6.0]), **TOL)
    scorer = RewardScorer("think_format_reward", reward_processing_classes=[None])  # a single name, like a function
    assert scorer._funcs == [think_format_reward]


@pytest.mark.parametrize("name", ["think_fromat_reward", "gpt2", "./no/such/folder", "no_such_module.reward"])
def test_unknown_reward_name_is_an_error_listing_the_builtins(name, monkeypatch):
    from trl.models import loading

    def no_hub(*args, **kwargs):
        raise AssertionError("a name that is not a hub id must not be looked up on the hub")

    monkeypatch.setattr(loading, "create_reward_model_from_path", no_hub)
    with pytest.raises(ValueError) as info:
        RewardScorer(["think_format_reward", name])
    message = str(info.value)
    assert f"{name!r} (reward_funcs[1])" in message
    for builtin in ("accuracy_reward", "reasoning_accuracy_reward", "think_format_reward"):
        assert builtin in message
    assert "--reward_funcs" not in message


def test_factory_name_is_rejected_without_cli_wording():
    with pytest.raises(ValueError, match="factory .* Wrap it in a module function") as info:
        RewardScorer("get_soft_overlong_punishment")
    assert "--reward_funcs" not in str(info.value)


def test_hub_id_that_fails_to_load_lists_the_builtins(monkeypatch):
    from trl.models import loading

    def offline(model_id, **kwargs):
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {model_id}.")

    monkeypatch.setattr(loading, "create_reward_model_from_path", offline)
    with pytest.raises(OSError, match=r"'my-org/think_format' \(reward_funcs\[0\]\) could not be loaded as a reward model "
                                      r"\(OSError: We couldn't connect.*think_format_reward") as info:
        RewardScorer("my-org/think_format")
    assert isinstance(info.value.__cause__, OSError)
