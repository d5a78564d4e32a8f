"""`examples/agent_tiny.py`, the agent demo of the README: its `--quick` run goes end to end (SFT warm-up, GRPO with
an `environment_factory`, greedy and sampled multi-turn evaluation) and prints the summary; its environment, template
and reward behave as the demo says."""

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
    for line in ("After the SFT warm-up (4 steps", "--- sampled rollouts at step 1 ", "--- sampled rollouts at step 2 ",
                 "GRPO: 2 steps in", "Mean reward (1 when the door is open at the end) by GRPO step:",
                 "Share of rollouts that call open_door by GRPO step:",
                 "Greedy on 12 held-out requests: success", "Sampled (temperature 1) on 12 held-out requests:"):
        assert line in out, line
    assert "    1-2   " in out  # one mean reward and one call share per GRPO step


def test_a_transcript_round_trips_through_the_template_and_the_parser(agent_tiny):
    from trl.chat_template_utils import parse_response, supports_tool_calling

    tokenizer = agent_tiny.agent_tokenizer()
    assert supports_tool_calling(tokenizer)
    schemas = agent_tiny.Toolbox([agent_tiny.Door().open_door]).schemas
    rows = agent_tiny.transcripts(20, schemas, seed=0, call_share=0.5)
    messages = next(row["messages"] for row in rows if len(row["messages"]) == 4)
    assert any(len(row["messages"]) == 2 for row in rows)  # some transcripts answer without the tool
    text = tokenizer.apply_chat_template(messages, tools=schemas, tokenize=False)
    assert text.startswith("<|im_start|>system\nTools: open_door()<|im_end|>\n")
    call = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    parsed = parse_response(tokenizer, tokenizer(call, add_special_tokens=False)["input_ids"])
    assert parsed["tool_calls"] == [{"type": "function", "function": {"name": "open_door", "arguments": {}}}]


def test_the_reward_needs_the_tool_call(agent_tiny):
    environment = agent_tiny.Door()
    environment.reset()
    said = [[{"role": "assistant", "content": "Done."}]]
    assert agent_tiny.door_open_reward(said, [environment]) == [0.0]
    environment.open_door()
    assert agent_tiny.door_open_reward(said, [environment]) == [1.0]
    environment.reset()
    assert agent_tiny.door_open_reward(said, [environment]) == [0.0]
