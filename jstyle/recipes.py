"""Recipes: whole runs as data, each from a named source, resolved into run_all's settings.

`run_all.sh --recipe NAME` starts from `RECIPES[NAME].settings()`; `--config` keys and command-line flags
override it (defaults < recipe < --config < flags). A recipe is only a bundle of settings: the run's manifest
hashes what it resolves to, so the same settings given as flags make the same run (and resume it).

Each entry names its source (repository, commit, files), its published score with the checker that gave it,
and every deviation from the source in `notes`. Values, with file and commit: docs/recipes-sources.md; the
tests (tests/jstyle/test_recipes.py) compare each entry's resolved settings with them. Nothing here imports
Jittor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .methods.styleid_dreambooth import JSTYLEID

__all__ = ["Source", "Score", "Recipe", "RECIPES", "get", "listing"]

JD = "JittorRepos/JDiffusion"
JD_COMMIT = "f10e14b9777bef47cecbf204114da1687dddd489"
SB = "zichongc/jittor-L6810K2-StyleTransfer"  # StyleBlend's Jittor code, the 0.4823 list-B submission
SB_COMMIT = "d6e9b896dcae081f43a40d25a52fb78366805bd6"
SB_TORCH = "zichongc/StyleBlend"  # the paper's PyTorch release
SB_TORCH_COMMIT = "853724c50d3dd98a056d01b15cc271f84b96cfd6"
AF = "Xlucidator/JDiffArtFlow"
AF_COMMIT = "3bed120286d5734b57de855dec052400da23d5d7"  # src/ and configs/ = d3c9f0e's, the report's commit
C5B = "czpcf/jittor-5-b"
C5B_COMMIT = "a3e5b10c5626898f0291706d18c85b78728d5673"
# JDiffusion's train.py LoraConfig and JDiffArtFlow's diffusion.py _setup_lora (SD 2.1 has no add_k/v_proj:
# those two match nothing and are left out, as PEFT leaves them)
SOURCE_UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj")
# What of them took effect where a source trained with stock peft 0.10.0's unet.add_adapter on JDiffusion (all three
# source recipes): q/k/v. czpcf/jittor-5-b's README: with stock peft the trained to_out.0 weights are not injected
# into the model; its fix is in peft's BaseTuner.inject_adapter (tuners_utils.py), which add_adapter runs at training
# as load_lora_weights does at loading, so to_out.0's LoRA was not in the training forward either
# (docs/recipes-sources.md, "to_out.0").
JDIFFUSION_PEFT_TARGETS = ("to_k", "to_q", "to_v")


@dataclass(frozen=True)
class Source:
    repository: str  # owner/name on GitHub ("jstyle" for jstyle's own)
    commit: str | None
    files: tuple[str, ...]

    def __str__(self) -> str:
        at = f"@{self.commit[:7]}" if self.commit else ""
        return f"{self.repository}{at}: {', '.join(self.files)}"


@dataclass(frozen=True)
class Score:
    final: float
    metrics: tuple[tuple[str, float], ...]  # (name, value) in the checker's order
    checker: str  # which checker, mode and list produced it
    where: str  # where it is published

    def __str__(self) -> str:
        return f"{self.final} ({self.checker}; {self.where})"


@dataclass(frozen=True)
class Recipe:
    """One run as data: run_all settings (RunConfig fields and method setting keys, as the flags) and the LoRA
    training settings over the run's preset (LoRATrainConfig fields)."""

    name: str
    summary: str  # one line
    sources: tuple[Source, ...]
    score: Score | None
    run: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    output: str = "<out>/<style>/<prompt>.png"  # the file layout (jstyle's; a source's other one is in notes)
    cost: str = ""  # what a style costs: training steps, inference steps, what runs per prompt
    notes: tuple[str, ...] = ()  # why each choice, and every deviation from the source
    # in --method auto's default candidates; off for today's four: each sets a whole run (512 px, its dtype, 500-800
    # LoRA steps, class images) over the run's own size and steps; name one in --candidates to screen it
    candidate: bool = False

    def settings(self) -> dict[str, Any]:
        """The run settings this recipe resolves to (flat keys, as run_all's flags and --config)."""
        return {**self.run, "train_settings": dict(self.train), "recipe": self.name}


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe(
        "jdiffusion-baseline",
        "the JDiffusion challenge baseline as it ran: DreamBooth-LoRA rank 4, 500 steps, float32, 25 steps",
        sources=(Source(JD, JD_COMMIT, ("examples/dreambooth/train.py", "examples/dreambooth/train_all.sh",
                                        "examples/dreambooth/run_all.py")),
                 Source("czpcf/jittor-5-b", "a3e5b10c5626898f0291706d18c85b78728d5673", ("README.md",))),
        score=Score(0.3274, (("dino", 0.1130), ("hist", 0.4388), ("fid", 1.7101), ("lpips", 0.5391),
                             ("clip_iqa", 0.7567), ("clip_r", 0.8293)),
                    "official (pooled-FID) checker, list A", "AF docs/report.md 4.2 and README.md"),
        run=dict(method="dreambooth", preset="baseline", dtype="float32", size=512, steps=25, guidance=7.5,
                 scheduler="model", seed=0, seed_per_style=False, shared_noise=False, train_steps=500,
                 drop_to_out_at_inference=False),
        train=dict(
            instance_template="style_{id}", caption_prefix="", resize="squash", resize_margin=1.0, crop="random",
            hflip=False, prior_preservation=False, rank=4, alpha=None, dropout=0.0, init="gaussian",
            unet_targets=JDIFFUSION_PEFT_TARGETS, text_encoder_targets=(), vae_targets=(), train_batch_size=1,
            gradient_accumulation_steps=1, learning_rate=1e-4, lr_scheduler="constant", lr_warmup_steps=0,
            adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-2, adam_epsilon=1e-8, max_grad_norm=None,
        ),
        output="<out>/<style>/<prompt>.png (= run_all.py's output/{taskid}/{prompt}.png)",
        cost="500 train steps (batch 1); 25 steps x CFG (2 UNet passes) per prompt",
        notes=(
            "float32 base in every stage (train.py weight_dtype = jt.float32; run_all.py loads no dtype)",
            "UNet LoRA on to_q/to_k/to_v only: train.py names six targets, but with stock peft 0.10.0 to_out.0's "
            "LoRA was wired neither at training nor at loading (5b README and tuners_utils.py patch; "
            "docs/recipes-sources.md); --config train_settings unet_targets gives the six",
            "scheduler 'model': the model folder's scheduler_config.json class (the pipeline's own)",
            "noise: each image its own, default_rng(image_key(0, style, object word, 1)); the source: one "
            "pipe() call per prompt drawing from Jittor's global RNG unseeded, also a fresh draw per image",
            "deviation: the source never seeds (train.py ignores --seed=0, run_all.py passes no seed); "
            "jstyle seeds training from seed 0 and each image as above",
            "deviation: alpha is composited on white (the source's convert('RGB') drops it) and no EXIF rotation",
        ),
    ),
    Recipe(
        "jdiffartflow",
        "JDiffArtFlow's 0.512078 'Safe Strategy': LoRA rank 32 with prior preservation, then SDEdit 0.9 "
        "from the mean reference",
        sources=(Source(AF, AF_COMMIT, ("configs/self-tune.yaml", "src/dataset.py", "src/models/diffusion.py",
                                        "src/trainers/base_trainer.py", "src/trainers/dreambooth_trainer.py",
                                        "src/run_infer.py", "src/custom_pipeline.py", "src/utils/image.py",
                                        "scripts/gen_prior.py")),),
        score=Score(0.512078, (("dino", 0.120226), ("hist", 0.779055), ("fid", 1.674596), ("lpips", 0.428658),
                               ("clip_iqa", 0.757711), ("clip_r", 0.930667)),
                    "official (pooled-FID) checker, list A, self-scored", "AF docs/report.md 4.1 (d3c9f0e)"),
        run=dict(method="sdedit", preset="baseline", dtype="float32", size=512, guidance=7.5, scheduler="model",
                 seed=42, seed_per_style=True, shared_noise=False, train_steps=800, drop_to_out_at_inference=False,
                 sdedit_strength=0.9, sdedit_steps=40, sdedit_mean_fit="squash", sdedit_mean_resample="bicubic",
                 sdedit_mean_rounding="floor"),
        train=dict(
            instance_template="an image of {obj} in style_{id}", caption_prefix="", resize="squash",
            resize_margin=1.04, crop="random", hflip=False, prior_preservation=True, prior_loss_weight=1.0,
            class_prompt="an image of {obj}", class_generation_prompt="A {obj} in the center", num_class_images=300,
            class_transform="resize", class_inference_steps=25, class_guidance_scale=7.5, rank=32, alpha=None,
            dropout=0.0, init="gaussian", unet_targets=JDIFFUSION_PEFT_TARGETS, text_encoder_targets=(),
            vae_targets=(), train_batch_size=1, gradient_accumulation_steps=1, learning_rate=1e-4,
            lr_scheduler="constant", lr_warmup_steps=0, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-2,
            adam_epsilon=1e-8, max_grad_norm=None,
        ),
        output="<out>/<style>/<prompt>.png (the source writes outputs/generate/NN/<prompt with _ for spaces>.png; "
               "jstyle keeps prompt.json's spelling, which the checker looks up: 'Ice cream.png')",
        cost="300 class images (25 steps each, once per style) + 800 train steps (batch 1 + 1 class image); "
             "36 of 40 steps x CFG per prompt from one cached mean image",
        notes=(
            "float32 in every stage (no cast in the source); no gradient clipping (max_grad_norm: 1.0 is in the "
            "YAML, BaseTrainer.train never clips)",
            "instances squashed to 532 (Resize(int(512 * 1.04))) then a random 512 crop; class images squashed to "
            "512 and centre-cropped (class_transform 'resize')",
            "mean image as get_avg_image: the whole image squashed, PIL's default (bicubic) filter, truncated",
            "seed 42 for training; each style's images from seed 42 + the style number (seed_per_style)",
            "UNet LoRA on to_q/to_k/to_v only: diffusion.py adds six targets with stock peft 0.10.0's add_adapter, "
            "which wired no to_out.0 LoRA on JDiffusion (as jdiffusion-baseline)",
            "noise: each image its own (VAE sample and SDEdit noise), default_rng(image_key(42 + NN, style, object "
            "word, 1)); the source: set_seed(42 + NN) once per style, then each batch item's VAE sample and noise "
            "drawn in turn from Jittor's global RNG, also a fresh draw per image",
            "deviation: class images are made per style by the base model with jstyle's DDIM and seeds (the source "
            "made them with UniPC, unseeded, 8 per prompt, from the training stems plus prompt.json words, and as "
            "it ran every style trained on style 00's 280 images); jstyle's are from the style's own image stems",
            "deviation: the training class prompt comes from the object word of the instance image it was made "
            "for; the source parses each class file's stem (same words for a class set made as above)",
            "deviation: each image has its own generator; the source drew a batch of 5 prompts from Jittor's "
            "global RNG, so its images depend on their batch position and the same seed gives other noise",
            "deviation: instance objects replace '-' as well as '_' by spaces and captions (metadata.jsonl, .txt) "
            "win when present; the source uses the stem with '_' -> ' ' only",
            "deviation: alpha composited on white (the source drops it), no EXIF rotation; the mean reads "
            "every image jstyle lists (the source: .png/.jpg/.jpeg only)",
        ),
    ),
    Recipe(
        "czpcf-joint",
        "czpcf's 0.4648 list-B run: one LoRA (rank 896, UNet and text encoder) trained 40000 steps on all styles "
        "at once, each with its own style_NN token, then 100 steps per prompt",
        sources=(Source(C5B, C5B_COMMIT, ("README.md", "JDiffusion_singlepack/train_joint_pack3_3.sh",
                                          "JDiffusion_singlepack/train_joint_pack3_3.py",
                                          "JDiffusion_singlepack/run_joint_pack3_3_parallel.py")),),
        score=Score(0.4648, (("dino", 0.1737), ("hist", 0.7144), ("fid", 3.272), ("lpips", 0.4154),
                             ("clip_iqa", 0.7463), ("clip_r", 0.8586)),
                    "the challenge's leaderboard, list B (28 styles, 3 references each)",
                    "5b README.md, final results (n=28)"),
        run=dict(method="dreambooth", lora_scope="joint", preset="baseline", dtype="float32", size=512, steps=100,
                 guidance=7.5, scheduler="model", seed=123456, seed_per_style=False, train_steps=40000,
                 drop_to_out_at_inference=False, timestep_sampling="uniform",
                 prompt_template="{instance},{obj},{obj},{obj},"),
        train=dict(
            instance_template="style_{id},{obj}", caption_prefix="", resize="squash", resize_margin=1.0,
            crop="random", hflip=True, prior_preservation=False, rank=896, alpha=None, dropout=0.1, init="gaussian",
            unet_targets=SOURCE_UNET_TARGETS, text_encoder_targets=("q_proj", "k_proj", "v_proj"), vae_targets=(),
            train_batch_size=1, gradient_accumulation_steps=1, learning_rate=1e-5, text_encoder_lr=None,
            lr_scheduler="constant", lr_warmup_steps=0, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-2,
            adam_epsilon=1e-8, max_grad_norm=None,
        ),
        output="<out>/<style>/<prompt>.png (the source writes output_joint_pack3_3_continous/40000/NN/<prompt>.png)",
        cost="40000 train steps once per run, not per style (batch 1, rank 896 on UNet and text encoder; about "
             "5 h on one RTX 3090 per the README); per prompt 100 steps x CFG",
        notes=(
            "the README's final run is its strategies 1+2+4+6: (1) LoRA on to_q/k/v/out.0 + add_k/v_proj and the "
            "text encoder's q/k/v_proj, (2) adaptive lr, (4) all 28 styles packed into one LoRA ('n=28' gave "
            "CLIP-R 0.8586 against 0.62 for packs of 2), (6) LLM-written hypernyms in the prompt",
            "rank 896 = 28 x 32 (README: a pack of n styles gets rank n * r); lora_alpha = rank, dropout 0.1, "
            "gaussian init, lr 1e-5 constant, 40000 steps, batch 1, seed 123456 (train_joint_pack3_3.sh)",
            "float32 everywhere (weight_dtype = jt.float32); no gradient clipping (--max_grad_norm is parsed, the "
            "loop never clips); uniform timesteps (jt.randint)",
            "data: every style's images in one shuffled epoch order (DreamBoothDataset.set_order), Resize(512) "
            "squash + RandomCrop(512), a horizontal flip with p = 0.5",
            "inference: 'style_NN,' + style tags + (prompt + ',') * 4 + hypernyms, 100 steps, CFG 7.5, no negative "
            "prompt (run_joint_pack3_3_parallel.py); jstyle's prompt is 'style_NN,{obj},{obj},{obj},{obj},'",
            "deviation: training prompts are 'style_NN,<file stem>'; the source adds the style's tag.json words "
            "and each image's item tags in a shuffled order (and ',horizontal_flip' on flipped images): jstyle's "
            "data has no tag.json",
            "deviation: no LLM hypernyms (B_dataset/llm_prompt.json) and no per-style positive words in the prompt",
            "deviation: adaptive lr not reproduced: the source trains lora_A at lr * max(1, sqrt(n / 896)) by the "
            "layer's width n (x1.07 to x1.20 at rank 896); jstyle trains every LoRA tensor at 1e-5",
            "deviation: one seed (123456) for training and images; the source samples with seed=114514 in batches "
            "of 8 prompts and never seeds training reproducibly (Jittor's global RNG)",
        ),
    ),
    Recipe(
        "strong",
        "jstyle's own: the public upgrades (rank 32, 800 steps, prior preservation, templated prompts, 1.04x "
        "crop, text-encoder LoRA) and SDEdit 0.9 from the mean reference, fp16 on CUDA",
        sources=(Source("jstyle", None, ("jstyle/training/config.py (PRESETS['strong'])",
                                         "Xlucidator/JDiffArtFlow docs/report.md (the upgrades it measured)",
                                         "czpcf/jittor-5-b README.md (text-encoder LoRA)")),),
        score=None,
        run=dict(method="sdedit", preset="strong", dtype="auto", size=512, guidance=7.5, scheduler="ddim",
                 seed=0, seed_per_style=False, shared_noise=False, drop_to_out_at_inference=False, sdedit_strength=0.9,
                 sdedit_steps=40),
        train={},
        cost="50 class images (25 steps each, once per style) + 800 train steps (batch 1 + 1 class image, "
             "UNet and text encoder); 36 of 40 steps x CFG per prompt",
        notes=(
            "the strong preset unchanged: rank 32, 800 steps, prior preservation (weight 1.0, 50 class images by "
            "the base model from the style's own objects), 'an image of {obj} in style_NN', resize 1.04x then a "
            "random crop (the aspect kept): the upgrades public solutions measured (JDiffArtFlow docs/report.md "
            "and configs/; jittor-5-b README)",
            "text-encoder LoRA (q/k/v/out) at lr 5e-5: the public solutions' 'text-encoder LoRA at a lower lr'; "
            "unmeasured here, and JDiffArtFlow's own run with one (0.5119) did not beat its run without (0.5121)",
            "SDEdit from the mean reference at strength 0.9, 40 steps: the biggest single published gain "
            "(hist 0.44 -> 0.78); the mean as jstyle reads references (centre crop, Lanczos, rounded)",
            "dtype auto: float16 base with fp16 mixed precision (float32 LoRA, dynamic loss scale) on CUDA for "
            "speed and memory; float32 on CPU",
            "noise: each image its own (VAE sample and SDEdit noise), default_rng(image_key(0, style, object word, "
            "1))",
            "no published score: run it and score it with check.sh",
        ),
    ),
    Recipe(
        "jstyleid",
        "the JStyleID seed's StyleID with DreamBooth: bare-prompt content with the style's LoRA (50 steps), then "
        "official diffusers StyleID from a seeded random reference",
        sources=(Source("SiriusNEO/THU-Computer-Graphics", "53a2ab0",
                        ("StyleTransferDiffusion/JStyleID/run_all.py",
                         "StyleTransferDiffusion/JStyleID/diffusers_implementation/config.py")),),
        score=None,
        run=dict(JSTYLEID, preset="baseline", dtype="auto", size=512, scheduler="ddim", seed_per_style=False,
                 shared_noise=False, drop_to_out_at_inference=False),
        train=dict(unet_targets=JDIFFUSION_PEFT_TARGETS),
        cost="500 train steps (batch 1); per prompt 50 steps x CFG, then StyleID: 20 inversion + 20 sampling "
             "steps (and 20 inversion steps per reference image used)",
        notes=(
            "content: run_all.py pipe(prompt, num_inference_steps=50) with the style LoRA loaded and the bare "
            "object word ('in style_' commented out); CFG 7.5, the pipeline's default",
            "UNet LoRA on to_q/to_k/to_v only: run_all.py loads its LoRAs with JDiffusion's load_lora_weights "
            "(peft 0.10.0), which wires no to_out.0 LoRA; StyleTransferDiffusion/README.md trains them with "
            "JDiffusion's examples/dreambooth, as jdiffusion-baseline",
            "StyleID: the official diffusers implementation (config.py: 20 DDIM steps, layers 7-11, gamma 0.75, "
            "T 1.5, AdaIN std + 1e-4) on the base model",
            "noise: each content image its own start latents, default_rng(image_key(0, style, object word, 1)); "
            "the source: one pipe() call per prompt from Jittor's unseeded global RNG, also a fresh draw per "
            "image; StyleID draws none (posterior mode, eta 0)",
            "deviation: the seed drew its reference with unseeded np.random.randint over os.listdir; jstyle draws "
            "default_rng([seed, crc32(style), crc32(prompt)]) over the sorted references (reference 'random')",
            "the JStyleID project reported 0.376 (list A) and 0.359 (list B) for its own run "
            "(StyleTransferDiffusion/README.md, 'StyleID w/ Dreambooth'); jstyle's run of this recipe has "
            "not been scored on real weights, so no score is claimed",
        ),
    ),
)}


# StyleBlend's recipe: the Jittor repository's values; where the PyTorch release differs, the notes say so
RECIPES["styleblend"] = Recipe(
    "styleblend",
    "StyleBlend (Eurographics 2025) as its authors ran it on list B: coarse text-encoder LoRA on SDEdit images, "
    "<F> textual inversion + UNet LoRA, the two branches blended in one batch",
    sources=(Source(SB, SB_COMMIT, ("coarse_style_training.py", "fine_style_training.py", "pipeline.py", "modules.py",
                                    "test.py", "configs/training_config.yaml", "configs/inference_config.yaml",
                                    "configs/parameters.json", "utils/dataset.py", "utils/pipeline_utils.py")),
             Source(SB_TORCH, SB_TORCH_COMMIT, ("src/modules.py", "src/pipeline.py",
                                                "configs/training_config_sd21.yaml"))),
    score=Score(0.4823, (), "the challenge's official checker, list B (28 styles, 3 references each)",
                f"{SB} README.md"),
    run=dict(method="styleblend", dtype="auto", size=768, train_size=768, guidance=7.5, scheduler="ddim",
             seed=2024, seed_per_style=False, styleblend_steps=30, styleblend_negative_prompt="blur",
             styleblend_scale=0.3, styleblend_c2f_step_ratio=0.8, styleblend_f2c_step_ratio=0.6,
             styleblend_c2f_layers="4,5,6,7,8,9", styleblend_f2c_layers="0,1,2,3,10,11,12,13,14,15",
             styleblend_ti_steps=500, styleblend_ti_lr=0.01, styleblend_lora_steps=500, styleblend_lora_lr=5e-4,
             styleblend_coarse_steps=300, styleblend_coarse_lr=1e-4, styleblend_rank=16,
             styleblend_sdedit_images=10, styleblend_sdedit_steps=20),
    cost="per style: 10 SDEdit images per reference (15-17 of 20 steps x CFG each), 300 text-encoder LoRA steps, "
         "500 textual-inversion steps, 500 UNet LoRA steps (768 px, batch 1); per prompt 30 steps x 4 rows "
         "(two branches x CFG) at 768 px, resized to 512",
    notes=(
        "training: configs/training_config.yaml (seed 2024, 768 px, squashed to a square as the datasets' "
        "Image.resize); fine: TI of <F> from 'artistic' (lr 0.01, AdamW beta1 0.85, StepLR 30 x 0.7, 500 steps) "
        "then a UNet LoRA rank 16 on to_q/k/v/out.0 (lr 5e-4, StepLR 200 x 0.5, 500 steps), both on 'A {obj} in "
        "the style of <F>.' with random horizontal flips; coarse: text-encoder LoRA rank 16 on q/k/v/out_proj "
        "(lr 1e-4 constant, 300 steps) on 'A {obj} in the style of <C>.', <C> left at the embedding of '&'",
        "inference: test.py (30 DDIM steps, CFG 7.5, negative prompt 'blur' for the fine branch and '' for the "
        "coarse one, 96x96 latents = 768 px, the fine image resized to 512) and register_styleblend_modules' "
        "defaults (c2f layers 4-9, f2c 0-3 and 10-15, coarse UNet LoRA scale 0.3, ratios 0.8 / 0.6), the most "
        "frequent entry of configs/parameters.json; its per-style entries: --styleblend-parameters "
        "configs/parameters.json (layers, scale, ratios and per-prompt seeds)",
        "the Jittor code differs from the PyTorch release, and jstyle follows the Jittor code: TI lr 0.01 (PyTorch "
        "1e-3), UNet LoRA lr 5e-4 (1e-4), StepLR schedules (diffusers' get_scheduler), <C> not optimised (the "
        "PyTorch code trains it with the LoRA), 512 px results from 768 px (768 px results), and the one-way "
        "injectors: the PyTorch pipeline names them 'c2f' / 'f2c' while its modules.py tests 'c2t' / 't2c', so "
        "there only the layers in both lists (feature_blender) blend; in the Jittor code all listed layers do",
        "a layer in both lists blends Q and K, V on the c2f steps (the official loop sets one step count per "
        "layer, c2f's); the cross-attention layers only get the coarse LoRA scale (their injection lists are "
        "empty in every official configuration)",
        "deviation: the SDEdit images are not filtered (the Jittor config has no CLIP filter and its authors chose "
        "images by hand; the PyTorch release keeps the 10 of 15 closest by CLIP patch features): jstyle makes 10",
        "deviation: noise from numpy generators (the official draws jt.randn after jt.set_global_seed): the seeds "
        "of parameters.json pick other noise here; the SDEdit strengths are drawn from a seeded generator",
        "dtype auto: float16 UNet and text encoder on CUDA with the VAE in float32 where its config asks (the "
        "official runs float32: 27 GB); training in fp16 mixed precision with float32 LoRA and embedding tensors",
    ),
)


def get(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"--recipe {name!r}: use one of {', '.join(RECIPES)} (run_all.sh --list-recipes)")
    return RECIPES[name]


def listing() -> str:
    """`run_all.sh --list-recipes`: each recipe with its summary, sources, score and cost."""
    lines = []
    for r in RECIPES.values():
        lines.append(f"{r.name}: {r.summary}")
        lines += [f"  source: {s}" for s in r.sources]
        lines.append(f"  score:  {r.score if r.score else 'none published'}")
        lines.append(f"  cost:   {r.cost}")
        lines += [f"  note:   {n}" for n in r.notes]
    return "\n".join(lines)
