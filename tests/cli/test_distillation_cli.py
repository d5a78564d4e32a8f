"""`trl distillation`: help, the example YAML, a 2-step run from a YAML file on local model folders and local jsonl
data, and the missing-teacher error."""

import importlib
from pathlib import Path

import pytest
import yaml

from trl.cli import TRAINING_COMMANDS, main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "distillation_tiny.yaml"
SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 32}


def test_trl_distillation_is_a_command_and_its_help_lists_its_options(capsys):
    assert "distillation" in TRAINING_COMMANDS
    with pytest.raises(SystemExit) as exit_info:
        main(["distillation", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--teacher_model_name_or_path", "--teacher_model_init_kwargs", "--teacher_model_revision",
                   "--beta", "--temperature", "--max_completion_length", "--model_name_or_path", "--use_peft"):
        assert option in help_text
    assert "--num_generations " not in help_text and "--lmbda" not in help_text


def test_example_yaml_parses():
    assert "trl distillation --config examples/distillation_tiny.yaml" in EXAMPLE.read_text()
    parser = importlib.import_module(TRAINING_COMMANDS["distillation"][0]).make_parser()
    script_args, training_args, model_args, _ = parser.parse_args_and_config(["--config", str(EXAMPLE)])
    assert model_args.model_name_or_path == "outputs/tiny-qwen3-small-warm"
    assert training_args.teacher_model_name_or_path == "outputs/tiny-qwen3-SFT"
    assert script_args.dataset_name == "outputs/data/prompt_only_train.jsonl"
    assert training_args.beta == 0.0 and training_args.report_to in ("none", [])


def _folders(tmp_path):
    from trl.data.tiny import tiny_task_dataset
    from trl.models.tiny import save_tiny_model

    student = save_tiny_model(tmp_path / "student", **SMALL)
    teacher = save_tiny_model(tmp_path / "teacher", seed=1, num_hidden_layers=2)
    data = tmp_path / "train.jsonl"
    tiny_task_dataset("prompt_only", num_rows=8).to_json(str(data))
    return student, teacher, data


def test_trl_distillation_from_yaml_with_flag_overrides(tmp_path):
    student, teacher, data = _folders(tmp_path)
    output_dir = tmp_path / "out"
    config = tmp_path / "distillation.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(student), "teacher_model_name_or_path": str(teacher), "dataset_name": str(data),
        "output_dir": str(output_dir), "max_steps": 2, "per_device_train_batch_size": 4, "max_completion_length": 8,
        "report_to": "none", "logging_steps": 1, "save_strategy": "no", "gradient_checkpointing": False,
        "beta": 1.0,
    }))
    main(["distillation", "--config", str(config), "--beta", "0.5", "--teacher_model_init_kwargs",
          '{"dtype": "bfloat16"}'])
    assert (output_dir / "config.json").exists()
    assert any(output_dir.glob("*.safetensors"))
    assert "distillation" in (output_dir / "README.md").read_text()


def test_trl_distillation_without_a_teacher_says_so(tmp_path):
    student, _, data = _folders(tmp_path)
    with pytest.raises(ValueError, match="--teacher_model_name_or_path"):
        main(["distillation", "--model_name_or_path", str(student), "--dataset_name", str(data), "--output_dir",
              str(tmp_path / "out"), "--max_steps", "1", "--report_to", "none"])
