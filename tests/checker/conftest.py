"""Shared fixtures: random-weight backbones of the real architectures, built once per session.

Nothing here downloads: every reference library that would fetch weights gets ours instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from checker.run import Backbones  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh generator per test: a test's images do not depend on what earlier tests drew."""
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def dino_model() -> torch.nn.Module:
    from checker.dino import build_dino

    return build_dino(None, seed=1)


@pytest.fixture(scope="session")
def clip_model() -> torch.nn.Module:
    from checker.clip_r import build_clip

    return build_clip(None, seed=2)


@pytest.fixture(scope="session")
def clip_tokenizer():
    from checker.clip_r import build_tokenizer

    return build_tokenizer(None)


@pytest.fixture(scope="session")
def rn50() -> torch.nn.Module:
    from checker.clip_iqa import build_clip_rn50

    return build_clip_rn50(None, seed=3)


@pytest.fixture(scope="session")
def lpips_net() -> torch.nn.Module:
    from checker.lpips import build_lpips

    return build_lpips(None, None, seed=4)


@pytest.fixture(scope="session")
def inception_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete torch-fidelity Inception-v3 state dict with random weights and BN statistics."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    with torch.random.fork_rng(devices=[]), mock.patch.object(fe.torch, "load", return_value={}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict"):  # keep the random init
        torch.manual_seed(5)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["64"], "unused.pth")
        sd = net.state_dict()
        for k, v in sd.items():  # non-trivial BatchNorm so a wrong key or eps would show
            if k.endswith("running_mean"):
                v.normal_(0, 0.5)
            elif k.endswith("running_var"):
                v.uniform_(0.5, 2.0)
            elif k.endswith("bn.weight"):
                v.uniform_(0.5, 1.5)
            elif k.endswith("bn.bias"):
                v.normal_(0, 0.2)
    torch.save(sd, path)
    return path


@pytest.fixture(scope="session")
def inception(inception_file: Path) -> torch.nn.Module:
    from checker.fid import build_inception

    return build_inception(inception_file)


@pytest.fixture(scope="session")
def backbones(dino_model, clip_model, clip_tokenizer, rn50, lpips_net, inception) -> Backbones:
    return Backbones(dino=dino_model, lpips=lpips_net, inception=inception, clip_rn50=rn50, clip=clip_model,
                     clip_tokenizer=clip_tokenizer, sources={k: "random" for k in
                                                             ("dino", "squeezenet", "inception", "clip_rn50", "clip")})
