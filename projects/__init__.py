"""Research projects on top of albef: each folder a README, its configs and scripts (``python -m projects.<name>.<script>``)."""
