"""Model loading, PEFT wrapping and the bundled tiny models."""
