"""HTTP layer: thin ASGI endpoints that parse, call the lifecycle, and render results."""
