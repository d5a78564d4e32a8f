"""Generation backends for the online trainers (docs/design.md §5)."""

from .base import GenerationBackend, SamplingConfig
from .transformers_backend import TransformersBackend

__all__ = ["GenerationBackend", "SamplingConfig", "TransformersBackend"]
