"""The YAML files in `examples/`: each parses with its command's parser and points at files that the documented
set-up writes; the DPO and GRPO ones train for 2 steps."""

import importlib
import sys
from pathlib import Path

import pytest
import yaml

from trl.cli import TRAINING_COMMANDS, main
from trl.data.tiny import FORMATS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
COMMANDS = ["sft", "dpo", "reward", "kto", "grpo", "rloo"]
ONLINE = ("grpo", "rloo")  # they start from the output of `trl sft --config examples/sft_tiny.yaml`
TINY_MODEL = "outputs/tiny-qwen3"  # save_tiny_model('outputs/tiny-qwen3'), as each file's header says
EXPORTED = {f"outputs/data/{form}_{split}.jsonl" for form in FORMATS for split in ("train", "test")}


@pytest.mark.parametrize("command", COMMANDS)
def test_example_yaml_parses_with_its_command(command):
    path = EXAMPLES / f"{command}_tiny.yaml"
    header = path.read_text()
    assert f"trl {command} --config examples/{command}_tiny.yaml" in header
    parser = importlib.import_module(TRAINING_COMMANDS[command][0]).make_parser()
    script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(["--config", str(path)])
    assert model_args.model_name_or_path == (f"{TINY_MODEL}-SFT" if command in ONLINE else TINY_MODEL)
    assert script_args.dataset_name in EXPORTED, script_args.dataset_name
    assert training_args.output_dir.startswith("outputs/") and training_args.report_to in ("none", [])
    assert not dataset_args.datasets


def test_dpo_example_runs_for_two_steps(tmp_path, monkeypatch):
    from trl.data.tiny import export_tiny_task
    from trl.models.tiny import save_tiny_model

    monkeypatch.chdir(tmp_path)  # the example's relative paths (outputs/...) land here
    save_tiny_model(TINY_MODEL)
    export_tiny_task("outputs/data", forms=("preference",))
    config = yaml.safe_load((EXAMPLES / "dpo_tiny.yaml").read_text())
    main(["dpo", "--config", str(EXAMPLES / "dpo_tiny.yaml"), "--max_steps", "2", "--per_device_train_batch_size",
          "4"])
    output_dir = tmp_path / config["output_dir"]
    assert (output_dir / "config.json").exists() and any(output_dir.glob("*.safetensors"))


@pytest.mark.parametrize("command", ONLINE)
def test_online_example_reward_funcs_resolve_from_the_repository_root(command, monkeypatch):
    from trl.scripts.utils import resolve_reward_funcs

    monkeypatch.chdir(EXAMPLES.parent)
    monkeypatch.setattr(sys, "path", list(sys.path))
    parser = importlib.import_module(TRAINING_COMMANDS[command][0]).make_parser()
    config = EXAMPLES / f"{command}_tiny.yaml"
    script_args, training_args, _, _ = parser.parse_args_and_config(["--config", str(config)])
    funcs = resolve_reward_funcs(script_args.reward_funcs)
    assert [func.__name__ for func in funcs] == ["exact_match_reward", "letter_accuracy_reward"]
    assert len(training_args.reward_weights) == len(funcs)


def test_grpo_example_runs_for_two_steps(tmp_path, monkeypatch):
    from trl.data.tiny import export_tiny_task
    from trl.models.tiny import save_tiny_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLES.parent))  # `examples.grpo_tiny`, as when run from the repository root
    save_tiny_model(f"{TINY_MODEL}-SFT")  # stands in for the SFT output
    export_tiny_task("outputs/data", forms=("prompt_only",))
    config = yaml.safe_load((EXAMPLES / "grpo_tiny.yaml").read_text())
    main(["grpo", "--config", str(EXAMPLES / "grpo_tiny.yaml"), "--max_steps", "2", "--per_device_train_batch_size",
          "16", "--max_completion_length", "8", "--guards", "false"])
    output_dir = tmp_path / config["output_dir"]
    assert (output_dir / "config.json").exists() and any(output_dir.glob("*.safetensors"))
