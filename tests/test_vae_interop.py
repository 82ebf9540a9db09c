"""diffusers AutoencoderKL <-> ImageVAE: numerical parity of encode/decode and weight round trips."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from flax import nnx  # noqa: E402

from seedjax.interop import autoencoder_kl as akl  # noqa: E402
from seedjax.models.vae import ImageVAE  # noqa: E402

SMALL = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[16, 32, 32],
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=8,
    scaling_factor=0.5,
    shift_factor=0.1,
)


def random_diffusers_vae(seed=0, **overrides):
    torch.manual_seed(seed)
    model = diffusers.AutoencoderKL(**{**SMALL, **overrides}).eval()
    # Perturb every parameter (norm scales/biases too) so that a swapped or transposed
    # weight anywhere changes the output.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def rngs(seed=0):
    # 'rbg' keys: threefry initialisers cost a slow XLA compile per parameter shape on CPU.
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def relative_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def to_nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("overrides", [{}, {"mid_block_add_attention": False, "use_quant_conv": False}])
def test_encode_decode_match_diffusers(overrides):
    ref = random_diffusers_vae(**overrides)
    cfg = akl.config_from_diffusers(ref.config)
    vae = ImageVAE(cfg, rngs=rngs(1))
    akl.import_state_dict(vae, ref.state_dict())

    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 24)).astype(np.float32))
    with torch.no_grad():
        dist = ref.encode(x).latent_dist
        ref_decoded = ref.decode(dist.mean).sample
    mean, logvar = vae.encode(jnp.asarray(to_nhwc(x)))
    decoded = vae.decode(mean)

    assert mean.shape == (2, 8, 6, 4)
    assert relative_error(mean, to_nhwc(dist.mean)) < 1e-4
    assert relative_error(logvar, to_nhwc(dist.logvar)) < 1e-4
    assert relative_error(decoded, to_nhwc(ref_decoded)) < 1e-4
    # Scaling for the diffusion model follows diffusers' convention.
    z = vae.to_model_latents(mean)
    np.testing.assert_allclose(z, (np.asarray(mean) - 0.1) * 0.5, rtol=1e-6)
    np.testing.assert_allclose(vae.from_model_latents(z), mean, rtol=1e-5, atol=1e-6)


def test_export_round_trip_into_diffusers(tmp_path):
    ref = random_diffusers_vae(seed=3)
    vae = ImageVAE(akl.config_from_diffusers(ref.config), rngs=rngs(0))
    akl.import_state_dict(vae, ref.state_dict())

    exported = akl.export_state_dict(vae)
    original = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert sorted(exported) == sorted(original)
    for k in original:
        np.testing.assert_array_equal(exported[k], original[k], err_msg=k)

    # Through files: seedjax writes, diffusers reads, outputs agree bit for bit with the source.
    akl.save_diffusers(vae, str(tmp_path / "vae"))
    reloaded = diffusers.AutoencoderKL.from_pretrained(str(tmp_path / "vae")).eval()
    x = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32))
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded(x).sample.numpy(), ref(x).sample.numpy())
    assert reloaded.config.scaling_factor == ref.config.scaling_factor

    # And back: load_diffusers reads what diffusers saves.
    ref.save_pretrained(str(tmp_path / "from_diffusers"))
    again = akl.load_diffusers(str(tmp_path / "from_diffusers"))
    leaves = lambda m: jax.tree.leaves(nnx.state(m, nnx.Param))
    for a, b in zip(leaves(again), leaves(vae)):
        np.testing.assert_array_equal(a, b)


def test_legacy_attention_names_are_read():
    ref = random_diffusers_vae(seed=4)
    legacy = {}
    for k, v in ref.state_dict().items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[k] = v
    a = ImageVAE(akl.config_from_diffusers(ref.config), rngs=rngs(0))
    b = ImageVAE(akl.config_from_diffusers(ref.config), rngs=rngs(0))
    akl.import_state_dict(a, ref.state_dict())
    akl.import_state_dict(b, legacy)
    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
        np.testing.assert_array_equal(x, y)


def test_bad_state_dicts_and_configs_name_the_problem(tmp_path):
    ref = random_diffusers_vae()
    vae = ImageVAE(akl.config_from_diffusers(ref.config), rngs=rngs(0))
    sd = dict(ref.state_dict())
    sd.pop("decoder.conv_out.bias")
    with pytest.raises(KeyError, match="decoder.conv_out.bias"):
        akl.import_state_dict(vae, sd)
    sd = dict(ref.state_dict())
    sd["encoder.conv_in.weight"] = torch.zeros(16, 3, 5, 5)
    with pytest.raises(ValueError, match=r"encoder.conv_in.weight.*\(5, 5, 3, 16\)"):
        akl.import_state_dict(vae, sd)
    sd = dict(ref.state_dict(), extra=torch.zeros(1))
    with pytest.raises(KeyError, match="unexpected keys.*extra"):
        akl.import_state_dict(vae, sd)
    with pytest.raises(ValueError, match="act_fn"):
        akl.config_from_diffusers({**SMALL, "act_fn": "gelu"})
    with pytest.raises(FileNotFoundError, match="config.json"):
        akl.load_diffusers(str(tmp_path))


def test_diffusers_config_round_trip():
    cfg = akl.config_from_diffusers(SMALL)
    back = akl.diffusers_config(cfg)
    for k, v in SMALL.items():
        assert back[k] == v, k
    json.dumps(back)


def test_presets_and_bad_input_name_the_shape():
    from seedjax.schema.models import image_vae_config

    assert [image_vae_config(n).downsample_factor for n in ("f8c16", "f16c64", "f32c128")] == [8, 16, 32]
    assert image_vae_config("f16c64").latent_shape(256, 256) == (16, 16, 64)
    with pytest.raises(ValueError, match="f12c4"):
        image_vae_config("f12c4")
    with pytest.raises(ValueError, match="norm_groups"):
        image_vae_config("f8c4", base_channels=12, norm_groups=8)
    vae = ImageVAE(akl.config_from_diffusers(SMALL), rngs=rngs())  # factor 4, 3 channels
    with pytest.raises(ValueError, match=r"\[batch, height, width, 3\].*\(2, 16, 16, 1\)"):
        vae.encode(jnp.zeros((2, 16, 16, 1)))
    with pytest.raises(ValueError, match=r"\(1, 2, 16, 3\).*height 2.*factor 4"):
        vae.encode(jnp.zeros((1, 2, 16, 3)))
    with pytest.raises(ValueError, match=r"\(1, 16, 18, 3\).*width 18.*factor 4"):
        vae.encode(jnp.zeros((1, 16, 18, 3)))
    with pytest.raises(ValueError, match=r"latents .*4\].*\(1, 4, 4, 3\)"):
        vae.decode(jnp.zeros((1, 4, 4, 3)))
