"""Every config group's defaults, in modules that import no JAX, Flax or Optax themselves.

Experiment configs (`experiments/**/*.py`) build their ConfigDict from these functions; the
modules that use a group import its defaults from here.

    models    the networks: MMDiT (and its presets), text encoder, reward model, perceptual
              loss, PatchGAN discriminator, image and video VAE (dataclasses and presets)
    training  what every stage shares: optimizer, flow-matching diffusion, model input,
              sampler, logical-axis sharding rules
    stages    each stage's own group: vae, sft, rlhf, reward, and distillation (distill, cfg,
              tscd, dmd, disc, adp, adm)

Pure Python and ml_collections. Values and key order are what configs are saved with
(config.json), so changing a default changes every run that does not set it.
"""
