"""`trl dpo`: help and a 2-step run from a YAML file on a local model folder and local jsonl preference data."""

import pytest
import yaml

from trl.cli import TRAINING_COMMANDS, main


def test_trl_dpo_is_a_command_and_its_help_lists_dpo_options(capsys):
    assert "dpo" in TRAINING_COMMANDS
    with pytest.raises(SystemExit) as exit_info:
        main(["dpo", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--beta", "--loss_type", "--loss_weights", "--use_weighting", "--precompute_ref_log_probs",
                   "--model_name_or_path", "--dataset_name", "--use_peft", "--accelerate_config"):
        assert option in help_text, option


def test_trl_dpo_from_yaml(tmp_path):
    from trl.data.tiny import tiny_task_dataset
    from trl.models.tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "model", num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=32)
    data = tmp_path / "train.jsonl"
    tiny_task_dataset("preference", num_rows=8).to_json(str(data))
    output_dir = tmp_path / "out"
    config = tmp_path / "dpo.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(model),
        "dataset_name": str(data),
        "output_dir": str(output_dir),
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "loss_type": ["sigmoid", "sft"],
        "loss_weights": [1.0, 0.5],
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "max_length": 64,
        "gradient_checkpointing": False,
    }))
    main(["dpo", "--config", str(config)])
    assert (output_dir / "config.json").exists()
    assert any(output_dir.glob("*.safetensors"))
    assert "dpo" in (output_dir / "README.md").read_text()
