"""No network calls we did not ask for: a CLI training run on a local model folder and local data files makes no
connection and no DNS lookup to anything but this machine (loopback stays allowed, e.g. for gloo)."""

import socket

import pytest

from trl.cli import main

COMMON = ["--max_steps", "1", "--per_device_train_batch_size", "2", "--report_to", "none", "--logging_steps", "1",
          "--save_strategy", "no", "--gradient_checkpointing", "false"]


def test_the_guard_records_attempts(network_attempts):
    with socket.socket() as sock, pytest.raises(OSError, match="blocked"):
        sock.connect(("203.0.113.1", 443))
    with pytest.raises(OSError, match="blocked"):
        socket.getaddrinfo("huggingface.co", 443)
    assert socket.getaddrinfo("127.0.0.1", 0)  # loopback stays allowed
    assert network_attempts == [("connect", ("203.0.113.1", 443)), ("getaddrinfo", "huggingface.co")]


def _tiny_model(path):
    from trl.models.tiny import save_tiny_model

    return str(save_tiny_model(path, num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=32))


@pytest.mark.parametrize(
    "command, data_kind, extra",
    [
        ("sft", "conversational", ["--max_length", "64"]),
        ("dpo", "preference", ["--max_length", "64"]),
        ("grpo", "prompt_only", ["--reward_funcs", "think_format_reward", "--num_generations", "2",
                                 "--max_completion_length", "8", "--guards", "false"]),
    ],
)
def test_cli_training_makes_no_network_call(command, data_kind, extra, tmp_path, network_attempts):
    from trl.data.tiny import tiny_task_dataset

    model = _tiny_model(tmp_path / "model")
    data = tmp_path / "train.jsonl"
    tiny_task_dataset(data_kind, num_rows=8).to_json(str(data))
    output_dir = tmp_path / "out"
    network_attempts.clear()
    main([command, "--model_name_or_path", model, "--dataset_name", str(data), "--output_dir", str(output_dir),
          *COMMON, *extra])
    assert (output_dir / "config.json").exists()
    assert network_attempts == []


def test_download_counter_is_switched_off_only_during_our_loads(tmp_path, network_attempts):
    import datasets

    from trl.scripts.utils import load_dataset_from_name

    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hello"}\n')
    before = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    assert load_dataset_from_name(str(data))["train"]["text"] == ["hello"]
    assert datasets.config.HF_UPDATE_DOWNLOAD_COUNTS == before  # the user's own load_dataset calls are untouched
    assert network_attempts == []
