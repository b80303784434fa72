"""Chinese whole word masking (wwm) for masked-language-model pretraining (notebook 2, section 3).

BERT splits Chinese into one token per character, so plain MLM often asks the model to guess 型 with 模 in
plain sight: an easy, local task. Whole word masking (Chinese-BERT-wwm, Cui et al.) masks every character of a
word together; the words come from a segmenter, here jieba with its bundled dictionary (works offline).

Pipeline: ``segment_words`` (jieba char spans) -> ``align_words_to_tokens`` (one word id per token)
-> ``whole_word_mask`` (which tokens to predict) -> ``mask_tokens`` (BERT's 80/10/10 corruption and labels).
``WholeWordMaskCollator`` runs the last two per batch; ``encode_for_mlm`` prepares its features.

Why our own code: transformers 5 removed ``DataCollatorForWholeWordMask``; its replacement
``DataCollatorForLanguageModeling(whole_word_mask=True)`` finds words from gaps between token offsets, so an
unspaced Chinese sentence is one giant word, and it turns random-token replacement off.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from tokenizers import Encoding
from transformers import BatchEncoding, PreTrainedTokenizerBase

with warnings.catch_warnings():
    # jieba 0.42 has invalid escape sequences in its regexes; Python >= 3.12 reports them on stderr when it
    # compiles jieba without a cached .pyc, and notebook cells must keep stderr empty.
    warnings.simplefilter("ignore", SyntaxWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    import jieba

logger = logging.getLogger(__name__)

Span = tuple[int, int]
WordIds = Sequence[int | None]
# The label value that PyTorch's cross-entropy (and so BertForMaskedLM) ignores.
IGNORE_INDEX = -100


# --- 1. words -----------------------------------------------------------------------------------------------


@contextmanager
def _quiet_jieba() -> Iterator[None]:
    """jieba logs "Building prefix dict ..." at DEBUG through its own stderr handler; hide it while loading."""
    jieba_logger = logging.getLogger("jieba")
    previous_level = jieba_logger.level
    jieba_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        jieba_logger.setLevel(previous_level)


@cache
def _cached_jieba(user_dict: str | None) -> jieba.Tokenizer:
    segmenter = jieba.Tokenizer()
    with _quiet_jieba():
        segmenter.initialize()
        if user_dict is not None:
            segmenter.load_userdict(user_dict)
    return segmenter


def jieba_tokenizer(user_dict: str | Path | None = None) -> jieba.Tokenizer:
    """An initialised jieba segmenter with the bundled dictionary, plus ``user_dict`` if given.

    Cached per dictionary path for the session (edit the file? restart). The user dictionary is jieba's text
    format, one ``word [frequency] [tag]`` per line, UTF-8."""
    if user_dict is None:
        return _cached_jieba(None)
    path = Path(user_dict).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"jieba user dictionary {str(path)!r} does not exist")
    return _cached_jieba(str(path))


def segment_words(text: str, user_dict: str | Path | None = None) -> list[Span]:
    """jieba's words of ``text`` as character spans ``(start, end)``, end exclusive, in order.

    Together with the whitespace between them the spans cover the text; whitespace forms no word."""
    return [(start, end) for word, start, end in jieba_tokenizer(user_dict).tokenize(text) if not word.isspace()]


# --- 2. words to tokens ----------------------------------------------------------------------------------------


def align_words_to_tokens(
    offsets: Sequence[Span],
    word_spans: Sequence[Span],
    special_mask: Sequence[int | bool] | None = None,
    bert_words: Sequence[int | None] | None = None,
) -> list[int | None]:
    """One word id per token: ids count 0, 1, 2, ... in token order; tokens that cover no characters
    (special and padding tokens, offsets ``(0, 0)``) and tokens flagged in ``special_mask`` get ``None``.

    A word never splits a jieba word nor a BERT word. A token continues the previous token's word when its
    first character is in the same jieba word as the previous token's last character, or when both belong to
    the same BERT word (``bert_words``: the tokenizer's own word index per token, ``Encoding.word_ids``), so
    the ``##`` pieces of "transformer" share one id even where jieba splits the letters (full-width ＡＢＣ).
    A token whose characters span two jieba words (an ``[UNK]`` over several characters) therefore joins the
    first, and the two jieba words become one word. ``word_spans`` must not overlap (``segment_words`` output).
    """
    word_of_char = {char: index for index, (start, end) in enumerate(word_spans) for char in range(start, end)}
    word_ids: list[int | None] = []
    current = -1
    previous: tuple[int, int | None] | None = None  # (last character, BERT word) of the previous text token
    for position, (start, end) in enumerate(offsets):
        if end <= start or (special_mask is not None and special_mask[position]):
            word_ids.append(None)
            previous = None
            continue
        bert_word = bert_words[position] if bert_words is not None else None
        if previous is None or not _continues(previous, start, bert_word, word_of_char):
            current += 1
        word_ids.append(current)
        previous = (end - 1, bert_word)
    return word_ids


def _continues(previous: tuple[int, int | None], start: int, bert_word: int | None, word_of_char: dict) -> bool:
    previous_char, previous_bert_word = previous
    if bert_word is not None and bert_word == previous_bert_word:
        return True
    jieba_word = word_of_char.get(start)
    return jieba_word is not None and jieba_word == word_of_char.get(previous_char)


def word_ids_for_encoding(encoding: Encoding, spans_per_sequence: Sequence[Sequence[Span]]) -> list[int | None]:
    """Word ids for one ``tokenizers.Encoding`` (``batch.encodings[i]``, overflow chunks included).

    ``spans_per_sequence[s]`` are the word spans of the text that sequence ``s`` encodes (one entry for a
    single text, two for a question + context pair); ids of the second sequence continue after the first's."""
    word_ids: list[int | None] = [None] * len(encoding.ids)
    first_free = 0
    for sequence, spans in enumerate(spans_per_sequence):
        positions = [position for position, owner in enumerate(encoding.sequence_ids) if owner == sequence]
        aligned = align_words_to_tokens(
            [encoding.offsets[position] for position in positions],
            spans,
            bert_words=[encoding.word_ids[position] for position in positions],
        )
        for position, word in zip(positions, aligned, strict=True):
            word_ids[position] = None if word is None else word + first_free
        first_free = 1 + max((word for word in word_ids if word is not None), default=-1)
    return word_ids


def _encodings(batch: BatchEncoding) -> list[Encoding]:
    if batch.encodings is None:
        raise TypeError("whole word masking needs a fast (tokenizers-backed) tokenizer for character offsets")
    return batch.encodings


def word_ids_for_text(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    text_pair: str | None = None,
    *,
    max_length: int = 512,
    user_dict: str | Path | None = None,
) -> tuple[BatchEncoding, list[int | None]]:
    """Encode ``text`` (and ``text_pair``: question + context), truncated to ``max_length``, and return the
    encoding (with ``offset_mapping`` and ``special_tokens_mask``) and its word ids."""
    encoding = tokenizer(
        text,
        text_pair,
        truncation=True,
        max_length=max_length,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    texts = [text] if text_pair is None else [text, text_pair]
    spans = [segment_words(each, user_dict) for each in texts]
    return encoding, word_ids_for_encoding(_encodings(encoding)[0], spans)


# --- 3. choosing what to predict ----------------------------------------------------------------------------


def _check_ratio(mask_ratio: float) -> None:
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be between 0 and 1, got {mask_ratio}")


def target_mask_count(maskable: int, mask_ratio: float) -> int:
    """How many tokens to select: ``mask_ratio`` of the maskable tokens, rounded half up, at least 1 when
    there is anything to mask and ``mask_ratio > 0``."""
    _check_ratio(mask_ratio)
    if maskable == 0 or mask_ratio == 0:
        return 0
    return max(1, math.floor(mask_ratio * maskable + 0.5))


def whole_word_mask(
    word_ids: WordIds, mask_ratio: float = 0.15, generator: torch.Generator | None = None
) -> torch.BoolTensor:
    """A boolean mask over the tokens that selects whole words only, about ``mask_ratio`` of the word tokens.

    Words are visited in a random order (``torch.randperm``) and taken whole until the selected tokens reach
    ``target_mask_count``; so ``target <= selected <= target + len(last word taken) - 1``. Tokens whose word
    id is ``None`` (special, padding) are never selected."""
    word_sizes = Counter(word for word in word_ids if word is not None)
    target = target_mask_count(sum(word_sizes.values()), mask_ratio)
    words = list(word_sizes)  # order of first appearance: a seeded generator picks the same words every run
    chosen: set[int] = set()
    selected = 0
    for index in torch.randperm(len(words), generator=generator).tolist():
        if selected >= target:
            break
        chosen.add(words[index])
        selected += word_sizes[words[index]]
    return torch.tensor([word in chosen for word in word_ids], dtype=torch.bool)


def char_mask(
    word_ids: WordIds, mask_ratio: float = 0.15, generator: torch.Generator | None = None
) -> torch.BoolTensor:
    """The baseline: select single tokens (characters) at random, ignoring words.

    Same count rule as ``whole_word_mask`` (every token is its own word), so the two differ only in grouping."""
    own_words = [None if word is None else position for position, word in enumerate(word_ids)]
    return whole_word_mask(own_words, mask_ratio, generator)


# --- 4. corrupting the selected tokens ----------------------------------------------------------------------


def replacement_token_ids(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Ids that random replacement may draw: the vocabulary minus special tokens and ``[unusedN]`` slots
    (placeholders that never occur in tokenised text, so they would only teach the model noise)."""
    special = set(tokenizer.all_special_ids)
    ids = sorted(
        index
        for token, index in tokenizer.get_vocab().items()
        if index not in special and not token.startswith("[unused")
    )
    return torch.tensor(ids, dtype=torch.long)


def _check_replace_probs(mask_replace_prob: float, random_replace_prob: float) -> None:
    if min(mask_replace_prob, random_replace_prob) < 0 or mask_replace_prob + random_replace_prob > 1:
        raise ValueError(
            "mask_replace_prob and random_replace_prob must be >= 0 with a sum <= 1, "
            f"got {mask_replace_prob} and {random_replace_prob}"
        )


def mask_tokens(
    input_ids: torch.Tensor,
    selected: torch.Tensor,
    *,
    mask_token_id: int,
    replacement_ids: torch.Tensor,
    generator: torch.Generator | None = None,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of the ``selected`` positions: ``[MASK]`` with ``mask_replace_prob``, a random id from
    ``replacement_ids`` with ``random_replace_prob``, unchanged otherwise (the model must not learn that only
    ``[MASK]`` positions matter). Returns ``(masked_input_ids, labels)``: labels hold the original ids at the
    selected positions and ``IGNORE_INDEX`` (-100) everywhere else. ``input_ids`` is not modified."""
    if selected.shape != input_ids.shape:
        raise ValueError(f"selected has shape {tuple(selected.shape)}, input_ids {tuple(input_ids.shape)}")
    _check_replace_probs(mask_replace_prob, random_replace_prob)
    selected = selected.bool()
    labels = input_ids.masked_fill(~selected, IGNORE_INDEX)
    # One uniform draw per position splits [0, 1) into the mask / random / keep bands.
    draw = torch.rand(input_ids.shape, generator=generator)
    to_mask = selected & (draw < mask_replace_prob)
    to_randomise = selected & (draw >= mask_replace_prob) & (draw < mask_replace_prob + random_replace_prob)
    masked = input_ids.masked_fill(to_mask, mask_token_id)
    if to_randomise.any():
        if len(replacement_ids) == 0:
            raise ValueError("random replacement needs replacement_ids, got an empty tensor")
        picks = torch.randint(len(replacement_ids), (int(to_randomise.sum()),), generator=generator)
        masked[to_randomise] = replacement_ids[picks].to(masked.dtype)
    return masked, labels


# --- 5. features and the collator ---------------------------------------------------------------------------


def encode_for_mlm(
    tokenizer: PreTrainedTokenizerBase,
    texts: Iterable[str],
    *,
    max_length: int = 512,
    stride: int = 0,
    user_dict: str | Path | None = None,
) -> list[dict]:
    """Features for ``WholeWordMaskCollator``: dicts with ``input_ids``, ``token_type_ids`` and ``word_ids``.

    A text longer than ``max_length`` tokens is split into several chunks (overlapping by ``stride`` tokens)
    rather than truncated, so no text is lost (CMRC contexts run to ~1000 characters); a word cut by a chunk
    boundary becomes one word in each chunk. Texts with no tokens (empty, whitespace) are skipped with a
    logged warning, since a sequence with nothing to mask has no MLM loss."""
    texts = list(texts)
    batch = tokenizer(texts, truncation=True, max_length=max_length, stride=stride, return_overflowing_tokens=True)
    spans = [segment_words(text, user_dict) for text in texts]
    features, empty = [], []
    for encoding, sample in zip(_encodings(batch), batch["overflow_to_sample_mapping"], strict=True):
        word_ids = word_ids_for_encoding(encoding, [spans[sample]])
        if all(word is None for word in word_ids):
            empty.append(sample)
            continue
        features.append({"input_ids": encoding.ids, "token_type_ids": encoding.type_ids, "word_ids": word_ids})
    if empty:
        logger.warning("encode_for_mlm: skipped %d texts without tokens (indices %s)", len(empty), empty[:20])
    return features


def _padded_length(longest: int, pad_to_multiple_of: int | None) -> int:
    if not pad_to_multiple_of:
        return longest
    return math.ceil(longest / pad_to_multiple_of) * pad_to_multiple_of


def _checked_feature(index: int, feature: Mapping) -> Mapping:
    for key in ("input_ids", "word_ids"):
        if key not in feature:
            raise KeyError(f"feature {index} has no {key!r} field (encode_for_mlm produces input_ids and word_ids)")
    if len(feature["input_ids"]) != len(feature["word_ids"]):
        raise ValueError(
            f"feature {index}: input_ids has {len(feature['input_ids'])} tokens but word_ids {len(feature['word_ids'])}"
        )
    return feature


def pad_mlm_features(
    features: Sequence[Mapping], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> tuple[dict[str, torch.Tensor], list[list[int | None]]]:
    """Pad features to the batch's longest (rounded up to ``pad_to_multiple_of``): tensors ``input_ids``,
    ``attention_mask``, ``token_type_ids`` (zeros where a feature has none) and the padded word ids."""
    if not features:
        raise ValueError("cannot collate an empty list of features")
    features = [_checked_feature(index, feature) for index, feature in enumerate(features)]
    length = _padded_length(max(len(feature["input_ids"]) for feature in features), pad_to_multiple_of)
    columns: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
    word_ids: list[list[int | None]] = []
    for feature in features:
        size = len(feature["input_ids"])
        padding = length - size
        columns["input_ids"].append(list(feature["input_ids"]) + [pad_token_id] * padding)
        columns["attention_mask"].append([1] * size + [0] * padding)
        token_type_ids = feature.get("token_type_ids")
        columns["token_type_ids"].append(list([0] * size if token_type_ids is None else token_type_ids) + [0] * padding)
        word_ids.append(list(feature["word_ids"]) + [None] * padding)
    return {name: torch.tensor(rows, dtype=torch.long) for name, rows in columns.items()}, word_ids


_SELECTORS: dict[str, Callable[..., torch.Tensor]] = {"wwm": whole_word_mask, "char": char_mask}
MASKING_MODES = tuple(_SELECTORS)


@dataclass
class WholeWordMaskCollator:
    """Batches ``encode_for_mlm`` features for ``BertForMaskedLM``: pads, selects tokens per example
    (``masking="wwm"``: whole words, ``"char"``: single tokens, the baseline), applies ``mask_tokens`` and
    returns tensors ``input_ids, attention_mask, token_type_ids, labels``. Use as ``DataLoader(collate_fn=...)``.

    ``seed`` makes the masks reproducible. With ``num_workers > 0`` every worker starts from the same seed."""

    tokenizer: PreTrainedTokenizerBase
    mask_ratio: float = 0.15
    masking: str = "wwm"
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    pad_to_multiple_of: int | None = None
    seed: int | None = None
    generator: torch.Generator | None = field(init=False, default=None, repr=False)
    replacement_ids: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.masking not in _SELECTORS:
            raise ValueError(f"masking must be one of {MASKING_MODES}, got {self.masking!r}")
        _check_ratio(self.mask_ratio)
        _check_replace_probs(self.mask_replace_prob, self.random_replace_prob)
        if self.tokenizer.mask_token_id is None or self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a mask token and a pad token for masked language modelling")
        if self.seed is not None:
            self.generator = torch.Generator().manual_seed(self.seed)
        self.replacement_ids = replacement_token_ids(self.tokenizer)

    def __call__(self, features: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        batch, word_ids = pad_mlm_features(features, self.tokenizer.pad_token_id, self.pad_to_multiple_of)
        select = _SELECTORS[self.masking]
        selected = torch.stack([select(row, self.mask_ratio, self.generator) for row in word_ids])
        batch["input_ids"], batch["labels"] = mask_tokens(
            batch["input_ids"],
            selected,
            mask_token_id=self.tokenizer.mask_token_id,
            replacement_ids=self.replacement_ids,
            generator=self.generator,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
        )
        return batch


# --- 6. showing it ------------------------------------------------------------------------------------------


def _latin(text: str) -> bool:
    return text.isascii() and text.isalnum()


def visualise_masking(
    tokens: Sequence[str],
    mask: Sequence[bool] | torch.Tensor,
    marker: str = "[M]",
    hidden: Sequence[str] = ("[CLS]", "[SEP]", "[PAD]"),
) -> str:
    """Render tokens as text with each selected token shown as ``marker``, e.g. 今天天气很好 as 今[M]天气很好
    (char masking) or [M][M]天气很好 (whole word). ``##`` pieces are glued to their word, Latin words keep a
    space between them, and ``hidden`` tokens are left out."""
    pieces: list[str] = []
    previous = ""
    for token, selected in zip(tokens, mask, strict=True):
        if token in hidden:
            continue
        piece = token.startswith("##")
        if pieces and not piece and _latin(previous[-1:]) and _latin(token[:1]):
            pieces.append(" ")
        pieces.append(marker if bool(selected) else token.removeprefix("##"))
        previous = token
    return "".join(pieces)
