"""Inference: a trained generator from any stage's checkpoint, parameters only.

    import seedjax.inference
    bundle = seedjax.inference.load("runs/qs/dmdo")          # or runs/qs/dmdo/checkpoints/400
    images = bundle.generate(bundle.prompts(["a handwritten 7"]), jax.random.key(0))
"""

from seedjax.inference.bundle import Bundle, load

__all__ = ["Bundle", "load"]
