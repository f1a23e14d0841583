"""StyleID with DreamBooth: reference choice rules, the function equals its steps done by hand, and the JStyleID
seed's pipeline (`jstyleid`, run_all's JSTYLEID settings) against its transcription tests/reference/jstyleid_ref.py
on the tiny sd2 model with a LoRA."""

from pathlib import Path

import jittor as jt
import numpy as np
import pytest
from PIL import Image

from jstyle import load_pipeline
from jstyle import lora as L
from jstyle.data import NOISE_STREAM, image_key
from jstyle.errors import InputError
from jstyle.jobs.plan import RunConfig
from jstyle.methods.reference import choose_reference, random_index
from jstyle.methods.styleid import StyleIDConfig, stylize
from jstyle.methods.styleid_dreambooth import JSTYLEID, jstyleid, styleid_dreambooth

from ..tolerance import UINT8, assert_close
from .conftest import reference_npz

REF = Path(__file__).resolve().parents[1] / "reference" / "jstyleid_ref.py"
CFG = StyleIDConfig(steps=10, start_step=3)
# tests/checker/test_official_refs.py::PINNED_PICKS: what jstyleid_ref.pick_reference returns for style "00",
# seed 0, 10 references (numpy's PCG64 Generator.integers; re-pin on both sides if numpy changes the stream)
PINNED = {"Bear": 1, "Cat": 0, "Dolphin": 7, "Zebra": 2}


def _solid(path, rgb, noise=0):
    rng = np.random.default_rng(len(str(path)))
    image = np.clip(np.full((16, 16, 3), rgb, float) + rng.normal(0, noise, (16, 16, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path)
    return path


def test_choose_reference_rules(tmp_path):
    refs = [_solid(tmp_path / "b.png", (200, 20, 20)), _solid(tmp_path / "a.png", (20, 200, 20), 30),
            _solid(tmp_path / "c.png", (20, 20, 200))]
    blueish = np.full((16, 16, 3), (30, 40, 190), np.uint8)
    assert choose_reference(blueish, refs, "first") == tmp_path / "a.png"  # sorted order, whatever the content
    assert choose_reference(blueish, refs, "nearest") == tmp_path / "c.png"
    assert choose_reference(np.full((16, 16, 3), (190, 30, 30), np.uint8), refs, "nearest") == tmp_path / "b.png"
    with pytest.raises(InputError):
        choose_reference(blueish, [], "first")
    with pytest.raises(InputError, match="rule"):
        choose_reference(blueish, refs, "best")


def test_random_rule_is_the_seeded_per_prompt_draw(tmp_path):
    refs = [tmp_path / f"r{i:02d}.png" for i in range(10)]
    picks = {p: random_index(10, 0, "00", p) for p in PINNED}
    assert picks == PINNED
    shuffled = refs[::-1]  # the draw indexes the references sorted by name, whatever order they come in
    for p, k in PINNED.items():
        assert choose_reference(None, shuffled, "random", seed=0, style="00", prompt=p) == refs[k]
    assert [random_index(10, 1, "00", f"o{i}") for i in range(10)] != [random_index(10, 0, "00", f"o{i}")
                                                                        for i in range(10)]  # the seed matters


def test_jstyleid_run_settings_make_the_seed_pipeline():
    """run_all with JSTYLEID: the bare prompt (the old default said "Bear in style_00"), 50 steps, CFG 7.5, the
    random reference rule and StyleID's diffusers variant with its official defaults."""
    cfg = RunConfig.from_dict({"data": "d", "model": "m", "out": "o", **JSTYLEID})
    assert cfg.prompt("00", "Bear") == "Bear"
    assert RunConfig(data="d", model="m", out="o", method="styleid_dreambooth").prompt("00", "Bear") == \
        "Bear in style_00"  # jstyle's own default stays
    assert (cfg.method, cfg.steps, cfg.guidance, cfg.reference, cfg.seed) == \
        ("styleid_dreambooth", 50, 7.5, "random", 0)
    s = cfg.method_settings()
    assert (s.variant, s.steps, s.start_step, s.layers, s.adain_eps, s.gamma, s.T) == \
        ("diffusers", 20, 20, None, 1e-4, 0.75, 1.5)


def noise_key(style: str, obj: str) -> tuple[int, ...]:
    """Seed 0's noise of one image, as styleid_dreambooth and run_all draw it."""
    return image_key(0, style, obj, NOISE_STREAM)


@pytest.fixture(scope="module")
def lora_setup(tiny_ref, tmp_path_factory):
    """The tiny sd2 model, a LoRA that really changes its output, three references."""
    tmp = tmp_path_factory.mktemp("jstyleid")
    pipe = load_pipeline(tiny_ref / "sd2")
    L.inject_lora(pipe.unet, ["to_q", "to_k", "to_v", "to_out.0"], rank=2, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for layer in L.lora_layers(pipe.unet).values():
        layer.lora_B.weight.assign(jt.array(rng.normal(0, 0.5, layer.lora_B.weight.shape).astype(np.float32)))
    lora_file = L.save_lora(tmp / "lora.safetensors", {"unet": pipe.unet})
    L.remove_lora(pipe.unet)
    refs = [_solid(tmp / "r1.png", (200, 120, 40), 40), _solid(tmp / "r0.png", (40, 90, 200), 40),
            _solid(tmp / "r2.png", (90, 200, 60), 40)]
    return pipe, lora_file, refs


def test_function_equals_lora_generation_then_stylize(lora_setup):
    pipe, lora_file, refs = lora_setup
    kw = dict(num_inference_steps=2, guidance_scale=7.5, height=16, width=16)
    got = styleid_dreambooth(pipe, lora_file, ["Cat", "Dog"], refs, "07", CFG, size=16, num_inference_steps=2)
    assert not L.lora_layers(pipe.unet)  # the LoRA is off afterwards
    L.apply_lora(pipe, lora_file)
    content = [pipe.text_to_image(f"{p} in style_07", generator=np.random.default_rng(noise_key("07", p)), **kw)[0]
               for p in ("Cat", "Dog")]
    L.remove_lora(pipe.unet)
    plain = pipe.text_to_image("Cat in style_07", generator=np.random.default_rng(noise_key("07", "Cat")), **kw)[0]
    assert np.abs(plain.astype(int) - content[0].astype(int)).mean() > 1  # the LoRA mattered
    style = np.asarray(Image.open(sorted(refs)[0]))  # rule "first": r0.png, 16 px already
    want = stylize(pipe, np.stack(content), style, CFG)  # StyleID on the base model
    for g, w in zip(got, want):
        # the same computations in another call order: float differences ~1e-5 levels can flip a rounding,
        # never two (a proof: < 1 level apart); measured 1
        assert_close(g, w, atol=UINT8, what="styleid_dreambooth vs its two steps")


def test_jstyleid_matches_the_seed_reference(lora_setup, tiny_ref, tmp_path_factory):
    """Bare prompt with the LoRA, CFG 7.5, then StyleID diffusers with the seeded random reference, against
    jstyleid_ref.py (content 2 steps, StyleID 4 steps to keep the test small; the recipe's are 50 and 20)."""
    pipe, lora_file, refs = lora_setup
    prompts = ["Bear", "Dolphin", "Owl"]  # references 0, 2, 1 of 3
    ordered = sorted(refs)
    noise = [np.random.default_rng(noise_key("00", p)) for p in prompts]  # each image its own
    latents = np.stack([rng.standard_normal((1, 4, 8, 8)).astype(np.float32)[0] for rng in noise])
    inputs = dict(prompts=np.array(prompts), latents=latents, references=np.stack([np.asarray(Image.open(p))
                                                                                  for p in ordered]),
                  style=np.array("00"), lora=np.array(str(lora_file)), seed=np.array(0), steps=np.array(2),
                  styleid_steps=np.array(4))
    key = b"".join(v.tobytes() for v in inputs.values() if v.dtype != object) + Path(lora_file).read_bytes()
    ref = reference_npz(REF, "jstyleid", key, inputs, tiny_ref / "sd2", tmp_path_factory)
    chosen = [ordered.index(choose_reference(None, refs, "random", seed=0, style="00", prompt=p)) for p in prompts]
    assert ref["chosen"].tolist() == chosen and len(set(chosen)) > 1  # per prompt, not one for all
    got = jstyleid(pipe, lora_file, prompts, refs, "00", seed=0, size=16, num_inference_steps=2, styleid_steps=4)
    L.apply_lora(pipe, lora_file)
    contents = np.stack([pipe.text_to_image(p, num_inference_steps=2, guidance_scale=7.5, height=16, width=16,
                                            generator=np.random.default_rng(noise_key("00", p)))[0]
                         for p in prompts])
    L.remove_lora(pipe.unet)
    # stage 1, the bare prompt with the LoRA: jstyle's and diffusers' text-to-image agree to < 1 level in float,
    # so rounding flips by at most 1 (a proof)
    assert_close(contents, ref["contents"], atol=UINT8, what="contents: bare prompt with the LoRA")
    # stage 2 on the reference's own contents: the diffusers variant (test_styleid.py's parity), same proof
    cfg = StyleIDConfig(variant="diffusers", steps=4)
    for k, (content, image) in enumerate(zip(ref["contents"], ref["images"])):
        mine = stylize(pipe, content[None], np.asarray(Image.open(ordered[chosen[k]])), cfg)[0]
        assert_close(mine, image, atol=UINT8, what=f"stage 2 of {prompts[k]}")
    # end to end = stage 2 on jstyle's own contents (same ops in another call order: < 1 level in float, a proof).
    # Not compared with the reference's images directly: a content pixel one level off moves the random tiny
    # UNet's StyleID output by a mean 1.6 levels (measured), the chaos of its inversion, not a difference in logic.
    for k, image in enumerate(got):
        mine = stylize(pipe, contents[k][None], np.asarray(Image.open(ordered[chosen[k]])), cfg)[0]
        assert_close(image, mine, atol=UINT8, what=f"jstyleid of {prompts[k]} = its two stages")


def test_jstyleid_settings_are_run_all_flags():
    """Everything JSTYLEID holds is reachable as run_all flags (the recipe table resolves to the same)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import run_all

    argv = ["--method", "styleid_dreambooth", "--prompt-template", "{obj}", "--steps", "50", "--guidance", "7.5",
            "--seed", "0", "--reference", "random", "--styleid-variant", "diffusers", "--styleid-gamma", "0.75",
            "--styleid-T", "1.5", "--data", "d", "--model", "m", "--out", "o"]
    given = run_all.settings(run_all.parse_args(argv))
    assert {k: given[k] for k in JSTYLEID} == JSTYLEID
    assert RunConfig.from_dict({k: str(v) if isinstance(v, Path) else v for k, v in given.items()}) == \
        RunConfig.from_dict({"data": "d", "model": "m", "out": "o", **JSTYLEID})
    paper = run_all.settings(run_all.parse_args([*argv, "--styleid-variant", "paper", "--styleid-steps", "6"]))
    s = RunConfig.from_dict({k: str(v) if isinstance(v, Path) else v for k, v in paper.items()}).method_settings()
    assert (s.variant, s.steps, s.start_step, s.adain_eps) == ("paper", 6, 5, 0.0)
