"""Device fleets for hardware makers: products, devices, activation, per-device quotas (plain Python)."""
