"""`trl grpo` and `trl rloo`: help, a 2-step run of each on a local model folder and local jsonl prompts with reward
functions from `trl.rewards` and from a module in the current directory. The `--reward_funcs` errors are rows of
tests/bad_inputs/test_cli.py."""

import sys

import pytest
import yaml

from trl.cli import TRAINING_COMMANDS, main
from trl.scripts.utils import resolve_reward_funcs

MY_REWARDS = '''
def answer_len(completions, answer, **kwargs):
    """Minus the difference in words between the completion and the reference answer."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [-abs(len(text.split()) - len(ref.split())) / 4 for text, ref in zip(texts, answer)]


not_a_function = 3
'''


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A current directory holding `my_rewards.py`; `sys.path` and `sys.modules` are restored afterwards."""
    (tmp_path / "my_rewards.py").write_text(MY_REWARDS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    yield tmp_path
    sys.modules.pop("my_rewards", None)


@pytest.fixture
def tiny_files(tmp_path):
    from trl.data.tiny import tiny_task_dataset
    from trl.models.tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "model", num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=32)
    data = tmp_path / "prompts.jsonl"
    tiny_task_dataset("prompt_only", num_rows=16).to_json(str(data))  # `prompt` (messages) and `answer` columns
    return model, data


@pytest.mark.parametrize("command", ["grpo", "rloo"])
def test_help_lists_the_online_options(command, capsys):
    assert command in TRAINING_COMMANDS
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--num_generations", "--max_completion_length", "--beta", "--reward_funcs", "--reward_weights",
                   "--reward_model_name_or_path", "--model_name_or_path", "--dataset_name", "--use_peft"):
        assert option in help_text
    assert ("--loss_type" in help_text) == (command == "grpo")


def test_trl_grpo_from_yaml(workdir, tiny_files, capsys):
    model, data = tiny_files
    output_dir = workdir / "out"
    config = workdir / "grpo.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(model),
        "dataset_name": str(data),
        "reward_funcs": ["my_rewards.answer_len", "think_format_reward"],
        "reward_weights": [1.0, 0.5],
        "output_dir": str(output_dir),
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "num_generations": 2,
        "max_completion_length": 8,
        "guards": False,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "gradient_checkpointing": False,
    }))
    main(["grpo", "--config", str(config)])
    assert (output_dir / "config.json").exists()
    assert any(output_dir.glob("*.safetensors"))
    log = capsys.readouterr().out
    for key in ("rewards/answer_len/mean", "rewards/think_format_reward/mean", "'reward'"):
        assert key in log


def test_trl_rloo_from_flags(workdir, tiny_files, capsys):
    model, data = tiny_files
    output_dir = workdir / "out"
    main(["rloo", "--model_name_or_path", str(model), "--dataset_name", str(data), "--reward_funcs",
          "my_rewards.answer_len", "think_format_reward", "--reward_weights", "1.0", "0.5", "--output_dir",
          str(output_dir), "--max_steps", "2", "--per_device_train_batch_size", "4", "--num_generations", "2",
          "--max_completion_length", "8", "--guards", "false", "--report_to", "none", "--logging_steps", "1",
          "--save_strategy", "no", "--gradient_checkpointing", "false"])
    assert (output_dir / "config.json").exists()
    assert any(output_dir.glob("*.safetensors"))
    log = capsys.readouterr().out
    for key in ("rewards/answer_len/mean", "rewards/think_format_reward/mean", "'kl'"):
        assert key in log


def test_reward_weights_and_funcs_parse_from_flags_and_yaml(tmp_path):
    from trl.scripts.grpo import make_parser

    config = tmp_path / "grpo.yaml"
    config.write_text(yaml.safe_dump({"reward_funcs": ["a.b", "think_format_reward"], "reward_weights": [1, 0.5]}))
    script_args, training_args, _, _ = make_parser().parse_args_and_config(["--config", str(config)])
    assert script_args.reward_funcs == ["a.b", "think_format_reward"]
    assert training_args.reward_weights == [1.0, 0.5]
    script_args, training_args, _, _ = make_parser().parse_args_and_config(
        ["--config", str(config), "--reward_funcs", "accuracy_reward", "--reward_weights", "2"]
    )
    assert script_args.reward_funcs == ["accuracy_reward"] and training_args.reward_weights == [2.0]


def test_resolve_reward_funcs_forms(workdir):
    from trl.rewards import think_format_reward

    (workdir / "local-rm").mkdir()
    funcs = resolve_reward_funcs(["think_format_reward", "my_rewards.answer_len", "org/reward-model", "local-rm"],
                                 reward_model_name_or_path="org/other-rm")
    assert funcs[0] == "org/other-rm" and funcs[1] is think_format_reward
    assert funcs[2].__name__ == "answer_len" and funcs[2].__module__ == "my_rewards"
    assert funcs[3:] == ["org/reward-model", "local-rm"]
    assert resolve_reward_funcs(["trl.rewards.think_format_reward"]) == [think_format_reward]
    assert resolve_reward_funcs(None) == []


# ---- tools and environments (issue 13): `--tools`, `--environment_factory`, the tool config flags -----------------

MY_TOOLS = '''
import json
import os

CALLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tool_calls.jsonl")


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    with open(CALLS, "a") as file:
        file.write(json.dumps([a, b]) + "\\n")
    return a * b


class Counter:
    """An environment: the model increments a counter; the reward is the count."""

    def reset(self, **row):
        self.count = 0
        return " Count up."

    def increment(self, step: int) -> int:
        """Add to the counter.

        Args:
            step: How much to add.
        """
        self.count += step
        return self.count

    def get_reward(self) -> float:
        return float(self.count)


not_callable = 3
'''


@pytest.fixture
def tool_files(workdir, tiny_files):
    """`my_tools.py` in the current directory, and the tiny model folder saved with a chat template that renders tool
    calls (the bundled tokenizer's does not)."""
    from transformers import AutoTokenizer

    from trl.chat_template_utils import chatml_training_chat_template

    (workdir / "my_tools.py").write_text(MY_TOOLS)
    sys.modules.pop("my_tools", None)
    model, data = tiny_files
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = chatml_training_chat_template
    tokenizer.save_pretrained(model)
    yield model, data
    sys.modules.pop("my_tools", None)


def _script_generation(monkeypatch, model, first=None):
    """Script the backend as tests/trainers/test_grpo_tools.py does (a random tiny model never writes a tool call):
    in the first round samples 0 and 2 of each prompt call `multiply(a=3, b=4)` (or write `first(k)`), the others
    answer."""
    from transformers import AutoTokenizer

    from trl.generation.transformers_backend import TransformersBackend

    from ..trainers.test_grpo_tools import Scripted

    script = Scripted(AutoTokenizer.from_pretrained(model), first=first)
    monkeypatch.setattr(TransformersBackend, "generate",
                        lambda self, prompt_ids, n, sampling, generator=None: script(prompt_ids, n, sampling, generator))
    return script


def test_trl_grpo_with_tools_from_flags(workdir, tool_files, monkeypatch):
    import json

    model, data = tool_files
    _script_generation(monkeypatch, model)
    output_dir = workdir / "out"
    main(["grpo", "--model_name_or_path", str(model), "--dataset_name", str(data), "--reward_funcs",
          "my_rewards.answer_len", "--tools", "my_tools.multiply", "--max_tool_calling_iterations", "2",
          "--tool_timeout", "5", "--output_dir", str(output_dir), "--max_steps", "2", "--per_device_train_batch_size",
          "4", "--num_generations", "4", "--max_completion_length", "256", "--guards", "false", "--report_to", "none",
          "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "2", "--gradient_checkpointing",
          "false"])
    state = json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    logs = [log for log in state["log_history"] if "loss" in log]
    assert len(logs) == 2
    for log in logs:
        assert log["tools/call_frequency"] == 0.5 and log["tools/failure_frequency"] == 0.0
    calls = (workdir / "tool_calls.jsonl").read_text().splitlines()
    assert [json.loads(c) for c in calls] == [[3, 4]] * 4  # 2 calling samples of 1 prompt per step, 2 steps


def test_tool_flags_parse_from_flags_and_yaml(tmp_path):
    from trl.scripts.grpo import make_parser

    config = tmp_path / "grpo.yaml"
    config.write_text(yaml.safe_dump({"tools": ["a.b", "c.d"], "environment_factory": "e.F",
                                      "max_tool_calling_iterations": 3, "tool_timeout": 2.5}))
    script_args, training_args, _, _ = make_parser().parse_args_and_config(["--config", str(config)])
    assert script_args.tools == ["a.b", "c.d"] and script_args.environment_factory == "e.F"
    assert training_args.max_tool_calling_iterations == 3 and training_args.tool_timeout == 2.5
    script_args, training_args, _, _ = make_parser().parse_args_and_config(
        ["--tools", "x.y", "--max_tool_calling_iterations", "1", "--tool_timeout", "10"])
    assert script_args.tools == ["x.y"] and script_args.environment_factory is None
    assert training_args.max_tool_calling_iterations == 1 and training_args.tool_timeout == 10.0


class _Built(Exception):
    """Raised by the stand-in trainer: what `trl grpo` would build, without building it."""


@pytest.fixture
def trainer_kwargs(monkeypatch):
    """Replace `GRPOTrainer` by a stand-in that records its keyword arguments and stops the command."""
    import trl.trainer.grpo_trainer

    seen = {}

    def build(**kwargs):
        seen.update(kwargs)
        raise _Built

    monkeypatch.setattr(trl.trainer.grpo_trainer, "GRPOTrainer", build)
    return seen


def test_environment_factory_alone_reaches_the_trainer(workdir, tool_files, trainer_kwargs):
    """No `--dataset_name`, no `--reward_funcs`: the environment may own the data and the reward, so the trainer gets
    `train_dataset=None` and `reward_funcs=None` and decides (a missing `max_steps`, no `get_reward` are its errors)."""
    model, data = tool_files
    common = ["--model_name_or_path", str(model), "--output_dir", str(workdir / "out"), "--report_to", "none"]
    with pytest.raises(_Built):
        main(["grpo", "--environment_factory", "my_tools.Counter", "--max_steps", "2", *common])
    assert trainer_kwargs["environment_factory"].__name__ == "Counter"
    assert trainer_kwargs["environment_factory"].__module__ == "my_tools"
    assert trainer_kwargs["train_dataset"] is None and trainer_kwargs["reward_funcs"] is None
    assert "tools" not in trainer_kwargs

    trainer_kwargs.clear()  # with data, tools and a reward, all of them are passed
    with pytest.raises(_Built):
        main(["grpo", "--environment_factory", "my_tools.Counter", "--tools", "my_tools.multiply", "--dataset_name",
              str(data), "--reward_funcs", "think_format_reward", *common])
    assert len(trainer_kwargs["train_dataset"]) == 16 and len(trainer_kwargs["reward_funcs"]) == 1
    assert [t.__name__ for t in trainer_kwargs["tools"]] == ["multiply"]

    with pytest.raises(ValueError, match="--dataset_name"):  # without an environment, data is still required
        main(["grpo", "--reward_funcs", "think_format_reward", *common])


def test_trl_grpo_with_an_environment_that_owns_the_data(workdir, tool_files, monkeypatch):
    """`--environment_factory` and `--max_steps`, no data and no reward function: the environment's reset() gives the
    task, its methods are the tools, its get_reward() the reward."""
    import json

    from ..trainers.test_grpo_tools import ANSWER, _call

    model, _ = tool_files
    _script_generation(monkeypatch, model, first=lambda k: _call("increment", step=2) if k % 2 == 0 else ANSWER)
    output_dir = workdir / "out"
    main(["grpo", "--model_name_or_path", str(model), "--environment_factory", "my_tools.Counter", "--output_dir",
          str(output_dir), "--max_steps", "1", "--per_device_train_batch_size", "4", "--num_generations", "4",
          "--max_completion_length", "256", "--guards", "false", "--report_to", "none", "--logging_steps", "1",
          "--save_strategy", "steps", "--save_steps", "1", "--gradient_checkpointing", "false"])
    state = json.loads((output_dir / "checkpoint-1" / "trainer_state.json").read_text())
    log = next(log for log in state["log_history"] if "loss" in log)
    assert log["tools/call_frequency"] == 0.5 and log["rewards/Counter/mean"] == 1.0  # counts 2, 0, 2, 0


@pytest.mark.parametrize(("flags", "error", "match"), [
    (["--tools", "my_tools.multiply", "my_tools.nope"], ValueError,
     r"--tools\[1\] is 'my_tools.nope': module 'my_tools' \(.*my_tools.py\) has no 'nope'"),
    (["--tools", "no_such_module.fn"], ValueError,
     r"--tools\[0\] is 'no_such_module.fn': there is no module 'no_such_module' in the current directory"),
    (["--tools", "my_tools.not_callable"], TypeError,
     r"--tools\[0\] is 'my_tools.not_callable': a int, not a function or class"),
    (["--tools", "multiply"], ValueError, r"--tools\[0\] is 'multiply': expected a dotted path `module.name`"),
    (["--environment_factory", "my_tools.Missing"], ValueError,
     r"--environment_factory is 'my_tools.Missing': module 'my_tools' .* has no 'Missing'"),
    (["--environment_factory", "my_envs.Game"], ValueError,
     r"--environment_factory is 'my_envs.Game': there is no module 'my_envs'"),
])
def test_bad_tool_paths_are_named(workdir, flags, error, match):
    (workdir / "my_tools.py").write_text(MY_TOOLS)
    sys.modules.pop("my_tools", None)
    with pytest.raises(error, match=match):  # before the model or the data is loaded
        main(["grpo", "--model_name_or_path", str(workdir / "never-loaded"), "--dataset_name", "never-loaded.jsonl",
              "--reward_funcs", "think_format_reward", "--output_dir", str(workdir / "out"), "--report_to", "none",
              *flags])
    sys.modules.pop("my_tools", None)
