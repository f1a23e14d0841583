"""StyleBlend's blending attention against its transcribed official code (tests/reference/styleblend_ref.py).

The tiny SD1-like UNet with a random UNet LoRA (made by peft in the checker env, loaded here from its diffusers
file) runs 4 rows [coarse uncond, fine uncond, coarse, fine] with StyleBlendProcessor on every attention layer:
layers 0-1 'c2f', 2-3 'both', 4-5 'f2c', the coarse rows' LoRA at 0.3, 4 steps with ratios 0.5 / 0.75
(c2f and both blend on steps 0-1, f2c on 0-2). Steps 0, 2 and 3 are compared: all injectors, f2c only, none.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import jittor as jt
import numpy as np
import pytest

from jstyle import lora as L
from jstyle.errors import ConfigError, InputError
from jstyle.loading import load_model
from jstyle.methods.styleblend_processors import (
    StepCounter,
    blend_rows,
    self_attention_layers,
    styleblend_processors,
)
from jstyle.models.unet_2d_condition import UNet2DConditionModel

from ..tolerance import UNET_ATOL, assert_close
from .conftest import reference_npz

REF = Path(__file__).resolve().parents[1] / "reference" / "styleblend_ref.py"
SETUP = dict(c2f=np.array([0, 1, 2, 3]), f2c=np.array([2, 3, 4, 5]), scale=np.array(0.3), c2f_ratio=np.array(0.5),
             f2c_ratio=np.array(0.75), n_steps=np.array(4), eval_steps=np.array([0, 2, 3]))


@pytest.fixture(scope="module")
def case(tiny_ref, tmp_path_factory):
    rng = np.random.default_rng(5)
    inputs = dict(sample=rng.standard_normal((4, 4, 8, 8)).astype(np.float32), timestep=np.array(500),
                  context=rng.standard_normal((4, 77, 32)).astype(np.float32), **SETUP)
    key = b"".join(v.tobytes() for v in inputs.values())
    want = reference_npz(REF, "styleblend", key, inputs, tiny_ref / "sd1", tmp_path_factory)
    digest = hashlib.sha256(REF.read_bytes() + key).hexdigest()[:12]
    from .conftest import cache_dir

    lora_file = cache_dir(tmp_path_factory, f"styleblend-{digest}") / "lora" / L.WEIGHT_NAME
    unet = load_model(UNet2DConditionModel, tiny_ref / "sd1" / "unet")
    L.apply_lora(SimpleNamespace(unet=unet), lora_file)
    return unet, inputs, want


def run(unet, x) -> np.ndarray:
    return unet(jt.array(x["sample"]), jt.array(x["timestep"]), jt.array(x["context"])).numpy()


def test_blending_matches_the_official_attention(case):
    unet, x, want = case
    names = [n.removesuffix(".processor") for n in unet.attn_processors]
    assert [n.split(".transformer_blocks")[0] for n in self_attention_layers(names)] == [
        "down_blocks.0.attentions.0", "down_blocks.0.attentions.1", "mid_block.attentions.0",
        "up_blocks.1.attentions.0", "up_blocks.1.attentions.1", "up_blocks.1.attentions.2"]
    saved = unet.attn_processors
    plain = run(unet, x)
    assert_close(plain, want["plain"], atol=UNET_ATOL, what="UNet with the peft LoRA")
    counter = StepCounter()
    n = int(x["n_steps"])
    procs = styleblend_processors(names, [int(i) for i in x["c2f"]], [int(i) for i in x["f2c"]], float(x["scale"]),
                                  int(float(x["c2f_ratio"]) * n), int(float(x["f2c_ratio"]) * n), counter)
    assert [procs[n].mode for n in self_attention_layers(names)] == ["c2f", "c2f", "both", "both", "f2c", "f2c"]
    unet.set_attn_processor({f"{k}.processor": v for k, v in procs.items()})
    try:
        outs = {}
        for step in x["eval_steps"]:
            counter.step = int(step)
            outs[int(step)] = run(unet, x)
            assert_close(outs[int(step)], want[f"out_{int(step)}"], atol=UNET_ATOL, what=f"StyleBlend step {step}")
    finally:
        unet.set_attn_processor(saved)
    # the test can fail: each step's blending changes the output by far more than the bound
    assert np.abs(outs[0] - outs[2]).max() > 100 * UNET_ATOL and np.abs(outs[2] - outs[3]).max() > 100 * UNET_ATOL
    assert np.abs(outs[3] - plain).max() > 100 * UNET_ATOL  # the coarse rows' LoRA scale alone
    # rows of the branch that gives features are unchanged by the injection into the other one only where no
    # layer injects into them: at step 3 nothing injects, so the fine rows equal the plain UNet's
    assert_close(outs[3][[1, 3]], plain[[1, 3]], atol=UNET_ATOL, what="fine rows without injection")


def test_blend_rows_and_bad_input():
    q, k, v = (jt.array(np.arange(4, dtype=np.float32).reshape(4, 1, 1) + 10 * j) for j in range(3))
    q2, k2, v2 = blend_rows(q, k, v, "both")
    assert q2.numpy().ravel().tolist() == [0, 2, 2, 2]  # the coarse cond Q in both fine rows
    assert k2.numpy().ravel().tolist() == [13, 11, 13, 13] and v2.numpy().ravel().tolist() == [23, 21, 23, 23]
    assert blend_rows(q, k, v, "c2f")[1] is k and blend_rows(q, k, v, "f2c")[0] is q
    with pytest.raises(ConfigError, match="layer 16"):
        styleblend_processors(["down_blocks.0.attentions.0.transformer_blocks.0.attn1"], [16], [], 0.3, 1, 1,
                              StepCounter())
    proc = styleblend_processors(["a.attn1"], [0], [], 0.3, 1, 1, StepCounter())["a.attn1"]
    with pytest.raises(InputError, match="4 rows"):
        proc.project(SimpleNamespace(), jt.zeros((2, 3, 4)), None)


# ---------------------------------------------------------------- training and generation (tiny steps)


def tiny_style(tmp_path: Path) -> Path:
    """A style folder of two random 16 px references."""
    from PIL import Image

    style = tmp_path / "data" / "05"
    (style / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("Apple", "Star"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(style / "images" / f"{name}.png")
    return style


def test_train_then_generate_on_the_tiny_model(tiny_ref, tmp_path):
    from jstyle.methods.styleblend import (
        COARSE_TOKEN,
        FINE_TOKEN,
        StyleBlendConfig,
        generate,
        load_tokens,
        styled_prompt,
        train,
    )
    from jstyle.pipeline import load_pipeline

    style = tiny_style(tmp_path)
    st = StyleBlendConfig(train_steps=2, sdedit_images=1, sdedit_steps=2, steps=4, c2f_layers="1,2",
                          f2c_layers="0,2,5")
    assert styled_prompt("Apple", FINE_TOKEN) == "An apple in the style of <F>."
    pipe = load_pipeline(tiny_ref / "sd2")
    folder = tmp_path / "work"
    path = train(pipe, st, style, folder, 16)
    weights = L.read_lora_file(path)
    assert set(weights.layers) == {"unet", "text_encoder"}  # the fine UNet LoRA and the coarse text-encoder LoRA
    assert sorted(p.name for p in (folder / "coarse_data").iterdir()) == ["Apple-000.png", "Star-000.png"]
    fine, coarse = generate(pipe, "Apple", st, 16, 5.0, seed=3)
    assert fine.shape == coarse.shape == (16, 16, 3) and np.abs(fine.astype(int) - coarse).max() > 0

    # a fresh worker: the stages' files are loaded, not trained again, and give the same image
    again = load_pipeline(tiny_ref / "sd2")
    path.unlink()
    train(again, st, style, folder, 16)
    L.apply_lora(again, path)
    load_tokens(again, folder)
    assert again.tokenizer.convert_tokens_to_ids([COARSE_TOKEN, FINE_TOKEN]) == pipe.tokenizer.convert_tokens_to_ids(
        [COARSE_TOKEN, FINE_TOKEN])
    fine2, _ = generate(again, "Apple", st, 16, 5.0, seed=3)
    assert np.abs(fine2.astype(int) - fine).max() <= 1  # uint8 rounding of float32 rounding-level differences
    with pytest.raises(InputError, match="classifier-free guidance"):
        generate(again, "Apple", st, 16, 1.0, seed=3)


class Killed(Exception):
    """A SIGKILL right after a checkpoint was written."""


def test_each_training_resumes_from_its_checkpoint(tiny_ref, tmp_path, monkeypatch):
    from jstyle.methods.styleblend import COARSE_DIR, FINE_LORA_DIR, FINE_TI_DIR, FINE_TOKEN, StyleBlendConfig, train
    from jstyle.pipeline import load_pipeline
    from jstyle.textual_inversion import WEIGHT_NAME as TI_NAME
    from jstyle.textual_inversion import read_learned_embeds
    from jstyle.training.trainer import CHECKPOINT_DIR, LoRATrainer

    style = tiny_style(tmp_path)
    st = StyleBlendConfig(train_steps=4, sdedit_images=1, sdedit_steps=2, steps=4)  # a checkpoint every step
    full = train(load_pipeline(tiny_ref / "sd2"), st, style, tmp_path / "a", 16)

    ran: list[tuple[str, int]] = []  # (training, step) of every optimizer step taken
    step, save = LoRATrainer.train_step, LoRATrainer.save_checkpoint
    monkeypatch.setattr(LoRATrainer, "train_step", lambda self: ran.append((self.out.name, self.step)) or step(self))
    folder = tmp_path / "b"
    order = (COARSE_DIR, FINE_TI_DIR, FINE_LORA_DIR, None)
    for i, sub in enumerate(order):  # killed after step 2 of each training in turn, then a run to the end
        def save_then_kill(self, sub=sub):
            path = save(self)
            if self.out.name == sub and self.step == 2:
                raise Killed(path)
            return path

        monkeypatch.setattr(LoRATrainer, "save_checkpoint", save_then_kill)
        ran.clear()
        if sub is None:
            started: dict[str, int] = {}
            resumed = train(load_pipeline(tiny_ref / "sd2"), st, style, folder, 16, started)
            assert started == {FINE_LORA_DIR: 2}  # what run_all's manifest records
        else:
            with pytest.raises(Killed):
                train(load_pipeline(tiny_ref / "sd2"), st, style, folder, 16)
            assert [p.name for p in (folder / sub / CHECKPOINT_DIR).iterdir()] == ["step_000002"]  # the newest only
        # the killed training goes on at step 2, the next starts at 0 (until it is killed after step 2)
        before = order[i - 1] if i else None
        want = ([(before, 2), (before, 3)] if before else []) + ([(sub, 0), (sub, 1)] if sub else [])
        assert ran == want
        if before:  # the finished training's checkpoints are gone
            assert not (folder / before / CHECKPOINT_DIR).exists()

    a, b = L.read_lora_file(full), L.read_lora_file(resumed)
    assert {c: sorted(v) for c, v in a.layers.items()} == {c: sorted(v) for c, v in b.layers.items()}
    # as test_train_lora's resume test: the same seeded steps, the last bits of Adam's fused update aside (Adam turns
    # rounding-level gradient changes into <= lr * 1e-3 a step); a lost moment or a step done again changes a
    # weight by ~lr (the LoRAs' B start at 0 and move ~lr a step). Measured: the text-encoder LoRA and <F> bit-equal,
    # the UNet LoRA within 3e-8 (|B| 2e-3); with the optimizer state not restored the coarse LoRA's B moves 3e-4.
    for comp, lr in (("text_encoder", st.coarse_lr), ("unet", st.lora_lr)):
        for name, pa in a.layers[comp].items():
            pb = b.layers[comp][name]
            assert_close(pb.B, pa.B, atol=4 * lr * 1e-3, what=f"resumed vs uninterrupted {comp} {name} B")
            assert_close(pb.A, pa.A, atol=4 * lr * 1e-3, what=f"resumed vs uninterrupted {comp} {name} A")
        assert max(np.abs(p.B).max() for p in a.layers[comp].values()) > lr  # it did train
    fa = read_learned_embeds(tmp_path / "a" / FINE_TI_DIR / TI_NAME)[FINE_TOKEN]
    fb = read_learned_embeds(folder / FINE_TI_DIR / TI_NAME)[FINE_TOKEN]
    assert_close(fb, fa, atol=4 * st.ti_lr * 1e-3, what="resumed vs uninterrupted <F>")


def test_recipe_resolves_to_the_jittor_code(tmp_path):
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import run_all
    from jstyle.jobs.plan import RunConfig
    from jstyle.methods.styleblend import StyleBlendConfig

    s = run_all.settings(run_all.parse_args(["--recipe", "styleblend"]))
    cfg = RunConfig.from_dict({"data": "d", "model": "m", "out": "o", **s})
    st = cfg.method_settings()
    assert (cfg.method, cfg.size, cfg.train_size, cfg.seed, cfg.guidance) == ("styleblend", 768, 768, 2024, 7.5)
    # configs/training_config.yaml, test.py, register_styleblend_modules' defaults
    assert (st.ti_steps, st.ti_lr, st.lora_steps, st.lora_lr, st.coarse_steps, st.coarse_lr, st.rank) == (
        500, 0.01, 500, 5e-4, 300, 1e-4, 16)
    assert (st.steps, st.negative_prompt, st.scale, st.c2f_step_ratio, st.f2c_step_ratio) == (30, "blur", 0.3, 0.8, 0.6)
    assert st.training_steps() == (500, 500, 300) and st.seed == 2024
    # auto layers are the official defaults on SD's 16 self-attention layers
    from jstyle.methods.styleblend import default_layers

    sd = [f"down_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1" for b in range(3) for a in range(2)]
    sd += ["mid_block.attentions.0.transformer_blocks.0.attn1"]
    sd += [f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1" for b in (1, 2, 3) for a in range(3)]
    assert default_layers(sd) == ([4, 5, 6, 7, 8, 9], [0, 1, 2, 3, 10, 11, 12, 13, 14, 15])
    # an entry of the official parameters.json overrides layers, scale, ratios and gives the prompt's seed
    params = tmp_path / "parameters.json"
    params.write_text(json.dumps({"00": {"c2f_self_attn_layers_to_register": [0, 1], "f2c_self_attn_layers_to_register":
                                         [14, 15], "scale": 0.5, "c2f_step_ratio": 0.9, "f2c_step_ratio": 0.6,
                                         "seed": {"Ring": 351}}}))
    over, seed = StyleBlendConfig(parameters=str(params)).for_style("00", "Ring", 7)
    assert (over.c2f_layers, over.f2c_layers, over.scale, over.c2f_step_ratio, seed) == ("0,1", "14,15", 0.5, 0.9, 351)
    assert StyleBlendConfig(parameters=str(params)).for_style("00", "Bear", 7)[1] == 7
    with pytest.raises(ConfigError, match="comma list"):
        StyleBlendConfig(c2f_layers="4-9")


def test_run_all_method_styleblend_on_the_demo_model(tmp_path):
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import run_all

    out = tmp_path / "out"
    argv = ["--demo", "--styles", "00", "--size", "16", "--steps", "1", "--no-check", "--no-package", "--no-progress",
            "--method", "styleblend", "--train-steps", "2", "--styleblend-sdedit-images", "1",
            "--styleblend-sdedit-steps", "2", "--styleblend-steps", "2", "--devices", "cpu", "--out", str(out)]
    assert run_all.main(argv) == 0
    tasks = json.loads((out / "manifest.json").read_text())["tasks"]
    assert tasks["00/train"]["info"]["tokens"] == ["<F>", "<C>"]
    lora = out / "work" / "00" / "lora"
    assert {p.name for p in lora.iterdir()} >= {"coarse_data", "coarse", "fine_ti", "fine_lora", L.WEIGHT_NAME}
    finals = sorted((out / "00").glob("*.png"))
    assert len(finals) == len(json.loads((run_all.ROOT / "demo" / "data" / "00" / "prompt.json").read_text()))
    before = {p.name: p.read_bytes() for p in finals}
    assert run_all.main(argv) == 0  # a rerun skips every finished task
    assert {p.name: p.read_bytes() for p in sorted((out / "00").glob("*.png"))} == before
