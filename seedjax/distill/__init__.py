"""Pieces the distillation stages (`seedjax/stages/distill_*.py`) share.

    student        the state every stage builds on (student + EMA + frozen teacher) and the stage
                   hooks they share: load_pretrained, sample, nfe, the architecture check
    teachers       the frozen teacher's guided velocity, ODE pairs, ADP's timesteps
    discriminator  a diffusion backbone (teacher-initialised, frozen or trainable) with light
                   multi-level heads
    dmd            the fake score network and the generator side of DMD2 / DMDO / ADM
    losses         hinge / logistic GAN losses and the DMD loss

What every stage shares lives lower: the generator (`seedjax.models.generator`), its geometry,
guidance and the one sampler (`seedjax.diffusion`), frozen parameters (`seedjax.models.frozen`),
updates and parameter loading (`seedjax.train.updates`, `seedjax.train.params`).
"""
