"""What the trainers' tables share: an `env` that builds a trainer on the tiny model from rows, a dataset or raw
inputs, and the row builders that use it."""

from datasets import Dataset

from trl.models.tiny import tiny_model, tiny_tokenizer

from ..trainers.sft_one_step import SMALL
from .harness import error


class TrainerEnv:
    """A row's `tmp_path` and how to build the table's trainer (`trainer_class`, configured by `config_class` with
    `defaults`) on a tiny model. `rows` are good rows that `raw` uses where a row leaves the train dataset alone."""

    trainer_class: type
    config_class: type
    defaults: dict = {}
    rows: list[dict] = []

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path

    def model(self):
        return tiny_model(**SMALL)

    def config(self, **overrides):
        return self.config_class(**{"output_dir": str(self.tmp_path / "out"), "report_to": "none",
                                    "save_strategy": "no", "logging_steps": 1, "seed": 0, **self.defaults,
                                    **overrides})

    def build(self, rows_or_dataset, model=None, eval_dataset=None, ref_model=None, **overrides):
        """A trainer on `rows_or_dataset` (a list of rows is made a `Dataset`); `overrides` go to the config."""
        dataset = Dataset.from_list(rows_or_dataset) if isinstance(rows_or_dataset, list) else rows_or_dataset
        extra = {"ref_model": ref_model} if ref_model is not None else {}
        return self.trainer_class(model=model if model is not None else self.model(), args=self.config(**overrides),
                                  train_dataset=dataset, eval_dataset=eval_dataset, processing_class=tiny_tokenizer(),
                                  **extra)

    def raw(self, **datasets):
        """A trainer on the datasets exactly as given (a list or a dict is not wrapped)."""
        return self.trainer_class(model=self.model(), args=self.config(), processing_class=tiny_tokenizer(),
                                  **{"train_dataset": Dataset.from_list(self.rows), **datasets})


def build(rows, **kwargs):
    return lambda env: env.build(rows, **kwargs)


def raw(**datasets):
    return lambda env: env.raw(**datasets)


def trains_one_step(rows):
    def run(env):
        trainer = env.build(rows, max_steps=1)
        trainer.train()
        return trainer

    return run


def sharegpt_roles_renamed(env, outcome):
    """The first prepared row of a ShareGPT dataset renders `user`/`assistant` turns, never `human`/`gpt`."""
    tokenizer = tiny_tokenizer()
    row = outcome.value.train_dataset[0]
    prompt = tokenizer.decode(row["prompt_ids"])
    answer = tokenizer.decode(row["chosen_ids"] if "chosen_ids" in row else row["completion_ids"])
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n"), prompt
    assert "human" not in prompt + answer and "gpt" not in prompt + answer


def dataset_object_rows(trainer: str, rows: list[dict]) -> list:
    """The rows of every trainer's table about the dataset object itself: a list of rows as the train or the eval
    dataset, or a dict of columns, each a `TypeError` that says how to build a `Dataset`."""
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    return [
        error("list of dicts as train dataset", raw(train_dataset=rows[:1]),
              rf"{trainer} got a list of 1 dicts as its train dataset; it needs a `datasets\.Dataset`\. Wrap the rows: "
              r"`datasets\.Dataset\.from_list\(rows\)`", TypeError),
        error("list of dicts as eval dataset", raw(eval_dataset=rows),
              rf"{trainer} got a list of {len(rows)} dicts as its eval dataset", TypeError),
        error("dict of columns", raw(train_dataset=columns),
              rf"{trainer} got a dict of columns .* as its train dataset.*Dataset\.from_dict", TypeError),
    ]
