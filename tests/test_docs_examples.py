"""Every ```python block in README.md and docs/ runs, as a reader would paste it.

Each page's blocks run in order in one namespace (a page reads as one session), in a
fresh temporary working directory, under a time limit. A block that cannot run here
(a fragment of a worker's loop, a cluster, a GPU, the network, minutes of training) is
marked in the Markdown, invisibly on the rendered page, by an HTML comment on the line
just before its fence::

    <!-- skip: a fragment: the worker's own training functions are not defined -->
    ```python
    ...
    ```

A skipped block is still checked: it must compile, its imports of jaxpop must succeed
(an optional extra that is not installed is let pass), every ``module.name`` it reads
from an imported module must exist and every call of a jaxpop function or class must fit
its signature (old API names and keywords fail here). A deprecation warning that an
example triggers fails it too. Tracebacks point at the Markdown file and line.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import dataclasses
import importlib
import inspect
import pathlib
import re
import signal
import threading
import time
import types
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("**/*.md")])
TIMEOUT_S = 60  # per page; every page together takes a few seconds
PYTHON = {"python", "py", "python3"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
MARKER = re.compile(r"^\s*<!--\s*skip\s*:(?P<reason>.*?)-->\s*$")
ANY_MARKER = re.compile(r"<!--\s*skip\b")


@dataclasses.dataclass(frozen=True)
class Block:
    page: pathlib.Path
    line: int  # 1-based line of the first line of code (the one after the fence)
    code: str
    skip: str | None  # the reason, if marked

    def source(self) -> str:
        # blank lines in front so that line numbers in a traceback are the page's own
        return "\n" * (self.line - 1) + self.code

    def compiled(self) -> types.CodeType:
        return compile(self.source(), str(self.page), "exec")

    def __str__(self) -> str:
        return f"{_name(self.page)}:{self.line}"


def _name(page: pathlib.Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


def extract(page: pathlib.Path) -> list[Block]:
    """The page's python fenced blocks, in order, with their skip markers.

    Raises ``ValueError`` for a marker that marks no python block, or has no reason.
    """
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    previous = ""  # the last non-blank line outside a fence
    i = 0
    while i < len(lines):
        line = lines[i]
        opening = FENCE.match(line)
        if not opening:
            if ANY_MARKER.search(line) and not MARKER.match(line):
                raise ValueError(f"{page.name}:{i + 1}: write a marker as <!-- skip: why -->")
            if line.strip():
                if MARKER.match(previous):
                    raise ValueError(f"{page.name}:{i}: a skip marker not before a fence")
                previous = line
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].strip().split(" ")[0].lower()
        closing = re.compile(rf"^\s*{fence[0]}{{{len(fence)},}}\s*$")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        marker = MARKER.match(previous)
        if language in PYTHON:
            body = lines[i + 1 : end]  # dedented by the fence's indent (a fence in a list)
            code = [ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in body]
            reason = marker["reason"].strip() if marker else None
            if marker and not reason:
                raise ValueError(f"{page.name}:{i}: a skip marker must say why")
            blocks.append(Block(page, i + 2, "\n".join(code) + "\n", reason))
        elif marker:
            raise ValueError(f"{page.name}:{i}: a skip marker before a {language!r} block")
        previous = lines[end] if end < len(lines) else ""
        i = end + 1
    if MARKER.match(previous):
        raise ValueError(f"{page.name}: a skip marker at the end of the page")
    return blocks


BLOCKS = {page: extract(page) for page in PAGES}
PAGES_WITH_CODE = [page for page in PAGES if BLOCKS[page]]


@contextlib.contextmanager
def time_limit(seconds: float, what: str):
    """Raises ``TimeoutError`` in the code under it after ``seconds`` (main thread)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "setitimer"
    ):
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"{what} ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _attribute_chains(tree: ast.AST) -> list[tuple[int, list[str]]]:
    """``(line, ["a", "b", "c"])`` for each outermost ``a.b.c`` read in ``tree``."""
    chains, inner = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            parts, value = [], node
            while isinstance(value, ast.Attribute):
                inner.add(id(value.value))
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name):
                chains.append((node.lineno, [value.id, *reversed(parts)]))
    return chains


def check_statically(block: Block, namespace: dict, imported: dict) -> None:
    """A skipped block compiles, its jaxpop imports work, and every ``module.name`` it
    reads exists (followed through modules and classes). ``imported`` collects the names
    that the page's skipped blocks import, for the blocks after them."""
    block.compiled()  # a SyntaxError names the page and line
    tree = ast.parse(block.source())
    scratch = {**imported, **namespace}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            statement = compile(ast.Module(body=[node], type_ignores=[]), str(block.page), "exec")
            try:
                exec(statement, scratch)
            except ModuleNotFoundError as e:  # an optional extra (ray, wandb, ...) may be absent
                if (e.name or "").split(".")[0] == "jaxpop":
                    raise
    imported.update((k, v) for k, v in scratch.items() if k not in namespace)
    for line, (name, *attributes) in _attribute_chains(tree):
        value = scratch.get(name, getattr(builtins, name, None))
        for attribute in attributes:
            if not isinstance(value, types.ModuleType | type):
                break
            if not hasattr(value, attribute) and isinstance(value, types.ModuleType):
                with contextlib.suppress(ImportError):  # a submodule not imported yet
                    importlib.import_module(f"{value.__name__}.{attribute}")
            assert hasattr(value, attribute), (
                f"{_name(block.page)}:{line}: {name}.{'.'.join(attributes)}: "
                f"{value.__name__} has no {attribute!r}"
            )
            value = getattr(value, attribute)
    _check_calls(block, tree, scratch)


def _jaxpop_callable(node: ast.expr, scope: dict):
    """What ``node`` (``name`` or ``module.name``) names, if it is a jaxpop function or
    class reached through modules only; else ``None``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in scope:
        return None
    value = scope[node.id]
    for attribute in reversed(parts):
        if not isinstance(value, types.ModuleType):
            return None
        value = getattr(value, attribute, None)
    if not isinstance(value, types.FunctionType | type):
        return None
    return value if getattr(value, "__module__", "").startswith("jaxpop") else None


def _check_calls(block: Block, tree: ast.AST, scope: dict) -> None:
    """Every call of a jaxpop function or class passes arguments its signature takes."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or any(k.arg is None for k in node.keywords):
            continue
        if any(isinstance(arg, ast.Starred) for arg in node.args):
            continue
        target = _jaxpop_callable(node.func, scope)
        if target is None:
            continue
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            continue
        try:
            signature.bind(*node.args, **{k.arg: None for k in node.keywords})
        except TypeError as e:
            call = ast.unparse(node.func)
            raise AssertionError(f"{_name(block.page)}:{node.lineno}: {call}(...): {e}") from None


def run_page(blocks: list[Block], timeout_s: float = TIMEOUT_S) -> float:
    """Runs a page's blocks in order in one namespace (checks the skipped ones); the
    seconds it took. Run it in the directory the examples should write into."""
    namespace: dict = {"__name__": "__main__"}
    imported: dict = {}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with time_limit(timeout_s, _name(blocks[0].page)):
            for block in blocks:
                if block.skip is None:
                    exec(block.compiled(), namespace)
                else:
                    check_statically(block, namespace, imported)
    elapsed = time.perf_counter() - start
    deprecated = [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, DeprecationWarning | FutureWarning)
        and (w.filename == str(blocks[0].page) or "jaxpop" in str(w.message))
    ]
    assert not deprecated, "the examples use deprecated names:\n" + "\n".join(deprecated)
    assert elapsed < timeout_s, f"{_name(blocks[0].page)} took {elapsed:.0f} s"
    return elapsed


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_name)
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write runs/..., schedule.json, ...
    run_page(BLOCKS[page])


def test_the_blocks_are_found_and_every_skip_says_why():
    blocks = [block for page in PAGES for block in BLOCKS[page]]
    assert len(blocks) >= 30, [str(block) for block in blocks]
    runnable = [block for block in blocks if block.skip is None]
    assert len(runnable) >= 15, "examples that ran before are skipped now"
    for block in blocks:
        assert block.skip is None or len(block.skip) >= 10, f"{block}: say why it is skipped"


def test_the_extractor_reads_markers_and_fences(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- skip: needs a cluster -->\n"
        "```python\ny = 2\n```\n\n- a list\n\n    ```python\n    z = 3\n    ```\n"
        "```bash\nls\n```\n"
    )
    blocks = extract(page)
    assert [(b.line, b.code, b.skip) for b in blocks] == [
        (4, "x = 1\n", None),
        (9, "y = 2\n", "needs a cluster"),
        (15, "z = 3\n", None),
    ]
    for bad in (
        "<!-- skip: why -->\n\ntext\n```python\nx\n```\n",
        "<!-- skip: why -->\n```bash\nls\n```\n",
        "<!-- skip -->\n```python\nx\n```\n",
        "<!-- skip:  -->\n```python\nx\n```\n",
    ):
        page.write_text(bad)
        with pytest.raises(ValueError):
            extract(page)


def _page(tmp_path: pathlib.Path, *blocks: str, skip: bool = False) -> list[Block]:
    marker = "<!-- skip: a fragment for the test -->\n" if skip else ""
    page = tmp_path / "page.md"
    page.write_text("".join(f"{marker}```python\n{code}\n```\n\n" for code in blocks))
    return extract(page)


def test_a_broken_example_fails_with_its_page_and_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_page(_page(tmp_path, "import jax", "key = jax.random.key(0)"))  # one namespace
    with pytest.raises(NameError) as error:
        run_page(_page(tmp_path, "x = 1", "y = jax.random.key(0)"))
    where = [(str(entry.path), entry.lineno + 1) for entry in error.traceback]
    assert (str(tmp_path / "page.md"), 6) in where  # the page's own line
    with pytest.raises(AssertionError, match="deprecated"):
        run_page(_page(tmp_path, "import warnings\nwarnings.warn('old', DeprecationWarning)"))


def test_skipped_examples_are_still_checked(tmp_path):
    run_page(_page(tmp_path, "import not_installed_extra\nfrom jaxpop import vectorized as vz\n"
                   "vz.round_fn", "vz.record", skip=True))  # fmt: skip
    with pytest.raises(SyntaxError):
        run_page(_page(tmp_path, "while True\n    ...", skip=True))
    with pytest.raises(ImportError):
        run_page(_page(tmp_path, "from jaxpop.mutators import NoSuchMutator", skip=True))
    with pytest.raises(AssertionError, match="has no 'old_name'"):
        run_page(_page(tmp_path, "from jaxpop import vectorized as vz", "vz.old_name()", skip=True))
    with pytest.raises(AssertionError, match="unexpected keyword argument 'old_keyword'"):
        run_page(_page(tmp_path, "from jaxpop.checkpointing import ParamStore\n"
                       "store = ParamStore('params', old_keyword=1)", skip=True))  # fmt: skip


def test_an_example_that_runs_too_long_is_stopped(tmp_path):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("the time limit needs the main thread")
    with pytest.raises(TimeoutError):
        run_page(_page(tmp_path, "import time\ntime.sleep(10)"), timeout_s=0.2)
