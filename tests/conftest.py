"""Pytest plugin: runs the MicroPython device tests next to the CPython host tests.

A file `test_*.py` in a folder named `device` (tests/device/) is a MicroPython
module that CPython cannot import. Its top-level `def test_*():` functions are
found by reading the source text, and each becomes one pytest item per
interpreter, named `test_x[unix64]` and `test_x[esp32]`:

  unix64  `.venv/bin/micropython`, the stock 64-bit unix port; sources are
          compiled at import. MICROPYPATH=<repo>:<repo>/lib:<module dir>.
  esp32   build/esp32/micropython (tools/mpbuild.py, built here when out of
          date): 32-bit, single floats, GIL, the ESP32's 112 KB heap, the
          firmware, HAL, simulator and umqtt.simple frozen as on a board; the
          module's folder is compiled to .mpy by that build's mpy-cross into
          build/esp32/device/ (only changed files) and used instead of it.

`--micropython unix64|esp32|both` (default both) picks the interpreters; the
fixture `mp_interpreter` gives host tests (the scenario library) the same
choice. All items of one module and interpreter share ONE process, started
when the first of them runs, with cwd=<repo>. tests/device/_runner.py runs the
functions in source order and frames each result (see its docstring); results
are cached on the module node.

Header comments in a device module (the comment lines at its top):
    # heapsize: 64k     -> micropython -X heapsize=64k (default: the port's own;
                           on esp32 never more than its 112 KB)
    # timeout: 30       -> seconds for the whole module (default 60); at the
                           limit the whole process group is killed.

Functions that never report (timeout, crash, early exit) fail with a message
saying so plus the tail of the interpreter's output; an import error fails
every item with its traceback; SkipTest raised in a test becomes a pytest skip.
The unix64 interpreter can be overridden with the MICROPYTHON environment variable.
"""

import os
import re
import secrets
import signal
import subprocess
import sys
import threading
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


INTERPRETERS = ("unix64", "esp32")
ESP32_HEAP_K = 112  # ESP32_GENERIC without PSRAM (tools/mpbuild.py)
ESP32_BUILD = REPO / "build" / "esp32"


def micropython_path():
    return Path(os.environ.get("MICROPYTHON") or REPO / ".venv" / "bin" / "micropython")


def pytest_addoption(parser):
    parser.addoption(
        "--micropython",
        choices=("both",) + INTERPRETERS,
        default="both",
        help="interpreters for device tests and the scenario library: unix64 (.venv/bin/micropython), "
        "esp32 (build/esp32/micropython, built by tools/mpbuild.py) or both (default)",
    )


def selected_interpreters(config):
    try:
        choice = config.getoption("--micropython")
    except ValueError:  # the plugin loaded without its option (a test's own pytest run)
        choice = "unix64"
    return INTERPRETERS if choice == "both" else (choice,)


class _Esp32Build:
    """tools/mpbuild.py run once per test session (it does nothing when up to
    date); its failure message fails every esp32 item."""

    lock = threading.Lock()
    result = None

    @classmethod
    def ensure(cls):
        with cls.lock:
            if cls.result is None:
                p = subprocess.run(
                    [sys.executable, str(REPO / "tools" / "mpbuild.py"), "build", "--quiet"],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                if p.returncode != 0:
                    cls.result = (None, "tools/mpbuild.py failed (exit %d):\n%s" % (p.returncode, p.stderr[-3000:]))
                else:
                    paths = subprocess.run(
                        [sys.executable, str(REPO / "tools" / "mpbuild.py"), "paths"],
                        capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    import json

                    cls.result = (json.loads(paths.stdout), None)
            return cls.result


def esp32_paths():
    """(paths of the ESP32-faithful build as tools/mpbuild.py prints them, None) or (None, why not)."""
    return _Esp32Build.ensure()


def interpreter_path(name):
    """The executable of interpreter `name`; fails the calling test when the esp32 build fails."""
    if name == "unix64":
        return micropython_path()
    paths, why = esp32_paths()
    if paths is None:
        pytest.fail(why, pytrace=False)
    return Path(paths["micropython"])


def compile_device_dir(src_dir, paths):
    """Every .py of src_dir compiled with the esp32 build's mpy-cross into
    build/esp32/device/<folder>/ (only files newer than their .mpy); returns
    that folder. Raises RuntimeError with mpy-cross's message."""
    out = ESP32_BUILD / "device" / src_dir.name
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(src_dir.glob("*.py")):
        dst = out / (src.stem + ".mpy")
        if dst.exists() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns:
            continue
        tmp = dst.with_name(dst.name + ".tmp")
        p = subprocess.run(
            [paths["mpy_cross"], "-march=" + paths["mpy_cross_arch"], "-s", src.name, "-o", str(tmp), str(src)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if p.returncode != 0:
            raise RuntimeError("mpy-cross %s:\n%s" % (src, p.stderr.strip()))
        os.replace(tmp, dst)
    return out


@pytest.fixture
def esp32_build():
    """Paths of the ESP32-faithful build (tools/mpbuild.py paths), built when out of date."""
    paths, why = esp32_paths()
    if paths is None:
        pytest.fail(why, pytrace=False)
    return paths


@pytest.fixture
def mp_interpreter(request):
    """(name, executable) of one selected interpreter: a test asking for it runs once per interpreter."""
    return request.param, interpreter_path(request.param)


def pytest_generate_tests(metafunc):
    if "mp_interpreter" in metafunc.fixturenames:
        names = selected_interpreters(metafunc.config)
        metafunc.parametrize("mp_interpreter", names, indirect=True, ids=names)


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
        self._results = {}
        interps = selected_interpreters(self.config)
        for interp in interps:
            for m in _TEST_DEF.finditer(source):
                lineno = source.count("\n", 0, m.start())
                yield DeviceItem.from_parent(
                    self, name="%s[%s]" % (m.group(1), interp), lineno=lineno, func=m.group(1), interp=interp
                )

    def results(self, interp):
        if interp not in self._results:
            names = [i.func for i in self.session.items if i.parent is self and i.interp == interp]
            self._results[interp] = self._run(names, interp)
        return self._results[interp]

    def _command(self, interp, heap):
        """(argv head, MICROPYPATH dirs) for interp, or raise RuntimeError saying why not."""
        if interp == "unix64":
            exe = micropython_path()
            if not os.access(exe, os.X_OK):
                raise RuntimeError(f"no MicroPython interpreter at {exe}: run `make deps`")
            return [str(exe)] + (["-X", "heapsize=" + heap] if heap else []), [self.path.parent, RUNNER_DIR]
        paths, why = esp32_paths()
        if paths is None:
            raise RuntimeError(why)
        k = ESP32_HEAP_K
        if heap:  # a module may ask for less than the ESP32 has, never for more
            n = int(heap[:-1]) * {"k": 1, "m": 1024}[heap[-1].lower()] if heap[-1] in "kKmM" else int(heap) // 1024
            k = min(k, n)
        dirs = [compile_device_dir(self.path.parent, paths)]
        if RUNNER_DIR != self.path.parent:
            dirs.append(compile_device_dir(RUNNER_DIR, paths))
        return [paths["micropython"], "-X", "heapsize=%dk" % k], dirs

    def _run(self, names, interp):
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
        try:
            head, module_dirs = self._command(interp, heap)
        except RuntimeError as e:
            return self._all_fail(names, str(e))

        mark = "@@mpt-" + secrets.token_hex(8)
        code = f"import _runner; _runner.run({mark!r}, {self.path.stem!r}, {tuple(names)!r})"
        argv = head + ["-c", code]
        dirs = [REPO, REPO / "lib"] + module_dirs
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
    def __init__(self, *, lineno, func, interp, **kw):
        super().__init__(**kw)
        self.lineno = lineno
        self.func = func  # the MicroPython function's name
        self.interp = interp  # "unix64" or "esp32"

    def runtest(self):
        r = self.parent.results(self.interp)[self.func]
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
        return self.path, self.lineno, f"{self.name} (MicroPython {self.interp})"


def pytest_pycollect_makemodule(module_path, parent):
    """Claim device modules before pytest's Python collector tries to import them."""
    if module_path.parent.name == "device":
        return DeviceModule.from_parent(parent, path=module_path)
    return None
