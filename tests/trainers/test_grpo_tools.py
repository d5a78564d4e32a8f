"""GRPOTrainer with `tools` and `environment_factory`: multi-turn rollouts on the tiny model
(trl/agents/multi_turn.py, docs/agents.md).

A random tiny model never writes a tool call, so most tests script the backend's `generate`: in the first round some
rows call `multiply(a=3, b=4)` and the others answer; after a tool turn every row answers. One test trains with real
generation."""

import dataclasses

import pytest
import torch
from datasets import Dataset

from trl import GRPOConfig, GRPOTrainer
from trl.chat_template_utils import chatml_training_chat_template
from trl.models.tiny import tiny_model, tiny_tokenizer
from trl.rollout import Rollout

from .sft_one_step import SMALL
from .test_grpo_trainer import _config, _logged, _moved, _params, vowels

CALL = '<tool_call>\n{"name": "multiply", "arguments": {"a": 3, "b": 4}}\n</tool_call><|im_end|>'
ANSWER = "It is 12.<|im_end|>"
FINAL = "So 12.<|im_end|>"
SUFFIX = "\n<|im_start|>tool\n12<|im_end|>\n<|im_start|>assistant\n"
SAMPLING_LOGP = -0.5


def _call(name, **arguments):
    import json

    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call><|im_end|>'


def _tool_tokenizer():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = chatml_training_chat_template  # renders tools, tool calls and tool results
    return tokenizer


def _questions(num_rows=16):
    return Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {i} times 4?"}], "number": i}
                              for i in range(num_rows)])


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class Calculator:
    """The tools of a test, recording the calls they receive."""

    def __init__(self):
        self.calls = []

    def tools(self):
        calls = self.calls

        def multiply(a: int, b: int) -> int:
            """Multiply two integers.

            Args:
                a: The first factor.
                b: The second factor.
            """
            calls.append((a, b))
            return a * b

        def explode(x: int) -> int:
            """Always fails.

            Args:
                x: Ignored.
            """
            raise RuntimeError("kaboom")

        return [multiply, explode]


class Scripted:
    """Stands in for `backend.generate`: the completion of sample `k` of a prompt is `first(k)` before any tool turn
    and `later(k)` after one. Records `(prompt_ids, n, max_new_tokens)` of every call."""

    def __init__(self, tokenizer, first=None, later=None):
        self.tokenizer, self.calls = tokenizer, []
        self.first = first or (lambda k: CALL if k % 2 == 0 else ANSWER)
        self.later = later or (lambda k: FINAL)

    def __call__(self, prompt_ids, n, sampling, generator=None):
        self.calls.append(([list(p) for p in prompt_ids], n, sampling.max_completion_length))
        rows, prompts = [], []
        for prompt in prompt_ids:
            after_tool = "<|im_start|>tool" in self.tokenizer.decode(prompt)
            for k in range(n):
                text = self.later(k) if after_tool else self.first(k)
                rows.append(_ids(self.tokenizer, text)[: sampling.max_completion_length])
                prompts.append(list(prompt))
        width, prompt_width = max(map(len, rows)), max(map(len, prompts))
        eos = set(sampling.eos_token_ids)
        return Rollout(
            prompt_ids=torch.tensor([[0] * (prompt_width - len(p)) + p for p in prompts]),
            prompt_mask=torch.tensor([[0] * (prompt_width - len(p)) + [1] * len(p) for p in prompts]),
            completion_ids=torch.tensor([r + [0] * (width - len(r)) for r in rows]),
            completion_mask=torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
            is_truncated=torch.tensor([r[-1] not in eos for r in rows]),
            sampling_logps=torch.tensor([[SAMPLING_LOGP] * len(r) + [0.0] * (width - len(r)) for r in rows]),
        )


def lengths(completions, **kwargs):
    return [float(len(c)) for c in completions]  # 1 (answered) or 3 (called the tool) messages: varies in a group


def _trainer(tmp_path, monkeypatch=None, tools=None, reward_funcs=lengths, script=None, **overrides):
    values = {"max_completion_length": 256, **overrides}
    tokenizer = _tool_tokenizer()
    trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=reward_funcs,
                          args=_config(tmp_path, **values), train_dataset=_questions(), processing_class=tokenizer,
                          tools=tools if tools is not None else Calculator().tools())
    if monkeypatch is not None:
        trainer.script = script(tokenizer) if script else Scripted(tokenizer)
        monkeypatch.setattr(trainer.backend, "generate", trainer.script)
    return trainer


def _rows(trainer, prompts=(0, 1), n=4):
    return [trainer.train_dataset[i] for i in prompts for _ in range(n)]


def _row_ids(rollout, i):
    n = int(rollout.completion_lengths[i])
    return rollout.completion_ids[i, :n].tolist(), rollout.tool_mask[i, :n].tolist()


def test_multi_turn_rollout_is_token_exact(tmp_path, monkeypatch):
    calculator = Calculator()
    trainer = _trainer(tmp_path, monkeypatch, tools=calculator.tools())
    tokenizer, rows = trainer.processing_class, _rows(trainer)
    rollout = trainer._sample(rows, trainer._generator, mode="train")
    call, answer, final, suffix = (_ids(tokenizer, t) for t in (CALL, ANSWER, FINAL, SUFFIX))

    assert calculator.calls == [(3, 4)] * 4  # samples 0 and 2 of each prompt called, with the parsed arguments
    # round 1: every row from its prompt; round 2: the calling rows, from prompt + their round-1 ids + tool suffix
    assert len(trainer.script.calls) == 2
    prompts, n, _ = trainer.script.calls[1]
    second_prompts = [p for p in prompts for _ in range(n)]  # identical contexts share one prefill
    calling = [i for i in range(8) if i % 2 == 0]
    assert len(second_prompts) == len(calling)
    for prompt, i in zip(second_prompts, calling):
        prompt_ids = rows[i]["prompt_ids"]
        assert prompt[: len(prompt_ids) + len(call)] == prompt_ids + call  # generated ids kept, not re-encoded
        tool_turn = prompt[len(prompt_ids) + len(call):]
        assert tokenizer.decode(tool_turn) == SUFFIX
        assert prompt == prompt_ids + call + tool_turn
    # the final rows: generated + tool suffix + generated, with the tool suffix masked
    for i in range(8):
        ids, mask = _row_ids(rollout, i)
        if i % 2 == 0:
            tool_turn = second_prompts[calling.index(i)][len(rows[i]["prompt_ids"]) + len(call):]
            assert ids == call + tool_turn + final
            assert mask == [1] * len(call) + [0] * len(tool_turn) + [1] * len(final)
        else:
            assert ids == answer and mask == [1] * len(answer)
        logps = rollout.sampling_logps[i, : len(ids)]
        assert logps.tolist() == [SAMPLING_LOGP if m else 0.0 for m in mask]
    assert not rollout.is_truncated.any() and rollout.completion_mask.sum(-1).tolist() == rollout.completion_lengths.tolist()
    assert len(tool_turn) == len(suffix)
    # what the rewards see: the messages of the completion
    assert rollout.completions[0] == [
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "multiply", "arguments": {"a": 3, "b": 4}}}]},
        {"role": "tool", "name": "multiply", "content": "12"},
        {"role": "assistant", "content": "So 12."},
    ]
    assert rollout.completions[1] == [{"role": "assistant", "content": "It is 12."}]
    assert rollout.generated_lengths.tolist() == [len(call) + len(final), len(answer)] * 4


def test_training_with_tools(tmp_path, monkeypatch):
    seen = []

    def reward(prompts, completions, completion_ids, number, **kwargs):
        seen.append((completions, completion_ids, number))
        return lengths(completions)

    trainer = _trainer(tmp_path, monkeypatch, reward_funcs=reward, beta=0.04)
    before = _params(trainer.model)
    trainer.train()
    assert _moved(before, trainer.model)
    completions, completion_ids, numbers = seen[0]
    assert [len(c) for c in completions] == [3, 1] * 4 and numbers[0] == numbers[3]
    assert completions[0][1]["role"] == "tool" and completions[0][1]["content"] == "12"
    tokenizer = trainer.processing_class
    call, answer, final = (_ids(tokenizer, t) for t in (CALL, ANSWER, FINAL))
    assert completion_ids[0][: len(call)] == call and completion_ids[0][-len(final):] == final  # the full ids
    assert completion_ids[1] == answer
    for log in _logged(trainer):
        assert log["tools/call_frequency"] == 0.5 and log["tools/failure_frequency"] == 0.0
        # lengths count the generated tokens only
        assert log["completions/mean_length"] == pytest.approx((len(call) + len(final) + len(answer)) / 2)
        assert log["completions/max_length"] == len(call) + len(final)


def test_tool_tokens_have_no_weight_in_the_loss(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, monkeypatch, beta=0.04, entropy_coef=0.01, max_steps=1)
    trainer.train()
    micro = trainer._buffer[0]
    tool = (micro.tool_mask == 0) & (micro.completion_mask == 1)
    assert tool.any()
    mask = trainer._loss_mask(micro)
    assert not mask[tool].any() and mask[micro.tool_mask == 1].all()
    logps = (torch.randn(micro.completion_ids.shape) - 1).requires_grad_()
    entropy = torch.rand(micro.completion_ids.shape).requires_grad_()
    loss, _ = trainer._loss(micro, logps, entropy, mask)
    loss.backward()
    # neither the policy term, the KL (beta > 0) nor the entropy bonus sees a tool-result token
    assert torch.all(logps.grad[tool] == 0) and torch.all(entropy.grad[tool] == 0)
    assert logps.grad[mask.bool()].abs().sum() > 0 and entropy.grad[mask.bool()].abs().sum() > 0
    # changing the reference log-probs of tool tokens (the KL term's input there) changes nothing
    changed = dataclasses.replace(micro, ref_logps=torch.where(tool, micro.ref_logps - 3.0, micro.ref_logps))
    again, _ = trainer._loss(changed, logps.detach(), entropy.detach(), mask)
    assert torch.equal(again, loss.detach())


def test_failed_calls_are_error_messages_and_counted(tmp_path, monkeypatch):
    calculator = Calculator()
    first = {0: _call("divide", a=1, b=2), 1: _call("explode", x=1), 2: CALL, 3: ANSWER}

    def script(tokenizer):
        return Scripted(tokenizer, first=lambda k: first[k])

    trainer = _trainer(tmp_path, monkeypatch, tools=calculator.tools(), script=script, max_steps=1)
    rollout = trainer._sample(_rows(trainer), trainer._generator, mode="train")
    unknown, raised = rollout.completions[0][1], rollout.completions[1][1]
    assert unknown["role"] == "tool" and "error" in unknown["content"] and "divide" in unknown["content"]
    assert raised["role"] == "tool" and "error" in raised["content"] and "kaboom" in raised["content"]
    assert rollout.completions[0][2] == {"role": "assistant", "content": "So 12."}  # the model saw the error
    trainer.train()
    log = _logged(trainer)[0]
    assert log["tools/call_frequency"] == 0.75 and log["tools/failure_frequency"] == pytest.approx(2 / 3)


def _always_calling(tokenizer):
    return Scripted(tokenizer, first=lambda k: CALL, later=lambda k: CALL)


def test_max_tool_calling_iterations_stops_the_rounds(tmp_path, monkeypatch):
    calculator = Calculator()
    trainer = _trainer(tmp_path, monkeypatch, tools=calculator.tools(), script=_always_calling,
                       max_tool_calling_iterations=1)
    rollout = trainer._sample(_rows(trainer), trainer._generator, mode="train")
    assert len(trainer.script.calls) == 2 and len(calculator.calls) == 8  # one round of calls, then a last turn
    assert all(len(c) == 3 and c[2]["tool_calls"] for c in rollout.completions)  # the last calls are not run
    assert not rollout.is_truncated.any()


def test_length_budget_is_respected(tmp_path, monkeypatch):
    tokenizer = _tool_tokenizer()
    call, suffix = len(_ids(tokenizer, CALL)), len(_ids(tokenizer, SUFFIX))
    budget = 2 * call + suffix + 5  # a second call fits, its tool turn does not
    calculator = Calculator()
    trainer = _trainer(tmp_path, monkeypatch, tools=calculator.tools(), script=_always_calling,
                       max_completion_length=budget)
    rollout = trainer._sample(_rows(trainer), trainer._generator, mode="train")
    assert rollout.completion_lengths.tolist() == [2 * call + suffix] * 8  # the second tool turn is rolled back
    # the second tool turn cannot fit even with empty results: it is rolled back before its calls run
    assert rollout.is_truncated.all() and len(calculator.calls) == 8
    assert all([m["role"] for m in c] == ["assistant", "tool", "assistant"] for c in rollout.completions)
    assert [n for _, _, n in trainer.script.calls] == [budget, budget - call - suffix]

    # a budget that ends inside the second generated turn cuts it there
    trainer = _trainer(tmp_path, monkeypatch, tools=Calculator().tools(), script=_always_calling,
                       max_completion_length=call + suffix + 10)
    rollout = trainer._sample(_rows(trainer), trainer._generator, mode="train")
    assert rollout.completion_lengths.tolist() == [call + suffix + 10] * 8 and rollout.is_truncated.all()
    assert rollout.generated_lengths.tolist() == [call + 10] * 8


def test_real_generation_with_tools_trains(tmp_path):
    trainer = _trainer(tmp_path, reward_funcs=vowels, max_completion_length=8)
    before = _params(trainer.model)
    trainer.train()
    assert _moved(before, trainer.model)
    logs = _logged(trainer)
    assert len(logs) == 2 and all(log["tools/call_frequency"] == 0.0 for log in logs)


# ---- environment_factory ------------------------------------------------------------------------------------------


class Counter:
    """A counter the model increments; the reward is the count."""

    def reset(self, **row):
        self.count, self.number = 0, row["number"]
        return f" Start at {row['number']}."

    def increment(self, step: int) -> int:
        """Add to the counter.

        Args:
            step: How much to add.
        """
        self.count += step
        return self.count

    def get_reward(self) -> float:
        return float(self.count)


def _counting(tokenizer):
    return Scripted(tokenizer, first=lambda k: _call("increment", step=2) if k % 2 == 0 else ANSWER)


def _environment_trainer(tmp_path, monkeypatch, environment_factory=Counter, reward_funcs=None, dataset=None,
                         **overrides):
    tokenizer = _tool_tokenizer()
    trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=reward_funcs,
                          args=_config(tmp_path, max_completion_length=256, **overrides),
                          train_dataset=dataset or _questions(), processing_class=tokenizer,
                          environment_factory=environment_factory)
    trainer.script = _counting(tokenizer)
    monkeypatch.setattr(trainer.backend, "generate", trainer.script)
    return trainer


def test_environment_factory_trains(tmp_path, monkeypatch):
    seen = []

    instances = []

    def counts(completions, environments, number, **kwargs):
        seen.append(([e.count for e in environments], [e.number for e in environments], number))
        instances.append([id(e) for e in environments])
        return [0.0] * len(completions)

    trainer = _environment_trainer(tmp_path, monkeypatch, reward_funcs=[counts])
    assert trainer.reward_scorer.names == ["counts", "Counter"]
    trainer.train()
    tokenizer = trainer.processing_class
    first_prompts = tokenizer.batch_decode(trainer.script.calls[0][0])
    # the prompt is rendered with the environment's tools, and what reset returned is appended to the user message
    assert all('"name": "increment"' in p and "Start at" in p for p in first_prompts)
    environment_counts, environment_numbers, numbers = seen[0]
    assert environment_counts == [2, 0] * 4 and environment_numbers == numbers
    for log in _logged(trainer):
        assert log["rewards/Counter/mean"] == 1.0 and log["tools/call_frequency"] == 0.5
    assert all("environments" not in micro.columns for micro in trainer._buffer)  # not kept in the buffer
    assert sum(len(kind.idle) for kind in trainer.environments._kinds.values()) == 8  # all back in the pool
    # one instance per rollout of a batch, and the next batch reuses them (8 instances were ever built)
    assert all(len(set(batch)) == 8 for batch in instances)
    assert set(instances[0]) == set(instances[1])


def test_environment_dict_needs_an_environment_column(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="'environment' column"):
        _environment_trainer(tmp_path, monkeypatch, environment_factory={"a": Counter, "b": Counter})
    dataset = _questions().map(lambda row, i: {"environment": "a" if i % 2 else "b"}, with_indices=True)
    trainer = _environment_trainer(tmp_path, monkeypatch, environment_factory={"a": Counter, "b": Counter},
                                   dataset=dataset, max_steps=1)
    trainer.train()
    assert _logged(trainer)[0]["tools/call_frequency"] == 0.5


def test_environment_without_reward_needs_reward_funcs(tmp_path, monkeypatch):
    class Silent:
        def reset(self, **row):
            return None

    with pytest.raises(ValueError, match="environments define get_reward"):
        _environment_trainer(tmp_path, monkeypatch, environment_factory=Silent)


# ---- bad inputs ---------------------------------------------------------------------------------------------------


def test_tool_without_docstring_is_an_error(tmp_path):
    def multiply(a: int, b: int) -> int:
        return a * b

    with pytest.raises(ValueError, match="docstring"):
        _trainer(tmp_path, tools=[multiply])


def test_text_prompts_with_tools_are_an_error(tmp_path):
    with pytest.raises(ValueError, match="needs conversational prompts"):
        GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=lengths, args=_config(tmp_path),
                    train_dataset=Dataset.from_list([{"prompt": "What is 3 times 4?"}] * 16),
                    processing_class=_tool_tokenizer(), tools=Calculator().tools())


def test_template_without_tool_calling_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"does not render tool calls.*chatml_training_chat_template"):
        GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=lengths, args=_config(tmp_path),
                    train_dataset=_questions(), processing_class=tiny_tokenizer(), tools=Calculator().tools())


@pytest.mark.parametrize(("field", "value", "match"), [
    ("max_tool_calling_iterations", 0, "max_tool_calling_iterations` must be >= 1"),
    ("tool_timeout", 0.0, "tool_timeout` must be a positive"),
])
def test_tool_config_is_checked(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        GRPOConfig(output_dir=str(tmp_path), **{field: value})


def test_environment_with_a_template_without_tool_calling_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="does not render tool calls"):
        GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=None, args=_config(tmp_path),
                    train_dataset=_questions(), processing_class=tiny_tokenizer(), environment_factory=Counter)


def test_template_that_rewrites_the_assistant_turn_is_named():
    from trl.agents.multi_turn import tool_suffix_ids

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = (  # marks the last assistant turn, so it renders differently once a tool turn follows
        "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' }}"
        "{%- if loop.last and m['role'] == 'assistant' %}{{- '(final) ' }}{%- endif %}"
        "{{- (m['content'] or '') + '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    conversation = [{"role": "user", "content": "3 times 4?"}, {"role": "assistant", "content": "calling"}]
    with pytest.raises(ValueError, match=r"not prefix-preserving at turn 2 \(the tool turn after assistant turn 1\)"):
        tool_suffix_ids(tokenizer, conversation, [{"role": "tool", "name": "multiply", "content": "12"}], {2})
