"""Bad inputs to `DPOTrainer`, one row each: a clear error at construction naming the row, column or argument, a
warning where the run can go ahead without the bad rows, or (ShareGPT roles) a run that goes ahead. `DPOConfig`'s own
checks are rows of test_configs.py."""

import pytest
from datasets import Dataset

from trl import DPOConfig, DPOTrainer
from trl.data.tiny import tiny_task_dataset
from trl.guards import TrainingWillNotLearnError
from trl.models.tiny import tiny_model

from ..trainers.sft_one_step import SMALL
from .envs import TrainerEnv, build, dataset_object_rows, sharegpt_roles_renamed, trains_one_step
from .harness import check, error, ok, warn


PAIRS = [{"prompt": "2+2=", "chosen": " 4", "rejected": " 5"}, {"prompt": "3+3=", "chosen": " 6", "rejected": " 7"}]
USER = [{"role": "user", "content": "2+2="}]
SHAREGPT = [{"prompt": [{"from": "human", "value": f"{i}+{i}="}], "chosen": [{"from": "gpt", "value": f"{2 * i}"}],
             "rejected": [{"from": "gpt", "value": f"{2 * i + 1}"}]} for i in range(4)]


class Env(TrainerEnv):
    """A row's `tmp_path` and how to build a `DPOTrainer` on a tiny model from rows, a dataset or other inputs."""

    trainer_class, config_class, rows = DPOTrainer, DPOConfig, PAIRS
    defaults = {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "max_length": 64,
                "gradient_checkpointing": False}


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def _ref_is_policy(env):
    model = tiny_model(**SMALL)
    return env.build(tiny_task_dataset("preference", num_rows=4), model=model, ref_model=model)


def _partial_reference_columns(env):
    data = tiny_task_dataset("preference", num_rows=4).add_column("ref_chosen_logps", [0.0] * 4)
    return env.build(data, precompute_ref_log_probs=True)


def _one_pair_left(env, outcome):
    assert len(outcome.value.train_dataset) == 1


def _pairs_left(n):
    def then(env, outcome):
        assert len(outcome.value.train_dataset) == n
    return then


LONG_PAIR = {"prompt": "word " * 40, "chosen": " yes", "rejected": " no"}
IDENTICAL = [{"prompt": "q", "chosen": " same", "rejected": " same"}, {"prompt": "q", "chosen": " yes", "rejected": " no"}]

CASES = [
    # ---- the dataset ----
    error("missing chosen", build([{"prompt": "a", "rejected": "b"}]), r"DPOTrainer does not accept"),
    error("prompt and completion types differ",
          build([{"prompt": "hi", "chosen": [{"role": "assistant", "content": "a"}],
                   "rejected": [{"role": "assistant", "content": "b"}]}]), r"'prompt'", TypeError),
    error("image column", build([{**PAIRS[0], "images": []}] * 2),
          r"DPOTrainer got an 'images' column in its train dataset, but it trains Qwen3ForCausalLM .*on text only"),
    error("image column in the eval dataset", build(PAIRS, eval_dataset=Dataset.from_list([{**PAIRS[0], "image": None}])),
          r"DPOTrainer got an 'image' column in its eval dataset"),
    error("None chosen", build([PAIRS[0], {"prompt": "3+3=", "chosen": None, "rejected": " 5"}]),
          r"Row 1 of the train dataset is malformed\. Column 'chosen' must hold strings", TypeError),
    error("message without content",
          build([{"prompt": USER, "chosen": [{"role": "assistant"}], "rejected": [{"role": "assistant", "content": "5"}]}]),
          r"Row 0 of the train dataset: message 0 of column 'chosen' has no 'content'"),
    *dataset_object_rows("DPOTrainer", PAIRS),
    error("identical chosen and rejected", build(IDENTICAL), r"identical chosen and rejected", TrainingWillNotLearnError),
    warn("identical chosen and rejected, guards off", build(IDENTICAL, guards=False), r"identical chosen and rejected",
         then=_one_pair_left),
    error("prompt fills max_length", build([LONG_PAIR], max_length=16), r"prompt of at least max_length=16",
          TrainingWillNotLearnError),
    # a few such rows are dropped with a warning naming how many; most of them stop the run (guards=False: a warning)
    warn("prompt fills max_length in some rows", build([LONG_PAIR, *PAIRS], max_length=16),
         r"1 of 3 train rows have a prompt of at least max_length=16 tokens \(e\.g\. rows \[0\].*They are dropped",
         then=_pairs_left(2)),
    error("prompt fills max_length in most rows", build([LONG_PAIR, LONG_PAIR, PAIRS[0]], max_length=16),
          r"2 of 3 train rows have a prompt of at least max_length=16", TrainingWillNotLearnError),
    warn("prompt fills max_length in most rows, guards off", build([LONG_PAIR, LONG_PAIR, PAIRS[0]], max_length=16,
                                                                   guards=False),
         r"2 of 3 train rows have a prompt of at least max_length=16", then=_pairs_left(1)),
    warn("prompt fills max_length in most rows, guard ignored by name",
         build([LONG_PAIR, LONG_PAIR, PAIRS[0]], max_length=16, ignore_guards=["prompts_fit"]),
         r"2 of 3 train rows .*'prompts_fit' is in ignore_guards", then=_pairs_left(1)),
    error("ignore_guards with an unknown name", build(PAIRS, ignore_guards=["prompt_fits"]),
          r"Unknown guard name\(s\) in `ignore_guards`: \['prompt_fits'\]\. The guards are: .*prompts_fit"),
    error("partial reference columns", _partial_reference_columns, r"ref_rejected_logps"),
    ok("ShareGPT human/gpt roles", trains_one_step(SHAREGPT), then=sharegpt_roles_renamed),
    # ---- the models ----
    error("ref_model is the policy", _ref_is_policy, r"policy object itself"),
    error("model path that does not exist", build(PAIRS, model="./no/such/model"),
          r"Model './no/such/model' does not exist \(looked for .*; the current directory is ", FileNotFoundError),
    error("router_aux_loss_coef on a model that is not MoE",
          build(tiny_task_dataset("preference", num_rows=4), router_aux_loss_coef=0.1), r"not a mixture-of-experts"),
]


@pytest.mark.parametrize("case", CASES)
def test_bad_dpo_input(case, env):
    check(case, env)
