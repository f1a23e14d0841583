"""CLIPTextModel: parity with transformers' CLIPTextModel on the tiny SD1 (quick_gelu) and SD2 (gelu)
text encoders, the checkpoint key layout (transformers 5 and 4), the padding mask, config errors."""

import shutil

import jittor as jt
import numpy as np
import pytest
from safetensors.numpy import save_file

from jstyle.errors import ConfigError, InputError
from jstyle.loading import load_model, load_safetensors
from jstyle.models.clip_text import CLIPTextModel, pooled_positions

from ..tolerance import TEXT_ATOL, assert_close

ACTS = {"sd1": "quick_gelu", "sd2": "gelu"}


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def encoder(request, tiny_ref):
    return request.param, load_model(CLIPTextModel, tiny_ref / request.param / "text_encoder")


def test_matches_transformers(encoder, refs):
    kind, model = encoder
    ref = refs(kind)
    assert model.config["hidden_act"] == ACTS[kind]
    out = model(jt.array(ref["input_ids"]), output_hidden_states=True)
    assert len(out.hidden_states) == model.config["num_hidden_layers"] + 1  # embeddings first
    pairs = ((out.last_hidden_state, "text_last_hidden_state"), (out.pooler_output, "text_pooler_output"),
             (out.hidden_states[-2], "text_penultimate"))
    for got, key in pairs:
        assert got.shape == ref[key].shape, key
        assert_close(got.numpy(), ref[key], atol=TEXT_ATOL, what=key)


def test_keys_are_the_checkpoint_keys(encoder, tiny_ref):
    kind, model = encoder
    saved = load_safetensors(tiny_ref / kind / "text_encoder" / "model.safetensors")
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == {k: v.shape for k, v in saved.items()}


def test_transformers4_layout_loads(encoder, tiny_ref, tmp_path):
    """Public SD checkpoints (transformers 4): `text_model.` prefix and an int64 position_ids buffer."""
    kind, model = encoder
    saved = load_safetensors(tiny_ref / kind / "text_encoder" / "model.safetensors")
    old = {f"text_model.{k}": v for k, v in saved.items()}
    old["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    shutil.copy(tiny_ref / kind / "text_encoder" / "config.json", folder)
    save_file(old, str(folder / "model.safetensors"))
    loaded = load_model(CLIPTextModel, folder)
    for key, value in loaded.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), saved[key])


@pytest.mark.parametrize("encoder", ["sd1"], indirect=True)  # one kind: new kernels cost compile time
def test_padding_mask(encoder, refs):
    """Masked keys are hidden from later queries only (the mask combines with the causal one).

    Checked against transformers 5.23 (sdpa) once by hand with this mask: max abs diff 1.6e-6.
    """
    kind, model = encoder
    ids = refs(kind)["input_ids"]  # row 0: EOS at 10, then padding
    mask = np.ones_like(ids)
    mask[0, 11:] = 0
    mask[1, 5] = 0
    plain = model(ids)
    masked = model(ids, attention_mask=mask)
    a, b = plain.last_hidden_state.numpy(), masked.last_hidden_state.numpy()
    # causal attention never sees the padding: the masked keys add exact zeros (exp(-inf)) to otherwise the
    # same sums, so bit-exact here (measured 0); 1e-6 leaves room for a kernel fused in another order
    assert_close(b[0, :11], a[0, :11], atol=1e-6)
    assert_close(b[1, :5], a[1, :5], atol=1e-6)
    per_token = np.abs(b - a).max(axis=-1)
    assert per_token[0, 11:].min() > 1e-3 and per_token[1, 5:].min() > 1e-3
    assert_close(masked.pooler_output.numpy()[0], plain.pooler_output.numpy()[0], atol=1e-6)  # as above; measured 0


def test_pooled_position_rules():
    ids = np.array([[49406, 320, 49407, 49407], [49406, 49407, 7, 0]])
    assert pooled_positions(ids, 49407).tolist() == [2, 1]  # the first EOS, padding may repeat it
    legacy = np.array([[0, 7, 2, 9, 2]])
    assert pooled_positions(legacy, 2).tolist() == [3]  # eos_token_id == 2: the largest id, as transformers
    assert pooled_positions(legacy, 7).tolist() == [1]


def test_config_and_input_errors(encoder):
    kind, model = encoder
    with pytest.raises(ConfigError, match="hidden_act 'relu' is not supported; supported: gelu, quick_gelu"):
        CLIPTextModel.from_config({**model.config, "hidden_act": "relu"})
    with pytest.raises(ConfigError, match="not divisible by num_attention_heads"):
        CLIPTextModel.from_config({**model.config, "num_attention_heads": 5})
    with pytest.raises(InputError, match="longer than the text encoder's 77 positions"):
        model(np.zeros((1, 78), dtype=np.int64))
