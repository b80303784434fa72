"""Benchmark: ``qa-kit grade`` of a generated class with 1 and with 2 workers, and where a student's CPU goes.

The class: ``--students`` students (default 40) dealt round-robin over the kinds below, each handing in both
notebooks: the solution notebooks, the blank release, every buggy fixture of tests/test_notebooks.py (the
other notebook solved) and a few hostile submissions of tests/test_hostile_submissions.py (notebook 2 solved).

1. The class is released once, then graded twice from identical copies: ``qa-kit grade --jobs 1`` and
   ``--jobs 2``, each as a child process. Wall time gives students per minute and the speed-up; CPU per student
   is the CPU of the child and all its descendants (workers, sandboxed kernels, judge probes).
2. One solution student is autograded three times in this process (cold: first imports, the warm servers and
   the judge's one-off caches; warm: what each further student of a long-lived worker costs) with the phases
   wrapped (kernel execution, the judge and each of its probes) to split wall and CPU time; the autograded
   notebooks' cell timestamps split the kernel's time by cell. The third run is under cProfile, which lists
   the grading process's own CPU by function; it is kept out of the phase times, which it would inflate
   (the profiler slows the grading process's pure-Python work several times over).

CPU is read from /proc, not from rusage: bubblewrap's pid namespace ends with its init killed, so the CPU of a
sandboxed kernel or probe never reaches its grandparent's rusage. A sampler thread reads utime + stime of every
descendant every 0.2 s and keeps each process's last value, so it misses at most the last 0.2 s of each process.

Each run also prints the machine's busy cores by tenth of the run (idle cores show where a run waits), when
its first and last students were done (the first: the workers' cold start; between them, the warm rate that a
class of 300 mostly runs at, from which the 300-student projection is made) and the CPU time the hypervisor
stole for other machines (a busy host: its runs are not comparable with others). ``--one-core`` adds a run of
``--jobs 1`` allowed on one core only: against it, ``--jobs 2`` on two cores measures how the workers scale,
where ``--jobs 1`` on two cores already uses part of the second core (a notebook's two probe jobs side by side,
torch's threads, the grader beside its kernel).

Before and after the runs, the machine's own speed-up is measured: two processes of pure CPU work pinned to two
cores against one alone. It is the ceiling of any speed-up measured here, and on a virtual machine it is not 2:
its cores may share physical cores, or a busy host (1.5-2.0x on the 2-core machine of bench/RESULTS.md).

Speed goals (>= 1.8x with 2 jobs on 2 cores; <= 10 s of CPU per student) are printed as measured, never
asserted. Run from the repository root: ``python bench/grade_class.py [--students N] [--jobs 1,2] [--one-core]``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fixtures: solution, buggy and hostile notebooks

from test_hostile_submissions import HOSTILE  # noqa: E402
from test_notebooks import BUGGY, NB1, NB2, RELEASE, edited, solution  # noqa: E402

from qa_lib.course import judge  # noqa: E402
from qa_lib.course.classroom import read_log  # noqa: E402
from qa_lib.course.grading import ASSIGNMENT, Course, nbgrader_warnings_off  # noqa: E402

HOSTILE_KINDS = ["blank+swallowed_errors", "blank+os_exit", "solution+floods", "solution+outlives_grading"]
KINDS = ["solution", "blank", *BUGGY, *HOSTILE_KINDS]
PROBE_PHASE = "  of which probe jobs (forked by the warm probes)"
CLOSED_PORT = 9  # the network attack's target: nothing listens there (and the sandbox has no network)


def notebooks_of(kind: str) -> dict[str, nbformat.NotebookNode]:
    both = {NB1: solution(NB1), NB2: solution(NB2)}
    if kind == "blank":
        both = {name: nbformat.read(RELEASE / f"{name}.ipynb", as_version=4) for name in (NB1, NB2)}
    elif kind in BUGGY:
        name, _, edits = BUGGY[kind]
        both[name] = edited(name, *edits)
    elif kind in HOSTILE:
        both[NB1] = HOSTILE[kind](CLOSED_PORT)
    return {f"{name}.ipynb": notebook for name, notebook in both.items()}


def make_class(folder: Path, students: int) -> Course:
    course = Course.from_kit_solutions(folder)
    course.release()
    for number in range(students):
        kind = KINDS[number % len(KINDS)]
        course.submit(f"s{number:03d}_{kind.replace('+', '_')}", notebooks_of(kind))
    return course


# --- CPU of a process tree, from /proc ------------------------------------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK")


class Process(NamedTuple):
    parent: int
    started: str
    cpu: float
    warm_server: bool


# Warm servers (the judge's probes, the grading kernels) fork their jobs: a job often ends within one sampling
# period, so a server counts with its reaped children's CPU and nothing below it is walked. A server is the
# Python whose arguments start so; the bubblewrap processes around it carry the same words further along.
WARM_SERVER_ARGUMENTS = (b"-m\x00qa_lib.course.probe\x00--serve\x00", b"-m\x00qa_lib.course.warm_kernel\x00")


def process_table() -> dict[int, Process]:
    """Every process readable in /proc. A warm server's CPU includes its reaped children's (cutime, cstime)."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            arguments = Path(entry.path, "cmdline").read_bytes().partition(b"\x00")[2]
            warm_server = arguments.startswith(WARM_SERVER_ARGUMENTS)
        except OSError:
            continue  # ended meanwhile
        # After the command: state, ppid, ..., utime (12th), stime (13th), cutime, cstime, ..., starttime (20th).
        cpu = sum(int(field) for field in fields[11 : 15 if warm_server else 13]) / TICKS
        table[int(entry.name)] = Process(int(fields[1]), fields[19], cpu, warm_server)
    return table


class TreeCPU:
    """CPU seconds used by ``root`` and its descendants while the ``with`` block runs, sampled every 0.2 s."""

    def __init__(self, root: int):
        self.root, self.seen, self.done = root, {}, threading.Event()

    def sample(self) -> None:
        table = process_table()
        family, walked, grew = {self.root}, {self.root}, True
        while grew:  # below a warm server nothing is walked: its own entry already counts its jobs
            more = {pid for pid, process in table.items() if process.parent in walked} - family
            family |= more
            walked |= {pid for pid in more if not table[pid].warm_server}
            grew = bool(more)
        for pid in family & table.keys():
            self.seen[(pid, table[pid].started)] = table[pid].cpu

    def __enter__(self) -> TreeCPU:
        self.sample()
        self.before = sum(self.seen.values())  # processes alive now count from their CPU at this moment
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()
        return self

    def loop(self) -> None:
        while not self.done.wait(0.2):
            self.sample()

    def __exit__(self, *exc) -> None:
        self.sample()
        self.done.set()
        self.thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.seen.values()) - self.before


def machine_ticks() -> list[int]:
    """The machine's CPU ticks so far by kind (first line of /proc/stat: user, nice, system, idle, iowait, irq,
    softirq, steal, ...)."""
    return [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def busy_and_total_ticks() -> tuple[int, int]:
    """Busy and total ticks so far (idle and iowait are not busy)."""
    ticks = machine_ticks()
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other machines while ours wanted it (a busy host: runs not comparable)."""
    return machine_ticks()[7] / TICKS


class BusyCores:
    """The whole machine's busy cores, second by second, while the ``with`` block runs (anyone's CPU counts)."""

    def __init__(self):
        self.samples: list[float] = []
        self.done = threading.Event()

    def __enter__(self) -> BusyCores:
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()
        return self

    def loop(self) -> None:
        busy, total = busy_and_total_ticks()
        while not self.done.wait(1.0):
            now_busy, now_total = busy_and_total_ticks()
            self.samples.append(os.cpu_count() * (now_busy - busy) / max(1, now_total - total))
            busy, total = now_busy, now_total

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    def by_tenth(self) -> list[float]:
        """Mean busy cores over each tenth of the run."""
        tenths = [self.samples[len(self.samples) * i // 10 : len(self.samples) * (i + 1) // 10] for i in range(10)]
        return [sum(part) / max(1, len(part)) for part in tenths]


# --- 0. What the machine itself gives --------------------------------------------------------------------------


def spin(core: int, go, results) -> None:
    """A fixed amount of pure CPU work (no memory traffic, no I/O) on ``core`` once ``go`` is set; puts its wall
    time."""
    os.sched_setaffinity(0, {core})
    go.wait()
    started, total = time.perf_counter(), 0
    for number in range(20_000_000):
        total += number * number % 7
    results.put(time.perf_counter() - started)


def spin_on(cores: list[int]) -> float:
    """Wall time until the spins on ``cores``, started together, are all done (forked: no imports to wait for)."""
    context = multiprocessing.get_context("fork")
    go, results = context.Event(), context.Queue()
    processes = [context.Process(target=spin, args=(core, go, results)) for core in cores]
    for process in processes:
        process.start()
    go.set()
    times = [results.get() for _ in cores]
    for process in processes:
        process.join()
    return max(times)


def machine_speedups(trials: int = 3) -> list[float]:
    """Two spins at once on two cores against one alone: the speed-up of perfectly parallel work here, the ceiling
    of any other. A virtual machine's two cores may share one physical core, or a busy host, and give less than 2."""
    return [2 * spin_on([0]) / spin_on([0, 1]) for _ in range(trials)]


# --- 1. Whole-class runs ------------------------------------------------------------------------------------------


def grade_run(template: Path, scratch: Path, jobs: int, one_core: bool = False) -> dict:
    """``qa-kit grade --jobs N`` on a fresh copy of the released class, as a child process (``one_core``: allowed
    on the first CPU only, so that it, its workers, kernels and probes see one core and size themselves to it)."""
    course = scratch / f"jobs{jobs}{'-one-core' if one_core else ''}"
    shutil.copytree(template, course)
    load_before, steal_before = os.getloadavg()[0], steal_seconds()
    started, started_at = time.perf_counter(), time.time()
    child = subprocess.Popen(
        [sys.executable, "-m", "qa_lib.cli", "grade", str(course), "--jobs", str(jobs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if one_core else None,
    )
    with TreeCPU(child.pid) as cpu, BusyCores() as busy:
        output = child.stdout.read()
        status = child.wait()
    wall = time.perf_counter() - started
    outcomes = read_log(course)
    finished = sorted(datetime.fromisoformat(o.finished).timestamp() - started_at for o in outcomes.values())
    return {
        "jobs": jobs,
        "cores": 1 if one_core else len(os.sched_getaffinity(0)),
        "exit_status": status,
        "students": len(outcomes),
        "not_graded": sorted(s for s, o in outcomes.items() if o.status != "graded"),
        "wall_s": wall,
        "cpu_s": cpu.seconds,
        "students_per_minute": 60 * len(outcomes) / wall,
        "mean_student_wall_s": sum(o.seconds for o in outcomes.values()) / max(1, len(outcomes)),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "steal_s": steal_seconds() - steal_before,
        "busy_cores_by_tenth": busy.by_tenth(),
        "first_and_last_student_done_s": [finished[0], finished[-1]] if finished else [],
        "table_tail": output.strip().splitlines()[-2:],
    }


# --- 2. One student, phase by phase -------------------------------------------------------------------------------


def wrapped(phases: dict, name: str, function):
    """``function`` recording its calls' wall time and CPU (this process and its descendants) under ``name``."""

    def timed(*args, **kwargs):
        wall = time.perf_counter()
        with TreeCPU(os.getpid()) as cpu:
            result = function(*args, **kwargs)
        entry = phases.setdefault(name, {"calls": 0, "wall_s": 0.0, "cpu_s": 0.0})
        entry["calls"] += 1
        entry["wall_s"] += time.perf_counter() - wall
        entry["cpu_s"] += cpu.seconds
        return result

    return timed


def cell_times(path: Path) -> dict:
    """The kernel's time by cell, from nbclient's timestamps: all cells, and the three slowest."""
    notebook = nbformat.read(path, as_version=4)
    durations = []
    for cell in notebook.cells:
        stamps = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in stamps and "shell.execute_reply" in stamps:
            begin, end = (
                datetime.fromisoformat(stamps[key].replace("Z", "+00:00"))
                for key in ("iopub.execute_input", "shell.execute_reply")
            )
            durations.append((cell.get("id"), round((end - begin).total_seconds(), 2)))
    return {"cells_s": sum(seconds for _, seconds in durations), "slowest": sorted(durations, key=lambda d: -d[1])[:3]}


def profile_one(course_root: Path, student: str) -> dict:
    """Autograde one student in this process, phases wrapped."""
    from qa_lib.course.judge import Judge, SandboxedExecute

    phases: dict = {}
    originals = (SandboxedExecute.preprocess, Judge.preprocess, judge.run_probe)
    SandboxedExecute.preprocess = wrapped(phases, "kernel: start, cells, shutdown", SandboxedExecute.preprocess)
    Judge.preprocess = wrapped(phases, "judge: cases, probes, comparisons", Judge.preprocess)
    judge.run_probe = wrapped(phases, PROBE_PHASE, judge.run_probe)
    try:
        course = Course(course_root)
        wall = time.perf_counter()
        with TreeCPU(os.getpid()) as cpu, nbgrader_warnings_off():
            course.autograde(student)
        total = {"calls": 1, "wall_s": time.perf_counter() - wall, "cpu_s": cpu.seconds}
    finally:
        SandboxedExecute.preprocess, Judge.preprocess, judge.run_probe = originals
    measured = [entry for name, entry in phases.items() if not name.startswith(" ")]
    phases["nbgrader and the rest (total - kernel - judge)"] = {
        "calls": 1,
        "wall_s": total["wall_s"] - sum(entry["wall_s"] for entry in measured),
        "cpu_s": total["cpu_s"] - sum(entry["cpu_s"] for entry in measured),
    }
    phases["total autograde of one student"] = total
    folder = course_root / "autograded" / student / ASSIGNMENT
    kernel = {name: cell_times(folder / f"{name}.ipynb") for name in (NB1, NB2)}
    return {"phases": phases, "kernel_cells": kernel}


def grader_cpu_by_function(course_root: Path, student: str) -> list[tuple[str, float]]:
    """The grading process's own CPU by function (top 8 by own time) over one more autograde, under cProfile."""
    profiler = cProfile.Profile(time.process_time)
    with nbgrader_warnings_off():
        profiler.runcall(Course(course_root).autograde, student)
    top = sorted(pstats.Stats(profiler).stats.items(), key=lambda item: item[1][2], reverse=True)[:8]
    return [(f"{Path(file).name}:{line}:{name}", round(entry[2], 2)) for (file, line, name), entry in top]


def profile_student(template: Path, scratch: Path, student: str) -> dict:
    """Cold (first student of a process: imports, the servers, the judge's caches), warm (the next one), and the
    grading process's own CPU by function."""
    course_root = scratch / "profiled"
    shutil.copytree(template, course_root)
    phases = {"cold": profile_one(course_root, student), "warm": profile_one(course_root, student)}
    return phases | {"grader_own_cpu_by_function": grader_cpu_by_function(course_root, student)}


# --- Printing -----------------------------------------------------------------------------------------------------


def print_runs(runs: list[dict]) -> None:
    columns = f"{'jobs':>5}{'cores':>6}{'students':>10}{'wall s':>9}{'per min':>9}{'CPU s':>8}{'CPU/student':>13}"
    print(f"{columns}{'load':>12}")
    for run in runs:
        per_student = run["cpu_s"] / max(1, run["students"])
        load = f"{run['load_before']:.1f}->{run['load_after']:.1f}"
        print(
            f"{run['jobs']:>5}{run['cores']:>6}{run['students']:>10}{run['wall_s']:>9.0f}{run['students_per_minute']:>9.2f}"
            f"{run['cpu_s']:>8.0f}{per_student:>13.1f}{load:>12}"
        )
        tenths = " ".join(f"{cores:.2f}" for cores in run["busy_cores_by_tenth"])
        print(f"      busy cores by tenth of the run: {tenths}")
        first, last = run["first_and_last_student_done_s"] or [float("nan")] * 2
        print(f"      first student done at {first:.0f} s, last at {last:.0f} s; then {warm_rate(run):.2f} per min")
        print(f"      steal (the host's other machines): {run['steal_s']:.1f} s")
        if run["not_graded"]:
            print(f"      not graded (failed or timed out): {', '.join(run['not_graded'])}")
    best = max(runs, key=lambda run: run["students_per_minute"])
    for base in runs:
        if base is not best:
            speedup = best["students_per_minute"] / base["students_per_minute"]
            goal = "" if base["cores"] == 1 else f" (goal >= 1.8x on 2 cores: {'met' if speedup >= 1.8 else 'NOT met'})"
            print(f"speed-up {label(best)} / {label(base)}: {speedup:.2f}x{goal}")
            print(f"  warm workers only (first to last student done): {warm_rate(best) / warm_rate(base):.2f}x")
    if len(runs) > 1:
        print(f"projected for 300 students at {label(best)}: {projected_minutes(best, 300):.0f} min")
    cpu = min(run["cpu_s"] / max(1, run["students"]) for run in runs)
    print(f"CPU per student: {cpu:.1f} s (goal <= 10 s: {'met' if cpu <= 10 else 'NOT met'})")


def fold(speedups: list[float]) -> str:
    return ", ".join(f"{speedup:.2f}x" for speedup in speedups)


def warm_rate(run: dict) -> float:
    """Students per minute once the workers are warm: from the first student done to the last (a run of fewer
    than two students has no such span: its own rate)."""
    if run["students"] < 2:
        return run["students_per_minute"]
    first, last = run["first_and_last_student_done_s"]
    return 60 * (run["students"] - 1) / max(1e-9, last - first)


def projected_minutes(run: dict, students: int) -> float:
    """The cold start as measured (the first student done), then the warm rate, then the end as measured."""
    first, last = run["first_and_last_student_done_s"] or [0.0, 0.0]
    return (first + 60 * (students - 1) / warm_rate(run) + run["wall_s"] - last) / 60


def label(run: dict) -> str:
    return f"jobs {run['jobs']} on {run['cores']} core{'s' if run['cores'] > 1 else ''}"


def print_profile(label: str, profile: dict) -> None:
    print(f"\none solution student (both notebooks), autograded in this process, {label}:")
    print(f"{'phase':<52}{'calls':>6}{'wall s':>9}{'CPU s':>8}")
    # The probes' entry is recorded before the judge's (they end first); print it under the judge.
    order = [name for name in profile["phases"] if not name.startswith(" ")]
    order.insert(order.index("judge: cases, probes, comparisons") + 1, PROBE_PHASE)
    for name in order:
        entry = profile["phases"][name]
        print(f"{name:<52}{entry['calls']:>6}{entry['wall_s']:>9.1f}{entry['cpu_s']:>8.1f}")
    for name, cells in profile["kernel_cells"].items():
        slowest = ", ".join(f"{cell} {seconds:.1f}" for cell, seconds in cells["slowest"])
        print(f"kernel cells of {name}: {cells['cells_s']:.1f} s in all; slowest: {slowest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=40)
    parser.add_argument("--jobs", default="1,2", help="comma-separated worker counts, one run each ('' for none)")
    parser.add_argument("--one-core", action="store_true", help="first, one more run: --jobs 1 on one core")
    parser.add_argument("--no-profile", action="store_true", help="skip the one-student phase split")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qa-kit-bench-class-") as scratch:
        scratch = Path(scratch)
        template = make_class(scratch / "template", args.students).root
        print(f"class of {args.students} students over {len(KINDS)} kinds; {os.cpu_count()} CPUs")
        two_cores = len(os.sched_getaffinity(0)) >= 2
        ceiling = {"before": machine_speedups() if two_cores else []}
        runs = [grade_run(template, scratch, 1, one_core=True)] if args.one_core else []
        runs += [grade_run(template, scratch, int(jobs)) for jobs in args.jobs.split(",") if jobs]
        ceiling["after"] = machine_speedups() if two_cores else []
        if runs:
            print_runs(runs)
        if two_cores:
            print(
                f"this machine's own speed-up, two pure-CPU processes on two cores against one: "
                f"{fold(ceiling['before'])} before the runs, {fold(ceiling['after'])} after"
            )
        profile = None if args.no_profile else profile_student(template, scratch, "s000_solution")
        if profile:
            print_profile("cold", profile["cold"])
            print_profile("warm", profile["warm"])
            print("\ngrading process's own CPU by function (one more autograde under cProfile, top 8 by own time):")
            for name, seconds in profile["grader_own_cpu_by_function"]:
                print(f"  {seconds:>6.2f} s  {name}")
    print(json.dumps({"runs": runs, "machine_speedups": ceiling, "profile": profile}, ensure_ascii=False, default=str))


if __name__ == "__main__":
    main()
