"""Pieces the distillation stages (`seedjax/stages/distill_*.py`) share.

    params         frozen teachers (a Variable type no optimizer sees) and loading parameters by path
    generator      the student as a few-step generator: velocity calls, guided teacher velocity,
                   rollouts on a sigma grid, timestep schedules, sampling at the student's NFE
    discriminator  a discriminator made of a diffusion backbone (teacher-initialised) with light
                   multi-level heads, and a small pixel-space CNN discriminator
    losses         hinge / logistic GAN losses, the DMD gradient, the fake-score loss
    student        the state every stage builds on (student + EMA + frozen teacher) and the
                   stage hooks they share: load_pretrained, sample, evaluate, nfe
"""
