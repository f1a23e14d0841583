"""IP-Adapter on the tiny sd1 model: parity with diffusers' IP-Adapter (image encoder, UNet with image
tokens, a 3-step txt2img and a 3-step img2img), scale 0 = the plain pipeline, strict key loading. References:
tests/reference/ip_adapter_ref.py in the checker env."""

import hashlib
from pathlib import Path

import jittor as jt
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jstyle import load_pipeline
from jstyle.errors import InputError, WeightsError
from jstyle.loading import load_model
from jstyle.methods.ip_adapter import (
    IPAttnProcessor,
    get_ip_adapter,
    ip_adapter_embeds,
    ip_adapter_image_prompt,
    load_ip_adapter,
    set_ip_adapter_image,
    set_ip_adapter_scale,
    unload_ip_adapter,
)
from jstyle.methods.sdedit import img2img
from jstyle.models.clip_vision import CLIPVisionModelWithProjection, clip_preprocess

from ..tolerance import UINT8, UNET_ATOL, assert_at_most, assert_close, f32_bound
from .conftest import cache_dir, run_reference

REF = Path(__file__).resolve().parents[1] / "reference" / "ip_adapter_ref.py"


@pytest.fixture(scope="module")
def ref(tiny_ref, tmp_path_factory) -> tuple[Path, dict]:
    folder = cache_dir(tmp_path_factory, f"ipadapter-{hashlib.sha256(REF.read_bytes()).hexdigest()[:12]}")
    if not (folder / "DONE").exists():
        folder.mkdir(parents=True, exist_ok=True)
        run_reference(REF, str(tiny_ref / "sd1"), str(folder))
    with np.load(folder / "refs.npz") as f:
        return folder, dict(f)


@pytest.fixture(scope="module")
def pipe(tiny_ref):
    return load_pipeline(tiny_ref / "sd1")


def test_preprocessing_and_image_encoder_match_transformers(ref):
    folder, r = ref
    pixels = clip_preprocess(r["image"], 32)
    # the same PIL resize and float32 normalisation as CLIPImageProcessorPil: a few roundings of values <= 2.2
    # (5 eps32 x 2.2 = 1.3e-6 worst case, bound 1e-5); measured 0 (bit-exact here)
    assert_close(pixels, r["pixels"], atol=1e-5)
    assert_close(clip_preprocess(r["tall"], 32), r["pixels_tall"], atol=1e-5)
    # transformers 5's default CLIPImageProcessor resizes with torchvision instead of PIL: within one
    # uint8 level (1 / 255 / min std = 0.0150), not equal
    gap = np.abs(pixels - r["pixels_torchvision"]).max()
    assert 0 < gap < 0.0151
    encoder = load_model(CLIPVisionModelWithProjection, folder / "image_encoder")
    embeds, states = encoder(r["pixels"])
    # a 2-layer tiny CLIP vision tower: 64-term reductions on values ~1 per layer, 2 layers + the projection:
    # 3 x 64 x eps32 = 2.3e-5 worst case; measured 4.8e-7 (48x)
    assert_close(embeds.numpy(), r["image_embeds"], atol=3 * f32_bound(64, 1.0))
    assert len(states) == 3  # embeddings + 2 layers


def test_unet_with_image_tokens_and_pipelines_match_diffusers(ref, pipe):
    folder, r = ref
    with pytest.raises(InputError, match="load_ip_adapter"):
        set_ip_adapter_image(pipe, r["image"])
    adapter = load_ip_adapter(pipe, folder / "ip_adapter.safetensors", folder / "image_encoder", scale=0.7)
    try:
        n_keys = len(load_file(folder / "ip_adapter.safetensors"))
        assert adapter.num_tensors == n_keys == 4 + 2 * 6  # image_proj.* + to_{k,v}_ip of the 6 attn2 layers
        ip = [n for n, p in pipe.unet.attn_processors.items() if isinstance(p, IPAttnProcessor)]
        assert len(ip) == 6 and all(n.endswith("attn2.processor") for n in ip) and get_ip_adapter(pipe) is adapter
        embeds = ip_adapter_embeds(pipe, r["image"])
        assert_close(embeds.numpy(), r["image_embeds"], atol=3 * f32_bound(64, 1.0))  # as above; measured 4.8e-7
        set_ip_adapter_image(pipe, image_embeds=embeds)
        lat = jt.array(r["latents"])
        with jt.no_grad():
            out = pipe.unet(jt.concat([lat, lat]), 500, pipe.encode_prompt(["", "a cat"]))
        # the UNet with image tokens: the tiny UNet's bound (tests/tolerance.py); measured 2.6e-6 (130x)
        assert_close(out.numpy(), r["unet_out"], atol=UNET_ATOL)
        with_ip = pipe.text_to_image("a cat", num_inference_steps=3, height=16, width=16, latents=lat)
        # uint8 images: mean <= 1 grey level (the spec's rule; rounding flips only); measured 0 and 0.0013
        assert_at_most(np.abs(with_ip.astype(int) - r["pipe_images"].astype(int)).mean(), UINT8, "ip images")
        kw = dict(strength=0.7, num_inference_steps=3, posterior_noise=r["posterior_noise"], noise=r["noise"])
        edited = img2img(pipe, r["init"], "a cat", ip_adapter_image=r["image"], **kw)
        assert_at_most(np.abs(edited.astype(int) - r["img2img"].astype(int)).mean(), UINT8, "ip img2img")
        set_ip_adapter_image(pipe, None)
        with ip_adapter_image_prompt(pipe, r["image"]):  # an image prompt for the block only
            assert adapter.tokens_for(2).shape[0] == 2
        assert adapter.tokens_for(2) is None
        set_ip_adapter_scale(pipe, 0.0)
        zero = pipe.text_to_image("a cat", num_inference_steps=3, height=16, width=16, latents=lat)
        edited_zero = img2img(pipe, r["init"], "a cat", ip_adapter_image=r["image"], **kw)
    finally:
        unload_ip_adapter(pipe)
    assert get_ip_adapter(pipe) is None
    assert not any(isinstance(p, IPAttnProcessor) for p in pipe.unet.attn_processors.values())
    base = pipe.text_to_image("a cat", num_inference_steps=3, height=16, width=16, latents=lat)
    assert np.array_equal(zero, base)  # scale 0 is the plain pipeline, bit for bit
    assert np.array_equal(edited_zero, img2img(pipe, r["init"], "a cat", **kw))
    assert np.abs(with_ip.astype(int) - base.astype(int)).mean() > 1.0  # and the image prompt matters
    assert np.abs(edited.astype(int) - edited_zero.astype(int)).mean() > 1.0


def test_missing_or_extra_keys_are_one_line_errors(ref, pipe, tmp_path):
    folder, _ = ref
    state = load_file(folder / "ip_adapter.safetensors")
    for name, bad in (("missing", {k: v for k, v in state.items() if k != "ip_adapter.3.to_v_ip.weight"}),
                      ("unexpected", {**state, "ip_adapter.99.to_k_ip.weight": state["ip_adapter.1.to_k_ip.weight"]})):
        save_file(bad, tmp_path / "bad.safetensors")
        with pytest.raises(WeightsError, match=name) as e:
            load_ip_adapter(pipe, tmp_path / "bad.safetensors", folder / "image_encoder")
        assert "\n" not in str(e.value)
    save_file({**state, "image_proj.latents": state["image_proj.norm.bias"]}, tmp_path / "plus.safetensors")
    with pytest.raises(WeightsError, match="Plus"):
        load_ip_adapter(pipe, tmp_path / "plus.safetensors", folder / "image_encoder")
    before = pipe.unet.attn_processors
    load_ip_adapter(pipe, folder / "ip_adapter.safetensors", folder / "image_encoder")
    second = load_ip_adapter(pipe, folder / "ip_adapter.safetensors", folder / "image_encoder")  # replaces the first
    assert get_ip_adapter(pipe) is second
    unload_ip_adapter(pipe)
    assert pipe.unet.attn_processors == before
    with pytest.raises(WeightsError, match="safetensors"):
        load_ip_adapter(pipe, tmp_path / "ip.bin", folder / "image_encoder")
    assert pipe.unet.attn_processors == before  # a failed load changes nothing


def test_sdedit_cli_takes_an_image_prompt(ref, tiny_ref, tmp_path):
    from PIL import Image

    from jstyle.methods import sdedit

    folder, r = ref
    Image.fromarray(r["image"]).save(tmp_path / "init.png")
    base = ["--model", str(tiny_ref / "sd1"), "--init", str(tmp_path / "init.png"), "--prompt", "a cat", "--size", "16",
            "--steps", "2", "--strength", "1.0", "--device", "cpu"]
    ip = ["--ip-adapter", str(folder / "ip_adapter.safetensors"), "--image-encoder", str(folder / "image_encoder"),
          "--ip-scale", "1.0"]
    assert sdedit.main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert sdedit.main([*base, *ip, "--out", str(tmp_path / "ip")]) == 0
    a, b = (np.asarray(Image.open(next((tmp_path / d).glob("*.png")))).astype(int) for d in ("plain", "ip"))
    assert np.abs(a - b).mean() > 1.0
    assert sdedit.main([*base, "--ip-adapter", str(folder / "ip_adapter.safetensors"), "--out", str(tmp_path)]) == 2
