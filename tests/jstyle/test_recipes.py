"""jstyle.recipes: each recipe resolves to its source's settings (docs/recipes-sources.md, values written out
here with their source files), flags and --config override it, the manifest hashes only what it resolves to,
--list-recipes names the sources, and both source recipes run end to end on the tiny model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import jittor as jt
import numpy as np
import pytest
from PIL import Image

from jstyle import lora as L
from jstyle import recipes
from jstyle.io import read_rgb
from jstyle.jobs.plan import RunConfig
from jstyle.jobs.stages import base_dtype, train_config
from jstyle.loading import load_model
from jstyle.methods.sdedit import mean_image
from jstyle.models.unet_2d_condition import UNet2DConditionModel
from jstyle.training.dataset import augment, class_augment, load_style_examples

from ..tolerance import assert_close

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import run_all  # noqa: E402

QKV = ("to_k", "to_q", "to_v")  # of the sources' six, what stock peft 0.10.0 wired on JDiffusion (docs, "to_out.0")
SIX = ("to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj")  # all wired: czpcf patched peft's lookup
TINY = ["--demo", "--styles", "00", "--size", "16", "--steps", "1", "--train-steps", "2", "--sdedit-steps", "2",
        "--devices", "cpu", "--no-check", "--no-package", "--no-progress"]


def resolve(*argv: str, data: str = "d") -> RunConfig:
    s = run_all.settings(run_all.parse_args(list(argv)))
    return RunConfig.from_dict({"data": data, "model": "m", "out": "o", **s})


def fields(obj, names: dict) -> dict:
    return {k: getattr(obj, k) for k in names}


def test_jdiffusion_baseline_resolves_to_its_source(tmp_path):
    cfg = resolve("--recipe", "jdiffusion-baseline")
    want_run = dict(
        method="dreambooth",        # run_all.py: the LoRA's pipeline generates each prompt
        dtype="float32",            # train.py weight_dtype = jt.float32; run_all.py from_pretrained, no dtype
        size=512,                   # run_all.py width=512, height=512; train_all.sh --resolution=512
        steps=25,                   # run_all.py num_inference_steps=25
        guidance=7.5,               # pipeline_stable_diffusion_jittor.py guidance_scale default
        scheduler="model",          # run_all.py: the pipeline's own scheduler config
        seed=0,                     # train_all.sh --seed=0 (never used by the source)
        seed_per_style=False,       # run_all.py: seed=None
        shared_noise=False,         # run_all.py: one pipe() call per prompt, each a fresh (unseeded) draw
        train_steps=500,            # train_all.sh --max_train_steps=500
        drop_to_out_at_inference=False,  # nothing to drop: to_out.0 is not trained (QKV)
        recipe="jdiffusion-baseline",
    )
    assert fields(cfg, want_run) == want_run
    assert cfg.prompt("00", "Dolphin") == "Dolphin in style_00"  # run_all.py prompt + f" in style_{taskid}"
    assert cfg.lora_skip() == ()
    t = train_config(cfg, "00", tmp_path, base_dtype(cfg.dtype, "cuda"))
    want_train = dict(
        resolution=512, resize="squash", crop="random",  # train.py Resize(512) (squash) + RandomCrop(512)
        resize_margin=1.0, hflip=False,                  # train.py: no other augmentation
        instance_template="style_{id}", caption_prefix="",  # train_all.sh --instance_prompt style_NN
        prior_preservation=False,                        # train_all.sh: --with_prior_preservation not passed
        unet_targets=QKV,                                # train.py LoraConfig, as stock peft 0.10.0 wired it
        text_encoder_targets=(), vae_targets=(),         # train.py: text_encoder_lora_layers=None
        rank=4, lora_alpha=4.0, init="gaussian", dropout=0.0,  # train.py --rank 4, lora_alpha=rank, gaussian
        learning_rate=1e-4, lr_scheduler="constant", lr_warmup_steps=0,  # train_all.sh; train.py get_scheduler
        adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-2, adam_epsilon=1e-8,  # train.py defaults
        max_train_steps=500, train_batch_size=1, gradient_accumulation_steps=1,  # train_all.sh; train.py loop
        max_grad_norm=None,                              # train.py parses --max_grad_norm and never clips
        mixed_precision="no",                            # train.py: float32 base, LoRA and loss (on CUDA too)
        seed=0,
    )
    assert fields(t, want_train) == want_train


def test_jdiffartflow_resolves_to_its_source(tmp_path):
    cfg = resolve("--recipe", "jdiffartflow")
    want_run = dict(
        method="sdedit",             # run_infer.py: Img2ImgPipeline from the mean image
        dtype="float32",             # diffusion.py / base_trainer.py: no cast anywhere
        size=512,                    # run_infer.py get_avg_image(..., 512)
        guidance=7.5,                # self-tune.yaml infer.guidance_scale
        scheduler="model",           # run_infer.py: the pipeline's own scheduler
        seed=42,                     # self-tune.yaml train.seed / infer.seed
        seed_per_style=True,         # run_infer.py set_seed(infer.seed + int(taskid))
        shared_noise=False,          # custom_pipeline.py: each batch item its own VAE sample and noise
        train_steps=800,             # self-tune.yaml max_train_steps
        drop_to_out_at_inference=False,
    )
    assert fields(cfg, want_run) == want_run
    assert cfg.inference_seed("03") == 45 and cfg.seed == 42  # training: 42 for every style (config.py set_seed)
    assert cfg.prompt("03", "Dolphin") == "an image of Dolphin in style_03"  # run_infer.py f"an image of {p} ..."
    sd = cfg.method_settings()
    want_sd = dict(strength=0.9, steps=40,    # self-tune.yaml infer.strength, num_inference_steps
                   mean_fit="squash", mean_resample="bicubic", mean_rounding="floor")  # utils/image.py get_avg_image
    assert fields(sd, want_sd) == want_sd
    t = train_config(cfg, "03", tmp_path, base_dtype(cfg.dtype, "cuda"))
    want_train = dict(
        resolution=512, resize="squash", resize_margin=1.04, crop="random",  # dataset.py Resize(int(512*1.04)),
        hflip=False,                                    # RandomCrop(512); self-tune.yaml do_augmentation: false
        instance_template="an image of {obj} in style_{id}",  # train_all_subprocess.py; dataset.py dynamic prompt
        prior_preservation=True, prior_loss_weight=1.0,  # self-tune.yaml with_prior_preservation, prior_loss_weight
        class_prompt="an image of {obj}",               # dataset.py __getitem__ (the YAML's "an object" is unread)
        class_generation_prompt="A {obj} in the center",  # scripts/gen_prior.py
        num_class_images=300,                           # self-tune.yaml num_class_images
        class_transform="resize",                       # dataset.py class_transforms Resize(512) + CenterCrop(512)
        class_inference_steps=25, class_guidance_scale=7.5,  # gen_prior.py 25 steps, CFG default 7.5
        unet_targets=QKV, text_encoder_targets=(), vae_targets=(),  # diffusion.py (as peft wired it); te rank 0
        rank=32, lora_alpha=32.0, init="gaussian", dropout=0.0,  # self-tune.yaml unet_lora_rank; diffusion.py
        learning_rate=1e-4, lr_scheduler="constant", lr_warmup_steps=0,  # self-tune.yaml; base_trainer.py
        adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-2, adam_epsilon=1e-8,  # base_trainer.py AdamW
        max_train_steps=800, train_batch_size=1, gradient_accumulation_steps=1,  # self-tune.yaml
        max_grad_norm=None,                             # BaseTrainer.train never clips
        mixed_precision="no", seed=42,                  # float32 throughout; self-tune.yaml train.seed
    )
    assert fields(t, want_train) == want_train


def test_czpcf_joint_resolves_to_its_source(tmp_path):
    cfg = resolve("--recipe", "czpcf-joint", data=str(run_all.ROOT / "demo" / "data"))
    want_run = dict(
        method="dreambooth",        # run_joint_pack3_3_parallel.py: the LoRA's pipeline generates each prompt
        lora_scope="joint",         # train_joint_pack3_3.sh PACKS: all 28 styles in one pack, one LoRA
        dtype="float32",            # train_joint_pack3_3.py weight_dtype = jt.float32
        size=512, steps=100, guidance=7.5,  # run_joint_pack3_3_parallel.py width/height 512, 100 steps, CFG 7.5
        scheduler="model",          # StableDiffusionPipeline.from_pretrained: the model's own scheduler
        seed=123456, train_steps=40000,  # train_joint_pack3_3.sh SEED, MAX_TRAIN_STEPS
        drop_to_out_at_inference=False,  # README: its patched peft loads to_out.0
        timestep_sampling="uniform",     # train_joint_pack3_3.py jt.randint(0, num_train_timesteps)
    )
    assert fields(cfg, want_run) == want_run
    # 'style_NN,' + (prompt + ',') * 4 (run_joint_pack3_3_parallel.py, without its style words and hypernyms)
    assert cfg.prompt("03", "Bear") == "style_03,Bear,Bear,Bear,Bear,"
    assert cfg.lora_name("03") == cfg.lora_name("17") == "joint"
    t = train_config(cfg, "joint", tmp_path, base_dtype(cfg.dtype, "cuda"))
    want_train = dict(
        rank=896, lora_alpha=896.0, dropout=0.1, init="gaussian",  # sh RANK, DROPOUT; py LoraConfig
        unet_targets=SIX, text_encoder_targets=("q_proj", "k_proj", "v_proj"),  # py target_modules
        learning_rate=1e-5, text_encoder_lr=None, lr_scheduler="constant", lr_warmup_steps=0,  # sh
        train_batch_size=1, gradient_accumulation_steps=1, max_train_steps=40000, resolution=512,  # sh
        max_grad_norm=None, mixed_precision="no", seed=123456,  # py never clips; float32
        resize="squash", crop="random", resize_margin=1.0, hflip=True,  # py Resize(size), RandomCrop, flip p 0.5
        prior_preservation=False,  # sh: no --with_prior_preservation (py asserts class_data_root is None)
    )
    assert fields(t, want_train) == want_train
    # every style folder, each image captioned with its own token (py: instance_prompt + style, then the name)
    assert [Path(d).name for d in t.style_dirs] == ["00", "01", "02"] and not t.style_dir
    assert [e.prompt for e in load_style_examples(t)][:3] == ["style_00,Circle", "style_00,House", "style_00,Star"]


def test_strong_is_the_strong_preset_with_sdedit(tmp_path):
    cfg = resolve("--recipe", "strong")
    assert (cfg.method, cfg.preset, cfg.dtype, cfg.seed, cfg.train_settings) == ("sdedit", "strong", "auto", 0, {})
    assert (cfg.method_settings().strength, cfg.method_settings().steps) == (0.9, 40)
    t = train_config(cfg, "03", tmp_path, base_dtype(cfg.dtype, "cuda"))
    # jstyle/training/config.py PRESETS["strong"], on a float16 CUDA base: fp16 mixed precision
    assert (t.rank, t.max_train_steps, t.prior_preservation, t.resize_margin, t.text_encoder_lr, t.mixed_precision) \
        == (32, 800, True, 1.04, 5e-5, "fp16")
    assert t.text_encoder_targets == ("q_proj", "k_proj", "v_proj", "out_proj")


def test_jstyleid_is_the_seeds_pipeline(tmp_path):
    cfg = resolve("--recipe", "jstyleid")
    # SiriusNEO/THU-Computer-Graphics@53a2ab0 StyleTransferDiffusion/JStyleID/run_all.py: the style LoRA loaded,
    # pipe(prompt, num_inference_steps=50) with the bare object word, the pipeline's CFG 7.5
    assert (cfg.method, cfg.prompt_template, cfg.steps, cfg.guidance, cfg.reference) == \
        ("styleid_dreambooth", "{obj}", 50, 7.5, "random")
    assert cfg.prompt("03", "Bear") == "Bear"
    s = cfg.method_settings()
    # JStyleID/diffusers_implementation/config.py: ddim_steps 20, layers [7..11], gamma 0.75, T 1.5 (+1e-4 AdaIN)
    assert (s.variant, s.gamma, s.T, s.steps) == ("diffusers", 0.75, 1.5, 20)
    # run_all.py pipe.load_lora_weights (JDiffusion, peft 0.10.0): no to_out.0 LoRA, as jdiffusion-baseline
    assert train_config(cfg, "03", tmp_path, base_dtype(cfg.dtype, "cuda")).unet_targets == QKV


@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_no_recipe_trains_float16_at_a_loss_scale_of_1(name, tmp_path):
    cfg = resolve("--recipe", name)
    for device in ("cpu", "cuda"):
        base = base_dtype(cfg.dtype, device)
        t = train_config(cfg, "03", tmp_path, base)
        assert (base, t.mixed_precision) in (("float32", "no"), ("float16", "fp16"))  # fp16 = dynamic loss scale
    assert base_dtype("auto", "cuda") == "float16" and base_dtype("auto", "cpu") == "float32"


def test_flags_and_config_override_the_recipe_and_the_hash_is_the_settings(tmp_path):
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"seed": 5, "sdedit_steps": 7, "train_settings": {"rank": 8}}))
    cfg = resolve("--recipe", "jdiffartflow", "--config", str(conf), "--sdedit-steps", "3")
    assert cfg.seed == 5  # config over recipe
    assert cfg.method_settings().steps == 3  # flag over config
    assert cfg.method_settings().strength == 0.9  # recipe over default
    assert cfg.train_settings["rank"] == 8 and cfg.train_settings["resize_margin"] == 1.04  # merged key by key
    assert resolve("--recipe", "jdiffartflow", "--config", str(conf), "--seed", "6").seed == 6
    assert resolve().seed == 0 and resolve().method == "styleid_dreambooth"  # defaults without a recipe
    # the same settings as flags + a config file (no recipe) are the same run: same hash, the name only a label
    same = tmp_path / "same.json"
    settings = {k: v for k, v in recipes.get("jdiffartflow").settings().items() if k != "recipe"}
    same.write_text(json.dumps(settings))
    by_recipe, by_flags = resolve("--recipe", "jdiffartflow"), resolve("--config", str(same))
    assert by_recipe.hashed() == by_flags.hashed() and "recipe" not in by_recipe.hashed()
    assert by_flags.recipe is None and by_recipe.hashed() != resolve("--recipe", "jdiffartflow", "--seed", "1").hashed()


def test_list_recipes_names_each_source(capsys):
    assert run_all.main(["--list-recipes"]) == 0
    out = capsys.readouterr().out
    for name, recipe in recipes.RECIPES.items():
        assert f"{name}: {recipe.summary}" in out
        for source in recipe.sources:
            assert str(source) in out
    assert "JittorRepos/JDiffusion@f10e14b" in out and "Xlucidator/JDiffArtFlow@3bed120" in out
    assert "0.512078" in out and "0.3274" in out and "czpcf/jittor-5-b@a3e5b10" in out and "0.4648" in out
    assert run_all.main(["--recipe", "nope"]) == 2
    assert "jdiffusion-baseline" in capsys.readouterr().err


def test_squash_is_wired_into_the_training_data(tmp_path):
    (tmp_path / "00" / "images").mkdir(parents=True)
    path = tmp_path / "00" / "images" / "wide_boat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 700, 3), dtype=np.uint8)).save(path)
    base = train_config(resolve("--recipe", "jdiffusion-baseline", data=str(tmp_path)), "00", tmp_path, "float32")
    (example,) = load_style_examples(base)
    assert example.prompt == "style_00"
    got = augment(example.image, base, np.random.default_rng(0))
    want = read_rgb(path, 512, fit="squash").astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    # the same PIL bilinear call on the same pixels, then the same float32 arithmetic: exact (atol 0)
    assert_close(got, want, atol=0, what="baseline sample vs read_rgb(fit='squash')")
    af = train_config(resolve("--recipe", "jdiffartflow", data=str(tmp_path)), "00", tmp_path, "float32")
    (example,) = load_style_examples(af)
    assert example.prompt == "an image of wide boat in style_00"
    rng = np.random.default_rng(1)
    got = augment(example.image, af, rng)
    draw = np.random.default_rng(1)
    top, left = int(draw.integers(0, 532 - 512 + 1)), int(draw.integers(0, 532 - 512 + 1))  # augment's draws
    square = read_rgb(path, 532, fit="squash").astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    assert_close(got, square[:, top:top + 512, left:left + 512], atol=0, what="532 squash + random 512 crop")
    # class images: squashed to 512 and centre-cropped, never the instance margin
    assert_close(class_augment(example.image, af, rng), want, atol=0, what="class transform")


def test_mean_image_as_jdiffartflow_computes_it(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate(((40, 70, 3), (64, 64, 3), (90, 30, 3))):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[-1])
    # src/utils/image.py get_avg_image, written out: PIL's default resize filter, float64 mean, astype(uint8)
    want = np.mean(np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p in paths]), axis=0)
    want = want.astype(np.uint8)
    got = mean_image(paths, 32, fit="squash", resample="bicubic", rounding="floor")
    assert_close(got, want, atol=0, what="mean image vs get_avg_image")  # the same PIL calls and a floor: exact
    assert np.abs(mean_image(paths, 32).astype(int) - want).max() > 20  # jstyle's default (crop, Lanczos) is not


def test_drop_to_out_at_inference_leaves_to_out_unchanged(tiny_ref, tmp_path):
    unet = load_model(UNet2DConditionModel, tiny_ref / "sd1" / "unet")
    L.inject_lora(unet, ["to_q", "to_k", "to_v", "to_out.0"], rank=4, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for layer in L.lora_layers(unet).values():
        layer.lora_B.weight.assign(jt.array((0.2 * rng.standard_normal(layer.lora_B.weight.shape)).astype(np.float32)))
    trained = {n: layer.lora_B.weight.numpy().copy() for n, layer in L.lora_layers(unet).items()}
    path = L.save_lora(tmp_path / "style", {"unet": unet})
    L.remove_lora(unet)
    modules = dict(unet.named_modules())
    outs = [n for n in modules if n.endswith("to_out.0")]
    qs = [n for n in modules if n.endswith("to_q")]
    x = jt.array(np.random.default_rng(2).standard_normal((1, 3, modules[outs[0]].weight.shape[1])).astype(np.float32))
    xq = jt.array(np.random.default_rng(3).standard_normal((1, 3, modules[qs[0]].weight.shape[1])).astype(np.float32))
    base_out, base_q = modules[outs[0]](x).numpy(), modules[qs[0]](xq).numpy()
    pipe = SimpleNamespace(unet=unet)
    counts = L.apply_lora(pipe, path, skip=("to_out.0",))
    layers = L.lora_layers(unet)
    assert counts == {"unet": 2 * 3 * len(outs)} and set(layers) == {n for n in trained if not n.endswith("to_out.0")}
    now = dict(unet.named_modules())
    assert np.array_equal(now[outs[0]](x).numpy(), base_out)  # to_out.0: the base layer itself
    assert np.array_equal(layers[qs[0]].lora_B.weight.numpy(), trained[qs[0]])  # q/k/v: the trained LoRA
    assert np.abs(now[qs[0]](xq).numpy() - base_q).max() > 1e-3  # to_q moved by its LoRA (B ~ 0.2)
    L.apply_lora(pipe, path)  # without skip: every trained layer, to_out.0 too
    assert set(L.lora_layers(unet)) == set(trained)


def test_source_recipes_run_end_to_end_on_the_tiny_model(tmp_path):
    prompts = list(json.loads((run_all.ROOT / "demo" / "data" / "00" / "prompt.json").read_text()).values())
    out = tmp_path / "baseline"
    assert run_all.main([*TINY, "--recipe", "jdiffusion-baseline", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "00").iterdir()) == sorted(f"{p}.png" for p in prompts)
    manifest = json.loads((out / "manifest.json").read_text())
    config = manifest["config"]  # the hashed settings: what the recipe resolved to, not its name
    assert "recipe" not in config and (config["method"], config["dtype"], config["scheduler"]) == \
        ("dreambooth", "float32", "model") and config["drop_to_out_at_inference"] is False
    lora = L.read_lora_file(out / "work" / "00" / "lora" / "pytorch_lora_weights.safetensors")
    assert {n.rsplit(".", 1)[-1] for n in lora.layers["unet"]} == {"to_q", "to_k", "to_v"}  # no to_out.0
    log = json.loads((out / "work" / "00" / "lora" / "train_log.json").read_text())
    assert log["final_step"] == 2 and log["config"]["resize"] == "squash"  # the --train-steps flag overrides 500
    # JDiffArtFlow: tiny class-image set via --config's train_settings (over the recipe's 300 x 25 steps)
    conf = tmp_path / "tiny.json"
    conf.write_text(json.dumps({"train_settings": {"num_class_images": 2, "class_inference_steps": 1}}))
    out = tmp_path / "af"
    assert run_all.main([*TINY, "--recipe", "jdiffartflow", "--config", str(conf), "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "00").iterdir()) == sorted(f"{p}.png" for p in prompts)
    log = json.loads((out / "work" / "00" / "lora" / "train_log.json").read_text())
    assert (log["config"]["rank"], log["config"]["num_class_images"], log["config"]["seed"]) == (32, 2, 42)
    made = json.loads((out / "work" / "00" / "lora" / "class_images" / "manifest.json").read_text())["prompts"]
    assert made and all(p.startswith("A ") and p.endswith(" in the center") for p in made)  # gen_prior.py's prompt
    tasks = json.loads((out / "manifest.json").read_text())["tasks"]
    assert {t["status"] for t in tasks.values()} == {"done"} and len(tasks) == 1 + len(prompts)
