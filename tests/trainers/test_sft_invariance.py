"""The SFT loss and gradient do not depend on how the 8 rows of an optimiser step are cut."""

import pytest
import torch

from trl.models.tiny import tiny_model, tiny_tokenizer

from .sft_one_step import SMALL, dataset, one_step, run_two_ranks


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Batch of 8 in one micro-batch, padded."""
    loss, grads, _ = one_step(tmp_path_factory.mktemp("ref"), batch_size=8, grad_accum=1)
    return loss, grads


def _assert_same(reference, loss, grads):
    ref_loss, ref_grads = reference
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert ref_grads.keys() == grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_loss_equals_naive_token_mean(reference):
    """The logged loss is the mean NLL over every completion token of the 8 rows (full logits, by hand)."""
    from trl.data.tokenize import tokenize_sft_example

    tok, model = tiny_tokenizer(), tiny_model(seed=0, **SMALL)
    nll_sum, count = 0.0, 0
    for row in dataset():
        out = tokenize_sft_example(row, tok, kind="prompt_completion", conversational=True,
                                   eos_token_id=tok.eos_token_id, eos_ids={tok.eos_token_id})
        ids = torch.tensor([out["input_ids"]])
        with torch.no_grad():
            logps = model(input_ids=ids).logits.log_softmax(-1)[0, :-1]
        targets, mask = ids[0, 1:], torch.tensor(out["completion_mask"][1:]).bool()
        nll_sum -= logps[torch.arange(len(targets)), targets][mask].sum().item()
        count += int(mask.sum())
    assert reference[0] == pytest.approx(nll_sum / count, rel=1e-5)


@pytest.mark.parametrize("batch_size, grad_accum, padding_free", [(4, 2, False), (2, 4, False), (1, 8, False),
                                                                  (8, 1, True), (2, 4, True)])
def test_gradient_accumulation_and_padding_free(reference, tmp_path, batch_size, grad_accum, padding_free):
    loss, grads, _ = one_step(tmp_path, batch_size, grad_accum, padding_free=padding_free)
    _assert_same(reference, loss, grads)


def test_packed_equals_padded(reference, tmp_path):
    loss, grads, trainer = one_step(tmp_path, batch_size=8, grad_accum=1, packing=True)
    assert len(trainer.train_dataset) < 8  # the rows really were packed together
    _assert_same(reference, loss, grads)


@pytest.mark.parametrize("streaming", [False, True], ids=["map-style", "streaming"])
def test_two_ddp_ranks_equal_one_process(reference, tmp_path, streaming):
    """2 processes (gloo) x 2 rows x 2 accumulation steps = the same 8 rows as one process, also when the rows are
    streamed (each rank reads its own batches)."""
    out = tmp_path / "ddp.pt"
    run_two_ranks("sft_one_step.py", str(out), "2", "2", *(["streaming"] if streaming else []))
    saved = torch.load(out)
    assert saved["world_size"] == 2
    _assert_same(reference, saved["loss"], saved["grads"])


def _eval_loss(trainer) -> float:
    """The mean token loss of the first batch of the train dataloader (all 8 rows), without gradients."""
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


def test_packed_flex_attention_equals_padded(tmp_path):
    """Document-masked flex attention (`packed_attention`; forward only: flex attention has no backward on CPU) gives
    packed rows the loss of the padded batch, as sdpa's dense block-diagonal mask does."""
    from trl import SFTConfig, SFTTrainer
    from trl.models.utils import use_packed_attention

    def trainer(packing):
        args = SFTConfig(output_dir=str(tmp_path / str(packing)), per_device_train_batch_size=8, max_length=256,
                         packing=packing, report_to="none", packed_attention="model", shuffle_dataset=False)
        return SFTTrainer(model=tiny_model(seed=0, **SMALL), args=args, train_dataset=dataset(),
                          processing_class=tiny_tokenizer())

    padded, packed = trainer(False), trainer(True)
    assert len(packed.train_dataset) < 8  # several documents per row
    assert packed.model.config._attn_implementation == "sdpa"
    reference, sdpa = _eval_loss(padded), _eval_loss(packed)
    assert use_packed_attention(packed.model, "auto", "cuda") == "flex_attention"  # what a CUDA run picks
    assert packed.model.config._attn_implementation == "flex_attention"
    flex = _eval_loss(packed)
    assert sdpa == pytest.approx(reference, rel=1e-5)
    assert flex == pytest.approx(reference, rel=1e-5)


def test_packed_attention_choice(tmp_path):
    from trl import SFTConfig
    from trl.models.utils import use_packed_attention

    model = tiny_model(seed=0, **SMALL)
    assert use_packed_attention(model, "auto", "cpu") == "sdpa"  # no flex backward on the CPU
    assert use_packed_attention(model, "model", "cuda") == "sdpa"
    with pytest.raises(ValueError, match="no backward"):
        use_packed_attention(model, "flex_attention", "cpu")
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="packed_attention"):
        SFTConfig(output_dir=str(tmp_path), packed_attention="flex")
