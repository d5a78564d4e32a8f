"""Bad inputs to `RewardTrainer` and `RewardConfig`, one row each: a clear error at construction naming the row, column
or argument, a warning where the run goes ahead without the bad pairs, or (ShareGPT roles) a run that goes ahead. The
checks `RewardConfig` shares with every config are rows of test_configs.py."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from trl import RewardConfig, RewardTrainer
from trl.data.tiny import tiny_task_dataset
from trl.models.tiny import tiny_config, tiny_tokenizer

from ..trainers.sft_one_step import SMALL
from .harness import check, error, ok, warn


PAIRS = [{"chosen": "2+2= 4", "rejected": "2+2= 5"}, {"chosen": "3+3= 6", "rejected": "3+3= 7"}]
SHAREGPT = [{"prompt": [{"from": "human", "value": f"{i}+{i}="}], "chosen": [{"from": "gpt", "value": f"{2 * i}"}],
             "rejected": [{"from": "gpt", "value": f"{2 * i + 1}"}]} for i in range(4)]
# token ids of different lengths, for the max_length filter
TOKEN_PAIRS = [{"chosen_ids": [5, 6, 7], "rejected_ids": [5, 6, 8]}, {"chosen_ids": [5] * 9, "rejected_ids": [5, 6, 9]},
               {"chosen_ids": [5, 6], "rejected_ids": [5] * 20}, {"chosen_ids": [5, 7], "rejected_ids": [5, 8]}]


def _reward_model(num_labels=1):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_config(tiny_config("qwen3", num_labels=num_labels, **SMALL))


class Env:
    """A row's `tmp_path` and how to build a `RewardTrainer` on a tiny sequence classifier."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path

    def config(self, **overrides):
        values = {"output_dir": str(self.tmp_path / "out"), "max_steps": 5, "per_device_train_batch_size": 8,
                  "learning_rate": 3e-3, "logging_steps": 1, "report_to": "none", "save_strategy": "no",
                  "max_length": 128, "seed": 0}
        return RewardConfig(**{**values, **overrides})

    def build(self, rows_or_dataset, model=None, eval_dataset=None, **overrides):
        dataset = Dataset.from_list(rows_or_dataset) if isinstance(rows_or_dataset, list) else rows_or_dataset
        return RewardTrainer(model=model if model is not None else _reward_model(), args=self.config(**overrides),
                             train_dataset=dataset, eval_dataset=eval_dataset, processing_class=tiny_tokenizer())


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def _build(rows, **kwargs):
    return lambda env: env.build(rows, **kwargs)


def _raw(**datasets):
    """The datasets exactly as given (a list or a dict is not wrapped)."""
    def build(env):
        return RewardTrainer(model=_reward_model(), args=env.config(), processing_class=tiny_tokenizer(),
                             **{"train_dataset": Dataset.from_list(PAIRS), **datasets})

    return build


def _config(**kwargs):
    return lambda env: RewardConfig(output_dir="out", **kwargs)


def _image_in_eval(env):
    dataset = tiny_task_dataset("preference", num_rows=2).add_column("image", [None, None])
    return env.build(tiny_task_dataset("preference", num_rows=2), eval_dataset=dataset)


def _several_labels(env):
    return env.build(tiny_task_dataset("preference", num_rows=8), model=_reward_model(num_labels=2))


def _two_short_pairs_kept(env, outcome):
    assert outcome.value.train_dataset["chosen_ids"] == [[5, 6, 7], [5, 7]]


def _trains_one_step(rows):
    def build(env):
        trainer = env.build(rows, max_steps=1)
        trainer.train()
        return trainer

    return build


def _sharegpt_roles(env, outcome):
    tokenizer = tiny_tokenizer()
    row = outcome.value.train_dataset[0]
    prompt, chosen = tokenizer.decode(row["prompt_ids"]), tokenizer.decode(row["chosen_ids"])
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n"), prompt
    assert "human" not in prompt + chosen and "gpt" not in prompt + chosen


CASES = [
    # ---- the dataset ----
    error("image column in the eval dataset", _image_in_eval,
          r"RewardTrainer got an 'image' column in its eval dataset, but it trains Qwen3ForSequenceClassification .*on "
          r"text only"),
    error("images column", _build([{**PAIRS[0], "images": []}] * 2),
          r"RewardTrainer got an 'images' column in its train dataset, but it trains Qwen3ForSequenceClassification"),
    error("list of dicts as train dataset", _raw(train_dataset=PAIRS[:1]),
          r"RewardTrainer got a list of 1 dicts as its train dataset; it needs a `datasets\.Dataset`\. Wrap the rows: "
          r"`datasets\.Dataset\.from_list\(rows\)`", TypeError),
    error("list of dicts as eval dataset", _raw(eval_dataset=PAIRS),
          r"RewardTrainer got a list of 2 dicts as its eval dataset", TypeError),
    error("dict of columns", _raw(train_dataset={"chosen": ["a"], "rejected": ["b"]}),
          r"RewardTrainer got a dict of columns .* as its train dataset.*Dataset\.from_dict", TypeError),
    error("None rejected", _build([PAIRS[0], {"chosen": "3+3= 6", "rejected": None}]),
          r"Row 1 of the train dataset is malformed\. Column 'rejected' must hold strings", TypeError),
    error("message without content",
          _build([{"prompt": [{"role": "user", "content": "2+2="}], "chosen": [{"role": "assistant", "content": "4"}],
                   "rejected": [{"role": "assistant"}]}]),
          r"Row 0 of the train dataset: message 0 of column 'rejected' has no 'content'"),
    warn("pairs longer than max_length", _build(TOKEN_PAIRS, max_length=8),
         r"Filtered out 2 of 4 train pairs .* max_length=8", then=_two_short_pairs_kept),
    error("every pair longer than max_length", _build(TOKEN_PAIRS, max_length=1),
          r"All 4 train pairs are longer than max_length=1"),
    ok("ShareGPT human/gpt roles", _trains_one_step(SHAREGPT), then=_sharegpt_roles),
    # ---- the model ----
    error("model with several labels", _several_labels, r"num_labels=2"),
    error("model path that does not exist", _build(PAIRS, model="./no/such/model"),
          r"Model './no/such/model' does not exist \(looked for .*; the current directory is ", FileNotFoundError),
    # ---- the config ----
    error("max_length=0", _config(max_length=0), r"max_length"),
    error("center_rewards_coefficient<0", _config(center_rewards_coefficient=-0.1), r"center_rewards_coefficient"),
    error("pad_to_multiple_of=0", _config(pad_to_multiple_of=0), r"pad_to_multiple_of"),
    warn("pad_token (deprecated)", _config(pad_token="<|pad|>"), r"pad_token", FutureWarning),
]


@pytest.mark.parametrize("case", CASES)
def test_bad_reward_input(case, env):
    check(case, env)
