"""AutoencoderKL parity with diffusers on the tiny VAE (block_out_channels (32, 64), one layer per block).

sd1/vae and sd2/vae hold the same weights; sd1 is tested. Only the reference shapes are used (image
[1, 3, 32, 32], latents [1, 4, 8, 8]) so that Jittor compiles few kernels.
"""

import json

import jittor as jt
import numpy as np
import pytest

from jstyle.errors import ConfigError, InputError
from jstyle.loading import load_model, load_safetensors
from jstyle.models.attention import AttnProcessor
from jstyle.models.autoencoder_kl import AutoencoderKL, DiagonalGaussianDistribution

from ..tolerance import EPS32, VAE_ATOL, assert_close

# Same weights and inputs in float32: tests/tolerance.py's VAE_ATOL (1.4e-4); measured ~4e-6 (outputs ~2)
ATOL = VAE_ATOL
ENCODER_ATTN = "encoder.mid_block.attentions.0.processor"
DECODER_ATTN = "decoder.mid_block.attentions.0.processor"


@pytest.fixture(scope="module")
def vae(tiny_ref) -> AutoencoderKL:
    return load_model(AutoencoderKL, tiny_ref / "sd1" / "vae")


@pytest.fixture(scope="module")
def posterior(vae, refs) -> DiagonalGaussianDistribution:
    return vae.encode(jt.array(refs("sd1")["vae_image"]))


def config(tiny_ref) -> dict:
    return json.loads((tiny_ref / "sd1" / "vae" / "config.json").read_text())


def test_encode_matches_diffusers(posterior, refs):
    r = refs("sd1")
    assert posterior.mean.shape == r["vae_mean"].shape == (1, 4, 16, 16)
    assert_close(posterior.mean.numpy(), r["vae_mean"], rtol=0, atol=ATOL)
    assert_close(posterior.logvar.numpy(), r["vae_logvar"], rtol=0, atol=ATOL)


def test_decode_matches_diffusers(vae, refs):
    r = refs("sd1")
    out = vae.decode(jt.array(r["vae_latent"])).numpy()
    assert out.shape == r["vae_decoded"].shape == (1, 3, 16, 16)
    assert_close(out, r["vae_decoded"], rtol=0, atol=ATOL)


def test_posterior_sample_mode_and_moments(posterior):
    mean, logvar = posterior.mean.numpy(), posterior.logvar.numpy()
    np.testing.assert_array_equal(posterior.mode().numpy(), mean)
    # two float32 exps (Jittor's under -Ofast uses glibc's vector exp, numpy its SIMD one), each within 4 ulp:
    # 8 eps32 relative; bound 4x that (3.8e-6). Measured 2.5e-7 relative
    assert_close(posterior.std.numpy(), np.exp(0.5 * logvar), rtol=32 * EPS32, what="std")
    assert_close(posterior.var.numpy(), np.exp(logvar), rtol=32 * EPS32, what="var")

    a = posterior.sample(np.random.default_rng(7)).numpy()
    b = posterior.sample(np.random.default_rng(7)).numpy()
    c = posterior.sample(np.random.default_rng(8)).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2
    # z = mean + std * eps with eps the same numpy draw (float32), so a pipeline can reproduce it
    eps = np.random.default_rng(7).standard_normal(mean.shape).astype(np.float32)
    # one exp (4 ulp), a product and a sum on values ~3: ~6 eps32 x 3 = 2.1e-6 worst case; measured 4.8e-7
    assert_close(a, mean + np.exp(0.5 * logvar) * eps, rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="Generator"):
        posterior.sample(None)


def test_logvar_is_clamped_and_half_stays_half():
    params = np.zeros((1, 2, 1, 2), dtype=np.float16)
    params[0, 1] = [50.0, -50.0]  # logvar channel
    dist = DiagonalGaussianDistribution(jt.array(params))
    np.testing.assert_array_equal(dist.logvar.numpy()[0, 0, 0], [20.0, -30.0])
    # float16 posteriors (GPU) keep their dtype, as in diffusers
    for var in (dist.mean, dist.logvar, dist.std, dist.var, dist.sample(np.random.default_rng(0))):
        assert var.dtype == "float16"


def test_state_dict_keys_match_safetensors(tiny_ref):
    vae = AutoencoderKL.from_config(config(tiny_ref))
    own = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    file = load_safetensors(tiny_ref / "sd1" / "vae" / "diffusion_pytorch_model.safetensors")
    assert own == {k: tuple(v.shape) for k, v in file.items()}
    assert vae.scaling_factor == 0.18215  # read from config.json: the same double
    assert vae.quant_conv is not None and vae.post_quant_conv is not None


def test_legacy_attention_keys_are_renamed(tiny_ref):
    file = load_safetensors(tiny_ref / "sd1" / "vae" / "diffusion_pytorch_model.safetensors")
    new_to_old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for name, value in file.items():
        for new, old in new_to_old.items():
            name = name.replace(f"mid_block.attentions.0.{new}.", f"mid_block.attentions.0.{old}.")
        legacy[name] = value
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in legacy
    assert AutoencoderKL.convert_state_dict(legacy).keys() == file.keys()


class Recorder(AttnProcessor):
    def __init__(self, calls: list[str], name: str):
        self.calls, self.name = calls, name

    def __call__(self, attn, hidden_states, *args, **kwargs):
        self.calls.append(self.name)
        return super().__call__(attn, hidden_states, *args, **kwargs)


def test_mid_block_attention_is_hookable(vae, refs):
    r = refs("sd1")
    assert list(vae.attn_processors) == [ENCODER_ATTN, DECODER_ATTN]
    calls: list[str] = []
    vae.set_attn_processor({name: Recorder(calls, name) for name in vae.attn_processors})
    try:
        mean = vae.encode(jt.array(r["vae_image"])).mean.numpy()
        out = vae.decode(jt.array(r["vae_latent"])).numpy()
    finally:
        vae.set_attn_processor(AttnProcessor())
    assert calls == [ENCODER_ATTN, DECODER_ATTN]
    assert_close(mean, r["vae_mean"], rtol=0, atol=ATOL)
    assert_close(out, r["vae_decoded"], rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="1 processors for 2"):
        vae.set_attn_processor({ENCODER_ATTN: AttnProcessor()})


@pytest.mark.parametrize("change, match", [
    ({"down_block_types": ["AttnDownEncoderBlock2D", "DownEncoderBlock2D"]}, "AttnDownEncoderBlock2D"),
    ({"up_block_types": ["UpDecoderBlock2D", "UpBlock2D"]}, "'UpBlock2D' is not supported"),
    ({"act_fn": "gelu"}, "act_fn='gelu'"),
    ({"block_out_channels": [32, 64, 64]}, "one per block"),
])
def test_unsupported_config_raises(tiny_ref, change, match):
    with pytest.raises(ConfigError, match=match):
        AutoencoderKL.from_config({**config(tiny_ref), **change})


def test_sd_vae_config_builds():
    """The SD 1.x/2.x VAE layout (weights not loaded): key count and shapes of a few checkpoint keys."""
    cfg = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
           "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
           "sample_size": 512, "_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0"}
    shapes = {k: tuple(v.shape) for k, v in AutoencoderKL.from_config(cfg).state_dict().items()}
    assert len(shapes) == 248  # diffusers' AutoencoderKL state dict for this config
    assert shapes["decoder.up_blocks.3.resnets.0.conv_shortcut.weight"] == (128, 256, 1, 1)
    assert shapes["encoder.mid_block.attentions.0.to_q.weight"] == (512, 512)
    assert shapes["encoder.conv_out.weight"] == (8, 512, 3, 3)
