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
