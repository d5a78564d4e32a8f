"""GRPOTrainer with environments that own the data, and the guards and bookkeeping of agent rollouts
(docs/agents.md): environment-owned rows, step-time prompt checks, environments back in the pool on errors, a timed
out environment not reused, the no-tool-call and cut-mid-call guards."""

import time
import warnings

import pytest
from datasets import Dataset

from trl import GRPOTrainer
from trl.agents.environments import EnvironmentPool
from trl.agents.rollouts import cut_mid_call
from trl.agents.tools import Toolbox, execute_tool_calls
from trl.models.tiny import tiny_model

from .sft_one_step import SMALL
from .test_grpo_tools import ANSWER, Counter, Scripted, _counting, _questions, _tool_tokenizer
from .test_grpo_trainer import _config, _logged, _moved, _params


class Task(Counter):
    """Owns its data: reset() takes no columns and returns the task (the counter's tool and reward)."""

    resets: list = []  # noqa: RUF012 -- shared on purpose: every instance records here

    def reset(self, **row):
        Task.resets.append(row)
        self.count = 0
        return "Reach 2 with increment."


def _owned_trainer(tmp_path, monkeypatch, environment_factory=Task, script=_counting, **overrides):
    tokenizer = _tool_tokenizer()
    values = {"max_completion_length": 256, **overrides}
    trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), args=_config(tmp_path, **values),
                          processing_class=tokenizer, environment_factory=environment_factory)
    trainer.script = script(tokenizer)
    monkeypatch.setattr(trainer.backend, "generate", trainer.script)
    return trainer


# ---- environment-owned data ---------------------------------------------------------------------------------------


def test_environment_owned_data_trains(tmp_path, monkeypatch):
    Task.resets.clear()
    trainer = _owned_trainer(tmp_path, monkeypatch)
    before = _params(trainer.model)
    trainer.train()
    assert _moved(before, trainer.model)
    assert Task.resets and all(row == {} for row in Task.resets)  # placeholder rows are not passed to reset
    first_prompt = trainer.processing_class.decode(trainer.script.calls[0][0][0])
    assert first_prompt.endswith("<|im_start|>user\nReach 2 with increment.<|im_end|>\n<|im_start|>assistant\n")
    assert '"name": "increment"' in first_prompt
    logs = _logged(trainer)
    assert len(logs) == 2
    for log in logs:  # samples 0 and 2 of a group call increment(2): reward 2, the others 0
        assert log["rewards/Task/mean"] == 1.0 and log["tools/call_frequency"] == 0.5


def test_environment_owned_data_needs_max_steps(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="set `max_steps`"):
        _owned_trainer(tmp_path, monkeypatch, max_steps=-1)


def test_dict_of_environments_without_dataset_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"dict of environments \['a', 'b'\] and no `train_dataset`"):
        _owned_trainer(tmp_path, monkeypatch, environment_factory={"a": Task, "b": Counter})


def test_no_dataset_and_no_environment_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="needs a `train_dataset`"):
        GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                    args=_config(tmp_path), processing_class=_tool_tokenizer())


def test_step_time_prompt_longer_than_the_context_is_named(tmp_path, monkeypatch):
    class Verbose(Task):
        def reset(self, **row):
            self.count = 0
            return " a" * 2100  # the tiny model's context is 2048 tokens

    trainer = _owned_trainer(tmp_path, monkeypatch, environment_factory=Verbose, max_completion_length=16)
    with pytest.raises(ValueError, match=r"reset\(\) output and tools\) fill the model's context of 2048 tokens"):
        trainer.train()
    assert sum(len(kind.idle) for kind in trainer.environments._kinds.values()) == 8  # all back in the pool


def test_step_time_prompt_that_leaves_less_than_the_budget_is_warned_and_trains(tmp_path, monkeypatch):
    class Wordy(Task):
        def reset(self, **row):
            self.count = 0
            return " a" * 1600  # with the tools and the template ~1950 of 2048 tokens: less than 256 left

    trainer = _owned_trainer(tmp_path, monkeypatch, environment_factory=Wordy, max_steps=1)
    with pytest.warns(UserWarning, match=r"leave less than max_completion_length=256 tokens of the model's context"):
        trainer.train()
    assert trainer.state.global_step == 1


def test_environment_owned_data_with_a_reset_without_arguments_and_an_eval_dataset(tmp_path, monkeypatch):
    seen = []

    class Plain:
        def reset(self):  # environment-owned data: no columns at all
            seen.append("train")
            return "Say hi."

        def get_reward(self) -> float:
            return 1.0

    class Levels(Plain):
        def reset(self, level=None, **row):
            seen.append(level)
            return f"Level {level}."

    trainer = _owned_trainer(tmp_path, monkeypatch, environment_factory=Plain, max_steps=1)
    trainer.train()
    assert seen and set(seen) == {"train"}
    # an eval dataset's rows are passed to reset (only the placeholder training rows are not)
    evaluation = Dataset.from_list([{"prompt": [{"role": "user", "content": "Play."}], "level": 3}] * 8)
    trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), args=_config(tmp_path, max_completion_length=256,
                                                                          per_device_eval_batch_size=8),
                          processing_class=_tool_tokenizer(), environment_factory=Levels, eval_dataset=evaluation)
    monkeypatch.setattr(trainer.backend, "generate", _counting(trainer.processing_class))
    seen.clear()
    trainer.evaluate()
    assert seen and set(seen) == {3}


def test_environment_without_methods_needs_no_tool_template(tmp_path, monkeypatch):
    from trl.models.tiny import tiny_tokenizer

    class Judge:
        def reset(self, **row):
            return None

        def get_reward(self) -> float:
            return 1.0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), args=_config(tmp_path, max_steps=1,
                                                                              guard_patience=1),
                              train_dataset=_questions(), processing_class=tiny_tokenizer(), environment_factory=Judge)
        trainer.train()
    assert _logged(trainer)[0]["rewards/Judge/mean"] == 1.0
    assert not [w for w in caught if "Tools are given" in str(w.message)]  # there is nothing to call


# ---- datasets with environments ------------------------------------------------------------------------------------


def test_environment_rewards_extend_reward_processing_classes(tmp_path, monkeypatch):
    def zero(completions, **kwargs):
        return [0.0] * len(completions)

    trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=[zero], reward_processing_classes=[None],
                          args=_config(tmp_path, max_completion_length=256, reward_weights=[0.5]),
                          train_dataset=_questions(), processing_class=_tool_tokenizer(), environment_factory=Counter)
    assert trainer.reward_scorer.names == ["zero", "Counter"]
    assert trainer.reward_scorer.weights.tolist() == [0.5, 1.0]


def test_eval_dataset_is_checked_against_the_environments(tmp_path):
    train = _questions().map(lambda row, i: {"environment": "a" if i % 2 else "b"}, with_indices=True)
    with pytest.raises(ValueError, match="'environment' column"):
        GRPOTrainer(model=tiny_model(seed=0, **SMALL), args=_config(tmp_path, max_completion_length=256),
                    train_dataset=train, eval_dataset=_questions(), processing_class=_tool_tokenizer(),
                    environment_factory={"a": Counter, "b": Counter})


def test_environments_go_back_to_the_pool_when_a_reward_raises(tmp_path, monkeypatch):
    def broken(completions, **kwargs):
        raise RuntimeError("reward bug")

    tokenizer = _tool_tokenizer()
    trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=[broken],
                          args=_config(tmp_path, max_completion_length=256), train_dataset=_questions(),
                          processing_class=tokenizer, environment_factory=Counter)
    monkeypatch.setattr(trainer.backend, "generate", _counting(tokenizer))
    with pytest.raises(Exception, match="reward bug"):
        trainer.train()
    assert trainer._episodes is None
    assert sum(len(kind.idle) for kind in trainer.environments._kinds.values()) == 8


# ---- a timed-out environment is not reused; huge outputs are cut ---------------------------------------------------


class Slow:
    def reset(self, **row):
        return None

    def wait(self, seconds: float) -> str:
        """Sleep.

        Args:
            seconds: How long.
        """
        time.sleep(seconds)
        return "done"


def test_environment_whose_call_timed_out_is_not_reused():
    pool = EnvironmentPool(Slow)
    episodes = pool.acquire([{}, {}])
    calls = [[{"name": "wait", "arguments": {"seconds": 0.5}}], [{"name": "wait", "arguments": {"seconds": 0.0}}]]
    results = execute_tool_calls(calls, [e.toolbox for e in episodes], timeout=0.1)
    assert results.num_failures == [1, 0]
    with pytest.warns(UserWarning, match="1 environment instance"):
        pool.release(episodes)
    (idle,) = [kind.idle for kind in pool._kinds.values()]
    assert idle == [episodes[1].environment]  # the timed-out instance is dropped
    fresh = pool.acquire([{}, {}])
    assert episodes[0].environment not in [e.environment for e in fresh]


def test_long_tool_output_is_cut():
    def echo(n: int) -> str:
        """Repeat a letter.

        Args:
            n: How many times.
        """
        return "a" * n

    results = execute_tool_calls([[{"name": "echo", "arguments": {"n": 50}}], [{"name": "echo", "arguments": {"n": 5}}]],
                                 Toolbox([echo]), max_output_chars=10)
    assert results.messages[0][0]["content"] == "a" * 10 + "... [tool output cut: 50 characters]"
    assert results.messages[1][0]["content"] == "aaaaa"


# ---- guards --------------------------------------------------------------------------------------------------------


def test_no_tool_call_for_guard_patience_batches_is_warned(tmp_path, monkeypatch):
    from .test_grpo_tools import _trainer

    trainer = _trainer(tmp_path, monkeypatch, script=lambda t: Scripted(t, first=lambda k: ANSWER), guard_patience=2)
    with pytest.warns(UserWarning, match=r"no rollout of the last 2 generation batches called one"):
        trainer.train()


def test_rollouts_cut_mid_call_are_reported(tmp_path, monkeypatch):
    from .test_grpo_tools import _trainer

    unfinished = '<tool_call>\n{"name": "multiply", "arguments": {"a": 3, "b":'  # no end of turn: cut by the budget
    trainer = _trainer(tmp_path, monkeypatch, script=lambda t: Scripted(t, first=lambda k: unfinished if k % 2 else
                                                                         ANSWER), max_steps=1)
    with pytest.warns(UserWarning, match=r"4 of 8 rollouts .* cut by max_completion_length=256 in the middle of a tool"):
        trainer.train()
    assert _logged(trainer)[0]["tools/truncated_call_frequency"] == 0.5


def test_cut_mid_call():
    call = {"type": "function", "function": {"name": "f", "arguments": {}}}
    completions = [
        [{"role": "assistant", "content": "<tool_call>\n{"}],  # unfinished call
        [{"role": "assistant", "content": "", "tool_calls": [call]}],  # calls whose tool turn did not fit
        [{"role": "assistant", "content": "It is"}],  # cut, but not in a call
        [{"role": "assistant", "content": "", "tool_calls": [call]}],  # max_tool_calling_iterations: not truncated
    ]
    assert cut_mid_call(completions, [True, True, True, False]) == [True, True, False, False]


def test_guard_counters_survive_in_the_online_state(tmp_path, monkeypatch):
    from .test_grpo_tools import _trainer

    trainer = _trainer(tmp_path, monkeypatch, script=lambda t: Scripted(t, first=lambda k: ANSWER), max_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert trainer._online_state()["guard_counts"]["no_tool_calls"] == 1


# ---- what the model writes is data ---------------------------------------------------------------------------------


def test_malformed_calls_are_error_messages_and_counted(tmp_path, monkeypatch):
    from .test_grpo_tools import CALL, FINAL, _trainer

    broken = {0: '<tool_call>\n{"name": "multiply", "arguments": {"a": 3,}\n</tool_call><|im_end|>',  # invalid JSON
              1: '<tool_call>\n{"name": "multiply", "arguments": [3, 4]}\n</tool_call><|im_end|>',  # list arguments
              2: CALL, 3: ANSWER}
    trainer = _trainer(tmp_path, monkeypatch, script=lambda t: Scripted(t, first=lambda k: broken[k]), max_steps=1)
    rollout = trainer._sample([trainer.train_dataset[0]] * 4, trainer._generator, mode="train")
    for i in (0, 1):  # the model is shown why its call was not run, then answers
        assistant, tool, final = rollout.completions[i]
        assert "tool_calls" not in assistant and assistant["content"].startswith("<tool_call>")
        assert tool["role"] == "tool" and "The tool call could not be parsed" in tool["content"]
        assert final == {"role": "assistant", "content": FINAL.removesuffix("<|im_end|>")}
    assert rollout.completions[2][1]["content"] == "12" and len(rollout.completions[3]) == 1
    trainer.train()
    log = _logged(trainer)[0]
    assert log["tools/call_frequency"] == 0.75 and log["tools/failure_frequency"] == pytest.approx(2 / 3)
