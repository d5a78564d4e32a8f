"""Bad inputs to `DPOTrainer`, one row each: a clear error at construction naming the row, column or argument, a
warning where the run can go ahead without the bad rows, or (ShareGPT roles) a run that goes ahead. `DPOConfig`'s own
checks are rows of test_configs.py."""

import pytest
from datasets import Dataset

from trl import DPOConfig, DPOTrainer
from trl.data.tiny import tiny_task_dataset
from trl.guards import TrainingWillNotLearnError
from trl.models.tiny import tiny_model, tiny_tokenizer

from ..trainers.sft_one_step import SMALL
from .harness import check, error, ok, warn


PAIRS = [{"prompt": "2+2=", "chosen": " 4", "rejected": " 5"}, {"prompt": "3+3=", "chosen": " 6", "rejected": " 7"}]
USER = [{"role": "user", "content": "2+2="}]
SHAREGPT = [{"prompt": [{"from": "human", "value": f"{i}+{i}="}], "chosen": [{"from": "gpt", "value": f"{2 * i}"}],
             "rejected": [{"from": "gpt", "value": f"{2 * i + 1}"}]} for i in range(4)]


class Env:
    """A row's `tmp_path` and how to build a `DPOTrainer` on a tiny model from rows, a dataset or other inputs."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path

    def config(self, **overrides):
        values = {"output_dir": str(self.tmp_path / "out"), "max_steps": 3, "per_device_train_batch_size": 4,
                  "learning_rate": 1e-3, "logging_steps": 1, "report_to": "none", "save_strategy": "no",
                  "max_length": 64, "seed": 0, "gradient_checkpointing": False}
        return DPOConfig(**{**values, **overrides})

    def build(self, rows_or_dataset, model=None, ref_model=None, eval_dataset=None, **overrides):
        dataset = Dataset.from_list(rows_or_dataset) if isinstance(rows_or_dataset, list) else rows_or_dataset
        return DPOTrainer(model=model if model is not None else tiny_model(**SMALL), ref_model=ref_model,
                          args=self.config(**overrides), train_dataset=dataset, eval_dataset=eval_dataset,
                          processing_class=tiny_tokenizer())


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def _build(rows, **kwargs):
    return lambda env: env.build(rows, **kwargs)


def _raw(**datasets):
    """The datasets exactly as given (a list or a dict is not wrapped)."""
    def build(env):
        return DPOTrainer(model=tiny_model(**SMALL), args=env.config(), processing_class=tiny_tokenizer(),
                          **{"train_dataset": Dataset.from_list(PAIRS), **datasets})

    return build


def _ref_is_policy(env):
    model = tiny_model(**SMALL)
    return env.build(tiny_task_dataset("preference", num_rows=4), model=model, ref_model=model)


def _partial_reference_columns(env):
    data = tiny_task_dataset("preference", num_rows=4).add_column("ref_chosen_logps", [0.0] * 4)
    return env.build(data, precompute_ref_log_probs=True)


def _one_pair_left(env, outcome):
    assert len(outcome.value.train_dataset) == 1


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


IDENTICAL = [{"prompt": "q", "chosen": " same", "rejected": " same"}, {"prompt": "q", "chosen": " yes", "rejected": " no"}]

CASES = [
    # ---- the dataset ----
    error("missing chosen", _build([{"prompt": "a", "rejected": "b"}]), r"DPOTrainer does not accept"),
    error("prompt and completion types differ",
          _build([{"prompt": "hi", "chosen": [{"role": "assistant", "content": "a"}],
                   "rejected": [{"role": "assistant", "content": "b"}]}]), r"'prompt'", TypeError),
    error("image column", _build([{**PAIRS[0], "images": []}] * 2),
          r"DPOTrainer got an 'images' column in its train dataset, but it trains Qwen3ForCausalLM .*on text only"),
    error("image column in the eval dataset", _build(PAIRS, eval_dataset=Dataset.from_list([{**PAIRS[0], "image": None}])),
          r"DPOTrainer got an 'image' column in its eval dataset"),
    error("None chosen", _build([PAIRS[0], {"prompt": "3+3=", "chosen": None, "rejected": " 5"}]),
          r"Row 1 of the train dataset is malformed\. Column 'chosen' must hold strings", TypeError),
    error("message without content",
          _build([{"prompt": USER, "chosen": [{"role": "assistant"}], "rejected": [{"role": "assistant", "content": "5"}]}]),
          r"Row 0 of the train dataset: message 0 of column 'chosen' has no 'content'"),
    error("list of dicts as train dataset", _raw(train_dataset=PAIRS),
          r"got a list of 2 dicts as its train dataset; it needs a `datasets\.Dataset`\. Wrap the rows: "
          r"`datasets\.Dataset\.from_list\(rows\)`", TypeError),
    error("list of dicts as eval dataset", _raw(eval_dataset=PAIRS[:1]),
          r"got a list of 1 dicts as its eval dataset.*Dataset\.from_list\(rows\)", TypeError),
    error("dict of columns", _raw(train_dataset={"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]}),
          r"DPOTrainer got a dict of columns .* as its train dataset.*Dataset\.from_dict", TypeError),
    error("identical chosen and rejected", _build(IDENTICAL), r"identical chosen and rejected", TrainingWillNotLearnError),
    warn("identical chosen and rejected, guards off", _build(IDENTICAL, guards=False), r"identical chosen and rejected",
         then=_one_pair_left),
    error("prompt fills max_length", _build([{"prompt": "word " * 40, "chosen": " yes", "rejected": " no"}], max_length=16),
          r"prompt of at least max_length=16", TrainingWillNotLearnError),
    error("partial reference columns", _partial_reference_columns, r"ref_rejected_logps"),
    ok("ShareGPT human/gpt roles", _trains_one_step(SHAREGPT), then=_sharegpt_roles),
    # ---- the models ----
    error("ref_model is the policy", _ref_is_policy, r"policy object itself"),
    error("model path that does not exist", _build(PAIRS, model="./no/such/model"),
          r"Model './no/such/model' does not exist \(looked for .*; the current directory is ", FileNotFoundError),
    error("router_aux_loss_coef on a model that is not MoE",
          _build(tiny_task_dataset("preference", num_rows=4), router_aux_loss_coef=0.1), r"not a mixture-of-experts"),
]


@pytest.mark.parametrize("case", CASES)
def test_bad_dpo_input(case, env):
    check(case, env)
