"""The official CMRC 2018 metric: exact match (EM) and F1 over mixed Chinese/English segments.

It is not SQuAD's metric. Text is split into *segments*: every Chinese character is one segment, and runs of
other characters (Latin letters, digits, spaces, ...) are split into English words. F1 then credits only the
longest *contiguous* run of segments shared by prediction and reference, not a bag of shared tokens.

Deviation from the official script: it splits English runs with ``nltk.word_tokenize``, which first splits
sentences with Punkt and so needs downloaded data. We use ``NLTKWordTokenizer`` (the Treebank rules that
``word_tokenize`` applies to each sentence; no data files), which gives the same words for a one-sentence run.
The words differ only where Punkt would end a sentence at a period inside a run ("went. then": ``word_tokenize``
gives "went", "." where we give "went."). In the dev set only three names with initials ("Henry A. Walsh") have
a period inside a run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache
from os import PathLike

from nltk.tokenize import NLTKWordTokenizer

from .data import DataFormatError, load_squad, read_json, references_of

logger = logging.getLogger(__name__)

# The official list. "……" is a two-character string, and the script tests one character at a time,
# so it never matches: an ellipsis is neither removed nor its own segment. We keep that behaviour.
PUNCTUATION = frozenset(
    ["-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "="]
    + ["，", "。", "：", "？", "！", "“", "”", "；", "’", "《", "》", "……", "·", "、"]
    + ["「", "」", "（", "）", "－", "～", "『", "』"]
)

_WORD_TOKENIZER = NLTKWordTokenizer()


def normalize(text: str) -> str:
    """Lower-case and strip surrounding whitespace, as the official script does before anything else."""
    return text.lower().strip()


def remove_punctuation(text: str) -> str:
    """Normalise and drop every PUNCTUATION character; spaces and all other characters stay."""
    return "".join(char for char in normalize(text) if char not in PUNCTUATION)


def _is_chinese(char: str) -> bool:
    """True for the CJK range the official script uses (U+4E00..U+9FA5; later additions are not included)."""
    return "\u4e00" <= char <= "\u9fa5"


@lru_cache(maxsize=65536)
def _english_words(run: str) -> tuple[str, ...]:
    """Words of a run of non-Chinese, non-punctuation characters (spaces only separate words). Cached because the
    Treebank rules are some 30 regular expressions per call, and the same runs (years, names) recur often."""
    return tuple(_WORD_TOKENIZER.tokenize(run))


def segment(text: str, remove_punctuation: bool = True) -> list[str]:
    """Split normalised text into segments: one per Chinese character (and per punctuation character when
    punctuation is kept), English words for the runs of other characters in between."""
    segments: list[str] = []
    run = ""
    for char in normalize(text):
        is_punctuation = char in PUNCTUATION
        if is_punctuation and remove_punctuation:
            # Skipping does not end the run, so "2019-01-02" becomes the single word "20190102".
            continue
        if is_punctuation or _is_chinese(char):
            segments.extend(_english_words(run))
            segments.append(char)
            run = ""
        else:
            run += char
    segments.extend(_english_words(run))
    return segments


def _longest_common_run(first: Sequence[str], second: Sequence[str]) -> int:
    """Length of the longest contiguous run of segments found in both sequences (dynamic programming:
    `ending_here[j]` is the length of the common run ending at the current item of `first` and item j of `second`)."""
    longest = 0
    ending_here = [0] * (len(second) + 1)
    for item in first:
        ending_here = [0] + [ending_here[j] + 1 if item == other else 0 for j, other in enumerate(second)]
        longest = max(longest, *ending_here)
    return longest


def _require_references(references: Sequence[str]) -> None:
    """Refuse an empty reference list: the score against no reference is undefined."""
    if not references:
        raise ValueError("at least one reference text is needed to score a prediction")


def f1_score(prediction: str, references: Sequence[str]) -> float:
    """Best F1 (0..1) over the references, counting only the longest common contiguous run of segments."""
    _require_references(references)
    prediction_segments = segment(prediction)
    best = 0.0
    for reference in references:
        reference_segments = segment(reference)
        overlap = _longest_common_run(reference_segments, prediction_segments)
        if overlap:
            precision = overlap / len(prediction_segments)
            recall = overlap / len(reference_segments)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the prediction equals a reference once both are normalised and stripped of punctuation, else 0.0."""
    _require_references(references)
    cleaned = remove_punctuation(prediction)
    return float(any(remove_punctuation(reference) == cleaned for reference in references))


def corpus_scores(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict:
    """Score predictions against every gold question: EM, F1 and their AVERAGE as percentages, TOTAL questions
    and SKIP (questions without a prediction, which score 0). Predictions for unknown ids are ignored and logged."""
    if not references:
        raise ValueError("no gold questions to score")
    em_sum = f1_sum = 0.0
    skipped = [question_id for question_id in references if question_id not in predictions]
    for question_id, reference_texts in references.items():
        if question_id in predictions:
            em_sum += exact_match(predictions[question_id], reference_texts)
            f1_sum += f1_score(predictions[question_id], reference_texts)
    unknown = [question_id for question_id in predictions if question_id not in references]
    # INFO, not WARNING: with no logging configured, warnings reach stderr, which notebook tests forbid.
    if skipped:
        logger.info(
            "%d of %d questions have no prediction and score 0, e.g. %s", len(skipped), len(references), skipped[:3]
        )
    if unknown:
        logger.info(
            "%d predictions are for ids not in the gold file and are ignored, e.g. %s", len(unknown), unknown[:3]
        )
    em = 100 * em_sum / len(references)
    f1 = 100 * f1_sum / len(references)
    return {"AVERAGE": (em + f1) / 2, "F1": f1, "EM": em, "TOTAL": len(references), "SKIP": len(skipped)}


def read_predictions(path: str | PathLike) -> dict[str, str]:
    """A predictions file: one JSON object mapping question id to answer text."""
    predictions = read_json(path)
    if not isinstance(predictions, dict):
        raise DataFormatError(
            f"{path}: expected a JSON object {{question id: answer text}}, got {type(predictions).__name__}"
        )
    for question_id, answer in predictions.items():
        if not isinstance(answer, str):
            raise DataFormatError(
                f"{path}: question {question_id!r}: answer should be str, got {type(answer).__name__}"
            )
    return predictions


def evaluate_files(gold_path: str | PathLike, predictions_path: str | PathLike) -> dict:
    """Corpus scores (see corpus_scores) of a predictions file against a SQuAD-style gold file, whose every
    question and every reference text count, as in the official script (see :func:`qa_lib.data.references_of`)."""
    examples, _ = load_squad(gold_path, drop_unanswered=False)
    references = references_of(examples)
    unscorable = [question_id for question_id, texts in references.items() if not texts]
    if unscorable:
        raise DataFormatError(
            f"{gold_path}: record {unscorable[0]}: field 'answers' is missing or empty: nothing to score against"
        )
    return corpus_scores(references, read_predictions(predictions_path))
