"""The device-test plugin (tests/conftest.py + tests/device/_runner.py), run as a user would.

The MicroPython test modules below (one per behaviour) are written into a
temporary device/ folder next to a conftest that loads the repository's plugin,
and ONE `python -m pytest` subprocess runs them all against the repo's
.venv/bin/micropython (shared by every test here, to keep the suite fast).
Each test then checks the outcome of its own module.
"""

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MICROPYTHON = REPO / ".venv" / "bin" / "micropython"

pytestmark = pytest.mark.skipif(
    not MICROPYTHON.exists(), reason="no .venv/bin/micropython: run `make deps`"
)

CONFTEST = f"""\
import importlib.util
_spec = importlib.util.spec_from_file_location("repo_device_plugin", {str(REPO / "tests" / "conftest.py")!r})
_plugin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_plugin)
pytest_pycollect_makemodule = _plugin.pytest_pycollect_makemodule
pytest_addoption = _plugin.pytest_addoption
"""


def run_pytest(cwd, *args):
    """`python -m pytest ARGS` in cwd, without a cache dir; return (exit code, stdout + stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


MODULES = {
    "test_ok.py": """
        import sys

        def test_runs_on_micropython():
            assert sys.implementation.name == "micropython"

        def helper_not_a_test():
            raise AssertionError("never collected")

        def test_second():
            assert 1 + 1 == 2
        """,
    "test_bad.py": """
        def test_good():
            pass

        def test_bad():
            print("captured before failing")
            x = 2
            assert x == 3, "x was %d" % x

        def test_after():
            pass
        """,
    "test_hang.py": """
        # timeout: 2
        def test_before():
            print("before ran")

        def test_hangs():
            print("about to hang")
            while True:
                pass

        def test_later():
            pass
        """,
    "test_crash.py": """
        import sys

        def test_first():
            pass

        def test_exits():
            sys.exit(3)

        def test_never_runs():
            pass
        """,
    "test_heap.py": """
        # heapsize: 64k
        import gc

        def test_heap_is_at_most_64k():
            assert gc.mem_free() + gc.mem_alloc() <= 64 * 1024

        def test_allocating_more_than_the_heap():
            bytearray(100 * 1024)
        """,
    "test_noimport.py": """
        import no_such_module_here

        def test_a():
            pass

        def test_b():
            pass
        """,
    "test_skip.py": """
        from _runner import SkipTest

        def test_skipped():
            raise SkipTest("no threads on this port")

        def test_runs():
            pass
        """,
    "test_fake.py": """
        def test_lies():
            print("@@mpt-0000000000000000 result test_lies pass 1")
            print("@@mpt-0000000000000000 end test_lies")
            assert False, "really failed"
        """,
}


class Run:
    def __init__(self, code, output, seconds):
        self.code, self.output, self.seconds = code, output, seconds

    def outcome(self, module, name):
        """PASSED / FAILED / SKIPPED for one test, from pytest's -rA summary (None if absent)."""
        m = re.search(
            r"^(PASSED|FAILED|SKIPPED|ERROR) device/"
            + module
            + r"\.py::"
            + name
            + r"\b",
            self.output,
            re.MULTILINE,
        )
        return m.group(1) if m else None

    def section(self, module, name):
        """The failure report of one test (between its ____ header and the next)."""
        m = re.search(
            r"_{3,} " + name + r"\[unix64\] \(MicroPython unix64\) _{3,}\n(.*?)(?=\n_{3,} |\n={3,} )",
            self.output,
            re.DOTALL,
        )
        assert m, "no failure section for " + module + "::" + name
        return m.group(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("devrun")
    (root / "device").mkdir()
    (root / "conftest.py").write_text(CONFTEST)
    for name, source in MODULES.items():
        (root / "device" / name).write_text(textwrap.dedent(source))
    t0 = time.monotonic()
    code, output = run_pytest(root, "-rA", "--rootdir", str(root), "--micropython", "unix64", str(root))
    return Run(code, output, time.monotonic() - t0)


def test_each_function_is_its_own_item_and_passing_ones_pass(run):
    assert run.outcome("test_ok", "test_runs_on_micropython") == "PASSED"
    assert run.outcome("test_ok", "test_second") == "PASSED"
    assert "helper_not_a_test" not in run.output


def test_a_failing_assert_fails_the_run_and_shows_the_micropython_traceback_line(run):
    assert run.code == 1  # pytest: tests failed
    assert run.outcome("test_bad", "test_good") == "PASSED"
    assert run.outcome("test_bad", "test_bad") == "FAILED"
    assert run.outcome("test_bad", "test_after") == "PASSED"
    report = run.section("test_bad", "test_bad")
    # the assert is on line 8 of the written file (dedent keeps the leading blank line)
    assert re.search(r'File ".*test_bad\.py", line 8, in test_bad', report), report
    assert "AssertionError: x was 2" in report
    assert "captured before failing" in report
    assert "_runner.py" not in report  # the runner's own frame is noise


def test_a_hang_is_killed_at_the_module_timeout_failing_it_and_later_tests(run):
    # the module's own 2 s budget ended it (not a default); its wall time is not asserted
    assert "module budget 2s" in run.section("test_hang", "test_hangs")
    assert run.outcome("test_hang", "test_before") == "PASSED"
    assert run.outcome("test_hang", "test_hangs") == "FAILED"
    assert run.outcome("test_hang", "test_later") == "FAILED"
    assert "interpreter timed out" in run.section("test_hang", "test_hangs")
    assert "about to hang" in run.section("test_hang", "test_hangs")
    assert "interpreter timed out" in run.section("test_hang", "test_later")


def test_an_interpreter_exit_mid_module_fails_the_unreported_tests(run):
    assert run.outcome("test_crash", "test_first") == "PASSED"
    assert run.outcome("test_crash", "test_exits") == "FAILED"
    assert run.outcome("test_crash", "test_never_runs") == "FAILED"
    assert "interpreter died (exit code 3" in run.section("test_crash", "test_exits")
    assert "interpreter died (exit code 3" in run.section(
        "test_crash", "test_never_runs"
    )


def test_the_heapsize_header_is_honoured(run):
    assert run.outcome("test_heap", "test_heap_is_at_most_64k") == "PASSED"
    assert run.outcome("test_heap", "test_allocating_more_than_the_heap") == "FAILED"
    assert "MemoryError" in run.section(
        "test_heap", "test_allocating_more_than_the_heap"
    )


def test_an_import_error_fails_every_item_with_the_import_traceback(run):
    for name in ("test_a", "test_b"):
        assert run.outcome("test_noimport", name) == "FAILED"
        report = run.section("test_noimport", name)
        assert "failed to import" in report and "no_such_module_here" in report


def test_skiptest_becomes_a_pytest_skip_with_its_reason(run):
    assert run.outcome("test_skip", "test_runs") == "PASSED"
    assert re.search(
        r"^SKIPPED \[1\] device/test_skip\.py:\d+: no threads on this port$",
        run.output,
        re.MULTILINE,
    ), run.output


def test_printed_marker_lookalikes_cannot_fake_a_result(run):
    assert run.outcome("test_fake", "test_lies") == "FAILED"
    assert "really failed" in run.section("test_fake", "test_lies")


def test_the_run_counts_every_function_once(run):
    assert re.search(
        r"^=+ 9 failed, 8 passed, 1 skipped in ", run.output, re.MULTILINE
    ), run.output[-2000:]


def test_module_and_host_tests_are_collected_together_from_the_repo_root():
    code, output = run_pytest(
        REPO,
        "--collect-only",
        "-q",
        "tests/device/test_runner_smoke.py",
        "tests/host/test_deps.py",
    )
    assert code == 0, output
    for interp in ("unix64", "esp32"):  # one item per interpreter, named after it
        assert (
            "tests/device/test_runner_smoke.py::test_runs_on_micropython_not_cpython[%s]" % interp
            in output
        )
    assert (
        "tests/host/test_deps.py::test_list_prints_the_pinned_files_as_json" in output
    )


ESP32_MODULE = """
import gc
import sys

import firmware.app


def test_words_are_32_bit_and_small_ints_31():
    assert sys.maxsize == 2**31 - 1
    assert sys.implementation._thread == "GIL"


def test_floats_are_single_precision():
    assert 1.0 + 1e-8 == 1.0 and 16777216.0 + 1.0 == 16777216.0


def test_tls_threads_sockets_and_vfsrom_are_built_in():
    import _thread
    import socket
    import tls
    import vfs

    assert hasattr(vfs, "VfsRom") and hasattr(tls, "SSLContext")
    assert hasattr(socket, "socket") and hasattr(_thread, "start_new_thread")


def test_the_heap_is_the_esp32s_112_kb():
    gc.collect()
    total = gc.mem_free() + gc.mem_alloc()
    assert 100 * 1024 < total <= 112 * 1024, total


def test_the_firmware_is_frozen_not_read_from_the_checkout():
    assert firmware.app.__file__ == "firmware/app.py", firmware.app.__file__
    assert sys.path[0] == ".frozen", sys.path
"""


def test_the_esp32_interpreter_is_32_bit_single_float_112_kb_with_the_firmware_frozen(tmp_path):
    (tmp_path / "device").mkdir()
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "device" / "test_esp32_runtime.py").write_text(ESP32_MODULE)
    heap_probe = "import gc\n\n\ndef test_heap():\n    gc.collect()\n    assert gc.mem_free() + gc.mem_alloc() <= %d * 1024\n"
    # a header never gives the esp32 interpreter more than an ESP32 has, but may give it less
    (tmp_path / "device" / "test_esp32_more.py").write_text("# heapsize: 192k\n" + heap_probe % 112)
    (tmp_path / "device" / "test_esp32_less.py").write_text("# heapsize: 48k\n" + heap_probe % 48)
    code, output = run_pytest(tmp_path, "-rA", "--rootdir", str(tmp_path), "--micropython", "esp32", str(tmp_path))
    assert code == 0, output[-3000:]
    assert re.search(r"^=+ 7 passed in ", output, re.MULTILINE), output[-2000:]
    assert "test_words_are_32_bit_and_small_ints_31[esp32]" in output
