"""GRPO with tools on chat templates of other families than the bundled ChatML one (trl/template_families.py):
a Qwen2.5-style `<tool_call>` template and a Llama-3.1-style JSON template (tests/data/chat_templates/, written as
test data). The backend is scripted: sample 0 and 2 of each prompt call `multiply(3, 4)`, then every row answers."""

import pytest
import torch

from trl import GRPOTrainer
from trl.data.conversation import common_prefix_length
from trl.models.tiny import tiny_model
from trl.rollout import Rollout
from trl.template_families import render_tool_messages

from ..template_data import REAL_TOKENIZERS, llama3_style_tokenizer, qwen2_5_style_tokenizer, qwen3_style_tokenizer
from .sft_one_step import SMALL
from .test_grpo_tools import Calculator, _questions
from .test_grpo_trainer import _config, _logged, _moved, _params

STYLES = {
    "qwen2.5": {
        "tokenizer": qwen2_5_style_tokenizer,
        "call": '<tool_call>\n{"name": "multiply", "arguments": {"a": 3, "b": 4}}\n</tool_call><|im_end|>',
        "answer": "It is 12.<|im_end|>",
        "tool_turn": "\n<|im_start|>user\n<tool_response>\n12\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
        "after_tool": "<tool_response>",
    },
    "qwen3": {  # not prefix-preserving (drops earlier turns' empty think blocks): its training template is used
        "tokenizer": qwen3_style_tokenizer,
        "call": '<think>\nMultiply.\n</think>\n\n<tool_call>\n{"name": "multiply", "arguments": {"a": 3, "b": 4}}'
                "\n</tool_call><|im_end|>",
        "answer": "It is 12.<|im_end|>",
        "tool_turn": "\n<|im_start|>user\n<tool_response>\n12\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
        "after_tool": "<tool_response>",
    },
    "llama3.1": {
        "tokenizer": llama3_style_tokenizer,
        "call": '{"name": "multiply", "parameters": {"a": 3, "b": 4}}<|eot_id|>',
        "answer": "It is 12.<|eot_id|>",
        "tool_turn": '<|start_header_id|>ipython<|end_header_id|>\n\n"12"<|eot_id|>'
                     "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "after_tool": "<|start_header_id|>ipython",
    },
}


class Script:
    """Stands in for `backend.generate`: before a tool turn, even samples call and odd ones answer; after one,
    every sample answers. Sampling log-probs are -0.5."""

    def __init__(self, tokenizer, style):
        self.tokenizer, self.style = tokenizer, style

    def ids(self, text):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, prompt_ids, n, sampling, generator=None):
        prompts, completions = [], []
        for prompt in prompt_ids:
            after_tool = self.style["after_tool"] in self.tokenizer.decode(prompt)
            for k in range(n):
                text = self.style["answer" if after_tool or k % 2 else "call"]
                prompts.append(list(prompt))
                completions.append(self.ids(text)[: sampling.max_completion_length])
        eos = set(sampling.eos_token_ids)
        return Rollout.from_lists(prompts, completions, pad_token_id=sampling.pad_token_id,
                                  is_truncated=[c[-1] not in eos for c in completions],
                                  sampling_logps=[[-0.5] * len(c) for c in completions])


@pytest.mark.parametrize("name", list(STYLES))
def test_tools_with_another_template_family(tmp_path, monkeypatch, name):
    style = STYLES[name]
    tokenizer = style["tokenizer"]()
    calculator = Calculator()
    trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=lambda completions, **kw: [
        float(len(c)) for c in completions], args=_config(tmp_path, max_completion_length=256, beta=0.04),
        train_dataset=_questions(), processing_class=tokenizer, tools=calculator.tools()[:1])
    script = Script(tokenizer, style)
    monkeypatch.setattr(trainer.backend, "generate", script)
    rows = [trainer.train_dataset[i] for i in (0, 1) for _ in range(4)]
    rollout = trainer._sample(rows, trainer._generator, mode="train")

    call, answer, tool_turn = (script.ids(style[k]) for k in ("call", "answer", "tool_turn"))
    assert calculator.calls == [(3, 4)] * 4
    for i in range(8):
        n = int(rollout.completion_lengths[i])
        ids, mask = rollout.completion_ids[i, :n].tolist(), rollout.tool_mask[i, :n].tolist()
        if i % 2 == 0:  # generated ids kept as generated; only the tool turn rendered, masked out of the loss
            assert ids == call + tool_turn + answer
            assert mask == [1] * len(call) + [0] * len(tool_turn) + [1] * len(answer)
            if name == "qwen3":
                assert rollout.completions[i][0]["reasoning_content"] == "Multiply."
            assert rollout.completions[i][0]["tool_calls"] == [
                {"type": "function", "function": {"name": "multiply", "arguments": {"a": 3, "b": 4}}}]
            assert rollout.completions[i][1] == {"role": "tool", "name": "multiply", "content": "12"}
        else:
            assert ids == answer and mask == [1] * len(answer)
    assert not rollout.is_truncated.any()

    _assert_trains_calling_half_the_time(trainer)


def _assert_trains_calling_half_the_time(trainer):
    """Train: the weights move, every logged loss is finite and half the completions called the tool."""
    before = _params(trainer.model)
    trainer.train()
    assert _moved(before, trainer.model)
    for log in _logged(trainer):
        assert log["tools/call_frequency"] == 0.5 and torch.isfinite(torch.tensor(log["loss"]))


def test_a_template_that_rewrites_earlier_turns_gets_its_training_template(tmp_path):
    tokenizer = qwen3_style_tokenizer()
    original = tokenizer.chat_template
    with pytest.warns(UserWarning, match=r"\(qwen3 family\) rewrites earlier turns"):
        trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=lambda completions, **kw: [0.0] * len(
            completions), args=_config(tmp_path, max_completion_length=32), train_dataset=_questions(),
            processing_class=tokenizer, tools=Calculator().tools()[:1])
    assert tokenizer.chat_template == original  # the user's tokenizer is not changed
    assert trainer.processing_class.chat_template != original
    trainer.save_model(str(tmp_path / "saved"))  # the model is saved with the original template
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "saved").chat_template == original
    assert trainer.processing_class.chat_template != original  # rollouts keep the training template


# -- the vendors' templates (tests/data/chat_templates/real/) ---------------------------------------------------------
#
# For each real template that renders tool calls, the scripted call is what the template renders for the assistant
# turn calling multiply(3, 4) (with reasoning where the template renders it), from the generation prompt up to and
# including the token that ends the calling turn before a tool turn; the tool turn is written out as the template
# renders the result "12" and the next generation prompt.

_CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "multiply", "arguments": {"a": 3, "b": 4}}}]}
REAL = {
    "qwen2_5": {"answer": "It is 12.<|im_end|>",
                "tool_turn": "\n<|im_start|>user\n<tool_response>\n12\n</tool_response><|im_end|>\n"
                             "<|im_start|>assistant\n"},
    "qwen3": {"reasoning": "Multiply.", "answer": "It is 12.<|im_end|>",
              "tool_turn": "\n<|im_start|>user\n<tool_response>\n12\n</tool_response><|im_end|>\n"
                           "<|im_start|>assistant\n"},
    "llama3_2": {"answer": "It is 12.<|eot_id|>",
                 "tool_turn": '<|start_header_id|>ipython<|end_header_id|>\n\n"12"<|eot_id|>'
                              "<|start_header_id|>assistant<|end_header_id|>\n\n"},
    # R1 drops reasoning and writes an empty assistant turn after a calling turn (not part of the generated turn)
    "deepseek_r1_distill": {"answer": "It is 12.<｜end▁of▁sentence｜>",
                            "tool_turn": "<｜Assistant｜><｜end▁of▁sentence｜><｜tool▁outputs▁begin｜>"
                                         "<｜tool▁output▁begin｜>12<｜tool▁output▁end｜><｜tool▁outputs▁end｜>"},
    "llama3_3": {"answer": "It is 12.<|eot_id|>",
                 "tool_turn": '<|start_header_id|>ipython<|end_header_id|>\n\n"12"<|eot_id|>'
                              "<|start_header_id|>assistant<|end_header_id|>\n\n"},
    # Nemotron 3: the generation prompt opens <think>; the answer after the tool turn closes it
    "nemotron3": {"reasoning": "Multiply.", "answer": "Done.\n</think>\nIt is 12.<|im_end|>",
                  "tool_turn": "\n<|im_start|>user\n<tool_response>\n12\n</tool_response>\n<|im_end|>\n"
                               "<|im_start|>assistant\n<think>\n"},
    # harmony: the calling turn ends with <|call|>; <|end|> only closes its analysis message
    "gpt_oss": {"reasoning": "Multiply.", "answer": "<|channel|>final<|message|>It is 12.<|return|>",
                "tool_turn": '<|start|>functions.multiply to=assistant<|channel|>commentary<|message|>"12"<|end|>'
                             "<|start|>assistant"},
    # GLM closes a turn by opening the next: the generated <|observation|> is the tool turn's first token
    "glm4_moe": {"reasoning": "Multiply.", "answer": "\n<think></think>\nIt is 12.<|endoftext|>",
                 "tool_turn": "\n<tool_response>\n12\n</tool_response><|assistant|>"},
    "cohere2": {"reasoning": "Multiply.",
                "answer": "<|START_THINKING|><|END_THINKING|><|START_RESPONSE|>It is 12.<|END_RESPONSE|>",
                "tool_turn": "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|><|START_TOOL_RESULT|>[\n    {\n        "
                             '"tool_call_id": "0",\n        "results": {\n            "0": "12"\n        },\n'
                             '        "is_error": null\n    }\n]<|END_TOOL_RESULT|><|END_OF_TURN_TOKEN|>'
                             "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"},
    "lfm2_5": {"reasoning": "Multiply.", "answer": "It is 12.<|im_end|>",
               "tool_turn": "\n<|im_start|>tool\n12<|im_end|>\n<|im_start|>assistant\n"},
}


def _rendered_call(trainer, style) -> list[int]:
    """The calling turn as the template renders it: after the generation prompt, up to the first token sampling stops
    at (looked for in the rendering with the tool turn: GLM's calling turn ends with the tool turn's first token)."""
    tokenizer, tools = trainer.processing_class, trainer._template_kwargs["tools"]
    question = [{"role": "user", "content": "What is 3 times 4?"}]
    call = {**_CALL, "reasoning_content": style["reasoning"], "thinking": style["reasoning"]} if "reasoning" in \
        style else _CALL
    prompt = render_tool_messages(tokenizer, question, tools=tools, add_generation_prompt=True)
    rendered = render_tool_messages(tokenizer, [*question, call, {"role": "tool", "name": "multiply", "content": "12"}],
                                    tools=tools, add_generation_prompt=True)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    start = common_prefix_length(tokenizer(prompt, add_special_tokens=False)["input_ids"], ids)
    eos = set(trainer.sampling.eos_token_ids)
    end = next(i for i in range(start, len(ids)) if ids[i] in eos)
    return ids[start: end + 1]


class RealScript(Script):
    """[`Script`] with the call given as ids: after a tool turn (its prompt holds the call), every sample answers."""

    def __init__(self, tokenizer, call, answer):
        self.tokenizer, self.call, self.answer = tokenizer, call, self.ids_of(tokenizer, answer)

    @staticmethod
    def ids_of(tokenizer, text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, prompt_ids, n, sampling, generator=None):
        prompts, completions = [], []
        for prompt in prompt_ids:
            after_tool = any(prompt[i: i + len(self.call)] == self.call for i in range(len(prompt)))
            for k in range(n):
                prompts.append(list(prompt))
                completions.append((self.answer if after_tool or k % 2 else self.call)[: sampling.max_completion_length])
        eos = set(sampling.eos_token_ids)
        return Rollout.from_lists(prompts, completions, pad_token_id=sampling.pad_token_id,
                                  is_truncated=[c[-1] not in eos for c in completions],
                                  sampling_logps=[[-0.5] * len(c) for c in completions])


@pytest.mark.parametrize("name", list(REAL))
def test_tools_with_a_real_template(tmp_path, monkeypatch, name):
    style, tokenizer = REAL[name], REAL_TOKENIZERS[name]()
    calculator = Calculator()
    # Cohere's default preamble alone is ~4k tokens of the tiny tokenizer
    trainer = GRPOTrainer(model=tiny_model(seed=0, **{**SMALL, "max_position_embeddings": 8192}), reward_funcs=lambda completions, **kw: [
        float(len(c)) for c in completions], args=_config(tmp_path, max_completion_length=320, beta=0.04),
        train_dataset=_questions(), processing_class=tokenizer, tools=calculator.tools()[:1])
    call = _rendered_call(trainer, style)
    script = RealScript(trainer.processing_class, call, style["answer"])
    monkeypatch.setattr(trainer.backend, "generate", script)
    rows = [trainer.train_dataset[i] for i in (0, 1) for _ in range(4)]
    rollout = trainer._sample(rows, trainer._generator, mode="train")

    answer, tool_turn = script.answer, script.ids_of(trainer.processing_class, style["tool_turn"])
    assert calculator.calls == [(3, 4)] * 4
    for i in range(8):
        n = int(rollout.completion_lengths[i])
        ids, mask = rollout.completion_ids[i, :n].tolist(), rollout.tool_mask[i, :n].tolist()
        if i % 2 == 0:  # generated ids kept as generated; only the tool turn rendered, masked out of the loss
            assert ids == call + tool_turn + answer, trainer.processing_class.decode(ids[len(call):])
            assert mask == [1] * len(call) + [0] * len(tool_turn) + [1] * len(answer)
            assert rollout.completions[i][0]["tool_calls"] == _CALL["tool_calls"]
            assert rollout.completions[i][1] == {"role": "tool", "name": "multiply", "content": "12"}
        else:
            assert ids == answer and mask == [1] * len(answer)
            assert "It is 12." in rollout.completions[i][0]["content"]
    assert not rollout.is_truncated.any()

    _assert_trains_calling_half_the_time(trainer)


def test_gpt_oss_sampling_stops_at_call_not_at_end(tmp_path):
    """Harmony ends a calling turn with <|call|> and an inner (analysis) message with <|end|>: sampling stops at the
    first, never at the second (the turn goes on after it)."""
    tokenizer = REAL_TOKENIZERS["gpt_oss"]()
    trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=lambda completions, **kw: [0.0] * len(
        completions), args=_config(tmp_path, max_completion_length=32), train_dataset=_questions(),
        processing_class=tokenizer, tools=Calculator().tools()[:1])
    eos = set(trainer.sampling.eos_token_ids)
    assert tokenizer.convert_tokens_to_ids("<|call|>") in eos and tokenizer.convert_tokens_to_ids("<|end|>") not in eos


class TwoCallScript(RealScript):
    """GPT-OSS: even samples call multiply(3, 4), then, after its result, multiply(12, 2) (harmony writes one call
    per message and generation stops at <|call|>, so two calls of a round are two generated turns), then answer."""

    def __init__(self, tokenizer, first, second, answer):
        super().__init__(tokenizer, first, answer)
        self.second = self.ids_of(tokenizer, second)

    def __call__(self, prompt_ids, n, sampling, generator=None):
        prompts, completions = [], []
        for prompt in prompt_ids:
            results = self.tokenizer.decode(prompt).count("<|start|>functions.multiply to=assistant")
            for k in range(n):
                prompts.append(list(prompt))
                # (identical prompts may come as one prompt with n samples: the k % 2 split is for the question only)
                turn = self.second if results == 1 else self.answer if k % 2 or results >= 2 else self.call
                completions.append(turn[: sampling.max_completion_length])
        eos = set(sampling.eos_token_ids)
        return Rollout.from_lists(prompts, completions, pad_token_id=sampling.pad_token_id,
                                  is_truncated=[c[-1] not in eos for c in completions],
                                  sampling_logps=[[-0.5] * len(c) for c in completions])


def test_gpt_oss_two_calls_in_a_round(tmp_path, monkeypatch):
    """Two calls of one round with GPT-OSS's real template: each is its own generated turn ending with <|call|>, its
    result is rendered after it (named after its own call), and the generated ids are kept as generated."""
    style, tokenizer = REAL["gpt_oss"], REAL_TOKENIZERS["gpt_oss"]()
    calculator = Calculator()
    trainer = GRPOTrainer(model=tiny_model(seed=0, **{**SMALL, "max_position_embeddings": 8192}), reward_funcs=lambda
        completions, **kw: [float(len(c)) for c in completions], args=_config(tmp_path, max_completion_length=320),
        train_dataset=_questions(), processing_class=tokenizer, tools=calculator.tools()[:1])
    first = _rendered_call(trainer, style)
    second = ' to=functions.multiply<|channel|>commentary json<|message|>{"a": 12, "b": 2}<|call|>'
    script = TwoCallScript(trainer.processing_class, first, second, style["answer"])
    monkeypatch.setattr(trainer.backend, "generate", script)
    rows = [trainer.train_dataset[i] for i in (0, 1) for _ in range(4)]
    rollout = trainer._sample(rows, trainer._generator, mode="train")

    ids_of = script.ids_of
    tool_1, tool_2 = (ids_of(tokenizer, f'<|start|>functions.multiply to=assistant<|channel|>commentary<|message|>"{r}"'
                                        "<|end|><|start|>assistant") for r in (12, 24))
    assert sorted(calculator.calls) == [(3, 4)] * 4 + [(12, 2)] * 4
    for i in range(0, 8, 2):
        n = int(rollout.completion_lengths[i])
        ids, mask = rollout.completion_ids[i, :n].tolist(), rollout.tool_mask[i, :n].tolist()
        assert ids == first + tool_1 + script.second + tool_2 + script.answer, tokenizer.decode(ids)
        assert mask == ([1] * len(first) + [0] * len(tool_1) + [1] * len(script.second) + [0] * len(tool_2)
                        + [1] * len(script.answer))
        messages = rollout.completions[i]
        assert [m["role"] for m in messages] == ["assistant", "tool", "assistant", "tool", "assistant"]
        assert messages[0]["tool_calls"][0]["function"] == {"name": "multiply", "arguments": {"a": 3, "b": 4}}
        assert messages[2]["tool_calls"][0]["function"] == {"name": "multiply", "arguments": {"a": 12, "b": 2}}
        assert messages[3]["content"] == "24" and messages[4]["content"] == "It is 12."

    before = _params(trainer.model)
    trainer.train()
    assert _moved(before, trainer.model)
    for log in _logged(trainer):
        assert torch.isfinite(torch.tensor(log["loss"]))
