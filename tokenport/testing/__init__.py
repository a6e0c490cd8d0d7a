"""Test helpers: a fast mock OpenAI-compatible engine."""
