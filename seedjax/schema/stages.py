"""Each stage's own group (`config.<group>`): vae, sft, rlhf, reward, and the distillation stages'.

The stage modules (`seedjax/stages/<stage>.py`, `seedjax/distill/`) read these groups; the
section headers name the stage and the group each function fills.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from seedjax.schema.models import image_vae_config, patch_discriminator_config, perceptual_config, video_vae_config
from seedjax.schema.training import optimizer_config

# --------------------------------------------------------------------------- vae: config.vae


def vae_config(kind: str = "image", preset: str = "f8c16", **model_overrides) -> ml_collections.ConfigDict:
    """The `config.vae` group. `model` holds every field of VAEConfig / VideoVAEConfig."""
    if kind == "image":
        model = image_vae_config(preset, **model_overrides)
    elif kind == "video":
        model = video_vae_config(preset, **model_overrides)
    else:
        raise ValueError(f"config.vae.kind must be 'image' or 'video', got {kind!r}")
    return ml_collections.ConfigDict(
        dict(
            kind=kind,
            model=dataclasses.asdict(model),
            diffusers_weights="",  # image kind: start from a local diffusers AutoencoderKL directory
            eval_images=256,  # held-out images (the data config's eval split) scored by the reconstruction evaluator
            loss=dict(
                l1_weight=1.0,
                kl_weight=1e-6,
                perceptual_weight=1.0,
                adversarial_weight=0.5,  # w_adv in the adaptive weight
                adversarial_start=50_000,  # GAN terms (both sides) are off before this step
                adaptive_weight=True,  # False: lambda = w_adv
                gan_loss="hinge",  # hinge | logistic
                sample_posterior=True,  # decode a posterior sample (False: the mean)
            ),
            perceptual=perceptual_config(),
            discriminator=patch_discriminator_config(),
            disc_optimizer=optimizer_config(name="adam", lr=1e-4, b1=0.5, b2=0.9, schedule="constant"),
        )
    )


# --------------------------------------------------------------------------- sft: config.sft


def sft_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(target=""))
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- rlhf: config.rlhf


def rlhf_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(
        reward_models="",  # 'WORKDIR[#HEAD]:WEIGHT,...' of reward-stage workdirs
        reward_transform="prob",  # prob: sigmoid(log-odds) = P(yes) | logit: the log-odds
        loss="reward",  # reward: -r | relu: ReLU(alpha - r) (Hyper-Bagel's ReFL form)
        alpha=0.95,
        fm_weight=1.0,  # flow-matching loss on the batch's real images; 0 = no regulariser
        num_prompts=8,  # prompts sampled per step (the first rows of the batch)
        num_steps=30,  # the sampler RLHF unrolls (Euler, flow sigmas)
        guidance_scale=3.0,
        shift=1.0,
        grad_steps=1,  # K: sampler steps before the stop that gradients flow through
        stop_window=(0.0, 0.25),  # sigmas at which sampling may stop and x0 is predicted
        remat=True,  # rematerialise each differentiated sampler step
    ))
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- reward: config.reward

DEGRADATIONS = ("blur", "noise", "stamp", "mosaic")  # image negatives of the quality head, in index order


def reward_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(
        bce_weight=1.0,
        bt_weight=1.0,
        degradations=",".join(DEGRADATIONS),  # image negatives for the quality head
        augment=True,  # random affine + stroke jitter of the real images (both sides of every pair)
    ))
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- distillation (distill/student.py): config.distill


def distill_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(
        guidance=3.0,  # guidance scale the student is conditioned on (its guidance embedder), in training and sampling
        teacher_guidance=3.0,  # guidance scale of the teacher's velocity (true CFG, or its embedder)
        teacher_guidance_embed=True,  # the teacher was CFG-distilled (False: true CFG, two evaluations)
        student_from="ema",  # entry of the init_from checkpoint the student starts from: ema | model
        teacher_from="teacher",  # entry that becomes the frozen teacher: teacher | ema | model
    ))
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- discriminator heads (distill/discriminator.py): config.disc


def discriminator_config(**overrides) -> ml_collections.ConfigDict:
    """A diffusion backbone (teacher-initialised) with light multi-level heads; the pixel
    PatchGAN is `seedjax.schema.models.patch_discriminator_config`."""
    cfg = ml_collections.ConfigDict(dict(
        levels=(-1,),  # blocks (double blocks first, then single; negative = from the end) that feed a head
        head_hidden=256,
        train_backbone=False,  # False: frozen teacher backbone, heads only
        t_min=0.0,  # discriminator timesteps ~ U[t_min, t_max] (the noise added to real and fake inputs)
        t_max=1.0,
        loss="hinge",  # hinge | logistic
    ))
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- distill_cfg: config.cfg_distill


def cfg_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(guidance_min=1.0, guidance_max=5.0))
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- distill_tscd: config.tscd


def tscd_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(
        segments=3,
        grid_steps=48,  # fine grid of teacher ODE steps; a multiple of `segments`
        mse_weight=1.0,
        adversarial_weight=0.0,  # > 0 adds a discriminator (config.disc, config.disc_optimizer)
    ))
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- distill_dmd (distill/dmd.py): config.dmd


def dmd_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(
        # dmd2: the fake score learns the student's samples with fresh noise.
        # dmdo: it learns the rollout's own (noise, sample) pairs: x_t = (1 - t) x0 + t x_T, target x_T - x0.
        variant="dmd2",
        fake_updates_per_step=5,
        segments=0,  # the generator steps from the state at the start of a random segment; 0 = every step is one
        t_min=0.02,  # DMD / fake-score timesteps ~ U[t_min, t_max]
        t_max=0.98,
        gan_weight=0.0,  # DMD2's GAN term for the generator (reference 5e-3); > 0 adds heads on the fake score
        gan_disc_weight=1e-2,  # weight of the heads' classification loss in the fake-score update
    ))
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- distill_adp: config.adp


def adp_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(
        regression_weight=1.0,
        adversarial_weight=0.1,
        latent_weight=0.85,
        pixel_weight=0.15,
    ))
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- distill_adm: config.adm


def adm_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(ode_dt=1.0 / 64))
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- aapt_consistency, aapt_adversarial: config.aapt


def aapt_config(**overrides) -> ml_collections.ConfigDict:
    """AAPT's distillation stages on a block-causal video DiT (seedjax/distill/causal.py)."""
    cfg = ml_collections.ConfigDict(dict(
        grid_steps=16,  # aapt_consistency: the teacher ODE grid of the consistency pairs (one segment: 1 NFE)
        segments=2,  # aapt_adversarial: the generator rolls out segments x the clip length; each segment is judged
        gamma=1.0,  # aapt_adversarial: weight of the approximate R1 + R2, (gamma / 2) (R1 + R2)
        sigma=0.01,  # aapt_adversarial: noise scale of the approximate R1 / R2
        head_hidden=256,  # aapt_adversarial: width of the frame discriminator's head
    ))
    cfg.update(overrides)
    return cfg


def restore_gan_config(**overrides) -> ml_collections.ConfigDict:
    """SeedVR2's one-step adversarial stage (seedjax/stages/restore_adversarial.py)."""
    cfg = ml_collections.ConfigDict(dict(
        gamma=1.0,  # weight of the approximate R1 + R2, (gamma / 2) (R1 + R2)
        sigma=0.01,  # noise scale of the approximate R1 / R2
        fm_weight=1.0,  # weight of the feature-matching loss (L1 between discriminator features)
        feature_blocks=(0, -1),  # the discriminator blocks whose features are matched (negative: from the end)
        head_hidden=64,  # width of the discriminator's patch head
    ))
    cfg.update(overrides)
    return cfg
