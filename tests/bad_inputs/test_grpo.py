"""Bad inputs to `GRPOTrainer` and `RLOOTrainer`, one row each (a row that applies to both is checked with both): a
clear error at construction, or at the first generation batch for what only the reward functions' outputs show; a
warning, or an error from the guards (`trl.guards`), for runs that learn little or nothing, after a few steps on the
tiny model. Their configs' shared checks are rows of test_configs.py."""

import dataclasses
import math

import pytest
import torch
from datasets import Dataset

from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.guards import TrainingWillNotLearnError
from trl.models.tiny import tiny_model, tiny_tokenizer
from trl.rollout import Rollout

from ..trainers.sft_one_step import SMALL
from ..trainers.test_grpo_trainer import _config, _never_ending, _prompts, vowels
from .harness import check, error, ok, warn


KINDS = {"grpo": (GRPOTrainer, GRPOConfig), "rloo": (RLOOTrainer, RLOOConfig)}


class Env:
    """A row's `tmp_path` and trainer class (GRPO or RLOO), and how to build one on a tiny model. As in the trainer
    tests, `guards` is off unless a row turns it on, 8 completions of 8 tokens make a generation batch, and the
    reward counts vowels (it varies between completions of a random model)."""

    def __init__(self, tmp_path, kind):
        self.tmp_path = tmp_path
        self.trainer_class, self.config_class = KINDS[kind]

    def config(self, **overrides):
        return _config(self.tmp_path, self.config_class, **overrides)

    def build(self, dataset=None, rows=None, reward_funcs=vowels, model=None, **overrides):
        """`rows` (a list of dicts) become a `Dataset`; `dataset` is passed as it is."""
        if rows is not None:
            dataset = Dataset.from_list(rows)
        return self.trainer_class(model=model if model is not None else tiny_model(seed=0, **SMALL),
                                  reward_funcs=reward_funcs, args=self.config(**overrides),
                                  train_dataset=_prompts() if dataset is None else dataset,
                                  processing_class=tiny_tokenizer())

    def train(self, *, never_ending=False, eos_everywhere=False, **kwargs):
        """Build and train; `never_ending`: no token ends a completion (every one is truncated); `eos_everywhere`:
        every token ends one (none is)."""
        trainer = self.build(**kwargs)
        if never_ending:
            _never_ending(trainer)
        if eos_everywhere:
            trainer.sampling = dataclasses.replace(trainer.sampling, eos_token_ids=tuple(range(448)))
        self.trainer = trainer
        trainer.train()
        return trainer


@pytest.fixture
def env(tmp_path, request):
    return Env(tmp_path, request.param)


def _build(**kwargs):
    return lambda env: env.build(**kwargs)


def _train(**kwargs):
    return lambda env: env.train(**kwargs)


def _config_of(**kwargs):
    return lambda env: env.config(**kwargs)


def _rows(change):
    """The tiny prompt rows as a list of dicts, with `change(rows)` applied."""
    rows = _prompts(8).to_list()
    change(rows)
    return rows


def _prompt_without_content(rows):
    rows[5]["prompt"] = [{"role": "user"}]


def _prompt_none(rows):
    rows[3]["prompt"] = None


def _some_nan(completions, **kwargs):
    return [float("nan") if i < 2 else float(i % 3) for i in range(len(completions))]


def _all_nan(completions, **kwargs):
    return [float("nan")] * len(completions)


def _constant(completions, **kwargs):
    return [1.0] * len(completions)


def _broken(completions, **kwargs):
    raise KeyError("solution")


def _rollout(truncated):
    n = len(truncated)
    return Rollout(prompt_ids=torch.zeros(n, 1, dtype=torch.long), prompt_mask=torch.ones(n, 1),
                   completion_ids=torch.zeros(n, 1, dtype=torch.long), completion_mask=torch.ones(n, 1),
                   is_truncated=torch.tensor(truncated))


def _guard_batches(truncated, rewards, batches=2, **overrides):
    """The rollout guards, called on `batches` identical generation batches (no generation: the completions' lengths
    and rewards are given)."""
    def build(env):
        trainer = env.build(guards=True, guard_patience=2, **overrides)
        for _ in range(batches):
            trainer._check_rollout_guards(_rollout(truncated), torch.tensor(rewards).unsqueeze(1))
        return trainer

    return build


def _mostly_truncated_and_one_reward(env):
    # all completions but one truncated and 15 of 16 groups with one reward, for guard_patience batches: a warning each
    # (the TRL failure of 97-99% truncation with reward 0); all of them stops the run (rows above)
    trainer = env.build(guards=True, guard_patience=2)
    n = 16 * trainer.args.num_generations
    rewards = [0.0] * (n - 1) + [1.0]  # only the last group has two different rewards
    rollout, reward_tensor = _rollout([True] * (n - 1) + [False]), torch.tensor(rewards).unsqueeze(1)
    trainer._check_rollout_guards(rollout, reward_tensor)  # the first batch of the streak: no warning yet
    trainer._check_rollout_guards(rollout, reward_tensor)
    return n


def _mostly_warnings(env, outcome):
    n = outcome.value
    assert any(f"({(n - 1) / n:.0%} in the last) hit max_completion_length" in m for m in outcome.warnings)
    assert any("got one reward each (last batch: 94%" in m for m in outcome.warnings), outcome.warnings


def _warned_at_every_batch_and_trained(env, outcome):
    messages = [m for m in outcome.warnings if "hit max_completion_length=8" in m]
    assert len(messages) == 3, messages  # batches 2, 3 and 4 of the streak
    assert "Every completion of the last 4 generation batches hit max_completion_length=8" in messages[-1]
    assert "Raise max_completion_length" in messages[-1] and "training goes on" in messages[-1]
    assert outcome.value.state.global_step == 4


def _reached_step(step):
    def then(env, outcome):
        assert env.trainer.state.global_step == step

    return then


def _no_warning(env, outcome):
    assert not outcome.warnings, outcome.warnings


def _zero_loss(env, outcome):
    assert [log["loss"] for log in outcome.value.state.log_history if "loss" in log] == [0.0]


def _rewards_logged(env, outcome):
    log = next(log for log in outcome.value.state.log_history if "loss" in log)
    assert math.isfinite(log["loss"]) and math.isfinite(log["rewards/_some_nan/mean"])


def _sharegpt_roles(env, outcome):
    text = tiny_tokenizer().decode(outcome.value.train_dataset[0]["prompt_ids"])
    assert text.startswith("<|im_start|>user\nsay 0") and "human" not in text, text


SHAREGPT = [{"prompt": [{"from": "human", "value": f"say {i}"}]} for i in range(8)]

BOTH = [
    # ---- the dataset ----
    error("missing prompt column", _build(rows=[{"question": "hi"}] * 8), r"'prompt' column"),
    error("image column", _build(dataset=_prompts(8).add_column("image", [None] * 8)),
          r"got an 'image' column in its train dataset, but it trains Qwen3ForCausalLM .*on text only.*remove the "
          r"'image' column"),
    error("images column in the eval dataset",
          lambda env: env.trainer_class(model=tiny_model(seed=0, **SMALL), reward_funcs=vowels, args=env.config(),
                                        train_dataset=_prompts(), eval_dataset=_prompts(4).add_column("images", [[]] * 4),
                                        processing_class=tiny_tokenizer()),
          r"got an 'images' column in its eval dataset"),
    error("list of dicts", _build(dataset=_prompts(8).to_list()),
          r"got a list of 8 dicts as its train dataset; it needs a `datasets\.Dataset`\. Wrap the rows: "
          r"`datasets\.Dataset\.from_list\(rows\)`", TypeError),
    error("dict of columns", _build(dataset=_prompts(8).to_dict()),
          r"got a dict of columns \['answer', 'prompt'\] as its train dataset.*Dataset\.from_dict", TypeError),
    error("None prompt", _build(rows=_rows(_prompt_none)),
          r"Row 3 of the train dataset is malformed\. Column 'prompt' must hold a list of \{'role', 'content'\} "
          r"messages", TypeError),
    error("None prompt (standard)", _build(rows=[{"prompt": "a"}] * 7 + [{"prompt": None}]),
          r"Row 7 of the train dataset is malformed\. Column 'prompt' must hold strings", TypeError),
    error("message without content", _build(rows=_rows(_prompt_without_content)),
          r"Row 5 of the train dataset: message 0 of column 'prompt' has no 'content'"),
    error("too few prompts for a generation batch", _build(dataset=_prompts(1)), r"needs 2"),
    ok("ShareGPT human/gpt roles", _train(rows=SHAREGPT, max_steps=1), then=_sharegpt_roles),
    # ---- the model ----
    error("model path that does not exist", _build(model="./no/such/model"),
          r"Model './no/such/model' does not exist \(looked for .*; the current directory is ", FileNotFoundError),
    error("prompt longer than the context",
          lambda env: env.build(model=tiny_model(seed=0, **SMALL, max_position_embeddings=24)),
          r"max_completion_length=8"),
    error("unknown generation_kwargs", _build(generation_kwargs={"num_beams": 4}), r"num_beams"),
    # ---- reward functions given by name ----
    error("misspelt reward name", _build(reward_funcs="think_fromat_reward"),
          r"Unknown reward function 'think_fromat_reward' \(reward_funcs\[0\]\): it is not a known reward function.*"
          r"think_format_reward"),
    error("reward factory by name", _build(reward_funcs=["think_format_reward", "get_soft_overlong_punishment"]),
          r"'get_soft_overlong_punishment' \(reward_funcs\[1\]\) is a factory"),
    error("dotted path to a missing module", _build(reward_funcs="no_such_module.reward"),
          r"Reward function 'no_such_module\.reward' \(reward_funcs\[0\]\): there is no module 'no_such_module'"),
    # ---- what the reward functions return (first generation batch) ----
    error("reward function that raises", _train(reward_funcs=_broken), r"_broken", RuntimeError),
    error("reward function of the wrong length", _train(reward_funcs=lambda completions, **kw: [1.0]),
          r"<lambda>.*1 reward"),
    warn("reward function returning NaN for some rows", _train(reward_funcs=_some_nan, max_steps=1),
         r"Reward function '_some_nan' \(reward_funcs\[0\]\) returned NaN for 2 of 8 completions \(rows \[0, 1\]\)",
         then=_rewards_logged),
    error("reward function returning NaN for every row", _train(reward_funcs=_all_nan, guards=True),
          r"No completion of this generation batch got a usable reward: every reward with a non-zero weight is NaN "
          r"or None \(8 NaN", TrainingWillNotLearnError),
    warn("reward function returning NaN for every row, guards off", _train(reward_funcs=_all_nan, max_steps=1),
         r"No completion of this generation batch got a usable reward"),
    # ---- runs with no gradient signal (guards) ----
    error("every completion truncated and masked out of the loss",
          _train(never_ending=True, mask_truncated_completions=True, max_steps=1, guards=True),
          r"No completion token of this optimiser step enters the loss \(every completion was truncated and "
          r"mask_truncated_completions=True\)", TrainingWillNotLearnError),
    warn("every completion truncated and masked out of the loss, guards off",
         _train(never_ending=True, mask_truncated_completions=True, max_steps=1), r"mask_truncated_completions",
         then=_zero_loss),
    error("every group with one reward", _train(reward_funcs=_constant, eos_everywhere=True, guards=True,
                                                guard_patience=2, max_steps=3),
          r"In each of the last 2 generation batches every group of 4 completions got the same reward",
          TrainingWillNotLearnError, then=_reached_step(1)),
    # ---- the config ----
    error("generation batch not whole groups", _config_of(per_device_train_batch_size=8, num_generations=3),
          r"whole groups of num_generations=3"),
    error("num_generations below two", _config_of(num_generations=1), r"at least 2"),
    error("use_vllm", _config_of(use_vllm=True), r"vLLM"),
]

# The rollout guards on given generation batches, and longer runs: checked with GRPO (the guards are the online base
# class's, shared by both).
GRPO_ONLY = [
    error("unknown loss_type", _config_of(loss_type="nope"), r"nope"),
    error("every loss token masked, whatever the rewards",
          _guard_batches([True] * 8, list(range(8)), mask_truncated_completions=True),
          r"no completion token enters the loss: every completion hit max_completion_length=8 and "
          r"mask_truncated_completions", TrainingWillNotLearnError),
    error("no group with both different rewards and a loss token",
          _guard_batches([True] * 4 + [False] * 4, [0.0, 1.0, 2.0, 3.0, 1.0, 1.0, 1.0, 1.0],
                         mask_truncated_completions=True),
          r"no group.*both", TrainingWillNotLearnError),
    ok("the same batches without masking teach",
       _guard_batches([True] * 4 + [False] * 4, [0.0, 1.0, 2.0, 3.0, 1.0, 1.0, 1.0, 1.0], batches=3),
       then=_no_warning),
    error("every completion truncated and one reward per group", _guard_batches([True] * 8, [1.0] * 8),
          r"same reward", TrainingWillNotLearnError),
    warn("mostly truncated and mostly one reward per group", _mostly_truncated_and_one_reward,
         r"hit max_completion_length", then=_mostly_warnings),
    warn("every completion truncated, rewards vary (trains)",
         _train(never_ending=True, guards=True, guard_patience=2, max_steps=4),
         r"Every completion of the last .* generation batches hit max_completion_length",
         then=_warned_at_every_batch_and_trained),
    ok("one reward for every completion: left to the rollout guards",
       _train(reward_funcs=_constant, guards=True, guard_patience=10, max_steps=4), then=_reached_step(4)),
]

ROWS = [pytest.param(kind, *p.values, id=f"{kind}-{p.id}", marks=p.marks) for p in BOTH for kind in KINDS] + \
       [pytest.param("grpo", *p.values, id=f"grpo-{p.id}", marks=p.marks) for p in GRPO_ONLY]


@pytest.mark.parametrize(("env", "case"), ROWS, indirect=["env"])
def test_bad_online_input(env, case):
    check(case, env)
