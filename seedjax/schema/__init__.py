"""Every config group's defaults, importable without JAX.

Experiment configs (`experiments/**/*.py`) build their ConfigDict from these functions, so
loading a config (`seedjax.config.load_config`, `--dry_run`, the pipeline runner) never imports
JAX, Flax or Optax. The modules that use a group import its defaults from here.

    models    the networks: MMDiT (and its presets), text encoder, reward model, perceptual
              loss, PatchGAN discriminator, image and video VAE (dataclasses and presets)
    training  what every stage shares: optimizer, flow-matching diffusion, model input,
              sampler, logical-axis sharding rules
    stages    each stage's own group: vae, sft, rlhf, reward, and distillation (distill, cfg,
              tscd, dmd, disc, adp, adm)
    evals     `config.evals` entries (evaluator type, cadence, prefix, options) and which
              sources the digit judges may score

Pure Python, ml_collections and the tokenizer's vocabulary size (data_pipelines.core.tokenizer)
only; tests/test_config_imports.py checks that loading every experiment config imports no JAX
module. Values and key order are what configs are saved with (config.json), so changing a
default changes every run that does not set it.
"""
