"""The generation interface (docs/design.md §5): a backend turns prompt token ids into a [`Rollout`].

The trainer picks a backend once, in `__init__`; nothing else branches on which one it is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..rollout import Rollout

_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "do_sample")
# generation keys of beam search (transformers' GenerationConfig / vLLM's BeamSearchParams)
_BEAM_KEYS = ("num_beams", "num_beam_groups", "early_stopping", "length_penalty", "diversity_penalty", "beam_width",
              "constraints", "force_words_ids")


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled.

    Args:
        max_completion_length (`int`): most tokens generated per completion.
        eos_token_ids (`tuple[int, ...]`): a completion ends at the first of these (which is kept).
        pad_token_id (`int`): fills completions shorter than the longest.
        temperature (`float`, *optional*, defaults to `1.0`): logits are divided by it.
        top_p (`float`, *optional*, defaults to `1.0`): nucleus sampling; 1.0 keeps every token.
        top_k (`int`, *optional*, defaults to `0`): keep the k most likely tokens; 0 keeps every token.
        min_p (`float`, *optional*): keep tokens whose probability is at least `min_p` times the top one.
        repetition_penalty (`float`, *optional*, defaults to `1.0`): CTRL-style penalty on tokens already in the
            prompt or completion; 1.0 is off.
        do_sample (`bool`, *optional*, defaults to `True`): False decodes greedily.
    """

    max_completion_length: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    do_sample: bool = True

    def __post_init__(self):
        if self.max_completion_length < 1:
            raise ValueError(f"`max_completion_length` must be >= 1; got {self.max_completion_length}.")
        if self.temperature <= 0:
            raise ValueError(
                f"`temperature` must be > 0; got {self.temperature}. For greedy decoding set "
                "`generation_kwargs={'do_sample': False}`."
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1]; got {self.top_p}.")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"`top_k` must be >= 0 (0 = off); got {self.top_k}.")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise ValueError(f"`min_p` must be in [0, 1]; got {self.min_p}.")
        if self.repetition_penalty <= 0:
            raise ValueError(f"`repetition_penalty` must be > 0 (1.0 = off); got {self.repetition_penalty}.")
        if not self.eos_token_ids:
            raise ValueError("`eos_token_ids` is empty: completions would never end before `max_completion_length`.")

    @property
    def plain(self) -> bool:
        """True when completions are sampled from `softmax(logits / temperature)` itself, so the sampling log-probs
        are the log-probs the loss computes (no filtering, no penalty, not greedy)."""
        return (
            self.do_sample and self.top_p == 1.0 and not self.top_k and self.min_p is None
            and self.repetition_penalty == 1.0
        )

    def with_overrides(self, generation_kwargs: dict[str, Any] | None) -> SamplingConfig:
        """Apply `generation_kwargs` (`GRPOConfig.generation_kwargs`): the keys sampling honours (`temperature`,
        `top_p`, `top_k`, `min_p`, `repetition_penalty`, `do_sample`) replace the fields above; any other key is an
        error naming those keys, not silently ignored: `max_new_tokens` (the length limit is `max_completion_length`,
        which the loss normalisation and the context check also read) and beam-search keys (`num_beams`,
        `early_stopping`, `length_penalty`, ...: RL needs completions sampled from the policy) included."""
        if not generation_kwargs:
            return self
        if generation_kwargs.get("num_beams", None) == 1:  # one beam is plain decoding: nothing to refuse
            generation_kwargs = {k: v for k, v in generation_kwargs.items() if k != "num_beams"}
        unknown = sorted(set(generation_kwargs) - set(_SAMPLING_KEYS))
        if not unknown:
            return dataclasses.replace(self, **generation_kwargs)
        accepted = f"The keys sampling honours: {list(_SAMPLING_KEYS)}."
        if "max_new_tokens" in unknown:
            raise ValueError("`generation_kwargs` cannot set `max_new_tokens`: set `max_completion_length` instead "
                             f"(the loss normalisation and the context check read it too). {accepted}")
        beam = [key for key in unknown if key in _BEAM_KEYS]
        if beam:
            raise ValueError(
                f"`generation_kwargs` has beam-search keys {beam}: beam search does not apply to RL sampling. The "
                "policy-gradient loss needs completions drawn from the policy itself (their sampled log-probs are the "
                "old log-probs of the ratio), and a group of near-identical beams has no reward variance to learn "
                f"from. Remove them; to decode greedily set `do_sample=False`. {accepted}"
            )
        raise ValueError(f"`generation_kwargs` has keys the built-in generation backend cannot honour: {unknown}. "
                         f"{accepted}")


class GenerationBackend(Protocol):
    """What the online trainers need from a generation engine.

    `generate` returns `len(prompt_ids) * n` completions, prompt-major (the `n` samples of prompt 0 first), with
    `Rollout.prompt_ids` repeated accordingly. `sync_weights` makes the backend generate with `model`'s current
    weights (a no-op for a backend that generates with the training model itself).
    """

    def generate(
        self, prompt_ids: list[list[int]], n: int, sampling: SamplingConfig, generator: torch.Generator | None = None
    ) -> Rollout: ...

    def sync_weights(self, model: torch.nn.Module) -> None: ...


__all__ = ["GenerationBackend", "SamplingConfig"]
