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
AF = "Xlucidator/JDiffArtFlow"
AF_COMMIT = "3bed120286d5734b57de855dec052400da23d5d7"  # src/ and configs/ = d3c9f0e's, the report's commit
C5B = "czpcf/jittor-5-b"
C5B_COMMIT = "a3e5b10c5626898f0291706d18c85b78728d5673"
# JDiffusion's train.py LoraConfig and JDiffArtFlow's diffusion.py _setup_lora (SD 2.1 has no add_k/v_proj:
# those two match nothing and are left out, as PEFT leaves them)
SOURCE_UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj")


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
                    "official (pooled-FID) checker, list A", "AF docs/report.md 4.2; shared/spec/checker.md"),
        run=dict(method="dreambooth", preset="baseline", dtype="float32", size=512, steps=25, guidance=7.5,
                 scheduler="model", seed=0, seed_per_style=False, train_steps=500, drop_to_out_at_inference=True),
        train=dict(
            instance_template="style_{id}", caption_prefix="", resize="squash", resize_margin=1.0, crop="random",
            hflip=False, prior_preservation=False, rank=4, alpha=None, dropout=0.0, init="gaussian",
            unet_targets=SOURCE_UNET_TARGETS, text_encoder_targets=(), vae_targets=(), train_batch_size=1,
            gradient_accumulation_steps=1, learning_rate=1e-4, lr_scheduler="constant", lr_warmup_steps=0,
            adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-2, adam_epsilon=1e-8, max_grad_norm=None,
        ),
        output="<out>/<style>/<prompt>.png (= run_all.py's output/{taskid}/{prompt}.png)",
        cost="500 train steps (batch 1); 25 steps x CFG (2 UNet passes) per prompt",
        notes=(
            "float32 base in every stage (train.py weight_dtype = jt.float32; run_all.py loads no dtype)",
            "to_out.0 is trained and not applied at inference (drop_to_out_at_inference), as stock peft 0.10.0 "
            "left it out (5b README); --no-drop-to-out-at-inference applies it",
            "scheduler 'model': the model folder's scheduler_config.json class (the pipeline's own)",
            "deviation: the source never seeds (train.py ignores --seed=0, run_all.py passes no seed); "
            "jstyle seeds training and each image from seed 0",
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
                 seed=42, seed_per_style=True, train_steps=800, drop_to_out_at_inference=False,
                 sdedit_strength=0.9, sdedit_steps=40, sdedit_mean_fit="squash", sdedit_mean_resample="bicubic",
                 sdedit_mean_rounding="floor"),
        train=dict(
            instance_template="an image of {obj} in style_{id}", caption_prefix="", resize="squash",
            resize_margin=1.04, crop="random", hflip=False, prior_preservation=True, prior_loss_weight=1.0,
            class_prompt="an image of {obj}", class_generation_prompt="A {obj} in the center", num_class_images=300,
            class_transform="resize", class_inference_steps=25, class_guidance_scale=7.5, rank=32, alpha=None,
            dropout=0.0, init="gaussian", unet_targets=SOURCE_UNET_TARGETS, text_encoder_targets=(),
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
            "deviation: class images are made per style by the base model with jstyle's DDIM and seeds (the source "
            "made them with UniPC, unseeded, 8 per prompt, from the training stems plus prompt.json words, and as "
            "it ran every style trained on style 00's 280 images); jstyle's are from the style's own image stems",
            "deviation: the training class prompt comes from the object word of the instance image it was made "
            "for; the source parses each class file's stem (same words for a class set made as above)",
            "deviation: each image has its own generator (seed + style); the source drew a batch of 5 prompts from "
            "Jittor's global RNG, so its images depend on batch position",
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
                                         "shared/spec/methods.md (DreamBooth-LoRA upgrades)")),),
        score=None,
        run=dict(method="sdedit", preset="strong", dtype="auto", size=512, guidance=7.5, scheduler="ddim",
                 seed=0, seed_per_style=False, drop_to_out_at_inference=False, sdedit_strength=0.9,
                 sdedit_steps=40),
        train={},
        cost="50 class images (25 steps each, once per style) + 800 train steps (batch 1 + 1 class image, "
             "UNet and text encoder); 36 of 40 steps x CFG per prompt",
        notes=(
            "the strong preset unchanged: rank 32, 800 steps, prior preservation (weight 1.0, 50 class images by "
            "the base model from the style's own objects), 'an image of {obj} in style_NN', resize 1.04x then a "
            "random crop (the aspect kept): the upgrades public solutions measured (shared/spec/methods.md)",
            "text-encoder LoRA (q/k/v/out) at lr 5e-5: the public solutions' 'text-encoder LoRA at a lower lr'; "
            "unmeasured here, and JDiffArtFlow's own run with one (0.5119) did not beat its run without (0.5121)",
            "SDEdit from the mean reference at strength 0.9, 40 steps: the biggest single published gain "
            "(hist 0.44 -> 0.78); the mean as jstyle reads references (centre crop, Lanczos, rounded)",
            "dtype auto: float16 base with fp16 mixed precision (float32 LoRA, dynamic loss scale) on CUDA for "
            "speed and memory; float32 on CPU",
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
                 drop_to_out_at_inference=False),
        train={},
        cost="500 train steps (batch 1); per prompt 50 steps x CFG, then StyleID: 20 inversion + 20 sampling "
             "steps (and 20 inversion steps per reference image used)",
        notes=(
            "content: run_all.py pipe(prompt, num_inference_steps=50) with the style LoRA loaded and the bare "
            "object word ('in style_' commented out); CFG 7.5, the pipeline's default",
            "StyleID: the official diffusers implementation (config.py: 20 DDIM steps, layers 7-11, gamma 0.75, "
            "T 1.5, AdaIN std + 1e-4) on the base model",
            "deviation: the seed drew its reference with unseeded np.random.randint over os.listdir; jstyle draws "
            "default_rng([seed, crc32(style), crc32(prompt)]) over the sorted references (reference 'random')",
            "the seed reported 0.376 (list A) and 0.359 (list B) for its own run; jstyle's run of this recipe has "
            "not been scored on real weights, so no score is claimed",
        ),
    ),
)}


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
