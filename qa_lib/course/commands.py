"""The course's ``qa-kit`` sub-commands: demo, check, integrity, grade, report.

``qa_lib.cli`` adds them to its parser (:func:`add_course_commands`), so that one ``qa-kit`` command serves both
the QA pipeline (evaluate, train, predict, pretrain-mlm) and the course, while the pipeline's CLI stays free of
course tooling. Errors follow ``qa_lib.cli``'s rules: a user's mistake becomes one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

from ..cli import UsageError


def demo_summary(results: dict, grading_log: str) -> str:
    """The demo's last three lines: what it showed, where its files are, what to run next."""
    return (
        f"\nShown: answers beyond 512 tokens need windows; the tiny BERT learnt (test EM {results['em_windows']:.1f} "
        f"with windows, {results['em_truncation']:.1f} with truncation); nbgrader graded both notebooks.\n"
        f"Files: learning curves {results['learning_curves']}, nbgrader's log {grading_log}\n"
        "Next: jupyter lab notebooks/bert_qa/01_finetune_qa.ipynb"
    )


def command_demo(args) -> dict:
    from .demo import report_data, train_demo

    # Flushed line by line: in a log file the demo's lines must stay in order with the logging on stderr.
    say = functools.partial(print, flush=True)
    started = time.perf_counter()
    data = report_data(say)
    results = train_demo(say, args.output_dir, quick=args.quick)
    from .grading import grading_demo

    grading = grading_demo(say, Path(args.output_dir) / "nbgrader.log")
    say(demo_summary(results, grading["log"]))
    return {
        **results,
        "oracle_em": data["oracle_em"],
        "data_source": data["source"],
        "grading": grading,
        "seconds": time.perf_counter() - started,
    }


def command_check(args) -> dict:
    from .grading import check_notebook

    reports = []
    for name in args.notebooks:
        if not Path(name).is_file():
            raise UsageError(
                f"{name}: {'is a folder, not a notebook' if Path(name).is_dir() else 'notebook not found'}"
            )
        report, _ = check_notebook(name)
        print("\n".join(report.lines()))
        reports.append(report)
    if not all(report.passed for report in reports):
        raise SystemExit(1)  # unlike `nbgrader validate`, which exits 0 even when tests fail
    return {"notebooks": len(reports), "passed": True}


def command_integrity(args) -> dict:
    from ..data import DataFormatError
    from .integrity import scan_course, table_lines, write_csv, write_html

    try:
        report = scan_course(args.course_root, args.assignment)
    except FileNotFoundError as error:
        raise DataFormatError(str(error)) from error
    print("\n".join(table_lines(report)))
    for path, write in ((args.csv, write_csv), (args.html, write_html)):
        if path:
            write(report, path)
            print(f"wrote {path}")
    # Exit status 0 whatever it finds: the report informs the instructor, it does not grade.
    return {"findings": len(report.findings), "students": len(report.students)}


def command_grade(args) -> dict:
    from ..data import DataFormatError
    from .classroom import GRADED, grade_command, parse_shard
    from .grading import GradingError

    try:
        shard = parse_shard(args.shard) if args.shard else None
        students = args.students.split(",") if args.students else None
        outcomes = grade_command(args.course_root, args.jobs, students, shard, args.db_url)
    except (ValueError, GradingError, FileNotFoundError) as error:
        raise DataFormatError(str(error)) from error
    result = {"students": len(outcomes), "failed": [o.student for o in outcomes if o.status != GRADED]}
    if result["failed"]:
        if args.json:
            print(json.dumps(result, ensure_ascii=False))
        raise SystemExit(1)  # the grades that did arrive are in the gradebook; the table names the others
    return result


def command_report(args) -> dict:
    from ..data import DataFormatError
    from .grading import GradingError
    from .report import write_report

    try:
        page = write_report(args.course_root, args.db_url)
    except GradingError as error:
        raise DataFormatError(str(error)) from error
    print(f"wrote {page} and the CSV files next to it")
    return {"report": str(page)}


def add_course_commands(commands) -> list[argparse.ArgumentParser]:
    """Add the course's sub-commands to ``qa-kit``'s sub-parsers; returns them (the caller adds ``--json``)."""
    demo = commands.add_parser("demo", help="offline demo: data report, then train the tiny model on synthetic data")
    demo.add_argument("--output-dir", default="runs/demo")
    demo.add_argument("--quick", action="store_true", help="a few seconds of training (smoke test)")
    demo.set_defaults(run=command_demo)

    check = commands.add_parser(
        "check", help="run a notebook's visible tests like `nbgrader validate`; exit status 1 when any fails"
    )
    check.add_argument("notebooks", nargs="+", help="notebook files, e.g. notebooks/bert_qa/01_finetune_qa.ipynb")
    check.set_defaults(run=command_check)

    integrity = commands.add_parser(
        "integrity", help="list suspicious answer cells, edited locked cells and copies in a course's submissions"
    )
    integrity.add_argument("course_root", nargs="?", default=".", help="course directory (holds submitted/)")
    integrity.add_argument("--assignment", default="bert_qa")
    integrity.add_argument("--csv", help="also write the findings to this CSV file")
    integrity.add_argument("--html", help="also write a self-contained HTML report (copies side by side)")
    integrity.set_defaults(run=command_integrity)

    grade = commands.add_parser("grade", help="autograde every submitted student of bert_qa, N at a time")
    grade.add_argument("course_root", nargs="?", default=".", help="course directory (holds submitted/)")
    grade.add_argument("--jobs", type=int, help="students graded at once (default: CPU cores)")
    grade.add_argument("--students", help="comma-separated student ids (default: every submitted student)")
    grade.add_argument("--shard", help="i/n: grade every n-th student from the i-th (one machine of n)")
    grade.add_argument("--db-url", help="gradebook URL, e.g. postgresql+psycopg://... (default: gradebook.db)")
    grade.set_defaults(run=command_grade)

    report = commands.add_parser("report", help="class report of bert_qa in reports/bert_qa/ (HTML + CSV)")
    report.add_argument("course_root", nargs="?", default=".", help="course directory")
    report.add_argument("--db-url", help="gradebook URL (default: the course's gradebook.db)")
    report.set_defaults(run=command_report)

    return [demo, check, integrity, grade, report]
