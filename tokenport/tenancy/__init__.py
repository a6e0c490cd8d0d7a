"""Tenants and API keys: who is calling, in which zone."""
