"""DINO, CLIP-R and CLIP-IQA against their reference libraries, full-size random architectures.

DINO: transformers Dinov2Model + the PIL BitImageProcessor configured as facebook/dinov2-base.
CLIP-R: transformers CLIPModel forward + CLIPProcessor(padding=True), top-5 of logits_per_image.
CLIP-IQA: torchmetrics CLIPImageQualityAssessment with its model loader patched to piq's RN50
built from our random weights and a tokenizer from the wheel's BPE vocabulary.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from checker.clip_iqa import ANCHOR_TOKENS, ClipIqa
from checker.clip_r import ClipR, clip_input
from checker.dino import DinoEmbedder, cosine_matrix, dino_input
from checker.synthetic import synthetic_image
from checker.weights import package_file
from tests.tolerance import assert_close, f32_bound

EPS64 = float(np.finfo(np.float64).eps)
# Preprocessing, both sides: the same PIL bicubic resize and crop (identical uint8), then elementwise float32
# x / 255, - mean, / std, cast: <= 4 roundings of values <= 2.7 (|(1 - 0.406) / 0.225|) per element. A bug
# (bilinear for bicubic, a 1-pixel crop shift, CLIP's mean/std for ImageNet's) is >= 1e-2 on many elements.
PREPROCESS_ATOL = f32_bound(4, 2.7)  # 1.3e-6
# CLIP-IQA p = softmax(100 cos)[good]: |dp| <= p (1 - p) 100 |d(cos_good - cos_bad)| <= 25 * 2 |d cos|. A
# batched or reordered float32 forward moves each cosine (a unit-size value after a 1024-d reduction) by a
# few roundings: allow 4 eps32 each. A real bug is far larger: feeding the 96x64 image cropped to 64x64
# moves p by 9e-4, zero-padding it to a shared size by 3e-3, the wrong input scale (x255) by > 0.1.
CLIP_IQA_ATOL = 25 * 2 * f32_bound(4, 1.0)  # 2.4e-5

CPU = torch.device("cpu")


def _imgs(seed: int, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    pal = rng.integers(0, 256, (4, 3)).astype(np.float32)
    return [np.ascontiguousarray(synthetic_image(rng, pal, max(h, w))[:h, :w]) for h, w in sizes]


def _pil_processor(kind: str):
    import transformers

    if kind == "dino":
        cls = getattr(transformers, "BitImageProcessorPil", None) or transformers.BitImageProcessor
        return cls(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
                   do_center_crop=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls()


def test_dino_preprocess_matches_processor() -> None:
    proc = _pil_processor("dino")
    for img in _imgs(0, [(512, 512), (300, 451), (97, 64)]):
        ref = proc(images=Image.fromarray(img), return_tensors="np")["pixel_values"][0]
        # PREPROCESS_ATOL; measured 0 (bit-identical) here (AMD EPYC, 2 cores); other machine: not measured
        assert_close(dino_input(img), ref, atol=PREPROCESS_ATOL, what="dino_input vs BitImageProcessor")


def test_dino_position_embeddings_as_the_public_checker_env_computed_them() -> None:
    """The public checker ran transformers 4.47.1 (tests/reference/dinov2_pos_ref.py); this env runs 5.x. On a
    tiny random DINOv2 with dinov2-base's 518 px position table, at the checker's 224 px input, the checker's
    features equal those with 4.47.1's interpolate_pos_encoding put in."""
    import sys
    import types
    from pathlib import Path

    from transformers import Dinov2Config, Dinov2Model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
    import dinov2_pos_ref

    torch.manual_seed(0)
    config = Dinov2Config(image_size=518, patch_size=14, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    model = Dinov2Model(config).eval().requires_grad_(False)
    torch.nn.init.normal_(model.embeddings.position_embeddings)  # unit-size entries, so a resampling bug shows
    assert model.embeddings.position_embeddings.shape[1] == 1 + 37 * 37  # 224 px -> 16 x 16: it interpolates
    imgs = _imgs(3, [(512, 512), (300, 451)])
    ours = DinoEmbedder(model, CPU, batch_size=2)(imgs)
    x = torch.zeros(1, 1 + 16 * 16, 32)
    table = model.embeddings.interpolate_pos_encoding(x, 224, 224)
    model.embeddings.interpolate_pos_encoding = types.MethodType(dinov2_pos_ref.interpolate_pos_encoding,
                                                                 model.embeddings)
    want, old = DinoEmbedder(model, CPU, batch_size=2)(imgs), model.embeddings.interpolate_pos_encoding(x, 224, 224)
    # the same bicubic resize (16 taps of unit-size values) on both sides: <= 16 roundings; measured 0 here
    # (AMD EPYC, 2 cores). The older rule (interpolate by scale_factor (16 + 0.1) / 37) moves these unit-size
    # entries by 0.19 on average, 1.26 at most (measured).
    assert_close(table.numpy(), old.numpy(), atol=f32_bound(16, 4.0), what="224 px position table vs 4.47.1")
    # a one-layer ViT of width 32 on those tables: layer norms of unit-size values, 32-term sums
    assert_close(ours.numpy(), want.numpy(), atol=f32_bound(64, 4.0), what="dino features vs 4.47.1's")


def test_dino_matches_transformers(dino_model) -> None:
    gens, refs = _imgs(1, [(512, 512), (320, 240), (200, 300)]), _imgs(2, [(512, 512), (256, 256)])
    proc = _pil_processor("dino")

    def ref_emb(xs):
        px = proc(images=[Image.fromarray(x) for x in xs], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            return dino_model(pixel_values=px).pooler_output

    g, r = ref_emb(gens), ref_emb(refs)
    ref = torch.stack([torch.stack([F.cosine_similarity(gi, rj, dim=0) for rj in r]).mean() for gi in g])
    emb = DinoEmbedder(dino_model, CPU, batch_size=2)
    ours = cosine_matrix(emb(gens), emb(refs)).mean(1).float()
    # Mean of cosines (unit-size) of float32 embeddings that went through the ViT in other batches, and the
    # reference's float32 F.cosine_similarity over 768 terms: ~sqrt(768) = 28 roundings of size 1 = 3.3e-6;
    # measured 1.5e-8 here (AMD EPYC, 2 cores); other machine: not measured. A preprocessing bug moves these
    # random-weight cosines by ~1e-3 (cf. CLIP_IQA_ATOL); pooler_output vs raw CLS by far more.
    assert_close(ours.numpy(), ref.numpy(), atol=f32_bound(28, 1.0), what="dino score vs transformers")
    one = emb(refs[:1])
    # float64 cosine of a vector with itself: 768-term float64 sums, <= 768 eps64 = 1.7e-13 relative;
    # measured 2.2e-16 here (AMD EPYC, 2 cores); other machine: not measured. A missing normalisation is O(1).
    assert_close(float(cosine_matrix(one, one)[0, 0]), 1.0, atol=f32_bound(768, 1.0, EPS64),
                 what="dino self-cosine")


def test_clip_tokenizer_matches_openai_bpe(clip_tokenizer) -> None:
    st_path = package_file("clip", "simple_tokenizer.py")
    if st_path is None:
        pytest.skip("clip-anytorch not installed")
    spec = importlib.util.spec_from_file_location("clip_simple_tokenizer", st_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    st = mod.SimpleTokenizer()
    for text in ("Good photo.", "Bad photo.", "dolphin", "Hot Dog", "ice-cream", "teddy bear"):
        assert clip_tokenizer(text)["input_ids"] == [49406, *st.encode(text), 49407]
    assert [tuple(clip_tokenizer(t)["input_ids"]) for t in ("Good photo.", "Bad photo.")] == list(ANCHOR_TOKENS)


def test_clip_r_matches_transformers(clip_model, clip_tokenizer) -> None:
    from transformers import CLIPProcessor

    prompts = ["dolphin", "bread", "lion", "car", "tree", "house", "cat", "violin"]
    owns = ["dolphin", "zebra", "cat"]  # "zebra" is not a prompt: set(prompts + [own]) adds it
    imgs = _imgs(3, [(512, 512), (300, 400), (224, 224)])
    proc = CLIPProcessor(image_processor=_pil_processor("clip"), tokenizer=clip_tokenizer)
    ref_ranks, ref_logits = [], []
    for img, own in zip(imgs, owns):
        cands = sorted(set(prompts + [own]))
        inputs = proc(text=cands, images=Image.fromarray(img), return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = clip_model(**inputs).logits_per_image[0]
        order = torch.argsort(logits, descending=True).tolist()
        ref_ranks.append(order.index(cands.index(own)))
        ref_logits.append(logits)
        # PREPROCESS_ATOL (CLIP's mean/std: values <= 2.2); measured 0 (bit-identical) here (AMD EPYC,
        # 2 cores); other machine: not measured
        assert_close(clip_input(img), inputs["pixel_values"][0].numpy(), atol=PREPROCESS_ATOL,
                     what="clip_input vs CLIPImageProcessor")
    scorer = ClipR(clip_model, clip_tokenizer, CPU, batch_size=2)
    scorer.set_words(prompts + owns)
    logits = scorer.image_logits(imgs)
    assert scorer.ranks_from_logits(logits, owns, prompts) == ref_ranks
    for i, own in enumerate(owns):
        cands = sorted(set(prompts + [own]))
        idx = [scorer.words.index(c) for c in cands]
        # logits = 100 cos: 100 x ~sqrt(768) = 28 roundings of a unit-size cosine = 3.3e-4 (other text padding
        # and batches reorder the float32 sums); measured 4.3e-7 here (AMD EPYC, 2 cores); other machine: not
        # measured. A preprocessing bug moves logits by ~4e-3 (9e-4 in p / 25 x 100, cf. CLIP_IQA_ATOL).
        assert_close(logits[i, idx].numpy(), ref_logits[i].numpy(), atol=100 * f32_bound(28, 1.0),
                     what="clip_r logits vs transformers")


@pytest.fixture()
def tm_clip_iqa(rn50, clip_tokenizer, monkeypatch: pytest.MonkeyPatch):
    """torchmetrics CLIPImageQualityAssessment on piq's RN50 built from our random weights."""
    import copy

    import torchmetrics.multimodal.clip_iqa as tm_mod
    from piq.feature_extractors import clip as piq_clip
    from transformers import CLIPProcessor

    ref_model = piq_clip.build_model(copy.deepcopy(rn50.state_dict())).float().eval()
    proc = CLIPProcessor(image_processor=_pil_processor("clip"), tokenizer=clip_tokenizer)
    monkeypatch.setattr(tm_mod, "_get_clip_iqa_model_and_processor", lambda name: (ref_model, proc))
    return lambda data_range: tm_mod.CLIPImageQualityAssessment(data_range=data_range, prompts=("quality",))


@pytest.mark.parametrize("mode", ["official", "fixed"])
def test_clip_iqa_matches_torchmetrics(rn50, tm_clip_iqa, mode: str) -> None:
    imgs = _imgs(4, [(96, 128)] * 3)
    x = torch.stack([T.ToTensor()(Image.fromarray(i)) for i in imgs])
    metric = tm_clip_iqa(1.0)
    metric.update(x * 255 if mode == "official" else x)  # the original fed ToTensor()*255, data_range=1
    ref = metric.compute()
    ours = ClipIqa(rn50, CPU, input_scale=255.0 if mode == "official" else 1.0)(imgs)
    # CLIP_IQA_ATOL; measured 5.7e-7 (official), 3.6e-7 (fixed) here (AMD EPYC, 2 cores); other machine:
    # not measured
    assert_close(ours.numpy(), ref.reshape(-1).numpy(), atol=CLIP_IQA_ATOL, what=f"clip_iqa {mode} vs torchmetrics")


def test_clip_iqa_mixed_sizes_match_one_by_one(rn50) -> None:
    imgs = _imgs(5, [(64, 64), (96, 64), (64, 64)])
    scorer = ClipIqa(rn50, CPU, input_scale=1.0)
    together = scorer(imgs)
    single = torch.cat([scorer([i]) for i in imgs])
    # Not bit-exact: a batch of 2 and a batch of 1 take different GEMM blockings. CLIP_IQA_ATOL;
    # measured 3.3e-7 here (AMD EPYC, 2 cores); other machine: not measured (the old bound, 1e-6 + 1e-6 |p|,
    # had 4x headroom).
    assert_close(together.numpy(), single.numpy(), atol=CLIP_IQA_ATOL, what="clip_iqa batched vs one by one")
