"""Serving: export artifacts (params-only bundle, diffusers folders, StableHLO), their runner and the HTTP server.

`seedjax.serving.run_exported` and `seedjax.serving.png` import only jax, numpy and the
standard library, so this package's __init__ imports nothing.
"""
