"""The transformers generation backend: same tokens as `generate`, exact sampling log-probs, shared prefill."""

import copy

import pytest
import torch

import trl.generation.transformers_backend as backend_module
from trl.generation.base import SamplingConfig
from trl.generation.transformers_backend import TransformersBackend, process_logits
from trl.models.tiny import tiny_model

# initializer_range 0.2 (instead of 0.02) makes the random model's next-token distributions peaked and varied, so
# greedy decoding does not just repeat the last token and EOS can come at different steps in different rows.
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 32, "initializer_range": 0.2}
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18]]
PAD = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models are tiny: one intra-op thread is fastest, and avoids spinning threads on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(arch="qwen3", **overrides):
    return tiny_model(arch, seed=0, **{**SMALL, **overrides}).eval()


def _sampling(**kwargs):
    values = {"max_completion_length": 12, "eos_token_ids": (2,), "pad_token_id": PAD}
    values.update(kwargs)
    return SamplingConfig(**values)


def _reference_greedy(model, prompt, max_new, eos):
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=max_new, eos_token_id=eos, pad_token_id=PAD)
    tokens = out[0, len(prompt):].tolist()
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def _early_eos(model, max_new=12):
    """A token that greedy decoding of PROMPTS[1] emits at step 2 (and not before): with it as EOS that row ends
    after 3 tokens."""
    tokens = _reference_greedy(model, PROMPTS[1], max_new, eos=2)
    assert len(tokens) > 2 and tokens[2] not in tokens[:2]
    return tokens[2]


def _completions(rollout):
    return [row[: int(n)].tolist() for row, n in zip(rollout.completion_ids, rollout.completion_lengths)]


def _plain_logps(model, rollout, temperature, sampling=None):
    """Log-probs of each completion token from one forward over the unpadded prompt + completion: `log_softmax` of
    `logits / temperature`, or of `process_logits(logits, sampling)` when `sampling` is given (repetition penalty
    seen-tokens rebuilt from the prompt and the completion so far)."""
    rows = []
    for prompt, prompt_mask, completion, length in zip(rollout.prompt_ids, rollout.prompt_mask,
                                                       rollout.completion_ids, rollout.completion_lengths):
        prompt = prompt[prompt_mask.bool()]
        completion = completion[: int(length)]
        ids = torch.cat([prompt, completion])[None]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1: -1]  # (C, V): predicts each completion token
        if sampling is None:
            logps = (logits / temperature).log_softmax(-1)
        else:
            seen = torch.zeros(logits.shape, dtype=torch.bool)
            for t in range(len(completion)):
                seen[t, ids[0, : len(prompt) + t]] = True
            logps = process_logits(logits, sampling, seen).log_softmax(-1)
        rows.append(logps.gather(1, completion[:, None]).squeeze(1))
    return rows


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama"])
def test_greedy_equals_generate_with_rows_ending_at_different_steps(arch):
    model = _model(arch)
    eos = _early_eos(model)
    sampling = _sampling(do_sample=False, eos_token_ids=(eos,))
    rollout = TransformersBackend(model).generate(PROMPTS, n=3, sampling=sampling)
    expected = [_reference_greedy(model, p, 12, eos) for p in PROMPTS for _ in range(3)]
    assert _completions(rollout) == expected
    lengths = rollout.completion_lengths.tolist()
    assert lengths[3] == 3 and max(lengths) > 3  # one prompt ends early, another goes on
    assert rollout.is_truncated.tolist() == [len(e) == 12 and e[-1] != eos for e in expected]


def test_greedy_logps_are_log_softmax_over_temperature():
    model = _model()
    sampling = _sampling(do_sample=False, temperature=0.5)
    rollout = TransformersBackend(model).generate(PROMPTS, n=1, sampling=sampling)
    for row, logps in enumerate(_plain_logps(model, rollout, temperature=0.5)):
        n = len(logps)
        torch.testing.assert_close(rollout.sampling_logps[row, :n], logps, rtol=1e-5, atol=1e-5)


def test_rollout_layout():
    model = _model()
    eos = _early_eos(model)
    sampling = _sampling(eos_token_ids=(eos,), do_sample=False, max_completion_length=20)
    rollout = TransformersBackend(model).generate(PROMPTS, n=2, sampling=sampling)
    lengths = rollout.completion_lengths
    assert rollout.prompt_ids.shape == rollout.prompt_mask.shape == (6, 7)
    assert rollout.completion_ids.shape[1] == int(lengths.max())  # padded to the longest, not to 20
    for row, prompt in enumerate(p for p in PROMPTS for _ in range(2)):  # prompt-major, left-padded
        assert rollout.prompt_ids[row, 7 - len(prompt):].tolist() == prompt
        assert rollout.prompt_ids[row, : 7 - len(prompt)].eq(PAD).all()
        assert rollout.prompt_mask[row].tolist() == [0] * (7 - len(prompt)) + [1] * len(prompt)
    pad = rollout.completion_mask == 0
    assert rollout.completion_ids[pad].eq(PAD).all() and rollout.sampling_logps[pad].eq(0).all()
    assert (rollout.sampling_logps[~pad] < 0).all()
    ends_with_eos = rollout.completion_ids.gather(1, (lengths - 1)[:, None]).squeeze(1) == eos
    assert torch.equal(rollout.is_truncated, ~ends_with_eos)
    assert rollout.completion_mask.dtype == rollout.prompt_mask.dtype == torch.long
    assert rollout.is_truncated.dtype == torch.bool


def test_sampling_logps_equal_a_plain_forward():
    model = _model()
    sampling = _sampling(temperature=0.7)
    rollout = TransformersBackend(model).generate(PROMPTS, n=4, sampling=sampling,
                                                  generator=torch.Generator().manual_seed(0))
    assert rollout.sampling_logps.shape == rollout.completion_ids.shape
    for row, logps in enumerate(_plain_logps(model, rollout, temperature=0.7)):
        n = len(logps)
        torch.testing.assert_close(rollout.sampling_logps[row, :n], logps, rtol=1e-5, atol=1e-5)
        assert rollout.sampling_logps[row, n:].eq(0).all()


@pytest.mark.parametrize("options", [{"top_k": 5}, {"top_p": 0.8}, {"min_p": 0.2},
                                     {"top_k": 20, "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.3}])
def test_filtered_sampling_logps_equal_the_filtered_distribution(options):
    model = _model()
    sampling = _sampling(temperature=0.7, **options)
    rollout = TransformersBackend(model).generate(PROMPTS, n=4, sampling=sampling,
                                                  generator=torch.Generator().manual_seed(1))
    plain = _plain_logps(model, rollout, temperature=0.7)
    filtered = _plain_logps(model, rollout, temperature=0.7, sampling=sampling)
    for row, logps in enumerate(filtered):
        n = len(logps)
        assert torch.isfinite(logps).all()  # every sampled token is inside the filtered support
        torch.testing.assert_close(rollout.sampling_logps[row, :n], logps, rtol=1e-5, atol=1e-5)
    # the filtering acted: the sampled tokens have more mass than under the unfiltered distribution
    assert any((f > p + 1e-4).any() for f, p in zip(filtered, plain))
    if sampling.repetition_penalty == 1.0:  # filtering alone never lowers a kept token's probability
        assert all((f >= p - 1e-6).all() for f, p in zip(filtered, plain))


def test_process_logits_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    probs = logits.softmax(-1)  # [0.636, 0.234, 0.086, 0.032, 0.012]
    kept = lambda **kw: torch.isfinite(process_logits(logits, _sampling(**kw))).int().tolist()[0]
    assert kept(top_k=2) == [1, 1, 0, 0, 0]
    assert kept(top_p=0.5) == [1, 0, 0, 0, 0]  # the top token alone holds 0.636 >= 0.5
    assert kept(top_p=0.8) == [1, 1, 0, 0, 0]  # 0.636 < 0.8 <= 0.870
    assert kept(min_p=0.1) == [1, 1, 1, 0, 0]  # p >= 0.0636
    assert float(probs[0, 2] / probs[0, 0]) > 0.1 > float(probs[0, 3] / probs[0, 0])
    # CTRL penalty on seen tokens: positive logits divided, negative multiplied
    seen = torch.tensor([[True, False, False, False, True]])
    out = process_logits(torch.tensor([[4.0, 3.0, 2.0, 1.0, -1.0]]), _sampling(repetition_penalty=2.0), seen)
    assert out.tolist() == [[2.0, 3.0, 2.0, 1.0, -2.0]]
    # greedy: temperature only, no filtering
    out = process_logits(logits, _sampling(do_sample=False, temperature=2.0, top_k=1))
    assert torch.equal(out, logits / 2)


def test_seeded_generator_is_reproducible_and_samples_differ():
    model = _model()
    backend = TransformersBackend(model)
    sampling = _sampling(temperature=1.0)

    def run(seed):
        return backend.generate(PROMPTS, n=4, sampling=sampling, generator=torch.Generator().manual_seed(seed))

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert torch.equal(first.sampling_logps, again.sampling_logps)
    assert not torch.equal(first.completion_ids, other.completion_ids)
    for group in first.completion_ids.split(4):  # the n samples of one prompt are not all the same
        assert len({tuple(row.tolist()) for row in group}) > 1


def test_prompt_is_prefilled_once_and_finished_rows_leave_the_batch():
    model = _model()
    eos = _early_eos(model)
    calls, logits = [], []
    hooks = [model.get_input_embeddings().register_forward_hook(lambda m, a, out: calls.append(tuple(a[0].shape))),
             model.lm_head.register_forward_hook(lambda m, a, out: logits.append(tuple(out.shape)))]
    try:
        rollout = TransformersBackend(model).generate(PROMPTS, n=8, sampling=_sampling(do_sample=False,
                                                                                       eos_token_ids=(eos,)))
    finally:
        for hook in hooks:
            hook.remove()
    assert calls[0] == (3, 7)  # one row per distinct prompt, not 3 * 8
    assert logits[0] == (3, 1, model.config.vocab_size)  # the prefill keeps the last position's logits only
    assert all(shape[1] == 1 for shape in calls[1:])  # then one token per row and step
    assert sum(b * t for b, t in calls) == 3 * 7 + sum(b for b, _ in calls[1:])
    batch_sizes = [b for b, _ in calls[1:]]
    assert batch_sizes[0] == 24 and batch_sizes[-1] == 16  # the 8 rows of prompt 1 ended after 3 tokens
    assert rollout.completion_lengths.tolist()[8:16] == [3] * 8


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_compaction_policy_does_not_change_the_output(monkeypatch, fraction):
    """Greedy, so that the tokens do not depend on the random stream (which sampling consumes per active row)."""
    model = _model()
    eos = _early_eos(model)
    sampling = _sampling(do_sample=False, eos_token_ids=(eos,))
    expected = [_reference_greedy(model, p, 12, eos) for p in PROMPTS for _ in range(5)]
    monkeypatch.setattr(backend_module, "_COMPACT_FRACTION", fraction)
    calls = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        out = TransformersBackend(model).generate(PROMPTS, n=5, sampling=sampling)
    finally:
        hook.remove()
    assert _completions(out) == expected
    assert [len(e) for e in expected] == [12] * 5 + [3] * 5 + [12] * 5
    # 5 of 15 rows end after 3 tokens, a third of the batch: dropped unless the policy waits for more
    assert calls[-1] == (15 if fraction > 1 / 3 else 10)


@pytest.mark.parametrize("max_batch_size", [1, 4, 6, 100])
def test_max_batch_size_chunks_keep_the_order(max_batch_size):
    model = _model()
    eos = _early_eos(model)
    sampling = _sampling(do_sample=False, eos_token_ids=(eos,))
    expected = TransformersBackend(model).generate(PROMPTS, n=3, sampling=sampling)
    calls = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    try:
        out = TransformersBackend(model, max_batch_size=max_batch_size).generate(PROMPTS, n=3, sampling=sampling)
    finally:
        hook.remove()
    assert _completions(out) == _completions(expected)
    torch.testing.assert_close(out.sampling_logps, expected.sampling_logps, rtol=1e-5, atol=1e-5)
    assert max(b for b, _ in calls) <= max_batch_size


def test_fused_head_and_peft_models_generate_like_the_plain_model():
    from peft import LoraConfig, get_peft_model

    from trl.ops.fused_head import add_fused_lm_head

    model = _model()
    sampling = _sampling(temperature=0.8, top_p=0.95, eos_token_ids=(_early_eos(model),))

    def run(m):
        return TransformersBackend(m).generate(PROMPTS, n=3, sampling=sampling,
                                               generator=torch.Generator().manual_seed(0))

    expected = run(model)
    patched = add_fused_lm_head(copy.deepcopy(model))
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_patched = get_peft_model(add_fused_lm_head(copy.deepcopy(model)), LoraConfig(r=4, target_modules=["q_proj"]))
    for other in (patched, peft_model, peft_patched):  # LoRA starts as a no-op (B = 0)
        out = run(other)
        assert torch.equal(out.completion_ids, expected.completion_ids)
        torch.testing.assert_close(out.sampling_logps, expected.sampling_logps, rtol=1e-5, atol=1e-6)


def test_train_mode_and_gradient_checkpointing_are_restored():
    model = _model()
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.train()
    model.lm_head.eval()  # a module in its own mode stays in it
    sampling = _sampling(do_sample=False)
    calls = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    try:
        rollout = TransformersBackend(model).generate(PROMPTS, n=2, sampling=sampling)
    finally:
        hook.remove()
    assert all(t == 1 for _, t in calls[1:])  # the KV cache was used despite gradient checkpointing
    assert model.training and model.model.training and not model.lm_head.training
    assert not rollout.sampling_logps.requires_grad
    eval_model = _model()
    TransformersBackend(eval_model).generate(PROMPTS, n=1, sampling=sampling)
    assert not any(m.training for m in eval_model.modules())


def test_ddp_wrapped_model_is_unwrapped(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = _model()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(model)
        backend = TransformersBackend(wrapped)
        assert backend.model is model
        backend.sync_weights(wrapped)
        assert backend.model is model
    finally:
        dist.destroy_process_group()


def test_errors():
    from transformers import StaticCache

    model = _model()
    backend = TransformersBackend(model)
    with pytest.raises(ValueError, match="empty"):
        backend.generate([], n=2, sampling=_sampling())
    with pytest.raises(ValueError, match="at least one token"):
        backend.generate([[5], []], n=2, sampling=_sampling())
    with pytest.raises(ValueError, match="`n`"):
        backend.generate([[5]], n=0, sampling=_sampling())
    with pytest.raises(ValueError, match="max_batch_size"):
        TransformersBackend(model, max_batch_size=0)
    cache = StaticCache(config=model.config, max_cache_len=16)
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6]]), cache=cache, use_cache=True)
    with pytest.raises(TypeError, match="cannot be re-indexed"):
        backend_module._reindex_cache(cache, torch.tensor([0, 0]))
    with pytest.raises(TypeError, match="transformers.Cache"):
        backend_module._reindex_cache(((torch.zeros(1), torch.zeros(1)),), torch.tensor([0]))


def test_sample_categorical_follows_the_distribution_and_never_draws_a_zero():
    from trl.generation.transformers_backend import sample_categorical

    probs = torch.tensor([0.0, 0.1, 0.0, 0.2, 0.7, 0.0]).expand(200_000, 6).contiguous()
    draws = sample_categorical(probs, torch.Generator().manual_seed(0)).squeeze(1)
    freq = torch.bincount(draws, minlength=6).double() / len(draws)
    assert freq[[0, 2, 5]].sum() == 0
    # binomial std at n=2e5 is < 1.1e-3: 5 sigma
    torch.testing.assert_close(freq, probs[0].double(), rtol=0, atol=5.5e-3)
