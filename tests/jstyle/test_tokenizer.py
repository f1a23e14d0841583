"""The pure-Python CLIPTokenizer gives transformers 5's CLIPTokenizer ids: tricky prompts (truncation,
unicode, punctuation, empty, literal special tokens, SD2's "!" pad token), every folder layout
(vocab.json + merges.txt, tokenizer.json only, transformers-4 special tokens) and the toy vocabulary."""

import json
import shutil

import pytest

from jstyle.errors import InputError
from jstyle.tiny import write_toy_vocab
from jstyle.tokenizer import CLIPTokenizer

from .conftest import run_reference

PAD_IDS = {"sd1": 49407, "sd2": 0}


@pytest.fixture(scope="module")
def token_refs(tiny_ref):
    return json.loads((tiny_ref / "tokenizer_refs.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_ids_match_transformers(kind, tiny_ref, token_refs):
    tok = CLIPTokenizer.from_pretrained(tiny_ref / kind / "tokenizer")
    prompts = token_refs["prompts"]
    padded = tok(prompts, padding="max_length", max_length=77, truncation=True)["input_ids"]
    unpadded = tok(prompts, padding=False, max_length=77, truncation=True)["input_ids"]
    assert padded == token_refs[kind]["padded"]
    assert unpadded == token_refs[kind]["unpadded"]
    assert tok(prompts)["input_ids"] == padded  # the defaults are Stable Diffusion's
    assert tok.pad_token_id == PAD_IDS[kind]
    long = unpadded[prompts.index("word " * 100)]  # truncated to 77, keeping the start and end tokens
    assert len(long) == 77 and long[0] == tok.bos_token_id and long[-1] == tok.eos_token_id
    assert tok.encode("") == [tok.bos_token_id, tok.eos_token_id]


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_tokenizer_json_alone_gives_the_same_ids(kind, tiny_ref, token_refs, tmp_path):
    folder = shutil.copytree(tiny_ref / kind / "tokenizer", tmp_path / "tokenizer")
    (folder / "vocab.json").unlink()
    (folder / "merges.txt").unlink()
    tok = CLIPTokenizer.from_pretrained(folder)
    assert tok(token_refs["prompts"])["input_ids"] == token_refs[kind]["padded"]


def test_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="no vocab.json"):
        CLIPTokenizer.from_pretrained(tmp_path)


# Encoded by transformers in the checker env (the reference process): {folder: [ids per text]}.
_CHECKER_SCRIPT = """
import json, sys
from transformers import CLIPTokenizer
folders, texts = json.loads(sys.argv[1])
print(json.dumps({f: CLIPTokenizer.from_pretrained(f)(texts)["input_ids"] for f in folders}))
"""
TOY_WORDS = "a the of in style painting photo of a dolphin lion cat watercolor oil sketch monet".split()
TEXTS = [
    "A watercolor painting of a LION!!! by Monet, 1890",
    "an unknown word: café 😀 <|endoftext|>x",
    "<|STARTOFTEXT|> upper-case <|ENDOFTEXT|> special tokens",
    "",
]


def test_toy_vocab_and_legacy_folders_match_transformers(tiny_ref, tmp_path):
    folders = {}
    for pad in ("<|endoftext|>", "!"):
        folder = tmp_path / f"toy{len(folders)}"
        size = write_toy_vocab(folder, TOY_WORDS, pad_token=pad)
        tok = CLIPTokenizer.from_pretrained(folder)
        assert size == len(tok) and 520 <= size <= 600
        assert (tok.bos_token_id, tok.eos_token_id) == (size - 2, size - 1)
        assert len(tok.encode("a watercolor painting")) < len("a watercolor painting")  # merges were learned
        folders[str(folder)] = tok
    # Folders as transformers 4 saved them (no tokenizer.json; special tokens flagged `normalized`,
    # so upper-case special tokens are matched after lower-casing, unless a later token resets the flag).
    for kind in ("sd1", "sd2"):
        folder = shutil.copytree(tiny_ref / kind / "tokenizer", tmp_path / f"legacy_{kind}")
        (folder / "tokenizer.json").unlink()
        folders[str(folder)] = CLIPTokenizer.from_pretrained(folder)
    stdout = run_reference(None, json.dumps([list(folders), TEXTS]), code=_CHECKER_SCRIPT)
    expected = json.loads(stdout.strip().splitlines()[-1])
    for folder, tok in folders.items():
        assert tok(TEXTS, padding=False)["input_ids"] == expected[folder], folder
