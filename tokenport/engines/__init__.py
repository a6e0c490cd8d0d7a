"""Inference engines. The embedded one is an ordinary upstream on loopback."""
