"""Model merging at checkpoints. `linear` (a weighted average of the two models' parameters) is implemented here and
needs nothing else; `ties`, `dare_ties` and `slerp` run through mergekit (https://github.com/arcee-ai/mergekit), an
optional dependency imported only when one of them is used."""

from __future__ import annotations

import os

import torch
from transformers import TrainerCallback

MERGE_METHODS = ("linear", "ties", "dare_ties", "slerp")
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class MergeConfig:
    """What to merge and how, with the reference's defaults.

    Args:
        method (`str`, *optional*, defaults to `"linear"`): `linear`, `ties`, `dare_ties` or `slerp`.

    Attributes (set after construction as needed):
        policy_model_path (`str`): the model being trained (the callback sets it to each checkpoint).
        target_model_path (`str`): the model to merge with (the callback defaults it to the policy's base model).
        policy_model_weight / target_model_weight (`float`, defaults `0.5` / `0.5`): weights of `linear`, `ties` and
            `dare_ties`.
        policy_model_density / target_model_density (`list[float]`, defaults `[1.0, 0.7, 0.1]` / `[1.0]`): kept
            fractions of `ties` / `dare_ties`.
        normalize (`float`, defaults to `1.0`): divide by the sum of the weights (non-zero) or not (0).
        t_values (`float`, defaults to `0.5`): interpolation factor of `slerp`.
        dtype (`str`, defaults to `"float16"`): dtype of the merged weights (`float16`, `bfloat16`, `float32`).

    Example:
        ```python
        >>> config = MergeConfig("linear")
        >>> config.policy_model_weight, config.target_model_weight = 0.7, 0.3
        ```
    """

    def __init__(self, method: str = "linear"):
        if method not in MERGE_METHODS:
            raise ValueError(f"Unknown merge method {method!r}; allowed: {list(MERGE_METHODS)}.")
        self.method = method
        self.policy_model_path: str | None = None
        self.target_model_path: str | None = None
        self.policy_model_weight = 0.5
        self.target_model_weight = 0.5
        self.policy_model_density = [1.0, 0.7, 0.1]
        self.target_model_density = [1.0]
        self.normalize = 1.0
        self.t_values = 0.5
        self.dtype = "float16"

    def create(self) -> dict:
        """The merge as a mergekit configuration dict (also what [`merge_models`] reads for `linear`)."""
        if self.dtype not in _DTYPES:
            raise ValueError(f"MergeConfig.dtype must be one of {list(_DTYPES)}; got {self.dtype!r}.")
        policy, target = self.policy_model_path, self.target_model_path
        if self.method == "linear":
            return {
                "merge_method": "linear", "dtype": self.dtype, "parameters": {"normalize": self.normalize},
                "models": [{"model": policy, "parameters": {"weight": self.policy_model_weight}},
                           {"model": target, "parameters": {"weight": self.target_model_weight}}],
            }
        if self.method in ("ties", "dare_ties"):
            return {
                "merge_method": self.method, "dtype": self.dtype, "base_model": target,
                "parameters": {"normalize": self.normalize},
                "models": [{"model": policy, "parameters": {"density": self.policy_model_density,
                                                             "weight": self.policy_model_weight}},
                           {"model": target, "parameters": {"density": self.target_model_density,
                                                             "weight": self.target_model_weight}}],
            }
        return {  # slerp
            "merge_method": "slerp", "dtype": self.dtype, "base_model": target, "parameters": {"t": self.t_values},
            "models": [{"model": policy}, {"model": target}],
        }


def _load(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def linear_merge(policy_path: str, target_path: str, out_path: str, policy_weight: float = 0.5,
                 target_weight: float = 0.5, normalize: bool = True, dtype: str = "float16") -> str:
    """Write `w_p · θ_policy + w_t · θ_target` (divided by `w_p + w_t` with `normalize`) to `out_path`, computed in
    float32 and saved in `dtype`, with the policy's config and tokenizer files.

    Raises:
        `ValueError`: the two models have different parameter names or shapes, or normalising weights that sum to 0.

    Example:
        ```python
        >>> linear_merge("out/checkpoint-100", "Qwen/Qwen2.5-0.5B", "out/checkpoint-100/merged", 0.7, 0.3)
        ```
    """
    policy, target = _load(policy_path), _load(target_path)
    target_state = target.state_dict()
    policy_state = policy.state_dict()
    if policy_state.keys() != target_state.keys():
        missing = sorted(set(policy_state) ^ set(target_state))[:5]
        raise ValueError(f"Cannot merge {policy_path} with {target_path}: their parameters differ (e.g. {missing}).")
    total = policy_weight + target_weight
    if normalize and total == 0:
        raise ValueError("Normalised merge weights sum to 0; give the policy or the target a non-zero weight.")
    scale = 1.0 / total if normalize else 1.0
    done = set()  # tied weights (embeddings and head) are one tensor under two names: merge it once
    with torch.no_grad():
        for name, value in policy_state.items():
            if value.data_ptr() in done:
                continue
            done.add(value.data_ptr())
            other = target_state[name]
            if value.shape != other.shape:
                raise ValueError(f"Cannot merge parameter {name}: shape {tuple(value.shape)} vs {tuple(other.shape)}.")
            if value.is_floating_point():
                value.copy_((policy_weight * value + target_weight * other) * scale)
    policy.to(_DTYPES[dtype]).save_pretrained(out_path)
    try:  # the tokenizer travels with the merged model when the checkpoint has one
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(policy_path).save_pretrained(out_path)
    except (OSError, ValueError):
        pass
    return out_path


def merge_models(config: dict, out_path: str) -> str:
    """Run the merge described by `config` (from [`MergeConfig.create`]) into `out_path`: `linear` here, the other
    methods with mergekit.

    Raises:
        `ImportError`: a method other than `linear` without mergekit installed (with the install command).

    Example:
        ```python
        >>> merge_models(MergeConfig("linear").create(), "merged")
        ```
    """
    method = config["merge_method"]
    if method == "linear":
        (policy, target) = config["models"]
        return linear_merge(policy["model"], target["model"], out_path, policy["parameters"]["weight"],
                            target["parameters"]["weight"], bool(config["parameters"]["normalize"]), config["dtype"])
    from ...import_utils import is_mergekit_available

    if not is_mergekit_available():
        raise ImportError(f"The {method!r} merge needs mergekit: `pip install mergekit` (or use method='linear', which "
                          "needs nothing else).")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    run_merge(MergeConfiguration.model_validate(config), out_path=out_path,
              options=MergeOptions(cuda=torch.cuda.is_available(), copy_tokenizer=True, lazy_unpickle=False))
    return out_path


class MergeModelCallback(TrainerCallback):
    """Merge the policy with `merge_config.target_model_path` (default: the model training started from) into
    `checkpoint-<step>/merged`: at every checkpoint with `merge_at_every_checkpoint`, else once at the end of training
    (in the last checkpoint, or `output_dir/merged` when there is none).

    Args:
        merge_config ([`MergeConfig`], *optional*): defaults to `MergeConfig("linear")`.
        merge_at_every_checkpoint (`bool`, *optional*, defaults to `False`).
        push_to_hub (`bool`, *optional*, defaults to `False`): upload each merged model to the Hub as
            `<output_dir name>-checkpoint-<step>-merged`.

    Example:
        ```python
        >>> trainer = DPOTrainer(..., callbacks=[MergeModelCallback(MergeConfig("linear"))])
        ```
    """

    def __init__(self, merge_config: MergeConfig | None = None, merge_at_every_checkpoint: bool = False,
                 push_to_hub: bool = False):
        if merge_config is not None and not isinstance(merge_config, MergeConfig):
            raise TypeError(f"merge_config must be a MergeConfig; got {type(merge_config).__name__}.")
        self.merge_config = merge_config or MergeConfig()
        self.merge_at_every_checkpoint = merge_at_every_checkpoint
        self.push_to_hub = push_to_hub
        if self.merge_config.method != "linear":
            from ...import_utils import is_mergekit_available

            if not is_mergekit_available():
                raise ImportError(f"MergeModelCallback with method {self.merge_config.method!r} needs mergekit: "
                                  "`pip install mergekit` (or use MergeConfig('linear')).")

    def _merge(self, args, state, model, source: str, out_path: str) -> None:
        """Merge the policy saved in `source` with the target into `out_path` (main process only)."""
        config = self.merge_config
        config.policy_model_path = source
        if config.target_model_path is None:
            base = getattr(getattr(model, "config", None), "_name_or_path", None)
            if not base or not (os.path.isdir(base) or "/" in base):
                raise ValueError("MergeModelCallback: set merge_config.target_model_path; the model has no path or "
                                 "hub id to merge with.")
            config.target_model_path = base
        merged = merge_models(config.create(), out_path)
        if self.push_to_hub:
            from huggingface_hub import HfApi

            repo = f"{os.path.basename(os.path.normpath(args.output_dir))}-checkpoint-{state.global_step}-merged"
            api = HfApi()
            repo_id = api.create_repo(repo, exist_ok=True).repo_id
            api.upload_folder(folder_path=merged, repo_id=repo_id)

    def on_save(self, args, state, control, model=None, **kwargs):
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if self.merge_at_every_checkpoint and state.is_world_process_zero and os.path.isdir(checkpoint):
            self._merge(args, state, model, checkpoint, os.path.join(checkpoint, "merged"))

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.merge_at_every_checkpoint or not state.is_world_process_zero:
            return
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(checkpoint):
            self._merge(args, state, model, checkpoint, os.path.join(checkpoint, "merged"))
            return
        if model is None:
            raise ValueError("MergeModelCallback: training ended without a checkpoint of the last step and the trainer "
                             "passed no model to merge.")
        # no checkpoint of the last step (e.g. save_strategy="no"): merge the final weights into output_dir/merged
        import tempfile

        from accelerate.utils import extract_model_from_parallel

        os.makedirs(args.output_dir, exist_ok=True)  # nothing may have been written there yet
        with tempfile.TemporaryDirectory(prefix="policy-", dir=args.output_dir) as source:
            extract_model_from_parallel(model).save_pretrained(source)
            if processing_class is not None:
                processing_class.save_pretrained(source)
            self._merge(args, state, model, source, os.path.join(args.output_dir, "merged"))
