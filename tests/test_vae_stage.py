"""VAE stage: the one-pass generator gradient equals plain autodiff of the LDM loss, the GAN
schedule, discriminators, the perceptual network against torch, and the latent codec."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from seedjax.config import base_config
from seedjax.models import codec as codec_lib
from seedjax.models import discriminators, perceptual
from seedjax.models.vae import kl_divergence, sample_posterior
from seedjax.schema.models import patch_discriminator_config, perceptual_config
from seedjax.schema.stages import vae_config
from seedjax.stages import vae as stage


def rngs(seed=0):
    # 'rbg' keys: threefry initialisers cost a slow XLA compile per parameter shape on CPU.
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def tiny_config(kind="image", **loss):
    cfg = base_config(stage="vae")
    if kind == "image":
        cfg.vae = vae_config("image", "f2c4", in_channels=1, base_channels=8, channel_mult=(1, 2),
                                   layers_per_block=1, norm_groups=4)
    else:
        cfg.vae = vae_config("video", "t2s2c4", in_channels=1, base_channels=8, channel_mult=(1, 1),
                                   layers_per_block=1, norm_groups=4)
    cfg.vae.discriminator.update(channels=8, num_layers=2 if kind == "image" else 1, norm_groups=4)
    cfg.vae.perceptual.depth = 1
    cfg.vae.loss.update(loss)
    cfg.ema_decay = 0.9
    cfg.total_steps = 10
    return cfg


def digits(n=4, size=16):
    from data_pipelines.sources.glyphs import load_digits, upsample

    return jnp.asarray(upsample(load_digits("train")[0][:n], size)[..., None] * 2 - 1)


def test_one_pass_gradients_equal_plain_autodiff_of_the_loss():
    cfg = tiny_config(perceptual_weight=0.5, kl_weight=1e-2, adversarial_weight=0.7)
    state = stage.init(cfg, rngs())
    x, rng, loss_cfg = digits(), jax.random.key(3), cfg.vae.loss
    graphdef_all, state_all = nnx.split(state)
    grads, loss, _, terms = jax.jit(lambda s: stage.generator_grads(
        nnx.merge(graphdef_all, s), x, rng, jnp.float32(1.0), loss_cfg))(state_all)

    # Reference: taming-transformers' definition, with jax.grad of each loss through the whole VAE.
    graphdef, params, rest = nnx.split(state.vae, nnx.Param, ...)
    pixels = int(np.prod(x.shape[1:]))

    def parts(params):
        vae = nnx.merge(graphdef, params, rest)
        mean, logvar = vae.encode(x)
        recon = vae.decode(sample_posterior(mean, logvar, rng))
        rec = jnp.mean(jnp.abs(x - recon)) + 0.5 * jnp.mean(state.perceptual(x, recon))
        kl = jnp.mean(kl_divergence(mean, logvar)) / pixels
        return rec, kl, -jnp.mean(state.discriminator(recon)[0])

    # Only the last conv's gradients are returned, so XLA drops the rest of each backward pass.
    last = lambda g: g["decoder"]["conv_out"]["kernel"][...]
    rec_last, adv_last = jax.jit(lambda p: (last(jax.grad(lambda q: parts(q)[0])(p)),
                                            last(jax.grad(lambda q: parts(q)[2])(p))))(params)
    weight = np.linalg.norm(rec_last) / (np.linalg.norm(adv_last) + 1e-4) * 0.7
    np.testing.assert_allclose(terms["adv_weight"], weight, rtol=1e-4)

    def total(p):
        rec, kl, adv = parts(p)
        return rec + 1e-2 * kl + weight * adv

    ref_loss, ref_grads = jax.jit(jax.value_and_grad(total))(params)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7)


def _train(state, cfg, batch, steps):
    graphdef, st = nnx.split(state)

    @jax.jit
    def step(st, batch, rng):
        module = nnx.merge(graphdef, st)
        metrics = stage.train_step(module, batch, rng, cfg)
        return nnx.state(module), metrics

    history = []
    for i in range(steps):
        st, metrics = step(st, batch, jax.random.key(i))
        history.append(jax.device_get(metrics))
    return nnx.merge(graphdef, st), history


def test_adversarial_terms_start_at_the_configured_step():
    cfg = tiny_config(adversarial_start=2, perceptual_weight=0.0)
    state = stage.init(cfg, rngs())
    kernels = lambda d: [np.array(v[...]) for p, v in nnx.to_flat_state(nnx.state(d, nnx.Param)) if p[-1] == "kernel"]
    initial_kernels = kernels(state.discriminator)
    state, history = _train(state, cfg, {"image": digits(8)}, 4)
    assert [float(h["adv_weight"]) > 0 for h in history] == [False, False, True, True]
    assert [float(h["d_loss"]) > 0 for h in history] == [False, False, True, True]
    # The discriminator trained once the GAN was on (its conv kernels moved).
    assert all(not np.array_equal(a, b) for a, b in zip(initial_kernels, kernels(state.discriminator)))
    assert history[-1]["l1"] < history[0]["l1"]
    assert int(state.optimizer.step[...]) == 4
    # EMA lags the weights it averages.
    ema = jax.tree.leaves(state.ema.params)
    live = jax.tree.leaves(nnx.state(state.vae, nnx.Param))
    assert any(not np.allclose(a, b) for a, b in zip(ema, live))


def test_hybrid_discriminator_scores_frames_and_clips():
    # (The video stage's train_step is exercised by `python -m benchmarks.vae`; compiling it
    # costs CI close to a minute.)
    cfg = tiny_config("video")
    disc = discriminators.make_discriminator("video", 1, cfg.vae.discriminator, rngs=rngs())
    clips = jnp.stack([digits(3, 8)] * 2)  # [2, 3, 8, 8, 1]
    frame_logits, clip_logits = disc(clips)
    assert frame_logits.shape == (6, 2, 2, 1)  # a map per frame; rows 8 -> 4 (stride 2) -> 3 -> 2
    assert clip_logits.shape == (2, 2, 2, 2, 1)  # a map per clip; time 3 -> 2 (stride 2)
    # The clip branch sees motion: shuffling frames changes its logits but not the frame logits' set.
    shuffled = clips[:, ::-1]
    np.testing.assert_allclose(disc(shuffled)[0].reshape(2, 3, -1)[:, ::-1], frame_logits.reshape(2, 3, -1), rtol=1e-5)
    assert not np.allclose(disc(shuffled)[1], clip_logits)
    with pytest.raises(KeyError, match="batch\\['video'\\]"):  # checked before the state is touched
        stage.train_step(None, {"image": clips[:, 0]}, jax.random.key(0), cfg)


def test_patch_discriminator_matches_the_taming_layout():
    torch = pytest.importorskip("torch")
    cfg = patch_discriminator_config(channels=8, num_layers=3, norm_groups=4)
    disc = discriminators.PatchDiscriminator(3, cfg, rngs=rngs())
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    (logits,) = disc(jnp.asarray(x))
    # Reference: NLayerDiscriminator with GroupNorm in torch, same weights.
    layers, prev, convs = [], 3, [disc.stem, *disc.convs, disc.head]
    for i, conv in enumerate(convs):
        k = np.asarray(conv.kernel[...])
        stride = conv.strides[0] if isinstance(conv.strides, tuple) else conv.strides
        tconv = torch.nn.Conv2d(prev, k.shape[-1], 4, stride, 1, bias=conv.bias is not None)
        tconv.weight.data = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
        if conv.bias is not None:
            tconv.bias.data = torch.from_numpy(np.asarray(conv.bias[...]))
        layers.append(tconv)
        if 0 < i < len(convs) - 1:
            norm = disc.norms[i - 1]
            gn = torch.nn.GroupNorm(norm.num_groups, k.shape[-1], eps=1e-5)
            gn.weight.data = torch.from_numpy(np.asarray(norm.scale[...]))
            gn.bias.data = torch.from_numpy(np.asarray(norm.bias[...]))
            layers.append(gn)
        if i < len(convs) - 1:
            layers.append(torch.nn.LeakyReLU(0.2))
        prev = k.shape[-1]
    with torch.no_grad():
        ref = torch.nn.Sequential(*layers)(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    assert logits.shape == ref.shape == (2, 6, 6, 1)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6, as in pix2pix
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-5)


def test_perceptual_distance_matches_torch_vgg_with_loaded_weights(tmp_path, caplog):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file

    # A torchvision-layout VGG16 state dict (first two stages) and LPIPS heads, random values.
    g = np.random.default_rng(0)
    sd, cin = {}, 3
    for i, (cout, index) in enumerate([(64, 0), (64, 2), (128, 5), (128, 7)]):
        w = g.normal(0, np.sqrt(2 / (9 * cin)), (cout, cin, 3, 3)).astype(np.float32)
        b = g.normal(0, 0.1, (cout,)).astype(np.float32)
        sd[f"features.{index}.weight"], sd[f"features.{index}.bias"] = w, b
        cin = cout
    sd["classifier.0.weight"] = np.zeros((2, 2), np.float32)  # ignored
    heads = {f"lin{l}.model.1.weight": g.uniform(0, 1, (1, c, 1, 1)).astype(np.float32) for l, c in enumerate((64, 128))}
    save_file(sd, str(tmp_path / "vgg.safetensors"))
    save_file(heads, str(tmp_path / "lpips.safetensors"))
    cfg = perceptual_config(weights=str(tmp_path / "vgg.safetensors"),
                                       lpips_weights=str(tmp_path / "lpips.safetensors"), depth=2)
    dist = perceptual.make_perceptual(cfg)
    x, y = (g.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32) for _ in range(2))
    ours = np.asarray(dist(jnp.asarray(x), jnp.asarray(y)))

    def torch_lpips(a, b):
        shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
        scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        feats = []
        for t in (a, b):
            h = (torch.from_numpy(t.transpose(0, 3, 1, 2)) - shift) / scale
            taps = []
            for stage_i, idx in enumerate([(0, 2), (5, 7)]):
                if stage_i:
                    h = torch.nn.functional.max_pool2d(h, 2)
                for j in idx:
                    h = torch.relu(torch.nn.functional.conv2d(
                        h, torch.from_numpy(sd[f"features.{j}.weight"]), torch.from_numpy(sd[f"features.{j}.bias"]),
                        padding=1))
                taps.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            feats.append(taps)
        total = 0
        for l, (fa, fb) in enumerate(zip(*feats)):
            w = torch.from_numpy(heads[f"lin{l}.model.1.weight"])
            total = total + (torch.nn.functional.conv2d((fa - fb) ** 2, w)).mean((2, 3))[:, 0]
        return total.numpy()

    np.testing.assert_allclose(ours, torch_lpips(x, y), rtol=1e-4)
    assert float(dist(jnp.asarray(x), jnp.asarray(x))[0]) == 0.0
    # Frozen: no nnx.Param for an optimizer to find.
    assert not jax.tree.leaves(nnx.state(dist, nnx.Param))
    # Without weights: the documented fallback, announced in the log.
    with caplog.at_level("WARNING"):
        perceptual.make_perceptual(perceptual_config(depth=1))
    assert "fallback" in caplog.text
    with pytest.raises(KeyError, match="features.5.weight"):
        sd.pop("features.5.weight")
        save_file(sd, str(tmp_path / "broken.safetensors"))
        perceptual.make_perceptual(perceptual_config(weights=str(tmp_path / "broken.safetensors"), depth=2))


def test_latent_codec_scaling_round_trip():
    cfg = tiny_config()
    vae = codec_lib.build_vae(cfg.vae, rngs())
    codec = codec_lib.LatentCodec(vae, scaling_factor=2.0, shift_factor=0.5)
    x = np.asarray(digits(5))
    z = codec.encode(x)
    assert z.shape == (5, 8, 8, 4)
    np.testing.assert_allclose(z, (np.asarray(vae.encode(jnp.asarray(x))[0]) - 0.5) * 2.0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(codec.decode(z), vae.decode(jnp.asarray(z / 2.0 + 0.5)), rtol=1e-4, atol=1e-5)


def test_model_config_errors_name_the_field():
    cfg = tiny_config()
    with cfg.vae.unlocked() if hasattr(cfg.vae, "unlocked") else ml_collections.ConfigDict().unlocked():
        cfg.vae.model.bogus = 1
    with pytest.raises(ValueError, match="bogus"):
        codec_lib.vae_architecture(cfg.vae)
