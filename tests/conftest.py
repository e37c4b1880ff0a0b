"""Pytest plugin: runs the MicroPython device tests next to the CPython host tests.

A file `test_*.py` in a folder named `device` (tests/device/) is a MicroPython
module that CPython cannot import. Its top-level `def test_*():` functions are
found by reading the source text, and each becomes its own pytest item. All
items of one module share ONE `.venv/bin/micropython` process, started when the
first of them runs, with MICROPYPATH=<repo>:<repo>/lib:<module dir> and
cwd=<repo>. tests/device/_runner.py runs the functions in source order and
frames each result (see its docstring); results are cached on the module node.

Header comments in a device module (the comment lines at its top):
    # heapsize: 64k     -> micropython -X heapsize=64k (default: the port's own)
    # timeout: 30       -> seconds for the whole module (default 60); at the
                           limit the whole process group is killed.

Functions that never report (timeout, crash, early exit) fail with a message
saying so plus the tail of the interpreter's output; an import error fails
every item with its traceback; SkipTest raised in a test becomes a pytest skip.
The interpreter can be overridden with the MICROPYTHON environment variable.
"""

import os
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUNNER_DIR = Path(__file__).resolve().parent / "device"  # holds _runner.py
DEFAULT_TIMEOUT_S = 60.0
TAIL_LINES = 25

_TEST_DEF = re.compile(r"^def (test_\w*)\s*\(", re.MULTILINE)
_HEADER = re.compile(r"^#\s*(heapsize|timeout)\s*:\s*(\S+)\s*$")
_HEAPSIZE = re.compile(r"^\d+[kKmM]?$")
_RUNNER_FRAME = re.compile(r'^  File ".*/_runner\.py", line \d+, in run$')
_FRAME = re.compile(r'^File "(?:.*/)?([^/"]+)", line (\d+).*$')


def micropython_path():
    return Path(os.environ.get("MICROPYTHON") or REPO / ".venv" / "bin" / "micropython")


def parse_header(source):
    """The `# key: value` comments before the first code line -> dict."""
    found = {}
    for line in source.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        m = _HEADER.match(stripped)
        if m:
            found[m.group(1)] = m.group(2)
    return found


class Result:
    def __init__(self, status, output="", detail="", us=0):
        self.status, self.output, self.detail, self.us = status, output, detail, us


def parse_output(text, mark):
    """Framed runner output -> ({name: Result}, import_traceback or None, done, plain lines)."""
    results, plain = {}, []
    current, result, body, detail = None, None, [], []
    import_error, in_import, done = None, False, False
    for line in text.splitlines():
        i = line.find(mark)
        if i < 0:
            (detail if result or in_import else body).append(line)
            plain.append(line)
            continue
        if i:
            (detail if result or in_import else body).append(line[:i])
            plain.append(line[:i])
        words = line[i + len(mark) :].split()
        kind = words[0] if words else ""
        if kind == "start" and len(words) == 2:
            current, result, body, detail = words[1], None, [], []
        elif kind == "result" and len(words) == 4 and words[1] == current:
            result = Result(words[2], "\n".join(body), us=int(words[3]))
        elif kind == "end" and in_import:
            import_error, in_import = "\n".join(detail), False
        elif kind == "end" and result is not None:
            result.detail = "\n".join(detail)
            results[current] = result
            current, result, body, detail = None, None, [], []
        elif kind == "import-error":
            in_import, detail = True, []
        elif kind == "done":
            done = True
    if current is not None and current not in results:
        results[current] = Result("unfinished", "\n".join(body))
    return results, import_error, done, plain


class DeviceModule(pytest.File):
    """One MicroPython test module; runs once, lazily, for all its items."""

    def collect(self):
        source = self.path.read_text(encoding="utf-8")
        self.header = parse_header(source)
        self._results = None
        for m in _TEST_DEF.finditer(source):
            lineno = source.count("\n", 0, m.start())
            yield DeviceItem.from_parent(self, name=m.group(1), lineno=lineno)

    def results(self):
        if self._results is None:
            names = [i.name for i in self.session.items if i.parent is self]
            self._results = self._run(names)
        return self._results

    def _run(self, names):
        """Start one interpreter for `names`; return {name: Result} for every name."""
        try:
            timeout_s = float(self.header.get("timeout", DEFAULT_TIMEOUT_S))
            if timeout_s <= 0:
                raise ValueError
        except ValueError:
            return self._all_fail(
                names,
                "bad '# timeout:' header {!r}: give seconds > 0".format(
                    self.header["timeout"]
                ),
            )
        heap = self.header.get("heapsize")
        if heap is not None and not _HEAPSIZE.match(heap):
            return self._all_fail(
                names, f"bad '# heapsize:' header {heap!r}: give e.g. 64k or 2m"
            )
        exe = micropython_path()
        if not os.access(exe, os.X_OK):
            return self._all_fail(
                names, f"no MicroPython interpreter at {exe}: run `make deps`"
            )

        mark = "@@mpt-" + secrets.token_hex(8)
        code = f"import _runner; _runner.run({mark!r}, {self.path.stem!r}, {tuple(names)!r})"
        argv = [str(exe)] + (["-X", "heapsize=" + heap] if heap else []) + ["-c", code]
        dirs = [REPO, REPO / "lib", self.path.parent, RUNNER_DIR]
        env = dict(
            os.environ, MICROPYPATH=":".join(dict.fromkeys(str(d) for d in dirs))
        )
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timed_out = False
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        elapsed = time.monotonic() - t0
        text = out.decode("utf-8", "replace")
        results, import_error, done, plain = parse_output(text, mark)

        if import_error is not None:
            return self._all_fail(
                names, f"module {self.path.name} failed to import:\n{import_error}"
            )
        if timed_out:
            why = f"interpreter timed out (module budget {timeout_s:g}s, '# timeout:' header) before this test reported"
        elif not done:
            why = f"interpreter died (exit code {proc.returncode} after {elapsed:.1f}s) before this test reported"
        else:
            why = "the runner finished without reporting this test"
        tail = "\n".join(plain[-TAIL_LINES:]) or "(no output)"
        for name in names:
            r = results.get(name)
            if r is None or r.status == "unfinished":
                results[name] = Result(
                    "fail",
                    r.output if r else "",
                    f"{why}.\n--- last {TAIL_LINES} lines of interpreter output ---\n{tail}",
                )
        return results

    def _all_fail(self, names, message):
        return {n: Result("fail", detail=message) for n in names}


class DeviceTestFailed(Exception):
    pass


def failure_text(detail):
    """Failure report: a one-line summary first (pytest's short summary shows it), then the detail.

    For a traceback the summary is the exception line and where it was raised;
    the runner's own frame is dropped from the traceback.
    """
    lines = [ln for ln in detail.splitlines() if not _RUNNER_FRAME.search(ln)]
    if not lines or not lines[0].startswith("Traceback"):
        return "\n".join(lines)
    frames = [ln.strip() for ln in lines if ln.lstrip().startswith('File "')]
    where = _FRAME.sub(r"\1:\2", frames[-1]) if frames else "?"
    summary = where + ": " + (lines[-1].strip() or "exception")
    return summary + "\n" + "\n".join(lines)


class DeviceItem(pytest.Item):
    def __init__(self, *, lineno, **kw):
        super().__init__(**kw)
        self.lineno = lineno

    def runtest(self):
        r = self.parent.results()[self.name]
        if r.output:
            self.add_report_section("call", "stdout (MicroPython)", r.output)
        self.user_properties.append(("micropython_us", r.us))
        if r.status == "skip":
            raise pytest.skip.Exception(r.detail or "skipped", _use_item_location=True)
        if r.status != "pass":
            raise DeviceTestFailed(r.detail)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, DeviceTestFailed):
            return failure_text(excinfo.value.args[0])
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, self.lineno, f"{self.name} (MicroPython)"


def pytest_pycollect_makemodule(module_path, parent):
    """Claim device modules before pytest's Python collector tries to import them."""
    if module_path.parent.name == "device":
        return DeviceModule.from_parent(parent, path=module_path)
    return None
