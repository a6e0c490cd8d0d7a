"""tokenport: sell LLM tokens across a border, metered exactly, inside a bonded data zone."""

__version__ = "0.1.0"
