"""GRPO with tools on chat templates of other families than the bundled ChatML one (trl/template_families.py):
a Qwen2.5-style `<tool_call>` template and a Llama-3.1-style JSON template (tests/data/chat_templates/, written as
test data). The backend is scripted: sample 0 and 2 of each prompt call `multiply(3, 4)`, then every row answers."""

import pytest
import torch

from trl import GRPOTrainer
from trl.models.tiny import tiny_model
from trl.rollout import Rollout

from ..template_data import llama3_style_tokenizer, qwen2_5_style_tokenizer, qwen3_style_tokenizer
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
