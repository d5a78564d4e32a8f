"""Multi-turn generation continued from the KV cache (`TransformersBackend.continuation()`, trl/agents/multi_turn.py):
token-for-token the completions of re-prefilling the whole conversation, with the same sampling log-probs."""

import pytest
import torch

import trl.agents.multi_turn as multi_turn_module
import trl.generation.transformers_backend as backend_module
from trl.agents.multi_turn import check_tool_prompts, multi_turn_rollout, tool_suffix_ids
from trl.agents.tools import Toolbox
from trl.chat_template_utils import chatml_training_chat_template
from trl.generation.base import SamplingConfig
from trl.generation.transformers_backend import TransformersBackend
from trl.models.tiny import tiny_model, tiny_tokenizer
from trl.template_families import ToolTurn

from .test_generation import PAD, PROMPTS, SMALL, _one_thread  # noqa: F401 - _one_thread: the module's autouse fixture


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen3", seed=0, **SMALL).eval()


def _early_token(model):
    """A token greedy decoding of PROMPTS[1] emits at step 2 and not before: as an EOS, rows end at different steps."""
    out = model.generate(torch.tensor([PROMPTS[1]]), do_sample=False, max_new_tokens=8, pad_token_id=PAD)
    tokens = out[0, len(PROMPTS[1]):].tolist()
    assert tokens[2] not in tokens[:2]
    return tokens[2]


def _rounds(backend, sampling, cached, seed=0, rounds=4, n=2):
    """Round 1: `n` samples of each prompt. Then every row still active appends a suffix whose length depends on the
    row and the round (1 to 5 tokens) and generates again; one row stops after each round. Returns per round the
    completions, their log-probs and the tokens prefilled (with the session)."""
    generator = torch.Generator().manual_seed(seed)
    session = backend.continuation() if cached else None
    contexts = [list(p) for p in PROMPTS]
    rows = list(range(len(PROMPTS) * n))
    results = []
    for r in range(rounds):
        if session is not None and r:
            session.keep(contexts)
        out = backend.generate(contexts, n if r == 0 else 1, sampling, generator)
        lengths = out.completion_lengths.tolist()
        completions = [out.completion_ids[k, : lengths[k]].tolist() for k in range(len(lengths))]
        logps = [out.sampling_logps[k, : lengths[k]] for k in range(len(lengths))]
        results.append((completions, logps))
        if r == 0:
            contexts = [p for p in contexts for _ in range(n)]
        contexts = [c + done + list(range(20, 21 + (3 * row + r) % 5))
                    for c, done, row in zip(contexts, completions, rows)]
        contexts, rows = contexts[:-1] if r % 2 else contexts[1:], rows[:-1] if r % 2 else rows[1:]
    prefilled = session.prefill_tokens if session is not None else None
    if session is not None:
        session.close()
    return results, prefilled


def _assert_same(cached, reprefilled, atol=1e-5):
    for (ids, logps), (ref_ids, ref_logps) in zip(cached, reprefilled):
        assert ids == ref_ids
        for got, expected in zip(logps, ref_logps):
            torch.testing.assert_close(got, expected, rtol=0, atol=atol)


@pytest.mark.parametrize("max_batch_size", [None, 2])
@pytest.mark.parametrize("extra", [{}, {"repetition_penalty": 1.3}])
@pytest.mark.parametrize("compact_fraction", [0.0, 0.5])
def test_greedy_continuation_matches_reprefill(model, max_batch_size, extra, compact_fraction, monkeypatch):
    # with a fraction > 0, finished rows stay in the batch a while: their kept cache must not see the padding they feed
    monkeypatch.setattr(backend_module, "_COMPACT_FRACTION", compact_fraction)
    sampling = SamplingConfig(max_completion_length=6, eos_token_ids=(2, _early_token(model)), pad_token_id=PAD,
                              do_sample=False, **extra)
    backend = TransformersBackend(model, max_batch_size=max_batch_size)
    cached, prefilled = _rounds(backend, sampling, cached=True)
    reprefilled, _ = _rounds(backend, sampling, cached=False)
    _assert_same(cached, reprefilled)
    assert any(len(ids) < 6 for ids, _ in cached for ids in ids)  # some rows ended early (left the batch)
    assert backend._session is None  # closed
    # round 1 prefills the 3 prompts (14 tokens, shared by their 2 samples); later rounds only each continuing row's
    # suffix plus its last generated token: rounds 2-4 continue rows 1-5, 1-4, 2-4 with the suffixes of rounds 1-3
    suffixes = sum(1 + 1 + (3 * row + r) % 5 for r, rows in enumerate([range(1, 6), range(1, 5), range(2, 5)])
                   for row in rows)
    assert prefilled == 14 + suffixes == 65


def test_sampled_continuation_matches_reprefill_and_is_reproducible(model):
    sampling = SamplingConfig(max_completion_length=6, eos_token_ids=(2, _early_token(model)), pad_token_id=PAD)
    backend = TransformersBackend(model)
    first, _ = _rounds(backend, sampling, cached=True, seed=7)
    again, _ = _rounds(backend, sampling, cached=True, seed=7)
    for (ids, logps), (ids_again, logps_again) in zip(first, again):
        assert ids == ids_again
        assert all(torch.equal(a, b) for a, b in zip(logps, logps_again))
    # the same random draws give the same tokens as re-prefilling (up to a draw landing within ~1e-6 of a boundary
    # of the cumulative distribution, which these seeds do not hit)
    _assert_same(first, _rounds(backend, sampling, cached=False, seed=7)[0])


def test_rows_that_stop_are_freed_and_unrelated_prompts_are_prefilled(model):
    sampling = SamplingConfig(max_completion_length=4, eos_token_ids=(2,), pad_token_id=PAD, do_sample=False)
    backend = TransformersBackend(model)
    with backend.continuation() as session:
        out = backend.generate(PROMPTS, 1, sampling)
        assert len(session._rows) == 3
        first = PROMPTS[0] + out.completion_ids[0, : int(out.completion_lengths[0])].tolist() + [20, 21]
        session.keep([first, [30, 31, 32]])  # row 0 continues; a fresh prompt extends nothing
        assert [row.history[: len(PROMPTS[0])] for row in session._rows.values()] == [PROMPTS[0]]
        before = session.prefill_tokens
        mixed = backend.generate([first, [30, 31, 32]], 1, sampling)  # one continued, one prefilled, same batch
        assert session.prefill_tokens - before == 3 + 3
        # the continued row's old cache moved into the call; the two new rows are kept
        assert sorted(len(key) for key in session._rows) == sorted(
            [len(first) + int(mixed.completion_lengths[0]), 3 + int(mixed.completion_lengths[1])])
    assert backend._session is None and session._rows == {}
    reference = backend.generate([first, [30, 31, 32]], 1, sampling)
    assert torch.equal(mixed.completion_ids, reference.completion_ids)
    torch.testing.assert_close(mixed.sampling_logps, reference.sampling_logps, rtol=0, atol=1e-5)


def test_sliding_window_model_falls_back_to_reprefill():
    model = tiny_model("qwen3", seed=0, **SMALL, use_sliding_window=True, sliding_window=4, max_window_layers=0,
                       layer_types=["sliding_attention"] * 2).eval()
    sampling = SamplingConfig(max_completion_length=4, eos_token_ids=(2,), pad_token_id=PAD, do_sample=False)
    backend = TransformersBackend(model)
    with backend.continuation() as session:
        backend.generate(PROMPTS, 1, sampling)
        assert session._rows == {}  # nothing kept: later rounds re-prefill


# --- multi_turn_rollout with real generation -------------------------------------------------------------------


def _echo(text: str) -> str:
    """Repeat a text.

    Args:
        text: What to repeat.
    """
    return text


def _calling_model(tokenizer, prompt):
    """The tiny model with `<|im_end|>` given a slightly scaled copy of the output row of the token it repeats most
    after `prompt`: it ends its turns after a few tokens, where the original model would emit that token."""
    model = tiny_model("qwen3", seed=0, **SMALL).eval()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=16, pad_token_id=PAD)
    frequent = max(set(tokens := out[0, len(prompt):].tolist()), key=tokens.count)
    with torch.no_grad():
        model.lm_head.weight[end] = 1.05 * model.lm_head.weight[frequent]
    return model


def _prompts(tokenizer):
    prompts = [[{"role": "user", "content": text}] for text in ("3 times 4?", "hi", "what is the weather", "hi")]
    schemas = Toolbox([_echo]).schemas
    return prompts, [list(tokenizer.apply_chat_template(p, tools=schemas, add_generation_prompt=True,
                                                        return_dict=True)["input_ids"]) for p in prompts]


def _tool_rollout(monkeypatch, model, tokenizer, cached, do_sample=False, seed=0):
    """Every turn that ends with `<|im_end|>` "calls" `_echo` with a text whose length depends on the turn, so the
    tool suffixes differ between rows and rounds."""

    def parse(tokenizer, ids, *args, **kwargs):
        return ToolTurn({"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "_echo", "arguments": {"text": "ab" * (sum(ids) % 4)}}}]}, [])

    monkeypatch.setattr(multi_turn_module, "parse_tool_turn", parse)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    backend = TransformersBackend(model)
    generator = torch.Generator().manual_seed(seed)

    def generate(prompt_ids, max_new_tokens):
        sampling = SamplingConfig(max_completion_length=max_new_tokens, eos_token_ids=(end,), pad_token_id=PAD,
                                  do_sample=do_sample)
        return backend.generate(prompt_ids, 1, sampling, generator)

    prompts, prompt_ids = _prompts(tokenizer)
    toolbox = Toolbox([_echo])
    session = backend.continuation() if cached else None
    result = multi_turn_rollout(generate, prompt_ids, prompts, tokenizer, toolbox, max_completion_length=96,
                                eos_token_ids=(end,), pad_token_id=PAD, max_iterations=4,
                                template_kwargs={"tools": toolbox.schemas}, continuation=session)
    return result, session


@pytest.mark.parametrize("do_sample", [False, True])
def test_multi_turn_rollout_from_the_cache_matches_reprefill(monkeypatch, do_sample):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = chatml_training_chat_template
    model = _calling_model(tokenizer, _prompts(tokenizer)[1][0])
    cached, session = _tool_rollout(monkeypatch, model, tokenizer, cached=True, do_sample=do_sample)
    reprefilled, _ = _tool_rollout(monkeypatch, model, tokenizer, cached=False, do_sample=do_sample)
    assert sum(cached.num_calls) >= 6 and max(cached.num_calls) >= 3  # several rounds of calls happened
    assert torch.equal(cached.rollout.completion_ids, reprefilled.rollout.completion_ids)
    assert torch.equal(cached.rollout.tool_mask, reprefilled.rollout.tool_mask)
    torch.testing.assert_close(cached.rollout.sampling_logps, reprefilled.rollout.sampling_logps, rtol=0, atol=1e-5)
    assert cached.num_calls == reprefilled.num_calls
    assert session._rows == {} and session._backend._session is None  # closed by multi_turn_rollout


# --- which turns get a tool turn, and when it is rolled back ---------------------------------------------------

CALL = '<tool_call>\n{"name": "_echo", "arguments": {"text": "%s"}}\n</tool_call>'


def _chatml_tokenizer():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = chatml_training_chat_template
    return tokenizer


def _scripted(tokenizer, turns):
    """A plain `generate` (no continuation): the completion of every row in round `r` is `turns[r]` (token ids),
    cut to the budget; records the budgets it was asked for."""
    from trl.rollout import Rollout

    budgets = []

    def generate(prompt_ids, max_new_tokens):
        budgets.append(max_new_tokens)
        ids = turns[len(budgets) - 1][:max_new_tokens]
        return Rollout.from_lists(prompt_ids, [ids] * len(prompt_ids), pad_token_id=PAD,
                                  is_truncated=[False] * len(prompt_ids),
                                  sampling_logps=[[-0.5] * len(ids)] * len(prompt_ids))

    generate.budgets = budgets
    return generate


def _run(tokenizer, generate, eos, budget, calls):
    def echo(text: str) -> str:
        """Repeat a text.

        Args:
            text: What to repeat.
        """
        calls.append(text)
        return text

    toolbox = Toolbox([echo])
    prompts = [[{"role": "user", "content": "hi"}]]
    prompt_ids = [list(tokenizer.apply_chat_template(prompts[0], tools=toolbox.schemas, add_generation_prompt=True,
                                                     return_dict=True)["input_ids"])]
    return multi_turn_rollout(generate, prompt_ids, prompts, tokenizer, toolbox, max_completion_length=budget,
                              eos_token_ids=eos, pad_token_id=PAD, template_kwargs={"tools": toolbox.schemas})


def _text_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_turn_ended_by_a_non_template_eos_gets_no_tool_turn():
    tokenizer = _chatml_tokenizer()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    other = _text_ids(tokenizer, "!")[-1]  # e.g. a generation-config eos such as <|endoftext|>
    call = _text_ids(tokenizer, CALL.replace("_echo", "echo") % "ab")
    calls = []
    result = _run(tokenizer, _scripted(tokenizer, [call + [other]]), (end, other), 256, calls)
    assert calls == [] and result.num_calls == [0]
    assert not result.rollout.is_truncated[0]  # it ended, it was not cut
    assert [m["role"] for m in result.completions[0]] == ["assistant"]
    # the same turn ended by the template's end of turn runs the call and continues
    calls = []
    answer = _text_ids(tokenizer, "done") + [end]
    result = _run(tokenizer, _scripted(tokenizer, [call + [end], answer]), (end, other), 256, calls)
    assert calls == ["ab"] and [m["role"] for m in result.completions[0]] == ["assistant", "tool", "assistant"]


def test_a_tool_turn_that_cannot_fit_is_rolled_back_before_the_calls_run():
    tokenizer = _chatml_tokenizer()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    call = _text_ids(tokenizer, CALL.replace("_echo", "echo") % "ab") + [end]
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "echo", "arguments": {"text": "ab"}}}]}]
    schemas = Toolbox([_echo]).schemas
    empty = len(tool_suffix_ids(tokenizer, conversation, [{"role": "tool", "name": "", "content": ""}], {end},
                                {"tools": schemas}))
    real = len(tool_suffix_ids(tokenizer, conversation, [{"role": "tool", "name": "echo", "content": "ab"}], {end},
                               {"tools": schemas}))
    assert real > empty
    # not even the tool turn with empty results fits: the call is not run
    calls = []
    result = _run(tokenizer, _scripted(tokenizer, [call]), (end,), len(call) + empty, calls)
    assert calls == [] and result.num_calls == [0] and result.rollout.is_truncated[0]
    assert result.completions[0][-1]["tool_calls"]  # the completion ends with the turn that made the call
    # the empty turn fits but the real results do not: that needs the results, so the call runs, then is rolled back
    calls = []
    result = _run(tokenizer, _scripted(tokenizer, [call]), (end,), len(call) + real, calls)
    assert calls == ["ab"] and result.num_calls == [1] and result.rollout.is_truncated[0]
    assert int(result.rollout.completion_lengths[0]) == len(call)


def test_the_end_of_turn_token_must_be_in_the_last_assistant_turn():
    tokenizer = tiny_tokenizer()
    # assistant turns are written without an end token; user turns have one
    tokenizer.chat_template = (
        "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + (m['content'] or '') }}"
        "{%- if m['role'] != 'assistant' %}{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    conversation = [{"role": "user", "content": "3 times 4?"}, {"role": "assistant", "content": "calling"}]
    with pytest.raises(ValueError, match="assistant turn 1 without an end-of-turn token .* inside that turn"):
        tool_suffix_ids(tokenizer, conversation, [{"role": "tool", "name": "multiply", "content": "12"}], {2})


def test_prefilled_prompts_are_rejected_by_the_construction_check():
    check_tool_prompts([[{"role": "user", "content": "hi"}]])
    with pytest.raises(ValueError, match=r"Prompts \[1\] end with an assistant message"):
        check_tool_prompts([[{"role": "user", "content": "hi"}],
                            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "It is"}]])
