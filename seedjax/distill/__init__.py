"""Pieces the distillation stages (`seedjax/stages/distill_*.py`) share.

    params         frozen teachers (a Variable type no optimizer sees) and loading parameters by path
    generator      students and teachers as velocity fields: guided teacher velocity, rollouts on a
                   sigma grid, timestep schedules
    student        the state every stage builds on (student + EMA + frozen teacher) and the stage
                   hooks they share: load_pretrained, sample, evaluate, nfe
    discriminator  a diffusion backbone (teacher-initialised, frozen or trainable) with light
                   multi-level heads
    dmd            the fake score network and the generator side of DMD2 / DMDO / ADM
    losses         hinge / logistic GAN losses and the DMD loss
"""
