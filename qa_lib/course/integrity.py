"""Integrity of submissions (``qa-kit integrity``): what a grade cannot show, read from the notebooks alone.

Every submission in ``<course>/submitted/<student>/<assignment>/`` is read statically (``ast``; nothing runs)
and compared with the instructor notebooks (``solutions/``) and the release (``notebooks/``):

- suspicious code in the cells a student can edit: the grading code or an exercise's reference implementation,
  names the locked test cells read rebound, builtins or library functions patched, introspection of code
  objects, files, processes, network, encoded payloads, kernel hooks (magics are transformed first, so
  ``%`` and ``!`` lines count), objects equal to anything, unbounded loops, output floods;
- nbgrader structure: locked cells edited (nbgrader checksums), grade cells deleted or duplicated, answer cells'
  metadata changed;
- copies: answer cells close to the instructor solution, to the library's reference implementation, or to
  another student's answer, measured with copydetect's k-gram fingerprints (as in MOSS) on tokens with names,
  strings and comments normalised, after removing the code the release already gives (signature, docstring,
  markers).

The report informs; it does not grade. A submission equal to the instructor solution is reported as "identical
to the instructor solution" (a leaked solution): that is expected when the kit's own tests submit the solution
notebooks as a student.
"""

from __future__ import annotations

import ast
import builtins
import csv
import functools
import html
import importlib.util
import io
import operator
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import astuple, dataclass, field
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from .exercises import EXERCISES
from .grading import ASSIGNMENT, grade_id, kit_root

SOLUTION_REGION = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.S)

# Each exercise's reference implementations in qa_lib (the table the judge stubs out): they drive both the "uses a
# reference implementation" rule (any answer cell) and the "close to the reference implementation" copy check.
REFERENCES: dict[str, tuple[str, ...]] = {
    exercise.answer_cell: tuple(f"qa_lib.{name}" for name in exercise.references) for exercise in EXERCISES.values()
}

REFERENCE_PATHS = sorted({path for paths in REFERENCES.values() for path in paths})

# Dotted names (modules, attributes, builtins) an answer cell has no honest use for, by longest prefix.
# None marks a harmless member of a flagged module.
SUSPICIOUS_NAMES: dict[str, str | None] = {
    "qa_lib.course": "grading code",
    **{name: "interpreter internals" for name in ("sys", "importlib", "builtins", "gc", "inspect", "types")},
    **{name: "interpreter internals" for name in ("ctypes", "dis", "code", "codeop", "ast", "__builtins__")},
    **{name: None for name in ("sys.maxsize", "sys.float_info", "sys.version_info")},
    **{name: "file system" for name in ("open", "os", "shutil", "pathlib", "io", "glob", "tempfile", "fileinput")},
    **{name: "file system" for name in ("torch.save", "torch.load", "numpy.save", "numpy.load", "pickle")},
    **{name: "database" for name in ("sqlite3", "dbm", "shelve", "sqlalchemy", "nbgrader")},
    **{name: "network" for name in ("socket", "http", "urllib", "requests", "ssl", "ftplib", "asyncio")},
    **{name: "process" for name in ("subprocess", "multiprocessing", "signal", "threading", "_thread", "pty")},
    **{name: "process" for name in ("concurrent", "atexit", "faulthandler", "resource", "exit", "quit")},
    **{name: "process" for name in ("input", "breakpoint", "time.sleep", "os._exit", "os.fork", "os.system")},
    **{name: "process" for name in ("os.kill", "os.killpg", "os.popen", "os.environ", "os.setsid", "os.putenv")},
    **{name: "process" for name in ("os.execv", "os.execve", "os.execl", "os.spawnv", "os.posix_spawn")},
    **{name: "output tampering" for name in ("sys.stdout", "sys.stderr", "sys.__stdout__", "sys.__stderr__")},
    **{name: "obfuscation" for name in ("exec", "eval", "compile", "__import__", "marshal", "base64", "zlib")},
    **{name: "obfuscation" for name in ("codecs", "bz2", "lzma", "gzip", "binascii", "zipfile", "bytes.fromhex")},
    **{name: "namespace tampering" for name in ("globals", "locals", "vars", "setattr", "delattr")},
    **{name: "kernel tampering" for name in ("IPython", "ipykernel", "traitlets", "jupyter_client")},
    "IPython.display": None,  # display() of a table or a plot while trying things out
}
# Attributes that reach code objects, frames or the kernel whatever object they are read from.
SUSPICIOUS_ATTRIBUTES: dict[str, str] = {
    **dict.fromkeys(
        ("__code__", "__globals__", "__closure__", "__builtins__", "__defaults__", "__kwdefaults__", "__dict__"),
        "interpreter internals",
    ),
    **dict.fromkeys(
        (
            "__subclasses__",
            "__bases__",
            "__base__",
            "__mro__",
            "__getattribute__",
            "__loader__",
            "__spec__",
            "__func__",
        ),
        "interpreter internals",
    ),
    **dict.fromkeys(
        ("f_globals", "f_locals", "f_back", "f_builtins", "gi_frame", "tb_frame", "co_code", "settrace", "setprofile"),
        "interpreter internals",
    ),
    **dict.fromkeys(
        ("ast_transformers", "input_transformers_post", "input_transformers_cleanup", "showtraceback", "events"),
        "kernel tampering",
    ),
    **dict.fromkeys(
        ("showsyntaxerror", "set_custom_exc", "run_cell", "run_line_magic", "run_cell_magic", "user_ns", "system"),
        "kernel tampering",
    ),
}
MAGIC_CALLS = {"IPython.get_ipython.run_line_magic", "IPython.get_ipython.run_cell_magic"}
HARMLESS_MAGICS = {"matplotlib", "time", "timeit", "who", "whos"}
# Special methods that let an object pass `==`, `bool()` or isinstance checks it should fail.
ALWAYS_EQUAL_METHODS = {"__eq__", "__ne__", "__bool__", "__instancecheck__", "__subclasscheck__"}
INTEGER_OPERATIONS = {ast.Mult: operator.mul, ast.Pow: operator.pow, ast.Add: operator.add}
FLOOD = 10**6  # a string or list repeated this often: megabytes of output or memory
LONG_RANGE = 10**7  # range() this long is no exercise's loop
KERNEL_NAMES = {"get_ipython": "IPython.get_ipython"}  # what IPython puts in every notebook's namespace


@dataclass(frozen=True)
class Finding:
    student: str
    notebook: str  # file name without .ipynb
    cell: str  # grade id, or "cell N" for a cell without nbgrader metadata
    reason: str
    detail: str
    similarity: float | None = None  # copies: copydetect's similarity, 0..1
    other: str = ""  # copies: "instructor solution", "qa_lib reference" or the other student
    code: str = field(default="", repr=False)  # copies: the student's own code, as compared
    other_code: str = field(default="", repr=False)

    @property
    def is_copy(self) -> bool:
        return self.similarity is not None


# --- Reading the notebooks -------------------------------------------------------------------------------------


def nbgrader_flags(cell: NotebookNode) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return {key: meta.get(key) for key in ("grade", "solution", "locked", "points")} | {"type": cell.cell_type}


def is_answer_cell(cell: NotebookNode) -> bool:
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution"))


def python_source(source: str) -> str:
    """The cell as the kernel runs it: IPython magics (``%``, ``!``) become ``get_ipython()`` calls."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def parse(source: str) -> ast.Module | None:
    """The cell's syntax tree; None for a cell that does not parse (it fails to run: nothing to hide)."""
    try:
        return ast.parse(python_source(source))
    except (SyntaxError, ValueError):
        return None


def import_bindings(tree: ast.AST) -> dict[str, str]:
    """``{name: dotted path}`` for every import in the tree (``import a.b`` binds ``a``)."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            if any(alias.name == "*" for alias in node.names):  # what a star import can bring that matters here
                bound |= {
                    path.rsplit(".", 1)[1]: path for path in REFERENCE_PATHS if path.startswith(node.module + ".")
                }
    return bound


def assigned_names(tree: ast.AST) -> set[str]:
    """Names the tree binds other than by import: assignments, parameters, loop targets, defs, handlers."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def module_level_bindings(tree: ast.Module) -> Iterator[str]:
    """Each name the cell binds in the notebook's namespace other than by import: statements at module level
    (inside if/for/with/try too) and names a function declares ``global``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            yield from node.names
    for statement in top_level_statements(tree.body):
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield statement.name
        elif not isinstance(statement, ast.Import | ast.ImportFrom):  # imports: see import_bindings_at_top
            targets = [n for n in ast.walk(statement) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
            scoped = {id(n) for sub in ast.walk(statement) if is_scope(sub) for n in ast.walk(sub) if n is not sub}
            yield from (n.id for n in targets if id(n) not in scoped)


def is_scope(node: ast.AST) -> bool:
    return isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda | ast.comprehension)


def top_level_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run at module level: the body, and the blocks of its compound statements (not defs)."""
    for statement in body:
        if isinstance(statement, ast.If | ast.For | ast.While | ast.With | ast.Try):
            nested = [getattr(statement, name, []) for name in ("body", "orelse", "finalbody")]
            nested += [handler.body for handler in getattr(statement, "handlers", [])]
            yield statement
            for block in nested:
                yield from top_level_statements(block)
        else:
            yield statement


def free_names(tree: ast.AST) -> set[str]:
    """Names a cell reads without binding them itself: what it takes from earlier cells."""
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return read - assigned_names(tree) - set(import_bindings(tree))


@dataclass
class NotebookContext:
    """What the instructor notebook says about one notebook of the assignment."""

    name: str
    source: NotebookNode  # the instructor notebook (solutions/)
    release: NotebookNode | None  # the student notebook (notebooks/), when there is one
    namespace: dict[str, str]  # names the locked cells import: {name: dotted path}
    protected: set[str]  # names the locked cells read from the namespace, minus the exercises' own
    _checksums: dict[str, set[str]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_notebooks(cls, name: str, source: NotebookNode, release: NotebookNode | None) -> NotebookContext:
        locked = [parse(c.source) for c in source.cells if c.cell_type == "code" and not is_answer_cell(c)]
        answers = [parse(c.source) for c in source.cells if c.cell_type == "code" and is_answer_cell(c)]
        namespace = dict(KERNEL_NAMES)
        for tree in filter(None, locked):
            namespace.update(import_bindings(tree))
        read = set().union(*(free_names(tree) for tree in filter(None, locked)))
        own = set().union(*(assigned_names(tree) | set(import_bindings(tree)) for tree in filter(None, answers)))
        return cls(name, source, release, namespace, read - own)

    def cells(self, notebook: NotebookNode | None) -> dict[str, NotebookNode]:
        return {} if notebook is None else {grade_id(c): c for c in notebook.cells if grade_id(c)}

    def given_code(self, cell_id: str) -> str:
        """What the release gives in an answer cell (signature, docstring, markers, stub)."""
        released = self.cells(self.release).get(cell_id)
        if released is not None:
            return released.source
        return SOLUTION_REGION.sub("", self.cells(self.source)[cell_id].source)

    def locked_versions(self, cell_id: str) -> list[NotebookNode]:
        """The instructor's and the release's version of a cell (the release hides the hidden tests)."""
        return [c for c in (self.cells(self.source)[cell_id], self.cells(self.release).get(cell_id)) if c]

    def checksums(self, cell_id: str) -> set[str]:
        """The nbgrader checksums a locked cell may have: recomputed from each version, and as the release stored it."""
        if cell_id not in self._checksums:
            versions = self.locked_versions(cell_id)
            stored = {c.metadata["nbgrader"].get("checksum") for c in versions}
            self._checksums[cell_id] = ({checksum(c) for c in versions} | stored) - {None}
        return self._checksums[cell_id]

    def solution_code(self, cell_id: str) -> str:
        return "".join(SOLUTION_REGION.findall(self.cells(self.source)[cell_id].source))


# --- Suspicious code ---------------------------------------------------------------------------------------------


@functools.cache
def reference_owners() -> dict[str, str]:
    """``{dotted reference function: exercises it is the reference of}``."""
    owners: dict[str, list[str]] = {}
    for exercise, names in REFERENCES.items():
        for name in names:
            owners.setdefault(name, []).append(exercise.split("_")[0].upper())
    return {name: "/".join(exercises) for name, exercises in owners.items()}


def classify(path: str) -> tuple[str, str] | None:
    """``(reason, detail)`` for a dotted name an answer cell uses, None when it is harmless."""
    parts = path.split(".")
    for length in range(len(parts), 0, -1):
        prefix = ".".join(parts[:length])
        if owner := reference_owners().get(prefix):
            return "reference implementation", f"uses {path}: {prefix} is the reference implementation of {owner}"
        if prefix in SUSPICIOUS_NAMES:
            reason = SUSPICIOUS_NAMES[prefix]
            return (reason, f"uses {path}") if reason else None
    return None


def constant_int(node: ast.AST) -> int | None:
    """The value of an integer expression made of literals (``50 * 1024 ** 2``), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in INTEGER_OPERATIONS:
        left, right = constant_int(node.left), constant_int(node.right)
        if left is None or right is None or (isinstance(node.op, ast.Pow) and not 0 <= right <= 64):
            return None  # a huge power would take the scanner itself down
        return INTEGER_OPERATIONS[type(node.op)](left, right)
    return None


class CodeScanner(ast.NodeVisitor):
    """Collects ``(reason, detail)`` for one cell's syntax tree."""

    def __init__(self, tree: ast.Module, context: NotebookContext):
        self.context = context
        self.imports = import_bindings(tree)
        self.local = assigned_names(tree)
        self.found: list[tuple[str, str]] = []
        self.in_chain: set[int] = set()  # Name/Attribute nodes already judged as part of a longer chain

    def flag(self, reason: str, detail: str) -> None:
        if (reason, detail) not in self.found:
            self.found.append((reason, detail))

    def resolve(self, node: ast.AST) -> str | None:
        """The dotted name an expression stands for (``f.char_to_token_positions`` after ``import qa_lib.features
        as f``), None for local objects and anything computed."""
        if isinstance(node, ast.Name):
            if node.id in self.imports:
                return self.imports[node.id]
            if node.id in self.local:
                return None
            if node.id in self.context.namespace:
                return self.context.namespace[node.id]
            return node.id if hasattr(builtins, node.id) or node.id == "__builtins__" else None
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return f"{base}.{node.attr}" if base else None
        if isinstance(node, ast.Call) and self.resolve(node.func) == "getattr" and len(node.args) >= 2:
            name, base = node.args[1], self.resolve(node.args[0])
            return f"{base}.{name.value}" if base and isinstance(name, ast.Constant) else None
        if isinstance(node, ast.Call):
            return self.resolve(node.func)  # get_ipython().events: the call's result stands for its function
        return None

    def judge_chain(self, node: ast.AST) -> None:
        """Classify the dotted name of the longest chain (``a.b.c``, ``getattr(a, "b")``) once, not its parts."""
        if id(node) in self.in_chain:
            return
        for inner in ast.walk(node):
            if isinstance(inner, ast.Name | ast.Attribute | ast.Call):
                self.in_chain.add(id(inner))
        path = self.resolve(node)
        verdict = classify(path) if path else None
        if verdict:
            self.flag(*verdict)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.judge_chain(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in SUSPICIOUS_ATTRIBUTES:
            self.flag(SUSPICIOUS_ATTRIBUTES[node.attr], f"uses .{node.attr}")
        if isinstance(node.ctx, ast.Store | ast.Del):
            self.judge_patch(node)
        self.judge_chain(node)
        self.generic_visit(node)

    def judge_patch(self, target: ast.AST) -> None:
        """An attribute assigned on an object the cell did not create: a library, a builtin, the judge."""
        root = target
        while isinstance(root, ast.Attribute | ast.Subscript):
            root = root.value
        if isinstance(root, ast.Name) and (root.id not in self.local or root.id in self.imports):
            self.flag("monkeypatch", f"assigns {ast.unparse(target)}, which belongs to {root.id}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            verdict = classify(alias.name)
            if verdict:
                self.flag(verdict[0], f"imports {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            verdict = classify(f"{node.module}.{alias.name}")
            if verdict:
                self.flag(verdict[0], f"imports {alias.name} from {node.module}")

    def visit_Call(self, node: ast.Call) -> None:
        if self.harmless_magic(node):
            return
        function = self.resolve(node.func)
        if function == "getattr" and len(node.args) >= 2 and not isinstance(node.args[1], ast.Constant):
            self.flag("obfuscation", f"getattr with a computed name: {ast.unparse(node)[:80]}")
        elif function == "getattr":  # getattr(module, "name") is module.name
            self.judge_chain(node)
        if function in {"exec", "eval", "compile"} and node.args and not isinstance(node.args[0], ast.Constant):
            self.flag("obfuscation", f"{function}() of a built string: {ast.unparse(node)[:80]}")
        if function == "range" and any((constant_int(a) or 0) >= LONG_RANGE for a in node.args):
            self.flag("output flood", f"very long loop: {ast.unparse(node)[:80]}")
        if any(keyword.arg == "start_new_session" for keyword in node.keywords):
            self.flag("process", "starts a process in a new session (it outlives the grader's kernel)")
        self.generic_visit(node)

    def harmless_magic(self, node: ast.Call) -> bool:
        """``%matplotlib inline``, ``%timeit f(x)``: magics students use while trying things out. The code a
        timing magic runs is a string argument: it is scanned as code of the cell."""
        magic = node.args[0] if node.args else None
        if self.resolve(node.func) not in MAGIC_CALLS or not isinstance(magic, ast.Constant):
            return False
        if magic.value not in HARMLESS_MAGICS:
            return False
        for argument in node.args[1:]:
            code = (
                parse(argument.value)
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str)
                else None
            )
            if code is not None:
                self.local |= assigned_names(code)
                self.visit(code)
        return True

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.Mult):
            for data, count in ((node.left, node.right), (node.right, node.left)):
                repeated = isinstance(data, ast.List | ast.JoinedStr) or (
                    isinstance(data, ast.Constant) and isinstance(data.value, str | bytes)
                )
                if repeated and (constant_int(count) or 0) >= FLOOD:
                    self.flag("output flood", f"repeats data {constant_int(count):,} times: {ast.unparse(node)[:80]}")
        self.generic_visit(node)

    def visit_While(self, node: ast.While) -> None:
        forever = isinstance(node.test, ast.Constant) and bool(node.test.value)
        exits = any(isinstance(n, ast.Break | ast.Return | ast.Raise) for n in ast.walk(node))
        if forever and not exits:
            self.flag("unbounded loop", "`while True` without break, return or raise: the cell never ends")
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and item.name in ALWAYS_EQUAL_METHODS:
                self.flag("always-equal object", f"defines {node.name}.{item.name}: it can make any == or bool pass")
        self.generic_visit(node)


def rebinding_findings(tree: ast.Module, context: NotebookContext) -> list[tuple[str, str]]:
    """Module-level bindings of names the locked cells read, and of builtins; re-importing what the locked
    cells import under the same name (``import torch``) is harmless."""
    found = []
    for name in module_level_bindings(tree):
        if hasattr(builtins, name):
            found.append(("builtin rebound", f"binds `{name}`, a Python builtin"))
        elif name in context.protected:
            found.append(("test name rebound", f"binds `{name}`, which the locked cells read"))
    for name, path in import_bindings_at_top(tree).items():
        if (name in context.protected or hasattr(builtins, name)) and context.namespace.get(name) != path:
            found.append(("test name rebound", f"imports {path} as `{name}`, which the locked cells read"))
    return list(dict.fromkeys(found))


def import_bindings_at_top(tree: ast.Module) -> dict[str, str]:
    statements = [s for s in top_level_statements(tree.body) if isinstance(s, ast.Import | ast.ImportFrom)]
    return import_bindings(ast.Module(body=statements, type_ignores=[]))


def code_findings(source: str, context: NotebookContext) -> list[tuple[str, str]]:
    """``(reason, detail)`` for everything suspicious in one editable code cell."""
    tree = parse(source)
    if tree is None:
        return []
    scanner = CodeScanner(tree, context)
    scanner.visit(tree)
    return scanner.found + rebinding_findings(tree, context)


# --- nbgrader structure ------------------------------------------------------------------------------------------


def checksum(cell: NotebookNode) -> str | None:
    """nbgrader's checksum of a cell (source, type, flags, grade id, points); None when its metadata is broken."""
    from nbgrader.utils import compute_checksum

    try:
        return compute_checksum(cell)
    except (KeyError, AttributeError, TypeError, ValueError):
        return None


def locked_cell_change(cell: NotebookNode, context: NotebookContext) -> str | None:
    """Why a locked cell differs from the instructor's and the release's version, None when it does not."""
    versions = context.locked_versions(grade_id(cell))
    if checksum(cell) in context.checksums(grade_id(cell)):
        return None
    if all(cell.source != c.source for c in versions):
        return "its source differs from the release (nbgrader checksum mismatch)"
    return "its nbgrader metadata (flags or points) differ from the release (nbgrader checksum mismatch)"


def structure_findings(submitted: NotebookNode, context: NotebookContext) -> list[tuple[str, str, str]]:
    """``(cell, reason, detail)``: grade cells deleted, duplicated or unknown, locked cells edited, answer cells
    whose nbgrader metadata changed."""
    expected = context.cells(context.source)
    counts = Counter(grade_id(c) for c in submitted.cells if grade_id(c))
    found = [
        (cell_id, "grade cell deleted", "no cell has this grade id") for cell_id in expected if not counts[cell_id]
    ]
    found += [
        (cell_id, "grade cell duplicated", f"{n} cells have this grade id") for cell_id, n in counts.items() if n > 1
    ]
    found += [
        (cell_id, "unknown grade cell", "the assignment has no such grade id")
        for cell_id in counts
        if cell_id not in expected
    ]
    for cell in submitted.cells:
        original = expected.get(grade_id(cell))
        if original is None:
            continue
        if is_answer_cell(original) and nbgrader_flags(cell) != nbgrader_flags(original):
            changed = sorted(k for k, v in nbgrader_flags(original).items() if nbgrader_flags(cell)[k] != v)
            found.append((grade_id(cell), "answer cell metadata changed", f"changed: {', '.join(changed)}"))
        elif not is_answer_cell(original) and (change := locked_cell_change(cell, context)):
            found.append((grade_id(cell), "locked cell edited", change))
    return found


def editable_code_cells(submitted: NotebookNode, context: NotebookContext) -> Iterator[tuple[str, str]]:
    """``(cell label, source)`` of the code a student wrote: answer cells and cells the student added (the
    release's own cells without nbgrader metadata, such as ``USE_DRIVE = True``, excepted). Edited locked
    cells are reported as edited, not scanned: their given code uses files and processes by design."""
    expected = context.cells(context.source)
    given = {c.source for nb in (context.source, context.release) if nb for c in nb.cells if not grade_id(c)}
    for index, cell in enumerate(submitted.cells):
        cell_id = grade_id(cell)
        if cell.cell_type != "code":
            continue
        if cell_id is None and cell.source not in given:
            yield f"cell {index}", cell.source
        elif cell_id is not None and (cell_id not in expected or is_answer_cell(expected[cell_id])):
            yield cell_id, cell.source


# --- Copies ------------------------------------------------------------------------------------------------------

# copydetect fingerprints the filtered text (names -> V/F/O, strings -> S, comments and whitespace dropped) by
# its K-character k-grams. Calibrated in tests/test_integrity.py on the solution notebooks, the reference
# implementations and independently written answers (tests/honest_answers.py) against the same code with
# every local name renamed and the layout rewritten (ast.unparse): with K = 20 honest pairs score at most 0.48,
# disguised copies at least 0.81 (K = 12: 0.67 vs 0.81; K = 25, copydetect's default: 0.39 vs 0.66).
# WINDOW = 1 keeps every k-gram: winnowing exists to shrink large corpora, and with a wider window the selected
# k-grams depend on Python's per-process string hashes, so a score would change from one run to the next.
K, WINDOW = 20, 1
MIN_FILTERED = 60  # shorter answers (E3, E4: one line each) are written alike by everyone: no copy check
SOLUTION_THRESHOLD = 0.65  # similarity to the instructor solution or to the reference implementation
PAIR_THRESHOLD = 0.65  # similarity between two students' answers to the same exercise
MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION", "### START CODE HERE ###", "### END CODE HERE ###")


def own_code(source: str, given: str) -> str:
    """The lines of an answer cell the release did not give (signature, docstring, markers and stub removed)."""
    given_lines = {line.strip() for line in given.split("\n") if line.strip()} | set(MARKERS)
    return "\n".join(line for line in source.split("\n") if line.strip() not in given_lines).strip("\n")


@functools.cache  # the solution's and the references' fingerprints are compared with every student's
def fingerprint(code: str):
    """copydetect's fingerprint of a piece of Python, None when it is too short to tell copies from coincidence."""
    from copydetect import CodeFingerprint

    if not code.strip():
        return None
    try:
        result = CodeFingerprint("answer.py", K, WINDOW, fp=io.StringIO(code), language="python")
    except (ValueError, IndexError):
        return None
    return result if len(result.filtered_code) >= MIN_FILTERED and result.token_coverage else None


def similarity(first, second) -> float:
    """Share of the more covered side that the other contains: padding one copy with extra code does not hide it."""
    from copydetect import compare_files

    _, (one, two), _ = compare_files(first, second)
    return float(max(one, two))


def reference_source(dotted: str) -> str:
    """The source of a qa_lib function, read from its module file (no import: torch is not loaded to read text)."""
    module, name = dotted.rsplit(".", 1)
    spec = importlib.util.find_spec(module)
    text = Path(spec.origin).read_text(encoding="utf-8")
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(text, node)
    raise LookupError(f"{dotted}: no such function")


@functools.cache
def reference_code(cell_id: str) -> str:
    return "\n\n".join(reference_source(name) for name in REFERENCES.get(cell_id, ()))


@dataclass(frozen=True)
class Answer:
    student: str
    notebook: str
    cell: str
    code: str  # the student's own code in the cell


def copy_finding(answer: Answer, reason: str, detail: str, score: float, other: str, other_code: str) -> Finding:
    return Finding(answer.student, answer.notebook, answer.cell, reason, detail, score, other, answer.code, other_code)


def copy_of_kit(answer: Answer, context: NotebookContext) -> list[Finding]:
    """The answer against the instructor solution and the library's reference implementation."""
    mine = fingerprint(answer.code)
    solution = context.solution_code(answer.cell)
    if mine is None:
        return []
    if normalised(answer.code) == normalised(solution):
        detail = "the answer is the solution notebook's code"
        return [copy_finding(answer, "identical to instructor solution", detail, 1.0, "instructor solution", solution)]
    found = []
    for reason, other, code in (
        ("close to instructor solution", "instructor solution", solution),
        ("close to reference implementation", "qa_lib reference", reference_code(answer.cell)),
    ):
        theirs = fingerprint(code)
        score = similarity(mine, theirs) if theirs else 0.0
        if score >= SOLUTION_THRESHOLD:
            found.append(copy_finding(answer, reason, f"{score:.0%} of the code matches ({other})", score, other, code))
    return found


def normalised(code: str) -> str:
    return "\n".join(line.strip() for line in code.split("\n") if line.strip())


def copies_between(answers: list[Answer]) -> list[Finding]:
    """Pairs of students whose answers to the same exercise are near-identical: one row for each of the two."""
    by_exercise: dict[tuple[str, str], list[Answer]] = {}
    for answer in answers:
        if fingerprint(answer.code) is not None:
            by_exercise.setdefault((answer.notebook, answer.cell), []).append(answer)
    found = []
    for group in by_exercise.values():
        for i, first in enumerate(group):
            for second in group[i + 1 :]:
                score = similarity(fingerprint(first.code), fingerprint(second.code))
                if score >= PAIR_THRESHOLD:
                    for one, two in ((first, second), (second, first)):
                        detail = f"{score:.0%} of the code matches {two.student}'s"
                        found.append(copy_finding(one, "copy between students", detail, score, two.student, two.code))
    return found


# --- A course ----------------------------------------------------------------------------------------------------


def notebooks_in(folder: Path) -> dict[str, NotebookNode]:
    return {path.stem: nbformat.read(path, as_version=4) for path in sorted(folder.glob("*.ipynb"))}


def assignment_folder(course_root: Path, kinds: tuple[str, ...], assignment: str) -> Path | None:
    """The first of ``<course>/<kind>/<assignment>`` that exists, else the kit's own (``solutions``, ``notebooks``)."""
    candidates = [course_root / kind / assignment for kind in kinds]
    try:
        candidates.append(kit_root() / kinds[0] / assignment)
    except FileNotFoundError:
        pass  # an installed kit without its repository: only the course's own folders count
    return next((folder for folder in candidates if folder.is_dir()), None)


def contexts(course_root: Path, assignment: str) -> dict[str, NotebookContext]:
    source = assignment_folder(course_root, ("solutions", "source"), assignment)
    if source is None:
        raise FileNotFoundError(f"{course_root}: no solutions/{assignment}/ or source/{assignment}/ notebooks")
    release_folder = assignment_folder(course_root, ("notebooks", "release"), assignment)
    releases = notebooks_in(release_folder) if release_folder else {}
    return {
        name: NotebookContext.from_notebooks(name, notebook, releases.get(name))
        for name, notebook in notebooks_in(source).items()
    }


@dataclass
class IntegrityReport:
    findings: list[Finding]
    students: list[str]
    notebooks: int  # submitted notebooks read


def scan_notebook(student: str, name: str, submitted: NotebookNode, context: NotebookContext) -> list[Finding]:
    """Structure and suspicious-code findings, one row per cell and reason (the details joined)."""
    found = list(structure_findings(submitted, context))
    for cell, source in editable_code_cells(submitted, context):
        found += [(cell, reason, detail) for reason, detail in code_findings(source, context)]
    details: dict[tuple[str, str], list[str]] = {}
    for cell, reason, detail in found:
        details.setdefault((cell, reason), []).append(detail)
    return [Finding(student, name, cell, reason, "; ".join(text)) for (cell, reason), text in details.items()]


def submitted_answers(student: str, name: str, submitted: NotebookNode, context: NotebookContext) -> list[Answer]:
    answers = context.cells(context.source)
    return [
        Answer(student, name, grade_id(cell), own_code(cell.source, context.given_code(grade_id(cell))))
        for cell in submitted.cells
        if cell.cell_type == "code" and grade_id(cell) in answers and is_answer_cell(answers[grade_id(cell)])
    ]


def scan_course(course_root: str | Path = ".", assignment: str = ASSIGNMENT) -> IntegrityReport:
    """Read every ``submitted/<student>/<assignment>/*.ipynb`` of a course and report what looks wrong."""
    course_root = Path(course_root)
    if not course_root.is_dir():
        raise FileNotFoundError(f"{course_root}: no such course directory")
    by_name = contexts(course_root, assignment)
    findings: list[Finding] = []
    answers: list[Answer] = []
    students, read = set(), 0
    for path in sorted(course_root.glob(f"submitted/*/{assignment}/*.ipynb")):
        student, name = path.parts[-3], path.stem
        students.add(student)
        if name not in by_name:
            findings.append(Finding(student, name, "-", "unknown notebook", f"{path.name} is not in the assignment"))
            continue
        try:
            submitted = nbformat.read(path, as_version=4)
        except (ValueError, TypeError, KeyError, AttributeError, OSError) as error:  # not JSON, not a notebook
            findings.append(Finding(student, name, "-", "unreadable notebook", f"{type(error).__name__}: {error}"))
            continue
        read += 1
        findings += scan_notebook(student, name, submitted, by_name[name])
        for answer in submitted_answers(student, name, submitted, by_name[name]):
            from_kit = copy_of_kit(answer, by_name[name])
            findings += from_kit
            # Answers copied from the kit share their source: naming it once beats a row for every pair of them.
            answers += [] if from_kit else [answer]
    findings += copies_between(answers)
    findings.sort(key=lambda f: (f.student, f.notebook, f.cell, f.reason))
    return IntegrityReport(findings, sorted(students), read)


# --- Output ------------------------------------------------------------------------------------------------------

COLUMNS = ("student", "notebook", "cell", "reason", "detail", "similarity", "other")


def table_lines(report: IntegrityReport) -> list[str]:
    """The findings as a table whose columns fit their longest entry, with a one-line summary first."""
    flagged = sorted({f.student for f in report.findings})
    lines = [
        f"integrity: {len(report.findings)} findings for {len(flagged)} of {len(report.students)} students "
        f"({report.notebooks} notebooks read)"
    ]
    if not report.findings:
        return lines
    table = [("student", "notebook", "cell", "reason", "detail")]
    table += [(f.student, f.notebook, f.cell, f.reason, f.detail) for f in report.findings]
    widths = [max(len(row[column]) for row in table) + 2 for column in range(4)]
    return lines + ["".join(v.ljust(w) for v, w in zip(row, widths)) + row[4] for row in table]


def write_csv(report: IntegrityReport, path: str | Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for f in report.findings:
            score = "" if f.similarity is None else f"{f.similarity:.3f}"
            writer.writerow([f.student, f.notebook, f.cell, f.reason, f.detail, score, f.other])


HTML_STYLE = """body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
.pair{display:flex;gap:1em}.pair>div{flex:1;min-width:0}pre{background:#f6f6f6;padding:8px;overflow-x:auto}
mark{background:#ffe08a}"""


def highlighted(code: str, other: str) -> tuple[str, str]:
    """Both sides of a copy as HTML, the matching passages marked (copydetect's slices of the raw text)."""
    from copydetect import compare_files
    from copydetect.utils import highlight_overlap

    first, second = fingerprint(code), fingerprint(other)
    if first is None or second is None:
        return html.escape(code), html.escape(other)
    _, _, (slices_one, slices_two) = compare_files(first, second)
    if not len(slices_one[0]):
        return html.escape(code), html.escape(other)
    one, _ = highlight_overlap(code, slices_one, "<mark>", "</mark>", escape_html=True)
    two, _ = highlight_overlap(other, slices_two, "<mark>", "</mark>", escape_html=True)
    return one, two


def copy_section(f: Finding) -> str:
    mine, theirs = highlighted(f.code, f.other_code)
    title = html.escape(f"{f.student} / {f.notebook} / {f.cell}: {f.reason} ({f.similarity:.0%}, {f.other})")
    return (
        f"<h3>{title}</h3><div class='pair'><div><h4>{html.escape(f.student)}</h4><pre>{mine}</pre></div>"
        f"<div><h4>{html.escape(f.other)}</h4><pre>{theirs}</pre></div></div>"
    )


def write_html(report: IntegrityReport, path: str | Path) -> None:
    """A self-contained page: the table of findings, then every copy with both cells side by side."""
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in astuple(f)[: len(COLUMNS)]) + "</tr>"
        for f in report.findings
    )
    header = "".join(f"<th>{html.escape(name)}</th>" for name in COLUMNS)
    copies = "".join(copy_section(f) for f in report.findings if f.is_copy)
    summary = html.escape(table_lines(report)[0])
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>qa-kit integrity</title><style>{HTML_STYLE}</style>"
        f"</head><body><h1>Integrity report</h1><p>{summary}</p><table><tr>{header}</tr>{rows}</table>"
        f"<h2>Copies</h2>{copies or '<p>none</p>'}</body></html>"
    )
    Path(path).write_text(page, encoding="utf-8")


def integrity_lines(course_root: str | Path, assignment: str = ASSIGNMENT) -> list[str]:
    """The integrity section of the grading demo: the terminal table."""
    return [
        "",
        "== Integrity of the submissions (static; nothing is run) ==",
        *table_lines(scan_course(course_root, assignment)),
    ]
