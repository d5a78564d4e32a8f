"""Bad inputs to `RewardTrainer` and `RewardConfig`, one row each: a clear error at construction naming the row, column
or argument, a warning where the run goes ahead without the bad pairs, or (ShareGPT roles) a run that goes ahead. The
checks `RewardConfig` shares with every config are rows of test_configs.py."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from trl import RewardConfig, RewardTrainer
from trl.data.tiny import tiny_task_dataset
from trl.models.tiny import tiny_config

from ..trainers.sft_one_step import SMALL
from .envs import TrainerEnv, build, dataset_object_rows, sharegpt_roles_renamed, trains_one_step
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


class Env(TrainerEnv):
    """A row's `tmp_path` and how to build a `RewardTrainer` on a tiny sequence classifier."""

    trainer_class, config_class, rows = RewardTrainer, RewardConfig, PAIRS
    defaults = {"max_steps": 5, "per_device_train_batch_size": 8, "learning_rate": 3e-3, "max_length": 128}

    def model(self):
        return _reward_model()


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def _config(**kwargs):
    return lambda env: RewardConfig(output_dir="out", **kwargs)


def _image_in_eval(env):
    dataset = tiny_task_dataset("preference", num_rows=2).add_column("image", [None, None])
    return env.build(tiny_task_dataset("preference", num_rows=2), eval_dataset=dataset)


def _several_labels(env):
    return env.build(tiny_task_dataset("preference", num_rows=8), model=_reward_model(num_labels=2))


def _two_short_pairs_kept(env, outcome):
    assert outcome.value.train_dataset["chosen_ids"] == [[5, 6, 7], [5, 7]]


CASES = [
    # ---- the dataset ----
    error("image column in the eval dataset", _image_in_eval,
          r"RewardTrainer got an 'image' column in its eval dataset, but it trains Qwen3ForSequenceClassification .*on "
          r"text only"),
    error("images column", build([{**PAIRS[0], "images": []}] * 2),
          r"RewardTrainer got an 'images' column in its train dataset, but it trains Qwen3ForSequenceClassification"),
    *dataset_object_rows("RewardTrainer", PAIRS),
    error("None rejected", build([PAIRS[0], {"chosen": "3+3= 6", "rejected": None}]),
          r"Row 1 of the train dataset is malformed\. Column 'rejected' must hold strings", TypeError),
    error("message without content",
          build([{"prompt": [{"role": "user", "content": "2+2="}], "chosen": [{"role": "assistant", "content": "4"}],
                   "rejected": [{"role": "assistant"}]}]),
          r"Row 0 of the train dataset: message 0 of column 'rejected' has no 'content'"),
    warn("pairs longer than max_length", build(TOKEN_PAIRS, max_length=8),
         r"Filtered out 2 of 4 train pairs .* max_length=8", then=_two_short_pairs_kept),
    error("every pair longer than max_length", build(TOKEN_PAIRS, max_length=1),
          r"All 4 train pairs are longer than max_length=1"),
    ok("ShareGPT human/gpt roles", trains_one_step(SHAREGPT), then=sharegpt_roles_renamed),
    # ---- the model ----
    error("model with several labels", _several_labels, r"num_labels=2"),
    error("model path that does not exist", build(PAIRS, model="./no/such/model"),
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
