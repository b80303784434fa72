"""Loading SQuAD-style QA data (CMRC 2018, DRCD, any SQuAD v1 file) with answer validation.

Taught in notebook 1, section 1 ("load CMRC 2018 and prepare the answers").

Every question of every paragraph of every article becomes one :class:`QAExample` (the original
assignment read only ``paragraphs[0]``, which silently drops questions in multi-paragraph datasets).
Each reference answer is checked against its context: a start of -1 or a start that does not point
at the text is repaired to the nearest occurrence of the text, and a reference whose text does not
occur at all is dropped. Every repair and drop is counted in a :class:`LoadReport` and logged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CMRC_DIR_VARIABLE = "QA_KIT_CMRC_DIR"


class DataFormatError(ValueError):
    """A QA file that cannot be read; the message names the file, the record and the field."""


class DataUnavailable(RuntimeError):
    """A dataset that is not on disk and cannot be downloaded right now."""


@dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset of the answer in its context

    @property
    def end(self) -> int:
        """Exclusive end character."""
        return self.start + len(self.text)


@dataclass(frozen=True)
class QAExample:
    id: str
    title: str
    context: str
    question: str
    answers: tuple[Answer, ...]  # validated references; the first one is the training label


def references_of(examples: Sequence[QAExample]) -> dict[str, list[str]]:
    """``{question_id: [reference answer texts]}``, the gold side of the metric."""
    return {e.id: [a.text for a in e.answers] for e in examples}


@dataclass
class LoadReport:
    """What loading found: counts of every repair and drop, plus one line per event."""

    source: str
    questions: int = 0
    references: int = 0
    repaired_missing_start: int = 0  # answer_start == -1, text found in the context
    repaired_misaligned: int = 0  # answer_start pointed elsewhere, text found in the context
    dropped_references: int = 0  # text not in the context
    dropped_questions: int = 0  # no reference left after validation
    events: list[str] = field(default_factory=list)

    @property
    def repaired(self) -> int:
        return self.repaired_missing_start + self.repaired_misaligned

    def summary(self) -> str:
        return (
            f"{self.source}: {self.questions} questions, {self.references} references; "
            f"repaired {self.repaired} (start -1: {self.repaired_missing_start}, "
            f"misaligned: {self.repaired_misaligned}); dropped {self.dropped_references} references "
            f"and {self.dropped_questions} questions without a usable answer"
        )


def nearest_occurrence(context: str, text: str, near: int) -> int:
    """Start of the occurrence of ``text`` in ``context`` closest to ``near``; -1 when absent."""
    best, position = -1, context.find(text)
    while position != -1:
        if best == -1 or abs(position - near) < abs(best - near):
            best = position
        position = context.find(text, position + 1)
    return best


def validate_answers(
    question_id: str, context: str, raw_answers: Iterable[tuple[str, int]], report: LoadReport
) -> tuple[Answer, ...]:
    """Check each ``(text, start)`` reference against the context, repairing or dropping it."""
    answers = []
    for text, start in raw_answers:
        report.references += 1
        if start >= 0 and context.startswith(text, start):
            answers.append(Answer(text, start))
            continue
        repaired = nearest_occurrence(context, text, max(start, 0))
        if repaired == -1:
            report.dropped_references += 1
            report.events.append(f"{question_id}: dropped reference {text!r} (start {start}): not in the context")
            continue
        if start == -1:
            report.repaired_missing_start += 1
        else:
            report.repaired_misaligned += 1
        report.events.append(f"{question_id}: reference {text!r} start {start} -> {repaired}")
        answers.append(Answer(text, repaired))
    return tuple(answers)


def _field(record: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    if not isinstance(record, Mapping):
        raise DataFormatError(f"{where}: expected an object with field {name!r}, got {type(record).__name__}")
    if name not in record:
        raise DataFormatError(f"{where}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataFormatError(f"{where}: field {name!r} should be {kind.__name__}, got {type(value).__name__}")
    return value


def _raw_questions(squad: Mapping[str, Any], source: str) -> Iterator[tuple[str, str, Any, str]]:
    """Yield ``(title, context, question record, location)`` over all paragraphs of all articles."""
    for a, article in enumerate(_field(squad, "data", list, f"{source}")):
        title = article.get("title", "") if isinstance(article, Mapping) else ""
        for p, paragraph in enumerate(_field(article, "paragraphs", list, f"{source}: article {a}")):
            where = f"{source}: article {a} paragraph {p}"
            context = _field(paragraph, "context", str, where)
            for q, question in enumerate(_field(paragraph, "qas", list, where)):
                yield title, context, question, f"{where} qas {q}"


def examples_from_squad(squad: Mapping[str, Any], source: str = "<memory>") -> tuple[list[QAExample], LoadReport]:
    """Flatten a parsed SQuAD-format object into validated examples and a report."""
    report, examples = LoadReport(source), []
    for title, context, record, where in _raw_questions(squad, source):
        question_id = _field(record, "id", str, where)
        where = f"{source}: record {question_id}"
        question = _field(record, "question", str, where)
        raw_answers = [
            (
                _field(answer, "text", str, f"{where} answer {i}"),
                _field(answer, "answer_start", int, f"{where} answer {i}"),
            )
            for i, answer in enumerate(_field(record, "answers", list, where))
        ]
        report.questions += 1
        answers = validate_answers(question_id, context, raw_answers, report)
        if not answers:
            report.dropped_questions += 1
            report.events.append(f"{question_id}: dropped question: no usable reference")
            continue
        examples.append(QAExample(question_id, title, context, question, answers))
    _log_report(report)
    return examples, report


def _log_report(report: LoadReport) -> None:
    log.info(report.summary())
    for event in report.events:
        log.debug(event)


def load_squad(path: str | os.PathLike) -> tuple[list[QAExample], LoadReport]:
    """Read a SQuAD-style JSON file into validated examples and a :class:`LoadReport`."""
    path = Path(path)
    try:
        squad = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise DataFormatError(f"{path}: file not found") from error
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}: not valid JSON ({error})") from error
    return examples_from_squad(squad, str(path))


def cmrc_file(split: str, folder: str | os.PathLike | None = None) -> Path:
    """Path of ``cmrc2018_<split>.json`` in ``folder`` or in the folder named by QA_KIT_CMRC_DIR."""
    folder = folder or os.environ.get(CMRC_DIR_VARIABLE)
    if not folder:
        raise DataUnavailable(
            f"set {CMRC_DIR_VARIABLE} to the folder holding cmrc2018_{split}.json "
            "(or pass a file path; online, load_hub_split('cmrc2018', split) downloads it)"
        )
    path = Path(folder) / f"cmrc2018_{split}.json"
    if not path.is_file():
        raise DataUnavailable(f"{path} does not exist ({CMRC_DIR_VARIABLE}={folder})")
    return path


def load_hub_split(name: str = "cmrc2018", split: str = "validation") -> tuple[list[QAExample], LoadReport]:
    """Download a SQuAD-format dataset from the Hugging Face hub (needs ``pip install qa-kit[hub]``)."""
    from .models import hub_is_offline

    if hub_is_offline():
        raise DataUnavailable(
            f"cannot download {name!r}: the hub is unreachable or HF_HUB_OFFLINE is set. "
            f"Put the JSON files in a folder and set {CMRC_DIR_VARIABLE} instead."
        )
    import datasets

    rows = datasets.load_dataset(name, split=split)
    squad = {"data": [_hub_row_as_article(row) for row in rows]}
    return examples_from_squad(squad, f"hub:{name}/{split}")


def _hub_row_as_article(row: Mapping[str, Any]) -> dict:
    answers = [{"text": t, "answer_start": s} for t, s in zip(row["answers"]["text"], row["answers"]["answer_start"])]
    question = {"id": row["id"], "question": row["question"], "answers": answers}
    return {"title": row.get("title", ""), "paragraphs": [{"context": row["context"], "qas": [question]}]}
