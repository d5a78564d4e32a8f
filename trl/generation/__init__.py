"""Generation backends for the online trainers (DESIGN principle 5)."""

from .base import GenerationBackend, SamplingConfig

__all__ = ["GenerationBackend", "SamplingConfig"]
