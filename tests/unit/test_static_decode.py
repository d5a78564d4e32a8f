"""The static-cache decode of the transformers backend (trl/generation/static_decode.py): the same tokens as
`model.generate`, sampling log-probs equal to a forward pass, the same output as the dynamic path and, compiled, as
the eager one; PEFT adapters, tied and untied heads, multi-turn continuation; the choice of path and its errors."""

import copy

import pytest
import torch

import trl.generation.transformers_backend as backend_module
from trl import GRPOConfig
from trl.generation.static_decode import StaticDecoder, static_cache_supported
from trl.generation.transformers_backend import TransformersBackend

from .test_generation import (  # noqa: F401 - _one_thread: the module's autouse fixture (one intra-op thread)
    PAD,
    PROMPTS,
    _completions,
    _early_eos,
    _model,
    _one_thread,
    _plain_logps,
    _reference_greedy,
    _sampling,
)


def _run(model, sampling, n=3, seed=0, **backend_kwargs):
    backend = TransformersBackend(model, **backend_kwargs)
    return backend, backend.generate(PROMPTS, n=n, sampling=sampling, generator=torch.Generator().manual_seed(seed))


def _count_decode_batches(model):
    """Record the batch size of every forward (the embedding's input rows)."""
    calls = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    return calls, hook


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("arch", ["qwen3", "qwen2"])
def test_static_greedy_equals_generate(arch, tied):
    model = _model(arch, tie_word_embeddings=tied)
    eos = _early_eos(model)
    calls, hook = _count_decode_batches(model)
    try:
        backend, rollout = _run(model, _sampling(do_sample=False, eos_token_ids=(eos,)), n=2)
    finally:
        hook.remove()
    assert backend._decoder(torch.device("cpu")) is not None  # the static path was taken
    assert _completions(rollout) == [_reference_greedy(model, p, 12, eos) for p in PROMPTS for _ in range(2)]
    # prefix sharing: one prefill row per distinct prompt, then single-token steps; ended rows leave the batch
    assert calls[0] == (3, 7) and all(width == 1 for _, width in calls[1:])
    sizes = [rows for rows, _ in calls[1:]]
    longest = rollout.completion_lengths == rollout.completion_lengths.max()
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == int(longest.sum())


@pytest.mark.parametrize("tied", [True, False])
def test_static_sampling_logps_equal_a_forward_and_the_dynamic_path(tied):
    model = _model(tie_word_embeddings=tied)
    sampling = _sampling(temperature=0.7, eos_token_ids=(_early_eos(model),))
    _, static = _run(model, sampling, n=4)
    _, dynamic = _run(model, sampling, n=4, cache_implementation="dynamic")
    for row, logps in enumerate(_plain_logps(model, static, temperature=0.7)):
        torch.testing.assert_close(static.sampling_logps[row, : len(logps)], logps, rtol=1e-5, atol=1e-5)
    # the random numbers are drawn per starting row, so compaction timing does not change the samples
    assert torch.equal(static.completion_ids, dynamic.completion_ids)
    torch.testing.assert_close(static.sampling_logps, dynamic.sampling_logps, rtol=1e-5, atol=1e-6)
    assert torch.equal(static.completion_mask, dynamic.completion_mask)


def test_static_path_with_a_lora_adapter():
    from peft import LoraConfig, get_peft_model

    model = _model()
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a LoRA that changes the model (B starts at 0)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    sampling = _sampling(temperature=0.9)
    backend, rollout = _run(peft_model, sampling)
    assert backend._decoder(torch.device("cpu")) is not None
    _, plain = _run(model, sampling)
    assert not torch.equal(rollout.completion_ids, plain.completion_ids)  # the adapter is applied
    for row, logps in enumerate(_plain_logps(peft_model, rollout, temperature=0.9)):
        torch.testing.assert_close(rollout.sampling_logps[row, : len(logps)], logps, rtol=1e-5, atol=1e-5)
    _, dynamic = _run(peft_model, sampling, cache_implementation="dynamic")
    assert torch.equal(rollout.completion_ids, dynamic.completion_ids)


def test_static_continuation_matches_the_dynamic_one():
    """Two rounds of the multi-turn continuation (kept caches cut out of the static cache) give the dynamic path's
    tokens and prefill only the new tokens."""
    model = _model()
    sampling = _sampling(temperature=0.8, max_completion_length=6)
    outputs, prefilled = {}, {}
    for cache in ("static", "dynamic"):
        backend = TransformersBackend(model, cache_implementation=cache)
        generator = torch.Generator().manual_seed(0)
        with backend.continuation() as session:
            first = backend.generate(PROMPTS, 1, sampling, generator=generator)
            nxt = [p + c + [20, 21] for p, c in zip(PROMPTS, _completions(first))]
            session.keep(nxt)
            second = backend.generate(nxt, 1, sampling, generator=generator)
            prefilled[cache] = session.prefill_tokens
        outputs[cache] = (_completions(first), _completions(second), second.sampling_logps)
    assert outputs["static"][:2] == outputs["dynamic"][:2]
    torch.testing.assert_close(outputs["static"][2], outputs["dynamic"][2], rtol=1e-5, atol=1e-6)
    assert prefilled["static"] == prefilled["dynamic"] == sum(map(len, PROMPTS)) + 3 * 3


def test_buckets_and_compaction_of_the_compiled_layout():
    """The bucket layout of the compiled path (rows rounded up to a power of two, finished rows kept until the alive
    ones fit a smaller bucket), run eagerly: same output as the exact-size eager layout."""
    model = _model()
    sampling = _sampling(temperature=0.8, eos_token_ids=(_early_eos(model),))
    backend = TransformersBackend(model)
    bucketed = StaticDecoder(compiled=False)
    bucketed.rows_bucket = lambda n: 1 << (n - 1).bit_length()
    bucketed.length_bucket = lambda n: -(-n // 64) * 64
    bucketed.compiled = True  # the compaction rule of the compiled path; the step itself stays eager
    backend._decoders[False] = bucketed
    calls, hook = _count_decode_batches(model)
    try:
        out = backend.generate(PROMPTS, n=5, sampling=sampling, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    _, exact = _run(model, sampling, n=5)
    assert torch.equal(out.completion_ids, exact.completion_ids)
    torch.testing.assert_close(out.sampling_logps, exact.sampling_logps, rtol=1e-5, atol=1e-6)
    assert {rows for rows, width in calls[1:]} <= {16, 8, 4, 2, 1}  # 15 rows decode in a bucket of 16
    assert all(key[1] % 64 == 0 for key in bucketed.graphs)


@pytest.mark.slow  # torch.compile of the decode step: ~15-70 s of inductor compilation on a shared 2-core machine
def test_compiled_decode_equals_eager():
    model = _model()
    eos = _early_eos(model)
    compiled_backend = TransformersBackend(model, compile=True)
    eager_backend = TransformersBackend(model, compile=False)
    decoder = compiled_backend._decoder(torch.device("cpu"))
    assert decoder.compiled
    for sampling in (_sampling(do_sample=False, max_completion_length=20, eos_token_ids=(eos,)),
                     _sampling(temperature=0.8, max_completion_length=20, eos_token_ids=(eos,))):
        compiled, eager = (backend.generate(PROMPTS, n=4, sampling=sampling, generator=torch.Generator().manual_seed(0))
                           for backend in (compiled_backend, eager_backend))
        assert torch.equal(compiled.completion_ids, eager.completion_ids)
        torch.testing.assert_close(compiled.sampling_logps, eager.sampling_logps, rtol=1e-5, atol=1e-5)
        if not sampling.do_sample:  # greedy: prompt 1's 4 rows end after 3 tokens, the 8 others fit a bucket of 8
            assert _completions(compiled) == [_reference_greedy(model, p, 20, eos) for p in PROMPTS for _ in range(4)]
            assert {(16, 64), (8, 64)} <= decoder.graphs and decoder.compile_seconds > 0
    # 12 rows start in a bucket of 16 and compact into power-of-two buckets; prefix 7 + 20 tokens: one length bucket
    assert {rows for rows, _ in decoder.graphs} <= {16, 8, 4, 2, 1} and {n for _, n in decoder.graphs} == {64}


def test_sliding_window_models_use_the_dynamic_path():
    model = _model("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0)
    assert not static_cache_supported(model.config)
    assert static_cache_supported(_model().config)
    backend = TransformersBackend(model)
    assert backend._decoder(torch.device("cpu")) is None
    rollout = backend.generate(PROMPTS, n=2, sampling=_sampling(do_sample=False))
    assert rollout.completion_ids.shape[0] == 6
    with pytest.raises(ValueError, match="sliding-window or linear-attention"):
        TransformersBackend(model, cache_implementation="static")
    with pytest.raises(ValueError, match="generation_compile=True"):
        TransformersBackend(model, compile=True)


def test_choice_of_path_and_errors():
    model = _model()
    assert TransformersBackend(model)._decoder(torch.device("cpu")).compiled is False  # 'auto': CUDA only
    assert TransformersBackend(model, compile=True)._decoder(torch.device("cpu")).compiled is True
    assert TransformersBackend(model, cache_implementation="dynamic")._decoder(torch.device("cpu")) is None
    with pytest.raises(ValueError, match="cache_implementation"):
        TransformersBackend(model, cache_implementation="hybrid")
    with pytest.raises(ValueError, match="'auto', True or False"):
        TransformersBackend(model, compile="yes")
    with pytest.raises(ValueError, match="generation_compile=True"):
        TransformersBackend(model, cache_implementation="dynamic", compile=True)
    common = {"output_dir": "/tmp/unused", "report_to": "none"}
    with pytest.raises(ValueError, match="`cache_implementation` must be None, 'static' or 'dynamic'"):
        GRPOConfig(cache_implementation="offloaded_static", **common)
    with pytest.raises(ValueError, match="`generation_compile` must be"):
        GRPOConfig(generation_compile="always", **common)
    with pytest.raises(ValueError, match="cannot be combined"):
        GRPOConfig(cache_implementation="dynamic", generation_compile=True, **common)
    assert GRPOConfig(cache_implementation="static", generation_compile=False, **common).generation_compile is False


def test_compaction_fraction_is_honoured_by_the_static_path(monkeypatch):
    model = _model()
    eos = _early_eos(model)
    monkeypatch.setattr(backend_module, "_COMPACT_FRACTION", 1.0)  # never drop finished rows
    calls, hook = _count_decode_batches(model)
    try:
        _, rollout = _run(model, _sampling(do_sample=False, eos_token_ids=(eos,)), n=2)
    finally:
        hook.remove()
    assert {rows for rows, _ in calls[1:]} == {6}
    assert _completions(rollout) == [_reference_greedy(model, p, 12, eos) for p in PROMPTS for _ in range(2)]
    assert rollout.completion_ids[2:4, 3:].eq(PAD).all()


def test_ready_sdpa_mask_gives_the_transformers_built_mask_output(monkeypatch):
    import trl.generation.static_decode as static_module

    model = _model()
    assert model.config._attn_implementation == "sdpa"
    sampling = _sampling(temperature=0.8, eos_token_ids=(_early_eos(model),))
    _, ready = _run(model, sampling, n=4)
    monkeypatch.setattr(static_module, "_MASK_4D", False)
    _, built = _run(model, sampling, n=4)
    assert torch.equal(ready.completion_ids, built.completion_ids)
    torch.testing.assert_close(ready.sampling_logps, built.sampling_logps, rtol=1e-6, atol=1e-6)
    model.set_attn_implementation("eager")  # not sdpa: the 2D mask, built by transformers
    _, eager_attention = _run(model, sampling, n=4)
    assert torch.equal(eager_attention.completion_ids, built.completion_ids)


def test_a_failed_compilation_falls_back_to_eager_decoding():
    model = _model()
    sampling = _sampling(temperature=0.8)
    backend = TransformersBackend(model, compile=True)
    decoder = backend._decoder(torch.device("cpu"))

    def broken(*args):
        raise RuntimeError("inductor could not compile this")

    decoder._step = broken  # stands in for torch.compile failing on the first call of a bucket
    with pytest.warns(UserWarning, match="Compiling the decode step failed .*inductor could not compile"):
        out = backend.generate(PROMPTS, n=4, sampling=sampling, generator=torch.Generator().manual_seed(0))
    _, eager = _run(model, sampling, n=4)
    assert torch.equal(out.completion_ids, eager.completion_ids)
    torch.testing.assert_close(out.sampling_logps, eager.sampling_logps, rtol=1e-5, atol=1e-6)
    assert decoder._step is not broken  # later steps and calls decode eagerly
