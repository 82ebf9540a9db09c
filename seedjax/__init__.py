"""seedjax: Seed-family image and video diffusion training in JAX.

Importing the package (or `seedjax.config`, `seedjax.schema`) loads no JAX: experiment configs
are built from `seedjax.schema` and load without it. Flax's settings are made where models are
built (`seedjax/models/__init__.py`).
"""

__version__ = "0.1.0"
