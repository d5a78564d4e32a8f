"""Checkpoint files are read without running code, and a corrupt one is named (`trl.checkpoints`)."""

import datetime
import os

import pytest
import torch
from safetensors.torch import save_file

from trl.checkpoints import RECORD_TYPES, CheckpointError, find_unsafe, safe_load, verify_checkpoint
from trl.rollout import Rollout


class WritesAFile:
    """A pickle payload: unpickling it calls `open(path, "w")`, i.e. runs code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _rollout():
    return Rollout(prompt_ids=torch.tensor([[1, 2]]), prompt_mask=torch.ones(1, 2, dtype=torch.long),
                   completion_ids=torch.tensor([[3, 4, 5]]), completion_mask=torch.ones(1, 3, dtype=torch.long),
                   is_truncated=torch.tensor([True]), prompts=[[{"role": "user", "content": "hi"}]],
                   columns={"answer": ["abc"]}, rewards=torch.tensor([[0.5]]))


def test_a_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "online_state_0.pt"
    torch.save({"buffer": [WritesAFile(str(marker))]}, path)
    with pytest.raises(CheckpointError, match=r"Refusing to load .*online_state_0\.pt \(checkpoint .*ckpt\): it names "
                                              r"the Python object (builtins|io)\.open, and loading it could run code") as e:
        safe_load(path, tmp_path / "ckpt")
    assert "weights_only=False" not in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("cut", ["half", "tail", "empty"])
def test_a_truncated_torch_file_is_named(tmp_path, cut):
    path = tmp_path / "optimizer.pt"
    torch.save({"state": {0: {"exp_avg": torch.randn(1000)}}}, path)
    data = path.read_bytes()
    path.write_bytes({"half": data[: len(data) // 2], "tail": data[:-10], "empty": b""}[cut])
    for mmap in (False, True):
        with pytest.raises(CheckpointError, match=r"Cannot read .*optimizer\.pt \(checkpoint .*\): the file is "
                                                  r"corrupt or truncated") as e:
            safe_load(path, tmp_path, mmap=mmap)
        assert "weights_only" not in str(e.value)


def test_old_records_of_ours_load_with_weights_only(tmp_path):
    # checkpoints written before the rollout buffer was stored as plain dicts hold `Rollout` records
    path = tmp_path / "online_state_0.pt"
    torch.save({"buffer": [_rollout()], "buffer_position": 1}, path)
    with pytest.raises(CheckpointError, match="trl.rollout.Rollout"):
        safe_load(path)
    state = safe_load(path, allow=RECORD_TYPES)
    assert isinstance(state["buffer"][0], Rollout)
    assert state["buffer"][0].columns == {"answer": ["abc"]}
    torch.testing.assert_close(state["buffer"][0].completion_ids, torch.tensor([[3, 4, 5]]))


def test_rollout_as_dict_round_trips_through_weights_only(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"buffer": [_rollout().as_dict()]}, path)
    restored = Rollout(**safe_load(path)["buffer"][0])
    assert restored.prompts == [[{"role": "user", "content": "hi"}]]
    torch.testing.assert_close(restored.rewards, torch.tensor([[0.5]]))


def test_find_unsafe_names_the_first_value_that_cannot_be_stored():
    assert find_unsafe({"a": [1, 2.0, "x", None, b"y", (True,)], "t": torch.ones(2)}) is None
    assert find_unsafe({"columns": {"date": ["x", datetime.date(2026, 1, 1)]}}) == (
        "state['columns']['date'][1]: datetime.date")
    assert find_unsafe([1, 2], "buffer") is None


def test_verify_checkpoint_names_the_broken_file(tmp_path):
    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    save_file({"w": torch.randn(100)}, checkpoint / "model.safetensors")
    torch.save({"state": {}}, checkpoint / "optimizer.pt")
    torch.save({"python": 1}, checkpoint / "rng_state.pth")
    (checkpoint / "trainer_state.json").write_text("{}")
    torch.save(WritesAFile(str(tmp_path / "never")), checkpoint / "training_args.bin")  # not read on resume
    verify_checkpoint(checkpoint)

    data = (checkpoint / "model.safetensors").read_bytes()
    (checkpoint / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors \(checkpoint .*checkpoint-3\): the file is corrupt"):
        verify_checkpoint(checkpoint)
    os.remove(checkpoint / "model.safetensors")

    (checkpoint / "trainer_state.json").write_text('{"global_step": ')
    with pytest.raises(CheckpointError, match=r"trainer_state\.json .*not valid JSON"):
        verify_checkpoint(checkpoint)
    (checkpoint / "trainer_state.json").write_text("{}")

    marker = tmp_path / "pwned"
    torch.save({"state": WritesAFile(str(marker))}, checkpoint / "scheduler.pt")
    with pytest.raises(CheckpointError, match=r"scheduler\.pt .*(builtins|io)\.open"):
        verify_checkpoint(checkpoint)
    assert not marker.exists() and not (tmp_path / "never").exists()


def test_reference_cache_that_cannot_be_read_is_recomputed(tmp_path, monkeypatch):
    from trl.models import reference

    monkeypatch.setenv("TRL_CACHE_DIR", str(tmp_path))
    reference.save_cached("k", {"ref_chosen_logps": torch.tensor([1.0])})
    assert reference.load_cached("k")["ref_chosen_logps"].tolist() == [1.0]
    path = reference.cache_dir() / "k.pt"
    torch.save({"x": WritesAFile(str(tmp_path / "pwned"))}, path)
    with pytest.warns(UserWarning, match=r"Ignoring the cached reference log-probs: Refusing to load .*k\.pt"):
        assert reference.load_cached("k") is None
    assert not (tmp_path / "pwned").exists()


def test_fsdp_distributed_checkpoint_folders_are_checked(tmp_path):
    # FSDP's sharded state dicts are torch distributed checkpoints: torch reads their `.metadata` with plain pickle and
    # their non-tensor values with weights_only=False, so both are checked before a resume
    import pickle
    import warnings

    import torch.distributed.checkpoint as dcp

    checkpoint = tmp_path / "checkpoint-2"
    state = {"w": torch.randn(4, 4), "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0]}]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(state, checkpoint_id=str(checkpoint / "optimizer_0"))
        verify_checkpoint(checkpoint)
        marker = tmp_path / "pwned"
        dcp.save({"w": torch.randn(2), "extra": WritesAFile(str(marker))},
                 checkpoint_id=str(checkpoint / "pytorch_model_fsdp_0"))
    with pytest.raises(CheckpointError, match=r"Refusing to load .*pytorch_model_fsdp_0/__0_0\.distcp \(value "
                                              r"'extra'\) \(checkpoint .*checkpoint-2\): it names the Python object "
                                              r"(builtins|io)\.open"):
        verify_checkpoint(checkpoint)

    (checkpoint / "pytorch_model_fsdp_0" / ".metadata").write_bytes(pickle.dumps(WritesAFile(str(marker))))
    with pytest.raises(CheckpointError, match=r"Refusing to load .*pytorch_model_fsdp_0/\.metadata .*(builtins|io)"
                                              r"\.open"):
        verify_checkpoint(checkpoint)
    (checkpoint / "pytorch_model_fsdp_0" / ".metadata").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match=r"Cannot read .*\.metadata .*corrupt or truncated"):
        verify_checkpoint(checkpoint)
    assert not marker.exists()
