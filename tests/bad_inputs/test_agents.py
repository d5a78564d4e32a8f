"""Bad inputs to `GRPOTrainer(tools=..., environment_factory=...)`, one row each (docs/agents.md): a clear error at
construction, at the first generation batch for what only `reset` shows, and warnings from the agent guards. What the
model writes (a malformed call, an unknown tool, wrong arguments) is data, not a bad input: tests/unit/test_agents.py
and tests/trainers/test_grpo_tools.py cover it."""

import warnings

import pytest

from trl import GRPOConfig, GRPOTrainer
from trl.models.tiny import tiny_model, tiny_tokenizer

from ..template_data import qwen3_style_tokenizer
from ..trainers.sft_one_step import SMALL
from ..trainers.test_grpo_tools import ANSWER, Counter, Scripted, _questions, _tool_tokenizer
from ..trainers.test_grpo_trainer import _config
from .harness import check, error, ok, warn


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


def undocumented(a: int) -> int:
    return a


def untyped(a):
    """Echo.

    Args:
        a: Anything.
    """
    return a


class NeedsArguments:
    def __init__(self, level):
        self.level = level

    def reset(self, **row):
        return None


class NoReset:
    def step(self, action: str) -> str:
        """Act.

        Args:
            action: What to do.
        """
        return action


class NoReward:
    def reset(self, **row):
        return None


class ResetReturnsNumber(Counter):
    def reset(self, **row):
        super().reset(**row)
        return 42


class ResetRaises(Counter):
    def reset(self, **row):
        raise KeyError("level")


class Clash(Counter):
    def multiply(self, a: int, b: int) -> int:
        """Multiply inside the environment.

        Args:
            a: The first factor.
            b: The second factor.
        """
        return a * b


def _unparseable_calls_tokenizer():
    """ChatML turns, but tool calls written as `CALL name {json}`: no parser of the ChatML family reads them."""
    from trl.chat_template_utils import chatml_training_chat_template

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = chatml_training_chat_template.replace("'<tool_call>\\n{\"name\": '", "'CALL '").replace(
        "', \"arguments\": '", "' '").replace("'}\\n</tool_call>'", "''")
    assert "CALL" in tokenizer.chat_template
    return tokenizer


def _unknown_rewriting_tokenizer():
    """A ChatML-looking template that drops earlier assistant turns' content: not prefix-preserving, and its rewrite
    is not one any family's training template knows."""
    from trl.chat_template_utils import chatml_training_chat_template

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = chatml_training_chat_template.replace(
        "{{- text(message.content) }}", "{%- if loop.last %}{{- text(message.content) }}{%- endif %}")
    assert tokenizer.chat_template != chatml_training_chat_template
    return tokenizer


class Env:
    """A row's tmp_path, and how to build a GRPO trainer with tools on the tiny model (a template that renders tools)."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path

    def build(self, tools=None, environment_factory=None, dataset="questions", tokenizer=None, reward_funcs="count",
              script=None, train=False, **overrides):
        if reward_funcs == "count":
            reward_funcs = [lambda completions, **kw: [float(len(c)) for c in completions]]
        values = {"max_completion_length": 256, **overrides}
        trainer = GRPOTrainer(
            model=tiny_model(seed=0, **SMALL), reward_funcs=reward_funcs, args=_config(self.tmp_path, **values),
            train_dataset=_questions() if dataset == "questions" else dataset,
            processing_class=tokenizer or _tool_tokenizer(), tools=tools, environment_factory=environment_factory,
        )
        if script is not None:
            trainer.backend.generate = script(trainer.processing_class)
        if train:
            trainer.train()
        return trainer


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def _build(**kwargs):
    return lambda env: env.build(**kwargs)


def _answers(tokenizer):
    return Scripted(tokenizer, first=lambda k: ANSWER)


def _unfinished_calls(tokenizer):
    return Scripted(tokenizer, first=lambda k: '<tool_call>\n{"name": "multiply", "arguments": {"a": 3,')


def _config_of(**fields):
    return lambda env: GRPOConfig(output_dir=str(env.tmp_path / "out"), **fields)


def _tools_are(outcome, names):
    assert outcome.value._tool_names() == names


def _still_trained(env, outcome):
    assert outcome.value.state.global_step == outcome.value.args.max_steps


ROWS = [
    error("tool without a docstring", _build(tools=[undocumented]), r"undocumented"),
    error("tool without type hints", _build(tools=[untyped]), r"untyped", Exception),
    error("tool that is not callable", _build(tools=[3]), r"is of type int", TypeError),
    error("two tools with one name", _build(tools=[multiply, multiply]), r"Two tools are named 'multiply'"),
    error("environment whose __init__ needs arguments", _build(environment_factory=NeedsArguments),
          r"needs the argument\(s\) \['level'\]", TypeError),
    error("environment without reset", _build(environment_factory=NoReset), r"no reset\(\) method", TypeError),
    error("environment tool named like a standalone tool", _build(tools=[multiply], environment_factory=Clash),
          r"Two tools are named 'multiply'"),
    error("template without tool support", _build(tools=[multiply], tokenizer=tiny_tokenizer()),
          r"does not render tool calls"),
    error("template whose tool calls no parser reads", _build(tools=[multiply],
                                                              tokenizer=_unparseable_calls_tokenizer()),
          r"which that parser does not read back"),
    warn("template not prefix-preserving across tool turns (Qwen3-style): its training template is used",
         _build(tools=[multiply], tokenizer=qwen3_style_tokenizer()), r"\(qwen3 family\) rewrites earlier turns"),
    error("template that rewrites earlier turns in a way no training template undoes",
          _build(tools=[multiply], tokenizer=_unknown_rewriting_tokenizer()),
          r"rewrites earlier turns .* no training template can stand in for it"),
    error("reward_funcs=None and no get_reward", _build(environment_factory=NoReward, reward_funcs=None),
          r"get_reward"),
    error("text prompts with tools", _build(tools=[multiply], dataset=_questions().map(
        lambda row: {"prompt": row["prompt"][0]["content"]})), r"conversational prompts"),
    error("tools and a rollout_func", lambda env: GRPOTrainer(
        model=tiny_model(seed=0, **SMALL), reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
        args=_config(env.tmp_path), train_dataset=_questions(), processing_class=_tool_tokenizer(),
        tools=[multiply], rollout_func=lambda prompts, trainer: {}), r"not both"),
    error("dict of environments without an environment column",
          _build(environment_factory={"a": Counter, "b": Counter}), r"'environment' column"),
    error("unknown environment name", _build(environment_factory={"a": Counter}, dataset=_questions().map(
        lambda row: {"environment": "b"})), r"asks for environment 'b'.*\['a'\]"),
    error("environment-owned data without max_steps", _build(environment_factory=Counter, dataset=None,
                                                             max_steps=-1), r"set `max_steps`"),
    error("dict of environments without a dataset",
          _build(environment_factory={"a": Counter, "b": Counter}, dataset=None), r"dict of environments"),
    error("no dataset and no environment", _build(tools=[multiply], dataset=None), r"needs a `train_dataset`"),
    error("reset returning a number", _build(environment_factory=ResetReturnsNumber, train=True, max_steps=1),
          r"returned a int for row 0", TypeError),
    error("reset that raises", _build(environment_factory=ResetRaises, train=True, max_steps=1),
          r"ResetRaises.reset\(\) raised KeyError", RuntimeError),
    error("tool_timeout zero", _config_of(tool_timeout=0), r"`tool_timeout` must be a positive"),
    error("max_tool_calling_iterations zero", _config_of(max_tool_calling_iterations=0),
          r"`max_tool_calling_iterations` must be >= 1"),
    warn("tools given but never called", _build(tools=[multiply], script=_answers, train=True, guard_patience=2),
         r"no rollout of the last 2 generation batches called one", then=_still_trained),
    warn("rollouts cut in the middle of a call", _build(tools=[multiply], script=_unfinished_calls, train=True,
                                                         max_steps=1),
         r"8 of 8 rollouts .* in the middle of a tool call", then=_still_trained),
    ok("tools and an environment together", _build(tools=[multiply], environment_factory=Counter),
       then=lambda env, outcome: _tools_are(outcome, ["increment", "multiply"])),
]


@pytest.mark.parametrize("case", ROWS)
def test_bad_agent_input(env, case):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        check(case, env)
