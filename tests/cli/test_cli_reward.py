"""`trl reward`: the parser (SEQ_CLS LoRA default) and a 2-step run from a YAML file on local model and data."""

import yaml

from trl.cli import TRAINING_COMMANDS, main


def test_reward_parser_defaults_to_seq_cls_lora(tmp_path):
    from trl.scripts.reward import make_parser

    parser = make_parser(prog="trl reward")
    _, training_args, model_args, _ = parser.parse_args_and_config(["--output_dir", str(tmp_path)])
    assert "reward" in TRAINING_COMMANDS
    assert model_args.lora_task_type == "SEQ_CLS" and training_args.learning_rate == 1e-4
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"lora_task_type": "CAUSAL_LM", "output_dir": str(tmp_path)}))
    _, _, model_args, _ = make_parser().parse_args_and_config(["--config", str(config)])
    assert model_args.lora_task_type == "CAUSAL_LM"  # the config file overrides the reward default


def test_trl_reward_from_yaml(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from trl.data.tiny import tiny_task_dataset
    from trl.models.tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "model", num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=32)
    data = tmp_path / "train.jsonl"
    tiny_task_dataset("preference", num_rows=8).to_json(str(data))
    output_dir = tmp_path / "out"
    config = tmp_path / "reward.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(model),
                "dataset_name": str(data),
                "output_dir": str(output_dir),
                "max_steps": 2,
                "per_device_train_batch_size": 2,
                "report_to": "none",
                "logging_steps": 1,
                "save_strategy": "no",
                "max_length": 64,
            }
        )
    )
    main(["reward", "--config", str(config)])
    assert (output_dir / "config.json").exists() and (output_dir / "README.md").exists()
    reward_model = AutoModelForSequenceClassification.from_pretrained(output_dir)
    assert type(reward_model).__name__ == "Qwen3ForSequenceClassification"
    assert reward_model.config.num_labels == 1
