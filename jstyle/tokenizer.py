"""CLIP's byte-level BPE tokenizer in pure Python (no torch, transformers or tokenizers).

Reproduces transformers 5's `CLIPTokenizer` (backed by the `tokenizers` library), step by step:

1. added tokens (the special tokens, SD2's "!" pad token) are cut out of the raw text first;
   those flagged `normalized` are matched after normalization instead;
2. normalizer: NFC, `\\s+` -> " ", lowercase (character by character: no final-sigma rule);
3. pre-tokenizer: keep the matches of CLIP's regex (whitespace is dropped), then byte-level: split
   with GPT-2's regex and map every UTF-8 byte to a printable character;
4. BPE with the end-of-word suffix `</w>` on each word's last character;
5. `<|startoftext|> ids <|endoftext|>`, truncated to `max_length` keeping both, right-padded.

Note: transformers 4's slow tokenizer also ran `ftfy` and stripped the text; transformers 5 does not,
and neither does this module. Unicode tables: `tokenizers` uses Oniguruma's (Unicode 16) for the
regexes and Rust's for lower-casing; this module uses the `regex` package's and Python's. Checked
against transformers 5.23 on every code point: they differ only on characters assigned in Unicode 15
or later (e.g. Garay, CJK Extension J), which no CLIP prompt is expected to hold.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regex

from .errors import ConfigError, InputError

__all__ = ["CLIPTokenizer", "bytes_to_unicode", "normalize", "pre_tokenize", "merge_pair", "END_OF_WORD"]

# transformers' CLIPTokenizer: Split(pattern, behavior="removed", invert=True) keeps only the matches.
_CLIP_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
# tokenizers' ByteLevel(use_regex=True) pre-tokenizer: GPT-2's split.
_BYTE_LEVEL_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
_WHITESPACE = regex.compile(r"\s+")
END_OF_WORD = "</w>"  # BPE marks the last character of a word
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")  # transformers' order
_DEFAULTS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
             "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (printable Latin-1 bytes map to themselves)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def normalize(text: str) -> str:
    """tokenizers' Sequence[NFC, Replace(\\s+ -> " "), Lowercase] normalizer."""
    text = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text))
    # Rust lowercases char by char; Python's str.lower() also applies the final-sigma rule.
    return "".join(c.lower() for c in text) if "Σ" in text else text.lower()


def pre_tokenize(text: str) -> list[str]:
    """Normalized text -> byte-level words (CLIP regex split, then GPT-2 split, bytes -> chars)."""
    table = bytes_to_unicode()
    return [
        "".join(table[b] for b in piece.encode("utf-8"))
        for word in _CLIP_PATTERN.findall(text)
        for piece in _BYTE_LEVEL_PATTERN.findall(word)
    ]


def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Merge every non-overlapping occurrence of `pair`, left to right."""
    out, i = [], 0
    while i < len(symbols):
        if i < len(symbols) - 1 and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Greedy BPE: repeatedly merge the adjacent pair of lowest rank; the last char carries '</w>'."""
    symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
    while len(symbols) > 1:
        best = min(zip(symbols, symbols[1:]), key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        symbols = merge_pair(symbols, best)
    return symbols


@dataclass(frozen=True)
class AddedToken:
    """A token cut out of the text before BPE; `normalized` ones are matched in the normalized text."""

    content: str
    id: int
    normalized: bool = False


class CLIPTokenizer:
    """CLIP byte-level BPE tokenizer with transformers' `CLIPTokenizer` behaviour and call signature."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        special_tokens: dict[str, AddedToken] | None = None,
        added_tokens: Sequence[AddedToken] = (),
        model_max_length: int = 77,
    ):
        self.vocab = dict(vocab)
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.model_max_length = model_max_length
        specials = special_tokens or {k: AddedToken(v, vocab[v]) for k, v in _DEFAULTS.items()}
        missing = [k for k in _SPECIAL_KEYS if k not in specials]
        if missing:
            raise ConfigError(f"tokenizer: no {missing[0]} given; set it in tokenizer_config.json")
        self.special_tokens = specials
        # As transformers: the saved added tokens, then special tokens whose text is not among them
        # (where two special tokens share a text, the later one's flags win, as in `tokenizers`).
        self.added_tokens: dict[str, AddedToken] = {}
        for tok in added_tokens:
            self.added_tokens.setdefault(tok.content, tok)
        later = {specials[k].content: specials[k] for k in _SPECIAL_KEYS}
        self.added_tokens.update({c: t for c, t in later.items() if c not in self.added_tokens})
        self._raw_split = self._splitter([t for t in self.added_tokens.values() if not t.normalized])
        self._normalized_split = self._splitter(
            [AddedToken(normalize(t.content), t.id, True) for t in self.added_tokens.values() if t.normalized]
        )
        self._cache: dict[str, list[int]] = {}
        self.multi_vector: dict[str, list[str]] = {}  # textual inversion: a token -> its vectors' tokens

    def add_tokens(self, tokens: Sequence[str]) -> int:
        """Add tokens cut out of the normalized text (transformers' `add_tokens`: `normalized=True`), with new
        ids from len(self) on; returns how many were new (tokens already known keep their ids)."""
        start, added = len(self), 0
        for content in tokens:
            if not content or content in self.added_tokens or content in self.vocab:
                continue
            self.added_tokens[content] = AddedToken(content, start + added, normalized=True)
            added += 1
        self._raw_split = self._splitter([t for t in self.added_tokens.values() if not t.normalized])
        self._normalized_split = self._splitter(
            [AddedToken(normalize(t.content), t.id, True) for t in self.added_tokens.values() if t.normalized]
        )
        return added

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        """Ids of tokens as written (added tokens or vocabulary entries); unknown ones get the unk id."""
        return [self.added_tokens[t].id if t in self.added_tokens else self.vocab.get(t, self.unk_token_id)
                for t in tokens]

    def expand_multi_vector(self, text: str) -> str:
        """A multi-vector token "<t>" -> "<t> <t>_1 ... <t>_{n-1}" (diffusers' `maybe_convert_prompt`)."""
        for token, parts in self.multi_vector.items():
            text = text.replace(token, " ".join(parts))
        return text

    @property
    def bos_token_id(self) -> int:
        return self.special_tokens["bos_token"].id

    @property
    def eos_token_id(self) -> int:
        return self.special_tokens["eos_token"].id

    @property
    def pad_token_id(self) -> int:
        return self.special_tokens["pad_token"].id

    @property
    def unk_token_id(self) -> int:
        return self.special_tokens["unk_token"].id

    def __len__(self) -> int:
        return len(set(self.vocab.values()) | {t.id for t in self.added_tokens.values()})

    @staticmethod
    def _splitter(tokens: list[AddedToken]) -> tuple[regex.Pattern | None, dict[str, int]]:
        """Leftmost-longest matcher (longest alternatives first) for a set of added tokens."""
        ids = {t.content: t.id for t in tokens if t.content}
        if not ids:
            return None, ids
        return regex.compile("|".join(regex.escape(c) for c in sorted(ids, key=len, reverse=True))), ids

    @staticmethod
    def _split(text: str, splitter: tuple[regex.Pattern | None, dict[str, int]]) -> list[str | int]:
        """Text -> alternating pieces of text (str) and matched added-token ids (int)."""
        pattern, ids = splitter
        if pattern is None:
            return [text] if text else []
        out: list[str | int] = []
        start = 0
        for m in pattern.finditer(text):
            if m.start() > start:
                out.append(text[start : m.start()])
            out.append(ids[m.group()])
            start = m.end()
        if start < len(text):
            out.append(text[start:])
        return out

    def _word_ids(self, word: str) -> list[int]:
        """BPE ids of one byte-level word (cached)."""
        ids = self._cache.get(word)
        if ids is None:
            unk = self.unk_token_id
            ids = [self.vocab.get(s, unk) for s in bpe(word, self.ranks)]
            if len(self._cache) < 100_000:
                self._cache[word] = ids
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one text, `<|startoftext|> ... <|endoftext|>` unless add_special_tokens=False."""
        if not isinstance(text, str):
            raise InputError(f"prompt must be a string, got {type(text).__name__}")
        ids: list[int] = []
        if self.multi_vector:
            text = self.expand_multi_vector(text)
        for raw in self._split(text, self._raw_split):
            if isinstance(raw, int):
                ids.append(raw)
                continue
            for piece in self._split(normalize(raw), self._normalized_split):
                if isinstance(piece, int):
                    ids.append(piece)
                else:
                    for word in pre_tokenize(piece):
                        ids.extend(self._word_ids(word))
        return [self.bos_token_id, *ids, self.eos_token_id] if add_special_tokens else ids

    def __call__(
        self,
        prompts: str | Sequence[str],
        padding: bool | str = "max_length",
        max_length: int | None = None,
        truncation: bool = True,
    ) -> dict[str, list[list[int]]]:
        """Batch encoding as transformers: {'input_ids', 'attention_mask'} as lists of lists.

        padding: "max_length" (pad to `max_length`), True/"longest" (to the longest prompt) or False.
        max_length defaults to `model_max_length` (77 for Stable Diffusion).
        """
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        max_length = self.model_max_length if max_length is None else max_length
        if max_length < 2:
            raise InputError(f"max_length must be at least 2 (start and end tokens), got {max_length}")
        batch = []
        for text in texts:
            body = self.encode(text, add_special_tokens=False)
            if truncation:
                body = body[: max_length - 2]
            batch.append([self.bos_token_id, *body, self.eos_token_id])
        if padding == "max_length":
            target = max_length
        elif padding is True or padding == "longest":
            target = max((len(ids) for ids in batch), default=0)
        elif padding is False or padding == "do_not_pad":
            target = 0
        else:
            raise InputError(f"padding must be 'max_length', 'longest' or False, got {padding!r}")
        masks = [[1] * len(ids) + [0] * max(0, target - len(ids)) for ids in batch]
        batch = [ids + [self.pad_token_id] * max(0, target - len(ids)) for ids in batch]
        return {"input_ids": batch, "attention_mask": masks}

    @classmethod
    def from_pretrained(cls, tokenizer_dir: str | Path) -> CLIPTokenizer:
        """Load a tokenizer folder: vocab.json + merges.txt (else tokenizer.json) and the special tokens."""
        d = Path(tokenizer_dir)
        if not d.is_dir():
            raise InputError(f"{d}: tokenizer folder not found")
        tokenizer_json = _read_json(d / "tokenizer.json") if (d / "tokenizer.json").is_file() else None
        if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            vocab = _read_json(d / "vocab.json")
            lines = (d / "merges.txt").read_text(encoding="utf-8").splitlines()
            merges = _parse_merges(lines, d / "merges.txt")
        elif tokenizer_json is not None:
            model = tokenizer_json.get("model") or {}
            if model.get("type") not in (None, "BPE") or not isinstance(model.get("vocab"), dict):
                raise ConfigError(f"{d / 'tokenizer.json'}: model is not a BPE vocabulary, as CLIP's is")
            vocab = model["vocab"]
            merges = _parse_merges(model.get("merges", []), d / "tokenizer.json")
        else:
            raise InputError(f"{d}: no vocab.json + merges.txt nor tokenizer.json; copy the tokenizer folder")
        config = _read_json(d / "tokenizer_config.json") if (d / "tokenizer_config.json").is_file() else {}
        specials, added = _special_tokens(d, config, tokenizer_json)
        resolved = {}
        for key, (content, normalized, tok_id) in specials.items():
            if tok_id is None:
                tok_id = vocab.get(content, added[content].id if content in added else None)
            if tok_id is None:
                raise ConfigError(f"{d}: {key} '{content}' is not in the vocabulary; fix the special tokens")
            resolved[key] = AddedToken(content, tok_id, normalized)
        max_len = config.get("model_max_length", 77)
        max_len = max_len if isinstance(max_len, int) and 2 <= max_len <= 1_000_000 else 77
        return cls(vocab, merges, resolved, list(added.values()), model_max_length=max_len)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); restore the file from the original model folder")


def _parse_merges(lines: Iterable[str | list[str]], source: Path) -> list[tuple[str, str]]:
    """merges.txt lines ('#version' header skipped) or tokenizer.json merges ('a b' or ['a', 'b'])."""
    merges = []
    for i, line in enumerate(lines):
        if isinstance(line, str):
            if (i == 0 and line.startswith("#version")) or not line.strip():
                continue
            line = line.split(" ")
        if len(line) != 2:
            raise ConfigError(f"{source}: merge #{i} {line!r} is not a pair of tokens")
        merges.append((line[0], line[1]))
    return merges


def _token_spec(value: Any, special_default: bool) -> tuple[str, bool] | None:
    """A special-token value (string or AddedToken dict) -> (content, normalized), as transformers reads it"""
    if isinstance(value, str):
        return value, False
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"], bool(value.get("normalized", not value.get("special", special_default)))
    return None


def _special_tokens(
    d: Path, config: dict[str, Any], tokenizer_json: dict[str, Any] | None
) -> tuple[dict[str, tuple[str, bool, int | None]], dict[str, AddedToken]]:
    """transformers 5's rules: tokenizer_config.json's added_tokens_decoder if present, else
    special_tokens_map.json over tokenizer_config.json, with tokenizer.json's added tokens' flags."""
    specials = {k: (_DEFAULTS[k], False) for k in _SPECIAL_KEYS}
    for key in _SPECIAL_KEYS:
        spec = _token_spec(config.get(key), special_default=False)
        if spec is not None:
            specials[key] = spec
    added: dict[str, AddedToken] = {}
    if isinstance(config.get("added_tokens_decoder"), dict):
        for idx, tok in sorted(config["added_tokens_decoder"].items(), key=lambda kv: int(kv[0])):
            spec = _token_spec(tok, special_default=False)
            if spec is not None:
                added.setdefault(spec[0], AddedToken(spec[0], int(idx), spec[1]))
    else:
        if (d / "special_tokens_map.json").is_file():
            special_map = _read_json(d / "special_tokens_map.json")
            for key in _SPECIAL_KEYS:
                spec = _token_spec(special_map.get(key), special_default=True)
                if spec is not None:
                    specials[key] = spec
        for tok in (tokenizer_json or {}).get("added_tokens", []):
            tok = AddedToken(tok["content"], int(tok["id"]), bool(tok.get("normalized")))
            added.setdefault(tok.content, tok)
    out = {}
    for key, (content, normalized) in specials.items():
        tok = added.get(content)
        out[key] = (content, tok.normalized, tok.id) if tok else (content, normalized, None)
    return out, added
