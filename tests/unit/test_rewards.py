"""Tests for `trl.rewards`: hand-worked values, both completion formats, malformed input, pickling."""

import doctest
import math
import pickle
import subprocess
import sys
import threading

import pytest

from trl.rewards import accuracy as accuracy_module
from trl.rewards import (
    accuracy_reward,
    get_cosine_scaled_reward,
    get_repetition_penalty_reward,
    get_soft_overlong_punishment,
    reasoning_accuracy_reward,
    think_format_reward,
)
from trl.rewards import format as format_module
from trl.rewards import penalties as penalties_module


def _conv(text):
    return [{"role": "assistant", "content": text}]


# Extra keyword arguments the GRPO trainer passes to every reward function; each reward must ignore them.
TRAINER_KWARGS = {
    "prompts": ["p"],
    "trainer_state": object(),
    "log_metric": lambda name, value: None,
    "some_dataset_column": ["x"],
}


def _run_docstring_examples(func):
    """Run the `>>>` lines of a docstring written in the HF style (fenced with ```python ... ```)."""
    lines = [line for line in func.__doc__.splitlines() if line.strip() not in ("```", "```python")]
    test = doctest.DocTestParser().get_doctest("\n".join(lines), {}, func.__name__, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


# ---------------------------------------------------------------------------------------------------------------
# Import hygiene
# ---------------------------------------------------------------------------------------------------------------


def test_import_needs_only_stdlib():
    # A fresh interpreter, so modules imported by other tests do not hide a heavy import.
    code = (
        "import sys, trl.rewards, trl.rewards._resolve\n"
        "heavy = [m for m in ('math_verify', 'latex2sympy2_extended', 'sympy', 'transformers', 'datasets', 'numpy')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_math_verify_raises_clear_import_error_at_call_time(monkeypatch):
    # `None` in sys.modules makes `import math_verify` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "math_verify", None)
    for call in (
        lambda: accuracy_reward([_conv("1")], ["1"]),
        lambda: reasoning_accuracy_reward([_conv("</think>1")], ["1"]),
        lambda: get_cosine_scaled_reward(10)([_conv("1")], ["1"], [[1]]),
    ):
        with pytest.raises(ImportError, match=r'pip install "trl\[math-verify\]"'):
            call()


# ---------------------------------------------------------------------------------------------------------------
# think_format_reward (no optional dependency)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>\nreasoning\n</think>\nanswer", 1.0),
        ("<think></think>", 1.0),  # empty reasoning still has the format
        ("<think>multi\nline\nreasoning</think>answer\nwith </think> again", 1.0),  # only a second <think> is banned
        ("<think>reasoning without close", 0.0),
        ("answer first <think>reasoning</think>", 0.0),  # must start with <think>
        (" <think>reasoning</think>", 0.0),  # leading whitespace breaks the ^ anchor
        ("<think>a</think><think>b</think>", 0.0),  # two think blocks
        ("<think>a <think> b</think>", 0.0),  # nested open tag
        ("", 0.0),
    ],
)
def test_think_format_reward_values(text, expected):
    assert think_format_reward([_conv(text)]) == [expected]
    assert think_format_reward([text]) == [expected]


def test_think_format_reward_malformed_completions_score_zero():
    malformed = [None, 42, [], [{"role": "assistant"}], [{"role": "assistant", "content": None}], ["not a message"]]
    assert think_format_reward(malformed) == [0.0] * len(malformed)


def test_think_format_reward_reads_text_parts_and_first_message():
    parts = [
        {"role": "assistant", "content": [{"type": "text", "text": "<think>r</think>"}, {"type": "text", "text": "a"}]}
    ]
    assert think_format_reward([parts]) == [1.0]
    # Multi-message completion (tool call then final answer): the format is a property of the first message.
    multi = [_conv("<think>r</think>calling tool")[0], {"role": "tool", "content": "7"}, _conv("It is 7.")[0]]
    assert think_format_reward([multi]) == [1.0]


def test_think_format_reward_ignores_trainer_kwargs():
    assert think_format_reward(completions=[_conv("<think>a</think>b")], completion_ids=[[1]], **TRAINER_KWARGS) == [
        1.0
    ]


def test_think_format_reward_docstring_example():
    _run_docstring_examples(format_module.think_format_reward)


# ---------------------------------------------------------------------------------------------------------------
# get_soft_overlong_punishment (no optional dependency)
# ---------------------------------------------------------------------------------------------------------------


def test_soft_overlong_punishment_boundaries():
    # L_max = 10, C = 4: no penalty up to 6 tokens, then (6 - L) / 4 down to -1 at 10 tokens, -1 beyond.
    reward_func = get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=4)
    lengths = [0, 1, 5, 6, 7, 8, 9, 10, 11, 100]
    expected = [0.0, 0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]
    assert reward_func(completion_ids=[[7] * n for n in lengths]) == expected


def test_soft_overlong_punishment_without_cache_is_a_step():
    reward_func = get_soft_overlong_punishment(max_completion_len=5, soft_punish_cache=0)
    assert reward_func(completion_ids=[[1] * 4, [1] * 5, [1] * 6]) == [0.0, 0.0, -1.0]


def test_soft_overlong_punishment_cache_equal_to_max():
    # C = L_max: the ramp covers the whole range, -L / L_max.
    reward_func = get_soft_overlong_punishment(max_completion_len=4, soft_punish_cache=4)
    assert reward_func(completion_ids=[[], [1], [1] * 2, [1] * 4, [1] * 5]) == [0.0, -0.25, -0.5, -1.0, -1.0]


def test_soft_overlong_punishment_accepts_tensors_and_ignores_kwargs():
    torch = pytest.importorskip("torch")
    reward_func = get_soft_overlong_punishment(10, 4)
    assert reward_func(completion_ids=[torch.ones(8, dtype=torch.long)], completions=["x"], **TRAINER_KWARGS) == [-0.5]


def test_soft_overlong_punishment_malformed_ids_score_zero():
    reward_func = get_soft_overlong_punishment(10, 4)
    assert reward_func(completion_ids=[None, 12, "a long string of characters"]) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "max_len, cache, error, match",
    [
        (0, 0, ValueError, "max_completion_len"),
        (-3, 0, ValueError, "max_completion_len"),
        (10, -1, ValueError, "soft_punish_cache"),
        (10, 11, ValueError, "must not exceed"),
        (10.5, 2, TypeError, "max_completion_len"),
        (10, "4", TypeError, "soft_punish_cache"),
    ],
)
def test_soft_overlong_punishment_validates_arguments(max_len, cache, error, match):
    with pytest.raises(error, match=match):
        get_soft_overlong_punishment(max_len, cache)


def test_soft_overlong_punishment_name_and_pickle():
    reward_func = get_soft_overlong_punishment(10, 4)
    assert reward_func.__name__ == "soft_overlong_punishment_reward"
    restored = pickle.loads(pickle.dumps(reward_func))
    assert restored.__name__ == "soft_overlong_punishment_reward"
    assert restored(completion_ids=[[1] * 7]) == [-0.25]


def test_soft_overlong_punishment_docstring_example():
    _run_docstring_examples(penalties_module.get_soft_overlong_punishment)


# ---------------------------------------------------------------------------------------------------------------
# get_repetition_penalty_reward (no optional dependency)
# ---------------------------------------------------------------------------------------------------------------


def test_repetition_penalty_hand_counted_ngrams():
    reward_func = get_repetition_penalty_reward(ngram_size=3, max_penalty=-1.0)
    completion_ids = [
        [1, 2, 3, 4, 5],  # trigrams 123 234 345: 3 unique of 3 -> 0
        [1, 2, 3, 1, 2, 3],  # 123 231 312 123: 3 unique of 4 -> (1 - 3/4) * -1 = -0.25
        [7, 7, 7, 7, 7, 7],  # 777 x4: 1 unique of 4 -> -0.75
        [1, 2, 3],  # exactly n tokens: one trigram, unique -> 0
        [1, 2],  # shorter than n -> 0
        [],
    ]
    assert reward_func(completion_ids=completion_ids) == [0.0, -0.25, -0.75, 0.0, 0.0, 0.0]


def test_repetition_penalty_scales_with_max_penalty_and_ngram_size():
    # Bigrams of [1, 2, 1, 2, 1]: 12 21 12 21 -> 2 unique of 4 -> (1 - 1/2) * -2 = -1.0
    assert get_repetition_penalty_reward(ngram_size=2, max_penalty=-2.0)(completion_ids=[[1, 2, 1, 2, 1]]) == [-1.0]
    # Unigrams of [5, 5, 6]: 2 unique of 3 -> (1 - 2/3) * -0.6 = -0.2
    (value,) = get_repetition_penalty_reward(ngram_size=1, max_penalty=-0.6)(completion_ids=[[5, 5, 6]])
    assert value == pytest.approx(-0.2, rel=1e-12)
    # max_penalty = 0 turns the reward off; the result is +0.0, not -0.0.
    (zero,) = get_repetition_penalty_reward(max_penalty=0.0)(completion_ids=[[7] * 10])
    assert zero == 0.0 and math.copysign(1.0, zero) == 1.0


def test_repetition_penalty_no_repeats_is_positive_zero():
    (value,) = get_repetition_penalty_reward()(completion_ids=[[1, 2, 3, 4]])
    assert math.copysign(1.0, value) == 1.0


def test_repetition_penalty_tensors_malformed_and_kwargs():
    torch = pytest.importorskip("torch")
    reward_func = get_repetition_penalty_reward()
    ids = [torch.tensor([1, 2, 3, 1, 2, 3]), None, 5, [[1], [2], [3], [1]]]  # last: unhashable "tokens"
    assert reward_func(completion_ids=ids, completions=["x"] * 4, **TRAINER_KWARGS) == [-0.25, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"max_penalty": 0.5}, ValueError, "must be <= 0"),
        ({"ngram_size": 0}, ValueError, "ngram_size"),
        ({"ngram_size": 2.5}, TypeError, "ngram_size"),
        ({"max_penalty": "-1"}, TypeError, "max_penalty"),
    ],
)
def test_repetition_penalty_validates_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        get_repetition_penalty_reward(**kwargs)


def test_repetition_penalty_name_and_pickle():
    reward_func = get_repetition_penalty_reward(ngram_size=3, max_penalty=-1.0)
    assert reward_func.__name__ == "repetition_penalty_reward"
    restored = pickle.loads(pickle.dumps(reward_func))
    assert restored.__name__ == "repetition_penalty_reward"
    assert restored(completion_ids=[[1, 2, 3, 1, 2, 3]]) == [-0.25]


def test_repetition_penalty_docstring_example():
    _run_docstring_examples(penalties_module.get_repetition_penalty_reward)


# ---------------------------------------------------------------------------------------------------------------
# get_cosine_scaled_reward: construction (no optional dependency)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_len", [0, -1, 2.5, "10", True])
def test_cosine_scaled_reward_validates_max_len(max_len):
    with pytest.raises(ValueError, match="max_len"):
        get_cosine_scaled_reward(max_len)


@pytest.mark.parametrize(
    "num_tokens, correct, expected",
    [
        # Defaults, max_len = 100; progress p = n / 100, c = cos(p * pi).
        (0, True, 1.0),  # c = 1: 0.5 + 0.5 * 0.5 * 2 = 1.0 (max_value_correct)
        (50, True, 0.75),  # c = 0: 0.5 + 0.5 * 0.5 * 1 = 0.75
        (100, True, 0.5),  # c = -1: 0.5 + 0 = 0.5 (min_value_correct)
        (250, True, 0.5),  # p is clamped to 1
        (0, False, -1.0),  # c = 1: -0.5 + 0.5 * -0.5 * 2 = -1.0 (min_value_wrong: short wrong answers hurt most)
        (50, False, -0.75),  # c = 0: -0.5 + 0.5 * -0.5 * 1 = -0.75
        (100, False, -0.5),  # c = -1: -0.5 (max_value_wrong)
        (250, False, -0.5),
        (25, True, 0.5 + 0.25 * (1 + math.sqrt(0.5))),  # c = cos(pi/4) = sqrt(1/2): 0.9267767
    ],
)
def test_cosine_schedule_values(num_tokens, correct, expected):
    reward_func = get_cosine_scaled_reward(max_len=100)
    assert reward_func._value(num_tokens, correct) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_cosine_schedule_custom_bounds():
    reward_func = get_cosine_scaled_reward(
        max_len=10, min_value_wrong=-2.0, max_value_wrong=0.0, min_value_correct=0.0, max_value_correct=2.0
    )
    # Halfway: midpoints of each range.
    assert reward_func._value(5, True) == pytest.approx(1.0, abs=1e-12)
    assert reward_func._value(5, False) == pytest.approx(-1.0, abs=1e-12)
    assert reward_func._value(0, False) == -2.0 and reward_func._value(10, True) == 0.0


def test_cosine_scaled_reward_name_and_pickle_without_calling():
    reward_func = get_cosine_scaled_reward(max_len=64, min_value_wrong=-2.0)
    assert reward_func.__name__ == "cosine_scaled_reward"
    restored = pickle.loads(pickle.dumps(reward_func))
    assert restored.__name__ == "cosine_scaled_reward"
    assert (restored.max_len, restored.min_value_wrong) == (64, -2.0)


# ---------------------------------------------------------------------------------------------------------------
# math_verify-backed rewards
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def math_verify():
    return pytest.importorskip("math_verify")


def test_accuracy_reward_conversational_and_string(math_verify):
    solution = [r"\frac{1}{2}", r"\frac{1}{2}", "42", "42", r"\frac{1}{2}"]
    completions = [
        _conv(r"So the answer is $\boxed{\frac{1}{2}}$."),  # exact
        _conv(r"The answer is \boxed{0.5}"),  # equal value, other form
        r"The answer is \boxed{42}",  # plain string completion
        r"The final answer is $41$",  # wrong
        _conv(r"I computed \boxed{\frac{2}{4}}"),  # equivalent fraction
    ]
    assert accuracy_reward(completions, solution) == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_accuracy_reward_boxed_takes_priority(math_verify):
    # The boxed answer is graded, not the first LaTeX expression in the text.
    assert accuracy_reward([r"First try $3$, but actually \boxed{4}"], ["4"]) == [1.0]
    assert accuracy_reward([r"First try $4$, but actually \boxed{3}"], ["4"]) == [0.0]


def test_accuracy_reward_unparseable_gold_is_none(math_verify):
    assert accuracy_reward([r"\boxed{1}", r"\boxed{1}", r"\boxed{1}"], ["no math here", "", None]) == [None] * 3


def test_accuracy_reward_malformed_completions_score_zero(math_verify):
    malformed = [None, 42, [], [{"role": "assistant"}], "", "no answer at all", r"\boxed{", "}}}{{\\\\frac"]
    assert accuracy_reward(malformed, ["1"] * len(malformed)) == [0.0] * len(malformed)


def test_accuracy_reward_reads_final_assistant_message(math_verify):
    # Tool-calling completion: the answer is in the last assistant message.
    completion = [
        {"role": "assistant", "content": "Let me compute with a tool."},
        {"role": "tool", "content": "7"},
        {"role": "assistant", "content": r"The answer is \boxed{7}"},
    ]
    assert accuracy_reward([completion], ["7"]) == [1.0]


def test_accuracy_reward_log_extra_and_kwargs(math_verify):
    logged = {}
    rewards = accuracy_reward(
        completions=[_conv(r"The answer is \boxed{2}"), _conv("nothing"), _conv(r"\boxed{2}")],
        solution=["2", "2", "not math"],
        log_extra=lambda column, values: logged.__setitem__(column, values),
        completion_ids=[[1], [1], [1]],
        **TRAINER_KWARGS,
    )
    assert rewards == [1.0, 0.0, None]
    assert set(logged) == {"solution", "gold_parsed", "answer_parsed"}
    assert logged["solution"] == ["2", "2", "not math"]
    assert all(isinstance(v, str) for values in logged.values() for v in values)
    assert all(len(values) == 3 for values in logged.values())
    assert "2" in logged["gold_parsed"][0] and logged["gold_parsed"][2] == "[]"
    assert "2" in logged["answer_parsed"][0]
    assert logged["answer_parsed"][1] == "[]"  # parsed, nothing found
    assert logged["answer_parsed"][2] == ""  # not attempted: the gold could not be parsed


def test_accuracy_reward_length_mismatch_raises(math_verify):
    with pytest.raises(ValueError, match="2 completions but 1 solutions"):
        accuracy_reward(["a", "b"], ["1"])


def test_accuracy_reward_outside_main_thread(math_verify):
    # math_verify's timeouts use SIGALRM, which raises outside the main thread; the reward disables them there.
    results = {}

    def worker():
        try:
            results["rewards"] = accuracy_reward([r"\boxed{3}", r"\boxed{4}"], ["3", "3"])
        except Exception as error:  # surfaced below
            results["error"] = error

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    version = accuracy_module._math_verify_version()
    if version is not None and version < (0, 8):
        assert isinstance(results.get("error"), ImportError)
    else:
        assert results == {"rewards": [1.0, 0.0]}


def test_old_math_verify_outside_main_thread_raises_clearly(math_verify, monkeypatch):
    monkeypatch.setattr(accuracy_module, "_math_verify_version", lambda: (0, 5))
    results = {}

    def worker():
        try:
            accuracy_reward([r"\boxed{3}"], ["3"])
        except Exception as error:
            results["error"] = error

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert isinstance(results["error"], ImportError) and "math-verify>=0.8.0" in str(results["error"])
    # The main thread is unaffected.
    assert accuracy_reward([r"\boxed{3}"], ["3"]) == [1.0]


def test_reasoning_accuracy_reward(math_verify):
    solution = ["3", "3", "3", "3", "not math"]
    completions = [
        _conv(r"<think>reasoning</think> The answer is \boxed{3}"),
        _conv(r"<think>maybe \boxed{3}</think> The answer is \boxed{4}"),  # answer inside the reasoning does not count
        r"<think>unfinished reasoning \boxed{3}",  # no delimiter: incomplete -> 0.0
        r"<think>a</think> wait <think>b</think> The answer is \boxed{3}",  # text after the LAST delimiter
        _conv(r"<think>x</think> \boxed{3}"),  # unparseable gold -> None
    ]
    assert reasoning_accuracy_reward(completions, solution) == [1.0, 0.0, 0.0, 1.0, None]


def test_reasoning_accuracy_reward_custom_delimiters(math_verify):
    completions = [
        r"<reasoning>...</reasoning> The answer is \boxed{5}",
        r"<think>..</think> \boxed{4} <reasoning>..</reasoning> The answer is \boxed{5}",  # right-most delimiter wins
        r"<think>..</think> The answer is \boxed{5}",  # default delimiter not in the custom list
    ]
    delimiters = ["</think>", "</reasoning>"]
    assert reasoning_accuracy_reward(completions[:2], ["5", "5"], reasoning_delimiters=delimiters) == [1.0, 1.0]
    assert reasoning_accuracy_reward(completions[2:], ["5"], reasoning_delimiters=["</reasoning>"]) == [0.0]
    with pytest.raises(ValueError, match="reasoning_delimiters"):
        reasoning_accuracy_reward(completions, ["5"] * 3, reasoning_delimiters=[""])


def test_reasoning_accuracy_reward_malformed_and_log_extra(math_verify):
    logged = {}
    rewards = reasoning_accuracy_reward(
        [None, _conv(None), "no delimiter"],
        ["1", "1", "1"],
        log_extra=lambda column, values: logged.__setitem__(column, values),
        **TRAINER_KWARGS,
    )
    assert rewards == [0.0, 0.0, 0.0]
    assert logged["answer_parsed"] == ["", "", ""]


def test_cosine_scaled_reward_end_to_end(math_verify):
    reward_func = get_cosine_scaled_reward(max_len=100)
    completions = [
        _conv(r"The answer is \boxed{2}"),  # correct, 0 tokens -> 1.0
        r"The answer is \boxed{2}",  # correct, 50 tokens -> 0.75
        r"The answer is \boxed{2}",  # correct, 100 tokens -> 0.5
        _conv(r"The answer is \boxed{3}"),  # wrong, 0 tokens -> -1.0
        r"The answer is \boxed{3}",  # wrong, 50 tokens -> -0.75
        r"The answer is \boxed{3}",  # wrong, 120 tokens -> -0.5
        None,  # malformed completion, graded as wrong, 10 tokens: -0.5 - 0.25 * (1 + cos(0.1 pi))
        r"\boxed{2}",  # unparseable gold -> None
        r"\boxed{2}",  # malformed completion_ids -> None
    ]
    solution = ["2"] * 7 + ["no math", "2"]
    completion_ids = [[], [0] * 50, [0] * 100, [], [0] * 50, [0] * 120, [0] * 10, [0], None]
    rewards = reward_func(completions, solution, completion_ids, **TRAINER_KWARGS)
    expected = [1.0, 0.75, 0.5, -1.0, -0.75, -0.5, -0.5 - 0.25 * (1 + math.cos(0.1 * math.pi))]
    assert rewards[:7] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert rewards[7:] == [None, None]


def test_cosine_scaled_reward_pickled_call(math_verify):
    restored = pickle.loads(pickle.dumps(get_cosine_scaled_reward(max_len=10)))
    rewards = restored(completions=[r"\boxed{1}"], solution=["1"], completion_ids=[[0] * 5])
    assert rewards == [pytest.approx(0.75)]


def test_math_docstring_examples(math_verify):
    for func in (
        accuracy_module.accuracy_reward,
        accuracy_module.reasoning_accuracy_reward,
        accuracy_module.get_cosine_scaled_reward,
    ):
        _run_docstring_examples(func)
