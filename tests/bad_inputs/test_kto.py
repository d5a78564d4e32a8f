"""Bad inputs to `KTOTrainer` and `KTOConfig`, one row each: a clear error at construction naming the row, column or
argument, or (ShareGPT roles) a run that goes ahead. The checks `KTOConfig` shares with every config are rows of
test_configs.py."""

import pytest
from datasets import Dataset

from trl import KTOConfig, KTOTrainer
from trl.data.tiny import tiny_task_dataset
from trl.guards import TrainingWillNotLearnError
from trl.models.tiny import tiny_model

from ..trainers.sft_one_step import SMALL
from .envs import TrainerEnv, build, dataset_object_rows, raw, sharegpt_roles_renamed, trains_one_step
from .harness import check, error, ok, warn


ROWS = [{"prompt": "q", "completion": " a", "label": True}, {"prompt": "r", "completion": " b", "label": False}]
SHAREGPT = [{"prompt": [{"from": "human", "value": f"{i}+{i}="}], "completion": [{"from": "gpt", "value": f"{2 * i}"}],
             "label": i % 2 == 0} for i in range(4)]


class Env(TrainerEnv):
    """A row's `tmp_path` and how to build a `KTOTrainer` on a tiny model from rows, a dataset or other inputs."""

    trainer_class, config_class, rows = KTOTrainer, KTOConfig, ROWS
    defaults = {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "max_length": 64,
                "gradient_checkpointing": False}


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def _config(**kwargs):
    return lambda env: env.config(**kwargs)


def _ref_is_policy(env):
    model = tiny_model(**SMALL)
    return env.build(tiny_task_dataset("unpaired_preference", num_rows=2), model=model, ref_model=model)


def _one_sided(env):
    data = tiny_task_dataset("unpaired_preference", num_rows=8).filter(lambda row: row["label"])
    trainer = env.build(data, max_steps=1)
    trainer.train()
    return trainer


def _undesirable_side_not_logged(env, outcome):
    assert "rewards/rejected" not in outcome.value.state.log_history[0]  # no undesirable row: the side is not logged


LONG_ROW = {"prompt": "word " * 40, "completion": " yes", "label": True}


def _rows_left(n):
    def then(env, outcome):
        assert len(outcome.value.train_dataset) == n
    return then


CASES = [
    # ---- the dataset ----
    # rows whose prompt fills max_length: a few are dropped with a warning, most stop the run (guards=False: a warning)
    error("prompt fills max_length in most rows", build([LONG_ROW, LONG_ROW, ROWS[0]], max_length=16),
          r"2 of 3 train rows have a prompt of at least max_length=16", TrainingWillNotLearnError),
    warn("prompt fills max_length in some rows", build([LONG_ROW, *ROWS], max_length=16),
         r"1 of 3 train rows have a prompt of at least max_length=16 tokens \(e\.g\. rows \[0\].*They are dropped",
         then=_rows_left(2)),
    warn("prompt fills max_length in most rows, guards off",
         build([LONG_ROW, LONG_ROW, *ROWS], max_length=16, guards=False), r"2 of 4 train rows .*max_length=16",
         then=_rows_left(2)),
    warn("prompt fills max_length in most rows, guard ignored by name",
         build([LONG_ROW, LONG_ROW, ROWS[0]], max_length=16, ignore_guards=["prompts_fit"]),
         r"2 of 3 train rows .*'prompts_fit' is in ignore_guards", then=_rows_left(1)),
    error("missing label", lambda env: env.build(tiny_task_dataset("conversational_prompt_completion", num_rows=2)),
          r"missing \['label'\]"),
    error("image column", build([{**ROWS[0], "image": None}]),
          r"KTOTrainer got an 'image' column in its train dataset, but it trains Qwen3ForCausalLM.*remove the 'image' "
          r"column"),
    error("images column in the eval dataset", raw(eval_dataset=Dataset.from_list([{**ROWS[0], "images": []}])),
          r"KTOTrainer got an 'images' column in its eval dataset"),
    *dataset_object_rows("KTOTrainer", ROWS),
    error("None completion of paired data names the pair",
          build([{"prompt": "q", "chosen": " a", "rejected": " b"}, {"prompt": "q", "chosen": " a", "rejected": None}]),
          r"Row 1 of the train dataset is malformed\. Column 'rejected'", TypeError),
    error("None completion", build([ROWS[0], {"prompt": "r", "completion": None, "label": False}]),
          r"Row 1 of the train dataset is malformed\. Column 'completion' must hold strings", TypeError),
    error("message without content",
          build([{"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant"}], "label": True}]),
          r"Row 0 of the train dataset: message 0 of column 'completion' has no 'content'"),
    error("label of the wrong type", build([{"prompt": "q", "completion": " a", "label": "yes"}]),
          r"'label' must hold booleans", TypeError),
    warn("only desirable rows (trains)", _one_sided, r"Every one of the 4 train rows is desirable",
         then=_undesirable_side_not_logged),
    ok("ShareGPT human/gpt roles", trains_one_step(SHAREGPT), then=sharegpt_roles_renamed),
    # ---- the models ----
    error("ref_model is the policy", _ref_is_policy, r"policy object itself"),
    error("model path that does not exist", build(ROWS, model="./no/such/model"),
          r"Model './no/such/model' does not exist \(looked for .*; the current directory is ", FileNotFoundError),
    error("router_aux_loss_coef on a model that is not MoE",
          build(tiny_task_dataset("unpaired_preference", num_rows=4), router_aux_loss_coef=0.1),
          r"not a mixture-of-experts"),
    # ---- the config ----
    error("unknown loss_type", _config(loss_type="ktoo"), r"'ktoo'; allowed: \['apo_zero_unpaired', 'kto'\]"),
    *[error(f"{field}=0", _config(**{field: 0.0}), rf"`{field}` must be > 0")
      for field in ("desirable_weight", "undesirable_weight", "beta")],
    error("sync_ref_model with precompute", _config(sync_ref_model=True, precompute_ref_log_probs=True),
          r"sync_ref_model"),
]


@pytest.mark.parametrize("case", CASES)
def test_bad_kto_input(case, env):
    check(case, env)
