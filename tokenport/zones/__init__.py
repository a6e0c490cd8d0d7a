"""Bonded data zones: every tenant, key and backend belongs to exactly one zone."""
