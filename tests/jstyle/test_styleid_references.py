"""StyleID with several references (--references) and references at their own size (--reference-size), on the
tiny models: one reference is today's result bit for bit, pooled duplicates are one reference, the native reading
is the official code's (tests/reference/styleid_read_ref.py, checker env), chunked attention is the unchunked one.

Settings as test_styleid.py's identity tests: 16x16 content, the diffusers variant 3 steps deep into 10.
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jstyle import load_pipeline
from jstyle.errors import InputError
from jstyle.io import read_rgb
from jstyle.methods import styleid, styleid_processors
from jstyle.methods.reference import choose_reference, choose_references, parse_count, parse_size, read_reference
from jstyle.methods.registry import InjectJob
from jstyle.methods.styleid import StyleIDConfig, invert_style, pool_features, stylize

from ..tolerance import assert_close, f32_bound
from .conftest import run_reference

REF = Path(__file__).resolve().parents[1] / "reference" / "styleid_read_ref.py"
CFG = StyleIDConfig(steps=10, start_step=3)


def _image(rng: np.random.Generator, h: int = 16, w: int = 16) -> np.ndarray:
    """A smooth colour gradient plus noise, uint8 [h, w, 3]."""
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = np.stack([y * (1 - x), (1 - y) * x, x * y], -1)
    image = base * 255 * rng.uniform(0.5, 1.5, (1, 1, 3)) + rng.normal(0, 20, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def setup(tiny_ref, tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("refs")
    refs = []
    for i in range(3):
        refs.append(folder / f"r{i}.png")
        Image.fromarray(_image(rng)).save(refs[-1])
    return load_pipeline(tiny_ref / "sd1"), _image(rng), refs


def _job(content, refs, count="1", size="16", rule="first", cache=None):
    return InjectJob(settings=CFG, style="00", prompt="x", content=content, references=refs, reference_rule=rule,
                     size=16, guidance=1.0, seed=0, obj="Cat", cache={} if cache is None else cache,
                     reference_count=count, reference_size=size)


def test_one_reference_is_todays_result_bit_for_bit(setup):
    pipe, content, refs = setup
    got, info = styleid.inject(pipe, _job(content, refs))
    want = stylize(pipe, content[None], read_rgb(refs[0], 16), CFG)[0]  # the inject stage before --references
    assert info == {"reference": "r0.png"}
    assert np.array_equal(got, want)


def test_pooled_references(setup):
    pipe, content, refs = setup
    one, two = (invert_style(pipe, read_rgb(r, 16), CFG) for r in refs[:2])
    pooled = pool_features([one, two])
    t = next(iter(pooled.kv))
    for name, kv in pooled.kv[t].items():  # keys and values of both references, along the token axis
        assert kv["k"].shape[1] == one.kv[t][name]["k"].shape[1] + two.kv[t][name]["k"].shape[1]
        assert np.array_equal(kv["v"].numpy()[:, one.kv[t][name]["v"].shape[1]:], two.kv[t][name]["v"].numpy())
    assert tuple(pooled.latent.shape) == (1, 4, 1, 128)  # the two 8x8 latents' positions, for AdaIN's statistics
    # AdaIN takes the pooled statistics: per channel over both latents' positions (unbiased std, as torch.std)
    z = pipe.encode_uint8(content[None])
    positions = np.concatenate([one.latent.numpy().reshape(4, -1), two.latent.numpy().reshape(4, -1)], 1)
    m, sd = positions.mean(1)[None, :, None, None], positions.std(1, ddof=1)[None, :, None, None]
    zc = z.numpy()
    want = sd * (zc - zc.mean((2, 3), keepdims=True)) / (zc.std((2, 3), ddof=1, keepdims=True) + 1e-4) + m
    assert_close(styleid.adain(z, pooled.latent, 1e-4).numpy(), want, atol=f32_bound(128, 3.0), what="pooled AdaIN")
    # a reference twice is that reference in the attention: softmax over [K; K] with [V; V] weighs each pair as one
    # key (AdaIN off: duplicates change an unbiased std by sqrt(126/127)). The same float ops summed in another
    # order: float32 rounding per UNet call (576-term convs, |z| <= 3) over 3 + 3 calls, as test_styleid.py's bound
    cache: dict = {}
    plain = StyleIDConfig(steps=10, start_step=3, adain=False)
    twice = styleid.stylize_latents(pipe, z, pool_features([one, one]), plain).numpy()
    single = styleid.stylize_latents(pipe, z, one, plain).numpy()
    assert_close(twice, single, atol=6 * f32_bound(576, 3.0), what="a reference pooled with itself")
    alone = styleid.decode(pipe, styleid.stylize_latents(pipe, z, one, CFG), CFG)[0]
    both, info = styleid.inject(pipe, _job(content, refs, count="2", cache=cache))
    assert info == {"reference": "r0.png,r1.png"} and len(cache) == 2  # each inversion cached once
    assert np.abs(both.astype(int) - alone.astype(int)).mean() > 1  # the second reference changes the image
    styleid.inject(pipe, _job(content, refs, count="all", cache=cache))
    assert len(cache) == 3


def test_choose_references():
    refs = [Path(f"r{i}.png") for i in range(5)]
    for rule in ("first", "random"):
        for obj in ("Cat", "Dog", "Owl"):
            first = choose_reference(None, refs, rule, seed=3, style="00", prompt=obj)
            assert choose_references(None, refs, rule, 1, seed=3, style="00", prompt=obj) == [first]
            three = choose_references(None, refs, rule, 3, seed=3, style="00", prompt=obj)
            assert three[0] == first and len(set(three)) == 3
            assert sorted(choose_references(None, refs, rule, None, seed=3, style="00", prompt=obj)) == refs
    assert choose_references(None, refs, "first", 2) == refs[:2]
    assert parse_count("all") is None and parse_count("3") == 3
    assert parse_size("native", 512) is None and parse_size("auto", 512) == 512 and parse_size("96", None) == 96
    for bad, call in (("0", parse_count), ("x", parse_count), ("100", lambda v: parse_size(v, 1))):
        with pytest.raises(InputError, match="--reference"):
            call(bad)


def test_native_reading_is_the_official_one(setup, tmp_path):
    """A 40x24 and a 43x29 reference: read as run_styleid_diffusers.py reads them (cv2.imread, own size, no crop);
    the second trimmed to 40x24 (the VAE's stride of 8), the one change."""
    pipe, content, _ = setup
    rng = np.random.default_rng(1)
    for h, w in ((24, 40), (29, 43)):
        path = tmp_path / f"ref{w}x{h}.png"
        Image.fromarray(_image(rng, h, w)).save(path)
        run_reference(REF, str(path), str(tmp_path / "official.npy"))
        official = np.load(tmp_path / "official.npy")
        assert official.shape == (h, w, 3)
        assert np.array_equal(read_reference(path, None), official[:24, :40])
    assert read_reference(path, 16).shape == (16, 16, 3)  # a size: the centre square resized, as before
    # the diffusers variant reads natively under --reference-size auto, the paper variant at the run's size
    job = _job(content, [path], size="auto")
    assert styleid.reference_size(CFG, job) is None
    assert styleid.reference_size(StyleIDConfig(variant="paper", steps=10), job) == 16
    image, _ = styleid.inject(pipe, job)  # 20x12 style tokens' latent for 8x8 content latents
    features = invert_style(pipe, read_reference(path, None), CFG)
    assert tuple(features.latent.shape[2:]) == (12, 20)
    assert image.shape == (16, 16, 3)


def test_chunked_attention_is_the_unchunked_one(setup, monkeypatch):
    """Queries in chunks of 8 rows (forced: the tiny layers have 16-64 queries) against one call."""
    pipe, content, refs = setup
    features = pool_features([invert_style(pipe, read_rgb(r, 16), CFG) for r in refs[:2]])
    z = pipe.encode_uint8(content[None])
    whole = styleid.stylize_latents(pipe, z, features, CFG).numpy()
    calls = []
    real = styleid_processors.Attention.attend

    def counted(self, *args, **kwargs):
        calls.append((args[0].shape[2], args[1].shape[2]))  # (queries, keys)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(styleid_processors.Attention, "attend", counted)
    monkeypatch.setattr(styleid_processors.InjectProcessor, "max_scores", 8 * 8 * 128)  # 8 rows, 8 heads, 128 keys
    chunked = styleid.stylize_latents(pipe, z, features, CFG).numpy()
    injected = [n for n, m in calls if m == 128]  # the two references' 2 x 64 tokens: the injected layers
    assert max(injected) == 8 and len(injected) == 3 * 3 * 8  # 3 layers x 3 steps, each 64 queries in 8 chunks
    # the same rows through other kernels (the fused one picks by score count): float32 rounding of a 128-key
    # softmax-weighted sum per call, amplified through 3 inversion + 3 sampling UNet calls (as test_styleid.py)
    assert_close(chunked, whole, atol=6 * f32_bound(576, 3.0), what="chunked vs whole attention")
