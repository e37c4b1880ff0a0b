"""Device-test runner: the MicroPython side of the plugin in tests/conftest.py.

The host starts one interpreter per test module:

    micropython -c "import _runner; _runner.run('MARK', 'test_mod', ('test_a', 'test_b'))"

and this module imports the test module, calls each named function in the
order given, and prints one framed record per function on stdout:

    MARK start NAME
    ...whatever the test printed...
    MARK result NAME pass|fail|skip MICROSECONDS
    ...traceback (fail) or reason (skip), nothing for pass...
    MARK end NAME

then `MARK done` when every function has run. MARK is a fresh random token per
run chosen by the host, so nothing a test prints can pass for a record. An
import failure prints `MARK import-error`, the traceback and `MARK end`.

A device test skips itself by raising SkipTest (any exception class with that
name counts): `from _runner import SkipTest; raise SkipTest("needs threads")`.
SystemExit and KeyboardInterrupt are not caught: they end the interpreter, and
the host fails every function that had not reported.
"""

import gc
import io
import sys
import time


class SkipTest(Exception):
    """Raise inside a device test to report it as skipped; the message is the reason."""


def _traceback(exc):
    buf = io.StringIO()
    sys.print_exception(exc, buf)
    return buf.getvalue()


def _record(mark, name, status, us, detail):
    # A test may have printed without a final newline: the host finds MARK
    # anywhere in a line, so starting a new line here is not needed.
    print(mark, "result", name, status, us)
    if detail:
        print(detail if detail.endswith("\n") else detail + "\n", end="")
    print(mark, "end", name)


def run(mark, modname, names):
    try:
        mod = __import__(modname)
    except BaseException as exc:  # noqa: BLE001 - any import failure (SyntaxError, SystemExit...) is reported
        print(mark, "import-error")
        print(_traceback(exc), end="")
        print(mark, "end")
        return
    for name in names:
        print(mark, "start", name)
        fn = getattr(mod, name, None)
        if fn is None:
            _record(mark, name, "fail", 0, "no module-level function " + name + " after import\n")
            continue
        gc.collect()
        t0 = time.ticks_us()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - every test failure is reported, SystemExit is not caught
            us = time.ticks_diff(time.ticks_us(), t0)
            if type(exc).__name__ == "SkipTest":
                _record(mark, name, "skip", us, str(exc) or "skipped")
            else:
                _record(mark, name, "fail", us, _traceback(exc))
            exc = None
            continue
        _record(mark, name, "pass", time.ticks_diff(time.ticks_us(), t0), "")
    print(mark, "done")
