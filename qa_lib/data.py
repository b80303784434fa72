"""Loading SQuAD-style QA data (CMRC 2018, DRCD, any SQuAD v1 file) with answer validation.

Taught in notebook 1, section 1 ("load CMRC 2018 and prepare the answers").

Every question of every paragraph of every article becomes one :class:`QAExample` (the original
assignment read only ``paragraphs[0]``, which silently drops questions in multi-paragraph datasets).
Each reference answer is checked against its context: a start of -1 or a start that does not point
at the text is repaired to the nearest occurrence of the text, and a reference whose text does not
occur at all (or is empty) is dropped from the answers. Every repair and drop is counted in a
:class:`LoadReport` and logged. A dropped reference stays in the example's ``gold``: the official
metric scores against every text the file gives, so :func:`references_of` is the one gold source
for evaluation. Files are read as UTF-8 with or without a byte-order mark; a malformed record is
refused with the file, the record and the field named.
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
    # Every reference text exactly as the file gives it, found in the context or not: the official metric's gold.
    # Defaults to the answers' texts for examples built by hand.
    gold: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.gold is None:
            object.__setattr__(self, "gold", tuple(answer.text for answer in self.answers))


def references_of(examples: Sequence[QAExample]) -> dict[str, list[str]]:
    """``{question_id: [reference texts]}``, the gold side of the metric: every text the file gives, also those
    that loading could not place in the context (the official script scores against them all)."""
    return {e.id: list(e.gold) for e in examples}


@dataclass
class LoadReport:
    """What loading found: counts of every repair and drop, plus one line per event."""

    source: str
    questions: int = 0
    references: int = 0
    repaired_missing_start: int = 0  # answer_start == -1, text found in the context
    repaired_misaligned: int = 0  # answer_start inside the context but pointing elsewhere, text found
    repaired_out_of_range: int = 0  # answer_start below -1 or past the context's end, text found
    stripped_ids: int = 0  # question ids with surrounding whitespace, which the official script strips
    empty_questions: int = 0  # kept: the model reads the context alone
    dropped_references: int = 0  # text empty or not in the context (it stays in the gold, see QAExample.gold)
    dropped_questions: int = 0  # no reference left after validation (only with drop_unanswered)
    unanswered_questions: int = 0  # no reference left after validation, kept for prediction and scoring
    events: list[str] = field(default_factory=list)

    @property
    def repaired(self) -> int:
        return self.repaired_missing_start + self.repaired_misaligned + self.repaired_out_of_range

    def summary(self) -> str:
        """One line: the counts, then only the repairs and drops that happened (a log line stays readable)."""
        repairs = {
            "start -1": self.repaired_missing_start,
            "misaligned": self.repaired_misaligned,
            "out of range": self.repaired_out_of_range,
        }
        events = {
            f"repaired {self.repaired} ({', '.join(f'{k}: {v}' for k, v in repairs.items() if v)})": self.repaired,
            f"stripped {self.stripped_ids} ids": self.stripped_ids,
            f"kept {self.empty_questions} empty questions": self.empty_questions,
            f"dropped {self.dropped_references} references": self.dropped_references,
            f"dropped {self.dropped_questions} questions without a usable answer": self.dropped_questions,
            f"kept {self.unanswered_questions} such questions for scoring only": self.unanswered_questions,
        }
        happened = [event for event, count in events.items() if count] or ["nothing repaired or dropped"]
        return "; ".join([f"{self.source}: {self.questions} questions, {self.references} references", *happened])


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
        if text and 0 <= start and context.startswith(text, start):
            answers.append(Answer(text, start))
            continue
        repaired = nearest_occurrence(context, text, min(max(start, 0), len(context))) if text else -1
        if repaired == -1:
            report.dropped_references += 1
            reason = "empty text" if not text else "not in the context"
            report.events.append(f"{question_id}: dropped reference {text!r} (start {start}): {reason}")
            continue
        if start == -1:
            report.repaired_missing_start += 1
        elif start < -1 or start >= len(context):
            report.repaired_out_of_range += 1
        else:
            report.repaired_misaligned += 1
        report.events.append(f"{question_id}: reference {text!r} start {start} -> {repaired}")
        answers.append(Answer(text, repaired))
    return tuple(answers)


# --- reading and checking JSON: the one reader and validator, also used by qa_lib.metric -------------------------


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file as UTF-8, with or without a byte-order mark; any failure is a :class:`DataFormatError`
    whose one-line message names the file and the fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as error:
        raise DataFormatError(f"{path}: file not found") from error
    except IsADirectoryError as error:
        raise DataFormatError(f"{path}: is a folder, not a file") from error
    except PermissionError as error:
        raise DataFormatError(f"{path}: not readable (permission denied)") from error
    except UnicodeDecodeError as error:
        raise DataFormatError(
            f"{path}: not UTF-8 (byte 0x{error.object[error.start]:02x} at offset {error.start}); convert it, "
            f"e.g. for GBK: iconv -f GBK -t UTF-8 {path} > {path.stem}.utf8{path.suffix}"
        ) from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}: not valid JSON ({error})") from error


def require_field(record: Any, name: str, kind: type, where: str) -> Any:
    """``record[name]`` checked to be a ``kind`` (an ``int`` is never a ``bool``), else a :class:`DataFormatError`
    naming ``where`` (file and record) and the field."""
    if not isinstance(record, Mapping):
        raise DataFormatError(f"{where}: expected an object with field {name!r}, got {type(record).__name__}")
    if name not in record:
        raise DataFormatError(f"{where}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataFormatError(f"{where}: field {name!r} should be {kind.__name__}, got {type(value).__name__}")
    return value


def require_text(record: Any, name: str, where: str) -> str:
    """A string field that holds more than whitespace (an empty context holds no answer)."""
    value = require_field(record, name, str, where)
    if not value.strip():
        raise DataFormatError(f"{where}: field {name!r} is empty")
    return value


# --- the one walk over a SQuAD-format object ---------------------------------------------------------------------


@dataclass(frozen=True)
class RawQuestion:
    """One question record of a SQuAD-format file, its fields checked but its answers not yet validated."""

    id: str
    title: str
    context: str
    question: str
    answers: list[tuple[str, int]]  # (text, answer_start) in file order


def squad_questions(
    squad: Any, source: str, report: LoadReport, answers_required: bool = True
) -> Iterator[RawQuestion]:
    """Every question of every paragraph of every article, with its fields checked; a duplicate id is refused.
    Without ``answers_required`` a record may lack the ``answers`` field (a file to predict, such as a test set)."""
    first_seen: dict[str, str] = {}
    for a, article in enumerate(require_field(squad, "data", list, source)):
        title = article.get("title", "") if isinstance(article, Mapping) else ""
        for p, paragraph in enumerate(require_field(article, "paragraphs", list, f"{source}: article {a}")):
            where = f"{source}: article {a} paragraph {p}"
            context = require_text(paragraph, "context", where)
            for q, record in enumerate(require_field(paragraph, "qas", list, where)):
                location = f"article {a} paragraph {p} qas {q}"
                question_id = _question_id(record, f"{source}: {location}", report)
                if question_id in first_seen:
                    raise DataFormatError(
                        f"{source}: record {question_id}: field 'id' is not unique "
                        f"({first_seen[question_id]} and {location})"
                    )
                first_seen[question_id] = location
                record_where = f"{source}: record {question_id}"
                question = _question_text(record, record_where, report)
                answers = _raw_answers(record, record_where) if answers_required or "answers" in record else []
                yield RawQuestion(question_id, title, context, question, answers)


def _question_id(record: Any, where: str, report: LoadReport) -> str:
    """The record's id, stripped of surrounding whitespace as the official script does with gold ids."""
    question_id = require_field(record, "id", str, where)
    if question_id != question_id.strip():
        report.stripped_ids += 1
        report.events.append(f"{where}: id {question_id!r} stripped of surrounding whitespace")
    if not question_id.strip():
        raise DataFormatError(f"{where}: field 'id' is empty")
    return question_id.strip()


def _question_text(record: Any, where: str, report: LoadReport) -> str:
    """The record's question; an empty one is kept and counted (CMRC trial has two): the model then reads the
    context alone, and dropping the question would change the set that the official metric scores."""
    question = require_field(record, "question", str, where)
    if not question.strip():
        report.empty_questions += 1
        report.events.append(f"{where}: empty question kept")
    return question


def _raw_answers(record: Any, where: str) -> list[tuple[str, int]]:
    return [
        (
            require_field(answer, "text", str, f"{where} answer {i}"),
            require_field(answer, "answer_start", int, f"{where} answer {i}"),
        )
        for i, answer in enumerate(require_field(record, "answers", list, where))
    ]


def examples_from_squad(
    squad: Any, source: str = "<memory>", drop_unanswered: bool = True
) -> tuple[list[QAExample], LoadReport]:
    """Flatten a parsed SQuAD-format object into validated examples and a report.

    A question none of whose references can be placed in its context is dropped (and counted) for training;
    with ``drop_unanswered=False`` it is kept with ``answers=()``, so that prediction answers it and the metric
    scores it against its gold texts, as the official script does; a record may then lack ``answers``."""
    report, examples = LoadReport(source), []
    for raw in squad_questions(squad, source, report, answers_required=drop_unanswered):
        report.questions += 1
        answers = validate_answers(raw.id, raw.context, raw.answers, report)
        if not answers and drop_unanswered:
            report.dropped_questions += 1
            report.events.append(f"{raw.id}: dropped question: no usable reference")
            continue
        if not answers:
            report.unanswered_questions += 1
            report.events.append(f"{raw.id}: no usable reference; kept for prediction and scoring")
        gold = tuple(text for text, _ in raw.answers)
        examples.append(QAExample(raw.id, raw.title, raw.context, raw.question, answers, gold))
    _log_report(report)
    return examples, report


def _log_report(report: LoadReport) -> None:
    log.info(report.summary())
    for event in report.events:
        log.debug(event)


def load_squad(path: str | os.PathLike, drop_unanswered: bool = True) -> tuple[list[QAExample], LoadReport]:
    """Read a SQuAD-style JSON file into validated examples and a :class:`LoadReport` (see
    :func:`examples_from_squad`; ``drop_unanswered=False`` for prediction and evaluation)."""
    return examples_from_squad(read_json(path), str(path), drop_unanswered)


# --- CMRC 2018 split names ---------------------------------------------------------------------------------------

CMRC_FILE_PREFIX = "cmrc2018_"
CMRC_DOWNLOAD = (
    "CMRC 2018's train, dev and trial files are at https://github.com/ymcui/cmrc2018/tree/master/squad-style-data "
    "(the test answers are not public)"
)


def cmrc_folder(folder: str | os.PathLike | None = None) -> Path:
    """``folder``, or the folder named by QA_KIT_CMRC_DIR; an error says how to set it up."""
    folder = folder or os.environ.get(CMRC_DIR_VARIABLE)
    if not folder:
        raise DataUnavailable(
            f"set {CMRC_DIR_VARIABLE} to the folder holding the {CMRC_FILE_PREFIX}<split>.json files "
            "(or pass a file path; online, cmrc_json(split, folder) downloads a split into a folder)"
        )
    if not Path(folder).is_dir():
        raise DataUnavailable(f"{CMRC_DIR_VARIABLE}={folder}: folder does not exist")
    return Path(folder)


def cmrc_splits(folder: str | os.PathLike | None = None) -> list[str]:
    """The split names of a data folder: every ``cmrc2018_<split>.json`` in it gives ``<split>``."""
    files = cmrc_folder(folder).glob(f"{CMRC_FILE_PREFIX}*.json")
    return sorted(path.stem.removeprefix(CMRC_FILE_PREFIX) for path in files if path.is_file())


def cmrc_file(split: str, folder: str | os.PathLike | None = None) -> Path:
    """Path of ``cmrc2018_<split>.json`` in ``folder`` or in the folder named by QA_KIT_CMRC_DIR."""
    folder = cmrc_folder(folder)
    path = folder / f"{CMRC_FILE_PREFIX}{split}.json"
    if not path.is_file():
        held = ", ".join(cmrc_splits(folder)) or f"no {CMRC_FILE_PREFIX}<split>.json file"
        raise DataUnavailable(
            f"{split}: no such split: {folder} holds {held}. Put {path.name} there or pass a file path; {CMRC_DOWNLOAD}"
        )
    return path


def looks_like_split_name(name: str) -> bool:
    """A bare word such as ``train`` or ``dev``: no folder and no file extension."""
    return bool(name) and "/" not in name and os.sep not in name and not Path(name).suffix


def resolve_data(name: str | os.PathLike) -> Path:
    """The data file that a command line names: an existing file, else a split name (``cmrc2018_<name>.json``
    in QA_KIT_CMRC_DIR, for any name that folder holds)."""
    path = Path(name)
    if path.is_file():
        return path
    if looks_like_split_name(str(name)):
        return cmrc_file(str(name))
    if path.is_dir():
        raise DataFormatError(f"{path}: is a folder, not a data file")
    raise DataFormatError(f"{path}: file not found")


def write_json_atomically(path: str | os.PathLike, value: Any) -> Path:
    """Write ``value`` as UTF-8 JSON through a temporary file renamed into place, so that an interrupted run never
    leaves a half-written file behind."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    try:
        temporary.write_text(json.dumps(value, ensure_ascii=False, indent=1), encoding="utf-8")
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


# The hub's name of a CMRC 2018 split, where it differs from the official file's.
HUB_SPLITS = {"dev": "validation"}


def cmrc_json(split: str, folder: str | os.PathLike) -> dict:
    """CMRC 2018's ``split`` (``train``, ``dev``) as the official SQuAD-format dict, read from
    ``folder/cmrc2018_<split>.json``; when that file is missing it is downloaded from the Hugging Face hub
    (``pip install "qa-kit[hub]"``) and saved there first. The notebooks' data cell (notebook 1, section 1)."""
    path = Path(folder) / f"{CMRC_FILE_PREFIX}{split}.json"
    if not path.is_file():
        from .models import hub_is_offline

        if hub_is_offline():
            raise DataUnavailable(
                f"{path}: missing, and the hub is unreachable or HF_HUB_OFFLINE is set to download it; {CMRC_DOWNLOAD}"
            )
        import datasets

        rows = datasets.load_dataset("cmrc2018", split=HUB_SPLITS.get(split, split))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(path, {"data": [_hub_row_as_article(row) for row in rows]})
    return read_json(path)


def _hub_row_as_article(row: Mapping[str, Any]) -> dict:
    """A hub row (one question) as an article of the official format, with one paragraph and one question."""
    answers = [{"text": t, "answer_start": s} for t, s in zip(row["answers"]["text"], row["answers"]["answer_start"])]
    question = {"id": row["id"], "question": row["question"], "answers": answers}
    return {"title": row.get("title", ""), "paragraphs": [{"context": row["context"], "qas": [question]}]}
