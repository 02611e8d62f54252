"""A small built-in tokenizer standing in for the DeepSeek-OCR hub tokenizer, so ``infer()`` runs offline.

It knows the special tokens (BOS 0, EOS 1, ``<image>`` 128815, the grounding/markdown prompt markers) and encodes text
as words of a small built-in vocabulary with a byte fallback, so ``decode(encode(text)) == text``. Ids outside its
tables (a randomly initialised model emits any id of the 129,280) decode to a deterministic pseudo-word, so generated
text stays readable. Token counts of ordinary English text are close to, not equal to, the real BPE tokenizer's.
Any HF tokenizer with ``encode(text, add_special_tokens=False)`` and ``decode(ids)`` can be used instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"
IMAGE_TOKEN = "<image>"

BOS_ID = 0
EOS_ID = 1
PAD_ID = 2
IMAGE_TOKEN_ID = 128815
VOCAB_SIZE = 129280

# Prompt and output markers. The image id is the vendor's; the others are opmeter's choice in the special range.
SPECIAL_TOKENS: dict[str, int] = {
    BOS_TOKEN: BOS_ID,
    EOS_TOKEN: EOS_ID,
    PAD_TOKEN: PAD_ID,
    IMAGE_TOKEN: IMAGE_TOKEN_ID,
    "<|grounding|>": 128816,
    "<|ref|>": 128817,
    "<|/ref|>": 128818,
    "<|det|>": 128819,
    "<|/det|>": 128820,
    "<|User|>": 128821,
    "<|Assistant|>": 128822,
    "<|begin_of_image|>": 128823,
    "<|end_of_image|>": 128824,
}

BYTE_OFFSET = 3
"""Ids ``3 .. 258`` are the 256 byte tokens (fallback for text outside the word table)."""

WORD_OFFSET = 300
_WORDS = """
the of and to a in is that for it as with was on be by this are from or at an which not have has but all can
document page text table figure image title section chapter convert markdown free ocr parse describe locate
first second third one two three four five six seven eight nine ten new data results model method using used
we our their they he she his her its these those there here also more most other such than then when where
into over under about after before between through during each both only same so very will would should could
may might must shall do does did done make made take taken see seen show shown find found give given use
report summary introduction conclusion abstract references appendix total value values number numbers item
items list name date year years time times part parts line lines row rows column columns cell cells box
heading paragraph note notes example examples analysis system systems design process performance memory
"""
WORDS: tuple[str, ...] = tuple(dict.fromkeys(_WORDS.split()))
_PUNCT = tuple(".,:;!?()[]{}#*-_|/\\'\"%$&+=<>@")

_SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")
_SPLIT = re.compile(r"\n+| ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]| +")


class BuiltinTokenizer:
    """Word-and-byte tokenizer with DeepSeek-OCR's special tokens (see the module docstring).

    Attributes
    ----------
    bos_token_id, eos_token_id, pad_token_id, image_token_id, vocab_size
        As in the real tokenizer (pad is opmeter's choice).
    """

    bos_token = BOS_TOKEN
    eos_token = EOS_TOKEN
    pad_token = PAD_TOKEN
    bos_token_id = BOS_ID
    eos_token_id = EOS_ID
    pad_token_id = PAD_ID
    image_token_id = IMAGE_TOKEN_ID
    vocab_size = VOCAB_SIZE

    def __init__(self) -> None:
        self._piece_to_id: dict[str, int] = {}
        pieces: list[str] = ["\n", " ", *_PUNCT, *(f" {p}" for p in _PUNCT)]
        for w in WORDS:
            pieces += [w, f" {w}", w.capitalize(), f" {w.capitalize()}"]
        for i, piece in enumerate(dict.fromkeys(pieces)):
            self._piece_to_id[piece] = WORD_OFFSET + i
        self._id_to_piece = {v: k for k, v in self._piece_to_id.items()}
        self._special_to_id = dict(SPECIAL_TOKENS)
        self._id_to_special = {v: k for k, v in SPECIAL_TOKENS.items()}
        self._special_re = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_TOKENS) + ")")

    def __len__(self) -> int:
        return self.vocab_size

    def _encode_text(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in _SPLIT.findall(text):
            if piece in self._piece_to_id:
                ids.append(self._piece_to_id[piece])
            else:
                ids += [BYTE_OFFSET + b for b in piece.encode("utf-8")]
        covered = sum(len(p) for p in _SPLIT.findall(text))
        if covered != len(text):  # characters the splitter does not cover (tabs, other whitespace): bytes
            return [BYTE_OFFSET + b for b in text.encode("utf-8")]
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special-token strings map to their ids; BOS prepended if ``add_special_tokens``."""
        ids: list[int] = [BOS_ID] if add_special_tokens else []
        for part in self._special_re.split(text):
            if not part:
                continue
            if part in self._special_to_id:
                ids.append(self._special_to_id[part])
            else:
                ids += self._encode_text(part)
        return ids

    def _pseudo_word(self, token_id: int) -> str:
        n = len(_SYLLABLES)
        a, b = token_id % n, (token_id // n) % n
        return " " + _SYLLABLES[a] + _SYLLABLES[b]

    def decode(self, token_ids: Iterable[int] | object, skip_special_tokens: bool = False) -> str:
        """Text of ``token_ids`` (a list or a 1-D tensor)."""
        ids = token_ids.tolist() if hasattr(token_ids, "tolist") else list(token_ids)  # type: ignore[call-overload]
        out: list[str] = []
        pending = bytearray()

        def flush() -> None:
            if pending:
                out.append(pending.decode("utf-8", errors="replace"))
                pending.clear()

        for tid in ids:
            tid = int(tid)
            if BYTE_OFFSET <= tid < BYTE_OFFSET + 256:
                pending.append(tid - BYTE_OFFSET)
                continue
            flush()
            if tid in self._id_to_special:
                if not skip_special_tokens:
                    out.append(self._id_to_special[tid])
            elif tid in self._id_to_piece:
                out.append(self._id_to_piece[tid])
            else:
                out.append(self._pseudo_word(tid))
        flush()
        return "".join(out)

    def convert_tokens_to_ids(self, token: str) -> int:
        """Id of a special token or a known piece (HF-compatible helper)."""
        if token in self._special_to_id:
            return self._special_to_id[token]
        return self._piece_to_id[token]
