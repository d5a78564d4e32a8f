"""Fields shared by the online trainers' configs (GRPO, RLOO): data, generation, rewards, reference, logging."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..agents.tools import DEFAULT_TOOL_TIMEOUT
from .base_config import _BaseConfig, dict_field, resolve_pad_to_multiple_of


@dataclass
class _OnlineConfig(_BaseConfig):
    r"""
    Shared by [`GRPOConfig`] and [`RLOOConfig`]. `per_device_train_batch_size` counts **completions**, not prompts.

    Batch plan: a *generation batch* of `generation_batch_size` completions (all processes together; by default
    `per_device_train_batch_size × num_processes × steps_per_generation`) is sampled at once from
    `generation_batch_size / num_generations` prompts, scored, and split into `steps_per_generation` micro-batches;
    the whole buffer is reused `num_iterations` times. It must hold whole groups of `num_generations`.

    Parameters:
        > Model

        disable_dropout (`bool`, *optional*, defaults to `False`): disable dropout in the policy (and reference).

        > Data

        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Keep every dataset column: the columns other than `prompt` reach the reward functions as keyword arguments.
        num_generations (`int`, *optional*): completions sampled per prompt (`G`, at least 2).
        num_generations_eval (`int`, *optional*): completions per prompt at evaluation (defaults to `num_generations`);
            `per_device_eval_batch_size` counts completions, like the train batch size.
        max_completion_length (`int`, *optional*, defaults to `512`): most tokens generated per completion.
        mask_truncated_completions (`bool`, *optional*, defaults to `False`): leave completions that hit
            `max_completion_length` out of the loss.
        shuffle_dataset (`bool`, *optional*, defaults to `True`): shuffle the prompts (a streaming dataset is read
            in its own order: shuffle it with `dataset.shuffle(buffer_size=...)`).
        chat_template_kwargs (`dict`, *optional*): extra arguments of the chat template for conversational prompts.

        > Generation

        generation_batch_size (`int`, *optional*): completions per generation batch over all processes (mutually
            exclusive with `steps_per_generation`).
        steps_per_generation (`int`, *optional*): micro-batches per generation batch (defaults to
            `gradient_accumulation_steps`).
        temperature (`float`, *optional*, defaults to `1.0`), top_p (`float`, *optional*, defaults to `1.0`),
        top_k (`int`, *optional*, defaults to `0`), min_p (`float`, *optional*),
        repetition_penalty (`float`, *optional*, defaults to `1.0`): sampling parameters.
        generation_kwargs (`dict`, *optional*): overrides of the sampling parameters (`temperature`, `top_p`, `top_k`,
            `min_p`, `repetition_penalty`, `do_sample`; `num_beams=1` is accepted). Other keys are an error naming
            these: `max_new_tokens` (set `max_completion_length`) and beam-search keys (`num_beams > 1`,
            `early_stopping`, `length_penalty`, ...) included, since RL needs completions sampled from the policy.
        use_vllm (`bool`, *optional*, defaults to `False`): generate with vLLM (not available yet in this version;
            `True` is an error).
        vllm_mode, vllm_model_impl, vllm_enable_sleep_mode, vllm_structured_outputs_regex, vllm_server_base_url,
        vllm_server_host, vllm_server_port, vllm_server_timeout, vllm_group_port, vllm_gpu_memory_utilization,
        vllm_max_model_length, vllm_tensor_parallel_size: the reference's vLLM settings, with its defaults. They are
            parsed so that configs and YAML files written for the reference load, and used only with `use_vllm=True`.
        use_transformers_continuous_batching (`bool`, *optional*, defaults to `False`),
        transformers_continuous_batching_config (`dict`, *optional*), use_transformers_paged (`bool`, *optional*,
            defaults to `False`): the reference's other generation paths; not available (`True` is an error), the
            built-in backend already drops finished completions from the batch.

        > Tools (multi-turn rollouts, docs/agents.md)

        max_tool_calling_iterations (`int`, *optional*): most rounds of tool calls per rollout; None: no limit but
            `max_completion_length`, which bounds the generated and tool-result tokens together.
        tool_timeout (`float`, *optional*, defaults to `60.0`): seconds one tool call may take before it becomes a
            `{"error": ...}` tool message counted as a failure.

        > Algorithm

        beta (`float`): KL coefficient; 0 loads no reference model.
        num_iterations (`int`, *optional*, defaults to `1`): passes over each generation batch (μ).
        epsilon (`float`, *optional*, defaults to `0.2`): lower clipping bound ε of the ratio.
        epsilon_high (`float`, *optional*): upper clipping bound (defaults to `epsilon`).

        > Rewards

        reward_weights (`list[float]`, *optional*): one weight per reward function (defaults to all 1.0).

        > Reference model

        sync_ref_model (`bool`, *optional*, defaults to `False`): TR-DPO reference syncing (needs `beta > 0`).
        ref_model_mixup_alpha (`float`, *optional*, defaults to `0.6`), ref_model_sync_steps (`int`, *optional*,
            defaults to `512`).

        > Logging

        log_completions (`bool`, *optional*, defaults to `False`): print a table of sampled prompts, completions,
            rewards and advantages at every logging step, and write them to
            `output_dir/completions/completions_<step>.parquet`.
        num_completions_to_print (`int`, *optional*): rows of that table (all when None).
        log_unique_prompts (`bool`, *optional*, defaults to `False`): one row per prompt in the printed table.
        log_multimodal (`bool`, *optional*, defaults to `True`): parsed for the reference's configs; no effect (the
            online trainers take text prompts only).

        > Guards

        guard_patience (`int`, *optional*, defaults to `10`): generation batches in a row with no gradient signal
            left (zero reward variance in every group, or every loss token masked) before the guard stops the run.
            Every completion truncated while the rewards still vary is warned about at each batch from this one on.
    """

    # completions per prompt that a config of this class may ask for (DistillationConfig samples one)
    _min_num_generations: ClassVar[int] = 2

    learning_rate: float = field(default=1e-6, metadata={"help": "Initial AdamW learning rate."})

    # Model
    disable_dropout: bool = field(default=False, metadata={"help": "Disable dropout in the policy and reference."})

    # Data
    remove_unused_columns: bool | None = field(
        default=False, metadata={"help": "Keep the dataset columns: they reach the reward functions as kwargs."}
    )
    num_generations: int | None = field(default=8, metadata={"help": "Completions sampled per prompt (>= 2)."})
    num_generations_eval: int | None = field(
        default=None, metadata={"help": "Completions per prompt at evaluation (default: num_generations)."}
    )
    max_completion_length: int | None = field(default=512, metadata={"help": "Most tokens generated per completion."})
    mask_truncated_completions: bool = field(
        default=False, metadata={"help": "Leave completions that hit max_completion_length out of the loss."}
    )
    shuffle_dataset: bool | None = field(default=True, metadata={"help": "Shuffle the prompts."})
    chat_template_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Extra chat-template arguments for conversational prompts (dict or JSON)."}
    )

    # Generation
    generation_batch_size: int | None = field(
        default=None, metadata={"help": "Completions per generation batch over all processes."}
    )
    steps_per_generation: int | None = field(
        default=None, metadata={"help": "Micro-batches per generation batch (default: gradient_accumulation_steps)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (1.0: off)."})
    top_k: int | None = field(default=0, metadata={"help": "Keep the k most likely tokens (0: off)."})
    min_p: float | None = field(default=None, metadata={"help": "Minimum probability relative to the top token."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Repetition penalty (1.0: off)."})
    generation_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Overrides of the sampling parameters (dict or JSON)."}
    )
    use_vllm: bool = field(default=False, metadata={"help": "Generate with vLLM (not available yet)."})
    # vLLM (parsed so that configs written for the reference load; only `use_vllm=True` would need them)
    vllm_mode: str = field(default="colocate", metadata={"help": "vLLM mode, 'colocate' or 'server' (needs use_vllm)."})
    vllm_model_impl: str = field(default="vllm", metadata={"help": "vLLM model implementation (needs use_vllm)."})
    vllm_enable_sleep_mode: bool = field(default=False, metadata={"help": "vLLM sleep mode (needs use_vllm)."})
    vllm_structured_outputs_regex: str | None = field(
        default=None, metadata={"help": "Regex for vLLM structured outputs (needs use_vllm)."}
    )
    vllm_server_base_url: str | None = field(default=None, metadata={"help": "vLLM server URL (needs use_vllm)."})
    vllm_server_host: str = field(default="0.0.0.0", metadata={"help": "vLLM server host (needs use_vllm)."})
    vllm_server_port: int = field(default=8000, metadata={"help": "vLLM server port (needs use_vllm)."})
    vllm_server_timeout: float = field(default=240.0, metadata={"help": "vLLM server timeout (needs use_vllm)."})
    vllm_group_port: int = field(default=51216, metadata={"help": "vLLM weight-sync NCCL port (needs use_vllm)."})
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "GPU memory share of colocated vLLM (needs use_vllm)."}
    )
    vllm_max_model_length: int | None = field(default=None, metadata={"help": "vLLM context length (needs use_vllm)."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM tensor parallelism (needs use_vllm)."})
    use_transformers_continuous_batching: bool = field(
        default=False, metadata={"help": "transformers' continuous batching (not available; the built-in backend "
                                         "already drops finished completions from the batch)."}
    )
    transformers_continuous_batching_config: dict | str | None = field(
        default=None, metadata={"help": "Settings of transformers' continuous batching (needs "
                                        "use_transformers_continuous_batching, not available)."}
    )
    use_transformers_paged: bool = field(
        default=False, metadata={"help": "Deprecated in the reference; paged generation is not available."}
    )
    cache_implementation: str | None = field(
        default=None, metadata={"help": "KV cache of the built-in backend: 'static' (pre-allocated, fixed-shape "
                                        "decode steps that can be compiled), 'dynamic' (grown per token), or None "
                                        "(static when every layer of the model is full attention, else dynamic)."}
    )
    generation_compile: str = field(
        default="auto", metadata={"help": "Compile the static-cache decode step of the built-in backend with "
                                          "torch.compile: True, False, or 'auto' (on CUDA only: on CPU the compiled "
                                          "step measured slower than the eager one). Needs the static cache."}
    )
    share_prompt_forward: bool | None = field(
        default=None, metadata={"help": "Score the completions of a prompt in one row of the training forward: the "
                                        "prompt runs once per micro-batch instead of once per completion "
                                        "(docs/design.md, shared-prompt forward). None: where the model supports "
                                        "it (sdpa or eager attention, every layer full attention, no MoE "
                                        "load-balancing loss, text only); True: require it; False: one padded row "
                                        "per completion, as the reference library lays it out."}
    )
    ds3_gather_for_generation: bool = field(
        default=True, metadata={"help": "Kept for compatibility; DeepSpeed ZeRO-3 generation is not supported yet."}
    )

    # Tools
    max_tool_calling_iterations: int | None = field(
        default=None, metadata={"help": "Most rounds of tool calls per rollout (None: bounded only by "
                                        "max_completion_length, which counts generated and tool-result tokens)."}
    )
    tool_timeout: float = field(
        default=DEFAULT_TOOL_TIMEOUT,
        metadata={"help": "Seconds one tool call may take; a call past it becomes an error tool message (a failure)."},
    )

    # Algorithm
    num_iterations: int = field(default=1, metadata={"help": "Passes over each generation batch (mu)."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clipping bound of the importance ratio."})
    epsilon_high: float | None = field(default=None, metadata={"help": "Upper clipping bound (default: epsilon)."})

    # Rewards
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward function (default: all 1.0)."}
    )

    # Reference model
    sync_ref_model: bool = field(default=False, metadata={"help": "TR-DPO: periodically mix the policy into the ref."})
    ref_model_mixup_alpha: float = field(default=0.6, metadata={"help": "alpha of ref <- alpha*policy + (1-alpha)*ref."})
    ref_model_sync_steps: int = field(default=512, metadata={"help": "Steps between reference syncs."})

    # Logging
    log_completions: bool = field(default=False, metadata={"help": "Print and save sampled completions."})
    num_completions_to_print: int | None = field(default=None, metadata={"help": "Rows of the completions table."})
    log_unique_prompts: bool = field(default=False, metadata={"help": "One row per prompt in the printed table."})
    log_multimodal: bool = field(
        default=True, metadata={"help": "Log the images of multimodal prompts (no effect: text models only)."}
    )
    log_completions_hub_repo: str | None = field(
        default=None, metadata={"help": "Push the completion tables to a Hub dataset (not available: no network)."}
    )

    # Guards
    guard_patience: int = field(
        default=10,
        metadata={"help": "Generation batches in a row with no gradient signal left (zero reward variance in every "
                          "group, or every loss token masked) before the guard stops the run; every completion "
                          "truncated while the rewards vary is warned about at each batch from this one on."},
    )

    def __post_init__(self):
        for name in ("generation_kwargs", "chat_template_kwargs", "transformers_continuous_batching_config"):
            setattr(self, name, dict_field(getattr(self, name), name))
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):  # a string from a script fails later
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise TypeError(f"`{name}` must be a number; got {type(value).__name__} {value!r}.")
        if self.use_vllm:
            raise ValueError(
                "`use_vllm=True`: the vLLM backend is not available in this version; generation runs on the built-in "
                "transformers backend. Remove `use_vllm`."
            )
        if self.vllm_mode not in ("colocate", "server"):
            raise ValueError(f"`vllm_mode` must be 'colocate' or 'server'; got {self.vllm_mode!r}.")
        unsupported = {
            "use_transformers_continuous_batching": self.use_transformers_continuous_batching,
            "use_transformers_paged": self.use_transformers_paged,
            "log_completions_hub_repo": self.log_completions_hub_repo,
        }
        for name, value in unsupported.items():
            if value:
                hint = (" The completion tables are written to output_dir/completions/ with `log_completions=True`."
                        if name == "log_completions_hub_repo" else
                        " The built-in backend already drops finished completions from the batch.")
                raise ValueError(f"`{name}` is not supported in this version; remove it.{hint}")
        if self.cache_implementation not in (None, "static", "dynamic"):
            raise ValueError(f"`cache_implementation` must be None, 'static' or 'dynamic' (the caches the built-in "
                             f"generation backend implements); got {self.cache_implementation!r}.")
        if isinstance(self.generation_compile, str):  # the command line and YAML give strings
            spelled = {"auto": "auto", "true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
            self.generation_compile = spelled.get(self.generation_compile.strip().lower(), self.generation_compile)
        if self.generation_compile not in ("auto", True, False):
            raise ValueError(f"`generation_compile` must be 'auto', True or False; got {self.generation_compile!r}.")
        if self.generation_compile is True and self.cache_implementation == "dynamic":
            raise ValueError("`generation_compile=True` compiles the static-cache decode step; it cannot be combined "
                             "with `cache_implementation='dynamic'`. Set `cache_implementation=None` or 'static'.")
        if self.auto_find_batch_size:
            raise ValueError("`auto_find_batch_size` is not supported by online trainers: the generation batch plan "
                             "depends on the batch size. Set `per_device_train_batch_size` explicitly.")
        if self.num_generations is None or self.num_generations < self._min_num_generations:
            raise ValueError(
                f"`num_generations` must be at least {self._min_num_generations} (advantages compare completions of "
                f"the same prompt); got {self.num_generations}."
            )
        if self.max_completion_length is None or self.max_completion_length < 1:
            raise ValueError(f"`max_completion_length` must be a positive integer; got {self.max_completion_length}.")
        if self.num_generations_eval is not None and self.num_generations_eval < 1:
            raise ValueError(f"`num_generations_eval` must be >= 1; got {self.num_generations_eval}.")
        if self.max_tool_calling_iterations is not None and self.max_tool_calling_iterations < 1:
            raise ValueError(f"`max_tool_calling_iterations` must be >= 1 or None (no limit); got "
                             f"{self.max_tool_calling_iterations}.")
        if not self.tool_timeout > 0:
            raise ValueError(f"`tool_timeout` must be a positive number of seconds; got {self.tool_timeout}.")
        if self.num_iterations < 1:
            raise ValueError(f"`num_iterations` must be >= 1; got {self.num_iterations}.")
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        if self.epsilon < 0 or self.epsilon_high < 0:
            raise ValueError(f"`epsilon` and `epsilon_high` must be >= 0; got {self.epsilon}, {self.epsilon_high}.")
        if self.beta < 0:
            raise ValueError(f"`beta` must be >= 0; got {self.beta}.")
        if self.sync_ref_model and self.beta == 0:
            raise ValueError("`sync_ref_model=True` needs a reference model, which is only used when `beta > 0`.")
        if not 0.0 <= self.ref_model_mixup_alpha <= 1.0:
            raise ValueError(f"`ref_model_mixup_alpha` must be in [0, 1]; got {self.ref_model_mixup_alpha}.")
        if self.ref_model_sync_steps <= 0:
            raise ValueError(f"`ref_model_sync_steps` must be positive; got {self.ref_model_sync_steps}.")
        if self.guard_patience < 1:
            raise ValueError(f"`guard_patience` must be >= 1; got {self.guard_patience}.")
        self.pad_to_multiple_of = resolve_pad_to_multiple_of(self.pad_to_multiple_of)
        super().__post_init__()
        self._plan_generation_batches()
        eval_generations = self.num_generations_eval or self.num_generations
        eval_batch = self.per_device_eval_batch_size * self.world_size
        if self.eval_strategy != "no" and eval_batch % eval_generations:
            raise ValueError(
                f"The eval batch (per_device_eval_batch_size {self.per_device_eval_batch_size} × {self.world_size} "
                f"process(es) = {eval_batch} completions) must hold whole groups of num_generations_eval="
                f"{eval_generations}; it counts completions, not prompts."
            )

    def _plan_generation_batches(self) -> None:
        """Settle `steps_per_generation` and `generation_batch_size` (needs the world size, known after the base
        `__post_init__`), and check that a generation batch holds whole groups."""
        per_step = self.per_device_train_batch_size * self.world_size  # completions per micro-step, all processes
        if self.generation_batch_size is not None and self.steps_per_generation is not None:
            raise ValueError("Set at most one of `generation_batch_size` and `steps_per_generation`.")
        if self.generation_batch_size is None:
            self.steps_per_generation = self.steps_per_generation or self.gradient_accumulation_steps
            if self.steps_per_generation < 1:
                raise ValueError(f"`steps_per_generation` must be >= 1; got {self.steps_per_generation}.")
            self.generation_batch_size = per_step * self.steps_per_generation
        else:
            if self.generation_batch_size % per_step:
                raise ValueError(
                    f"`generation_batch_size` ({self.generation_batch_size}) must be a multiple of "
                    f"per_device_train_batch_size × num_processes = {self.per_device_train_batch_size} × "
                    f"{self.world_size} = {per_step}."
                )
            self.steps_per_generation = self.generation_batch_size // per_step
        if self.generation_batch_size % self.num_generations:
            possible = [g for g in range(2, self.generation_batch_size + 1) if self.generation_batch_size % g == 0]
            raise ValueError(
                f"The generation batch ({self.generation_batch_size} completions = per_device_train_batch_size "
                f"{self.per_device_train_batch_size} × {self.world_size} process(es) × steps_per_generation "
                f"{self.steps_per_generation}) must hold whole groups of num_generations={self.num_generations}. "
                f"Use num_generations in {possible[:12]}, or change the batch size / steps_per_generation."
            )

    def sampling_overrides(self) -> dict[str, Any]:
        """The sampling fields, for `trl.generation.SamplingConfig`."""
        return {
            "max_completion_length": self.max_completion_length, "temperature": self.temperature, "top_p": self.top_p,
            "top_k": self.top_k or 0, "min_p": self.min_p, "repetition_penalty": self.repetition_penalty,
        }
