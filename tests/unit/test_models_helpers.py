"""trl.models helpers: the deprecated `create_reference_model` (layer sharing), `unwrap_model_for_generation`,
`prepare_deepspeed` / `prepare_fsdp` without DeepSpeed or FSDP, activation offloading and selective checkpointing."""

import pytest
import torch
from accelerate import Accelerator

from trl.models import (
    create_reference_model,
    enable_selective_activation_checkpointing,
    get_act_offloading_ctx_manager,
    prepare_deepspeed,
    prepare_fsdp,
    unwrap_model_for_generation,
)
from trl.models.reference import shared_copy
from trl.models.tiny import tiny_model


def _tiny(**overrides):
    return tiny_model(num_hidden_layers=3, **overrides)


def test_create_reference_model_is_deprecated_and_returns_a_frozen_independent_copy():
    policy = _tiny()
    with pytest.warns(FutureWarning, match="trl.experimental.utils"):
        ref = create_reference_model(policy)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in policy.parameters())  # the policy keeps training
    for (name, p), q in zip(policy.named_parameters(), ref.parameters()):
        assert p is not q and torch.equal(p, q), name
    with torch.no_grad():
        policy.model.layers[0].mlp.up_proj.weight.add_(1.0)
    assert not torch.equal(policy.model.layers[0].mlp.up_proj.weight, ref.model.layers[0].mlp.up_proj.weight)


def test_shared_layers_are_the_policy_tensors_and_frozen_in_both():
    policy = _tiny(tie_word_embeddings=False)
    ref = shared_copy(policy, num_shared_layers=2)
    shared = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    own = ["model.layers.2.self_attn.q_proj.weight", "model.norm.weight", "lm_head.weight"]
    policy_params, ref_params = dict(policy.named_parameters()), dict(ref.named_parameters())
    for name in shared:
        assert ref_params[name] is policy_params[name] and not policy_params[name].requires_grad, name
    for name in own:
        assert ref_params[name] is not policy_params[name] and policy_params[name].requires_grad, name
        assert torch.equal(ref_params[name], policy_params[name])
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(ref(ids).logits, policy(ids).logits, rtol=0, atol=0)


def test_a_tied_head_follows_its_shared_embeddings():
    policy = _tiny()  # tie_word_embeddings=True in the bundled config
    ref = shared_copy(policy, num_shared_layers=1)
    assert ref.lm_head.weight is ref.model.embed_tokens.weight is policy.model.embed_tokens.weight


@pytest.mark.parametrize("bad", [0, 3, 7])
def test_num_shared_layers_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match=r"between 1 and 2 .*got " + str(bad)):
        shared_copy(_tiny(), num_shared_layers=bad)


def test_unknown_layer_layout_needs_a_pattern():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Pass `pattern`"):
        shared_copy(model, num_shared_layers=1)
    ref = shared_copy(model, num_shared_layers=1, pattern="{layer}")
    assert ref[0].weight is model[0].weight and ref[1].weight is not model[1].weight
    with pytest.raises(ValueError, match="must contain"):
        shared_copy(model, num_shared_layers=1, pattern="layers")


def test_unwrap_model_for_generation_yields_the_bare_model():
    accelerator = Accelerator(cpu=True)
    model = _tiny()
    prepared = accelerator.prepare_model(model)
    with unwrap_model_for_generation(prepared, accelerator) as unwrapped:
        assert unwrapped is model
        out = unwrapped.generate(torch.tensor([[5, 6]]), max_new_tokens=2, do_sample=False)
    assert out.shape == (1, 4)
    wrapper = torch.nn.parallel.DistributedDataParallel.__new__(torch.nn.parallel.DistributedDataParallel)
    torch.nn.Module.__init__(wrapper)
    wrapper.module = model  # what DDP holds, without a process group
    with unwrap_model_for_generation(wrapper, accelerator) as unwrapped:
        assert unwrapped is model


@pytest.mark.parametrize("prepare", [prepare_deepspeed, prepare_fsdp])
def test_prepare_without_deepspeed_or_fsdp_returns_the_model_frozen(prepare):
    accelerator = Accelerator(cpu=True)
    model = _tiny()
    model.train()
    prepared = prepare(model, accelerator)
    assert prepared is model and not prepared.training
    assert not any(p.requires_grad for p in prepared.parameters())


def test_activation_offloading_keeps_the_gradients_and_moves_saved_tensors():
    model = _tiny(attn_implementation="eager")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])

    def grads(ctx):
        model.zero_grad()
        with ctx:
            loss = model(ids, labels=ids).loss
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads(torch.enable_grad())
    offload = get_act_offloading_ctx_manager(model, min_offload_size=1024)
    offload._host_device_types = ()  # on this CPU-only machine, treat CPU tensors as device tensors: copy them all
    packed = []  # (saved while the output head ran, what pack returned)
    original = offload.pack_hook
    offload.pack_hook = lambda t: packed.append((offload._paused > 0, original(t))) or packed[-1][1]
    assert all(torch.equal(a, b) for a, b in zip(plain, grads(offload)))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    moved = [p for _, p in packed if isinstance(p, tuple)]
    assert moved and all(host.untyped_storage().data_ptr() not in weights for _, host in moved)  # copies of activations
    kept = [(in_head, t) for in_head, t in packed if isinstance(t, torch.Tensor)]
    assert any(t.untyped_storage().data_ptr() in weights for _, t in kept)  # weights and their views stay
    assert any(in_head and t.numel() * t.element_size() >= 1024 for in_head, t in kept)  # the head's inputs stay
    for in_head, t in kept:  # anything else that stays is small
        assert in_head or t.untyped_storage().data_ptr() in weights or t.numel() * t.element_size() < 1024
    offload.remove()


def test_selective_checkpointing_gives_the_same_gradients():
    model = _tiny(attn_implementation="sdpa")
    assert model.training  # checkpointing applies in training mode only
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])

    def grads():
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    assert enable_selective_activation_checkpointing(model) == 3
    assert enable_selective_activation_checkpointing(model) == 3  # enabling twice is harmless
    assert model.model.layers[0].gradient_checkpointing
    from torch.utils import checkpoint

    calls = []
    original = checkpoint.create_selective_checkpoint_contexts
    checkpoint.create_selective_checkpoint_contexts = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        selective = grads()
    finally:
        checkpoint.create_selective_checkpoint_contexts = original
    assert len(calls) == 3  # one selective checkpoint per layer
    for a, b in zip(plain, selective):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="GradientCheckpointingLayer"):
        enable_selective_activation_checkpointing(torch.nn.Linear(2, 2))


def test_deepspeed_config_of_a_frozen_model():
    from trl.models.helpers import _inference_deepspeed_config

    model = _tiny()  # hidden_size 256
    train = {"zero_optimization": {"stage": 2, "overlap_comm": True}, "optimizer": {"type": "AdamW"},
             "scheduler": {"type": "WarmupLR"}, "train_micro_batch_size_per_gpu": "auto",
             "gradient_accumulation_steps": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}
    config = _inference_deepspeed_config(train, model, "bf16")
    assert config == {"zero_optimization": {"stage": 0}, "train_micro_batch_size_per_gpu": 1,
                      "bf16": {"enabled": True}, "fp16": {"enabled": False}}
    assert train["optimizer"] == {"type": "AdamW"}  # the policy's config is not touched
    zero3 = _inference_deepspeed_config({"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"}}, model, "no")
    assert zero3["zero_optimization"] == {"stage": 3, "reduce_bucket_size": 256 * 256,
                                          "stage3_param_persistence_threshold": 2560,
                                          "stage3_prefetch_bucket_size": int(0.9 * 256 * 256)}
