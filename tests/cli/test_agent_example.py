"""`examples/agent_tiny.py`, the agent demo of the README: its `--quick` run goes end to end (SFT warm-up, GRPO with
an `environment_factory`, greedy multi-turn evaluation) and prints the summary; its environment, template and reward
behave as the demo says."""

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent_tiny.py"


@pytest.fixture(scope="module")
def agent_tiny():
    spec = importlib.util.spec_from_file_location("agent_tiny", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_the_summary(agent_tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["agent_tiny.py", "--quick", "--output_dir", str(tmp_path / "out")])
    agent_tiny.main()
    out = capsys.readouterr().out
    for line in ("After the SFT warm-up (4 steps", "--- sampled rollouts at step 1 ---", "GRPO: 2 steps in",
                 "Mean reward (1 for the right code + 0.5 for opening the right box) by GRPO step:",
                 "Tool calls per rollout:",
                 "Greedy success on 10 held-out questions:"):
        assert line in out, line
    assert "  1: " in out and "  2: " in out  # one mean reward per GRPO step


def test_a_transcript_round_trips_through_the_template_and_the_parser(agent_tiny):
    from trl.chat_template_utils import parse_response, supports_tool_calling

    tokenizer = agent_tiny.agent_tokenizer()
    assert supports_tool_calling(tokenizer)
    schemas = agent_tiny.Toolbox([agent_tiny.Boxes().open_box]).schemas
    messages = agent_tiny.transcripts(1, schemas, seed=0)[0]["messages"]
    text = tokenizer.apply_chat_template(messages, tools=schemas, tokenize=False)
    assert text.startswith("<|im_start|>system\nTools: open_box(box)<|im_end|>\n")
    call = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    parsed = parse_response(tokenizer, tokenizer(call, add_special_tokens=False)["input_ids"])
    box = messages[0]["content"].split()[-1].rstrip("?")
    assert parsed["tool_calls"] == [{"type": "function", "function": {"name": "open_box",
                                                                      "arguments": {"box": int(box)}}}]


def test_the_reward_needs_the_code_of_the_asked_box(agent_tiny):
    environment = agent_tiny.Boxes()
    environment.reset(box=4)
    other = next(box for box in range(1, 10) if environment.codes[box] != environment.codes[4])

    def answer(text):
        return [{"role": "assistant", "content": text}]

    rewards = agent_tiny.correct_code_reward(
        [answer(environment.open_box(4)), answer(environment.open_box(other)), answer("")], [environment] * 3)
    assert rewards == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="no box 12"):
        environment.open_box(12)
