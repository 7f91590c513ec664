"""Text pre-processing and tokenisation as in the official ALBEF code.

- :func:`pre_caption` / :func:`pre_question`: the caption and question cleaning rules
  of the official ``dataset/utils.py`` (lower-case, strip punctuation, cap the words).
- :class:`TextProcessor` (registered as ``"bert_text"``): ``pre_caption`` + a WordPiece
  tokenizer from a *local* vocabulary (by default the packaged ``bert-base-uncased``
  one), producing padded ``input_ids`` / ``attention_mask`` batches. Token ids equal
  those of Hugging Face's ``BertTokenizer`` for bert-base-uncased.

The official ALBEF tokenizer builds a single sequence as ``[CLS] text`` with no
trailing ``[SEP]``; official checkpoints were trained on that form. ``add_sep=False``
(the default) reproduces it; ``add_sep=True`` gives the Hugging Face form
``[CLS] text [SEP]`` (LAVIS).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from albef_plugin.registry import registry

__all__ = ["pre_caption", "pre_question", "TextProcessor", "PACKAGED_VOCAB", "TokenizerLoadError"]

logger = logging.getLogger(__name__)

# Tokenising a batch of short captions gains nothing from the Rust thread pool, and a
# pool started before DataLoader workers fork makes `tokenizers` warn and disable itself.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PACKAGED_VOCAB = Path(__file__).resolve().parent / "vocab" / "bert-base-uncased-vocab.txt"

# A real WordPiece vocabulary has tens of thousands of entries. Fewer than this means the
# file is not one (a truncated download, a wrong file), or was not read: transformers 5's
# BertTokenizer(vocab_file=...) silently builds a 5-token vocabulary, which is why this
# module builds the WordPiece pipeline itself.
_MIN_VOCAB_SIZE = 1000
# Distinct strings whose token ids are remembered; captions repeat every epoch.
_CACHE_LIMIT = 200_000

# Official rules (dataset/utils.py): these characters are deleted outright.
_DELETED_CHARS = re.compile(r"[,.'!?\"()*#:;~]")
_MULTI_SPACE = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = 30) -> str:
    """Clean a caption exactly like the official ALBEF ``pre_caption``.

    Lower-case; delete ``, . ' ! ? " ( ) * # : ; ~``; turn ``-`` and ``/`` into spaces and
    ``<person>`` into ``person``; collapse runs of 2+ whitespace characters into one
    space; strip; keep the first ``max_words`` space-separated words.
    """
    if not isinstance(caption, str):
        raise TypeError(f"pre_caption expects a str, got {type(caption).__name__}: {caption!r}")
    text = _DELETED_CHARS.sub("", caption.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = _MULTI_SPACE.sub(" ", text)
    text = text.rstrip("\n").strip(" ")
    words = text.split(" ")
    if len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


def pre_question(question: str, max_ques_words: int = 30) -> str:
    """Clean a VQA question like the official ``pre_question``.

    Same lower-casing, deletions and ``-``/``/`` replacement as :func:`pre_caption`, then
    a right strip of spaces; no whitespace collapsing. The official scripts use 30 words
    in training and 50 at test time.
    """
    if not isinstance(question, str):
        raise TypeError(f"pre_question expects a str, got {type(question).__name__}: {question!r}")
    text = _DELETED_CHARS.sub("", question.lower()).replace("-", " ").replace("/", " ")
    text = text.rstrip(" ")
    words = text.split(" ")
    if len(words) > max_ques_words:
        text = " ".join(words[:max_ques_words])
    return text


class TokenizerLoadError(ValueError):
    """The vocabulary could not be loaded, or loaded into an unusable tokenizer."""


def _bert_wordpiece(vocab_file: Path) -> Any:
    """The bert-base-uncased tokenisation pipeline on a ``vocab.txt``.

    Built with the ``tokenizers`` library directly (what transformers' fast
    ``BertTokenizer`` wraps): same normaliser (clean text, split CJK characters,
    lower-case, strip accents), same pre-tokeniser and WordPiece model, but importing it
    takes 0.1 s instead of the ~4 s of ``transformers``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.WordPiece.from_file(str(vocab_file), unk_token="[UNK]",
                                                     max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                      strip_accents=None, lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def _load_tokenizer(vocab: Union[str, Path]) -> Any:
    """A WordPiece tokenizer from a local ``vocab.txt``, or a folder with ``vocab.txt`` or
    ``tokenizer.json`` (a saved Hugging Face tokenizer); checked for a real vocabulary."""
    from tokenizers import Tokenizer

    path = Path(vocab).expanduser()
    if path.is_dir() and (path / "vocab.txt").is_file():
        tokenizer = _bert_wordpiece(path / "vocab.txt")
    elif path.is_dir() and (path / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer.no_truncation()  # padding and truncation are this processor's job
        tokenizer.no_padding()
    elif path.is_dir():
        raise TokenizerLoadError(
            f"Text processor vocab folder {path} has neither vocab.txt nor tokenizer.json. "
            f"Point `vocab` at a WordPiece vocab.txt file or a folder holding one.")
    elif path.is_file():
        try:
            tokenizer = _bert_wordpiece(path)
        except Exception as exc:  # tokenizers raises a bare Exception on unreadable files
            raise TokenizerLoadError(f"Cannot read the WordPiece vocabulary {path}: {exc}") from exc
    else:
        raise TokenizerLoadError(
            f"Text processor vocab {str(path)!r} does not exist. Give a WordPiece vocab.txt file "
            f"or a folder holding one, or leave `vocab` unset to use the packaged "
            f"bert-base-uncased vocabulary ({PACKAGED_VOCAB}).")
    size = tokenizer.get_vocab_size()
    if size < _MIN_VOCAB_SIZE:
        raise TokenizerLoadError(
            f"The tokenizer loaded from {path} has only {size} tokens, so the vocabulary file "
            f"was not read properly (expected tens of thousands, e.g. 30522 for "
            f"bert-base-uncased). Check that it is a WordPiece vocab.txt, one token per line.")
    for special in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"):
        if tokenizer.token_to_id(special) is None:
            raise TokenizerLoadError(
                f"The vocabulary {path} has no {special} token; ALBEF needs a BERT vocabulary "
                f"with [CLS], [SEP], [PAD], [MASK] and [UNK].")
    return tokenizer


@registry.register_processor("bert_text")
class TextProcessor:
    """``pre_caption`` + WordPiece tokenisation into padded id batches.

    Example::

        proc = TextProcessor(max_length=30)
        batch = proc(["A red circle.", "two blue squares"])
        batch["input_ids"].shape       # (2, L), L = longest sequence, at most 30
        batch["attention_mask"].shape  # (2, L), 1 on tokens, 0 on padding
    """

    @dataclass
    class Config:
        # WordPiece vocab.txt file or a folder with one; None: the packaged bert-base-uncased.
        vocab: Optional[str] = None
        # Tokens per sequence, [CLS] (and [SEP]) included; longer texts are truncated.
        max_length: int = 30
        # pre_caption keeps this many words (official: 30).
        max_words: int = 30
        # False: the official ALBEF form "[CLS] text"; True: the Hugging Face "[CLS] text [SEP]".
        add_sep: bool = False
        # Apply pre_caption (lower-case, strip punctuation) before tokenising.
        apply_pre_caption: bool = True

    def __init__(self, *, vocab: Optional[Union[str, Path]] = None, max_length: int = 30,
                 max_words: int = 30, add_sep: bool = False, apply_pre_caption: bool = True) -> None:
        min_length = 3 if add_sep else 2
        if max_length < min_length:
            raise ValueError(f"text processor max_length={max_length} leaves no room for text "
                             f"after the special tokens; use at least {min_length}.")
        if max_words < 1:
            raise ValueError(f"text processor max_words={max_words} must be at least 1.")
        self.vocab_path = Path(vocab) if vocab is not None else PACKAGED_VOCAB
        self.max_length = int(max_length)
        self.max_words = int(max_words)
        self.add_sep = bool(add_sep)
        self.apply_pre_caption = bool(apply_pre_caption)
        self.tokenizer = _load_tokenizer(self.vocab_path)
        self._cache: Dict[str, Tuple[int, ...]] = {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "TextProcessor":
        """Build from a mapping of :class:`Config` fields (e.g. a processor's ``params``)."""
        return cls(**dict(config))

    # ----------------------------------------------------------------- ids
    @property
    def pad_token_id(self) -> int:
        return self._special_id("[PAD]")

    @property
    def cls_token_id(self) -> int:
        return self._special_id("[CLS]")

    @property
    def sep_token_id(self) -> int:
        return self._special_id("[SEP]")

    @property
    def mask_token_id(self) -> int:
        return self._special_id("[MASK]")

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    def _special_id(self, token: str) -> int:
        return int(self.tokenizer.token_to_id(token))

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> List[str]:
        """WordPiece strings of ``ids`` (``##`` marks a word continuation)."""
        return [self.tokenizer.id_to_token(int(i)) for i in ids]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` with word pieces merged (special tokens dropped by default)."""
        special = {self.pad_token_id, self.cls_token_id, self.sep_token_id, self.mask_token_id}
        words: List[str] = []
        for token_id in ids:
            if skip_special_tokens and int(token_id) in special:
                continue
            token = self.tokenizer.id_to_token(int(token_id))
            if token.startswith("##") and words:
                words[-1] += token[2:]
            else:
                words.append(token)
        return " ".join(words)

    # ------------------------------------------------------------ encoding
    def clean(self, text: str) -> str:
        """The text as it will be tokenised: ``pre_caption`` applied when enabled."""
        return pre_caption(text, self.max_words) if self.apply_pre_caption else text

    def _word_piece_ids(self, texts: Sequence[str]) -> List[Tuple[int, ...]]:
        """Token ids without special tokens, for cleaned texts (cached per string)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            if len(self._cache) + len(missing) > _CACHE_LIMIT:
                self._cache.clear()
            encoded = self.tokenizer.encode_batch(missing, add_special_tokens=False)
            self._cache.update((text, tuple(e.ids)) for text, e in zip(missing, encoded))
        return [self._cache[t] for t in texts]

    def __call__(self, texts: Union[str, Sequence[str]]) -> Dict[str, torch.Tensor]:
        """Tokenise a batch of texts.

        Args:
            texts: ``B`` strings (a single string is treated as a batch of one).

        Returns:
            ``input_ids`` and ``attention_mask``, both long ``(B, L)``, padded with
            ``[PAD]`` to the longest sequence of the batch; ``L <= max_length``.
        """
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise ValueError("TextProcessor got an empty list of texts; a batch needs at least one.")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"TextProcessor: text {i} is a {type(text).__name__}, expected str: "
                                f"{text!r}")
        cleaned = [self.clean(t) for t in texts]
        budget = self.max_length - (2 if self.add_sep else 1)  # room left after [CLS] ([SEP])
        tail = (self.sep_token_id,) if self.add_sep else ()
        sequences = [(self.cls_token_id,) + ids[:budget] + tail
                     for ids in self._word_piece_ids(cleaned)]
        length = max(len(s) for s in sequences)
        pad = self.pad_token_id
        input_ids = [list(s) + [pad] * (length - len(s)) for s in sequences]
        attention = [[1] * len(s) + [0] * (length - len(s)) for s in sequences]
        return {"input_ids": torch.tensor(input_ids, dtype=torch.long),
                "attention_mask": torch.tensor(attention, dtype=torch.long)}

    def __repr__(self) -> str:
        return (f"TextProcessor(vocab={str(self.vocab_path)!r}, vocab_size={self.vocab_size}, "
                f"max_length={self.max_length}, max_words={self.max_words}, "
                f"add_sep={self.add_sep}, apply_pre_caption={self.apply_pre_caption})")

