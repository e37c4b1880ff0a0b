"""tools/simboard.py: the real mpremote talks to the emulated board as to an ESP32.

Each test starts its own board on a fresh flash folder (tmp_path/flash) as a
subprocess, reads the pty path from its first line, and kills it by pid at the end.
"""

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import tty
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
MPREMOTE = BIN / "mpremote"
SIMBOARD = REPO / "tools" / "simboard.py"

pytestmark = pytest.mark.skipif(
    not (MPREMOTE.exists() and (BIN / "micropython").exists()),
    reason="needs .venv with mpremote and micropython (make deps)",
)

BOOT_MARKS = (
    "f = open('boot_marks.txt', 'a')\n"
    "f.write('b')\n"
    "f.close()\n"
)
MAIN_LOOP = (
    "import time\n"
    "f = open('main_marks.txt', 'a')\n"
    "f.write('m')\n"
    "f.close()\n"
    "n = 0\n"
    "while True:\n"
    "    n += 1\n"
    "    f = open('ticks.txt', 'a')\n"
    "    f.write('t')\n"
    "    f.close()\n"
    "    print('tick', n)\n"
    "    time.sleep_ms(20)\n"
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimboardProcess:
    def __init__(self, flash, tcp=None, interpreter=None):
        self.flash = flash
        cmd = [sys.executable, str(SIMBOARD), "--flash", str(flash), "-v"]
        if interpreter:
            cmd += ["--interpreter", interpreter]
        if tcp:
            cmd += ["--tcp", str(tcp)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.device = self.proc.stdout.readline().strip()
        assert self.device.startswith("/dev/pts/"), self.device

    def mpremote(self, *args, device=None, timeout=20):
        return subprocess.run(
            [str(MPREMOTE), "connect", device or self.device, *args],
            capture_output=True, text=True, timeout=timeout, cwd=self.flash.parent,
        )

    def read(self, name):
        p = self.flash / name
        return p.read_text() if p.exists() else ""

    def wait_for(self, name, text, timeout=30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.read(name) == text:
                return True
            time.sleep(0.02)
        return False

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.log = self.proc.stderr.read()
        return rc


@pytest.fixture
def make_board(tmp_path):
    boards = []

    def make(boot=None, main=None, tcp=None, interpreter=None):
        flash = tmp_path / "flash"
        flash.mkdir(exist_ok=True)
        if boot is not None:
            (flash / "boot.py").write_text(boot)
        if main is not None:
            (flash / "main.py").write_text(main)
        b = SimboardProcess(flash, tcp, interpreter)
        boards.append(b)
        return b

    yield make
    for b in boards:
        if b.proc.poll() is None:
            b.stop()


def test_exec_prints_the_result(make_board):
    board = make_board()
    r = board.mpremote("exec", "print(1+1)")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "2\n"


def test_fs_cp_then_ls_and_cat_and_second_cp_is_skipped_by_hash(make_board, tmp_path):
    board = make_board()
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "data.py").write_text("hello = 42\n")
    r = board.mpremote("fs", "cp", "-r", "pkg", ":")
    assert r.returncode == 0, r.stderr
    assert "Up to date" not in r.stdout
    assert (board.flash / "pkg" / "data.py").read_text() == "hello = 42\n"
    r = board.mpremote("fs", "ls", "pkg")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].split() == ["11", "data.py"]  # size as LittleFS reports it
    r = board.mpremote("fs", "cat", "pkg/data.py")
    assert r.stdout == "hello = 42\n"
    r = board.mpremote("fs", "cp", "-r", "pkg", ":")
    assert r.returncode == 0, r.stderr
    assert "Up to date: ./pkg/data.py" in r.stdout


def test_run_executes_a_local_script_and_imports_from_flash(make_board, tmp_path):
    board = make_board()
    (board.flash / "lib").mkdir()
    (board.flash / "lib" / "helper.py").write_text("def twice(x):\n    return 2 * x\n")
    script = tmp_path / "script.py"
    script.write_text("import sys, helper\nprint(helper.twice(21), sys.path)\n")
    r = board.mpremote("run", str(script))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "42 ['', '.frozen', '/lib']\n"


def test_a_script_larger_than_many_paste_windows_goes_through_raw_paste(make_board, tmp_path):
    board = make_board()
    lines = ["total = 0"] + ["total += %d  # line padding padding padding" % i for i in range(300)]
    script = tmp_path / "big.py"
    script.write_text("\n".join(lines) + "\nprint(total)\n")
    assert script.stat().st_size > 20 * 128
    r = board.mpremote("run", str(script))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "%d\n" % sum(range(300))
    board.stop()
    assert "raw-paste: %d bytes" % script.stat().st_size in board.log


def test_a_board_traceback_is_shown_and_mpremote_exits_non_zero(make_board):
    board = make_board()
    r = board.mpremote("exec", "print('before')\ndef f():\n    return 1/0\nf()")
    assert r.returncode == 1
    assert r.stdout.startswith("before\n")
    assert 'File "<stdin>", line 3, in f' in r.stdout
    assert "ZeroDivisionError: divide by zero" in r.stdout


def test_soft_reset_runs_boot_py_but_not_main_py(make_board):
    board = make_board(boot=BOOT_MARKS, main=MAIN_LOOP)
    assert board.wait_for("main_marks.txt", "m")  # power-on: boot.py then main.py
    assert board.read("boot_marks.txt") == "b"
    r = board.mpremote("exec", "print('up')")  # connect = Ctrl-C, raw REPL, soft reset
    assert r.returncode == 0, r.stderr
    assert board.read("boot_marks.txt") == "bb"
    assert board.read("main_marks.txt") == "m"


def test_connect_interrupts_the_main_loop_and_reaches_the_raw_repl(make_board):
    board = make_board(main=MAIN_LOOP)
    assert board.wait_for("main_marks.txt", "m")
    end = time.monotonic() + 30
    while len(board.read("ticks.txt")) < 2:  # the main loop runs
        assert time.monotonic() < end, "the main loop never ticked"
        time.sleep(0.02)
    r = board.mpremote("exec", "print(len(open('ticks.txt').read()))")
    assert r.returncode == 0, r.stderr
    ticks = int(r.stdout)
    assert ticks > 0
    time.sleep(0.2)
    assert len(board.read("ticks.txt")) == ticks  # the loop no longer runs


def test_friendly_repl_evaluates_lines_and_ctrl_d_soft_resets_into_main(make_board):
    board = make_board(boot=BOOT_MARKS, main="print('main ran')\n")
    assert board.wait_for("boot_marks.txt", "b")
    fd = os.open(board.device, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    try:
        def talk(data, until):
            os.write(fd, data)
            got = b""
            end = time.monotonic() + 30
            while not got.endswith(until) and time.monotonic() < end:
                got += os.read(fd, 1)
            return got

        # In step with the REPL, whatever of the power-on banner was still on its
        # way: everything up to the answer to this line (and its prompt) is read.
        talk(b"'sy' + 'nc'\r", b"'sync'\r\n>>> ")
        assert talk(b"6*7\r", b">>> ") == b"6*7\r\n42\r\n>>> "
        assert talk(b"for i in (1, 2):\r", b"... ") == b"for i in (1, 2):\r\n... "
        assert talk(b"  print(i)\r\r", b">>> ") == b"  print(i)\r\n... \r\n1\r\n2\r\n>>> "
        out = talk(b"\x04", b">>> ")
        assert out.startswith(b"\r\nMPY: soft reboot\r\nmain ran\r\nMicroPython ")
    finally:
        os.close(fd)
    assert board.read("boot_marks.txt") == "bb"


def test_socket_transport_works_with_tcp_option(make_board):
    port = free_port()
    board = make_board(tcp=port)
    r = board.mpremote("exec", "print('over tcp')", device="socket://127.0.0.1:%d" % port)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "over tcp\n"


def test_machine_reset_runs_boot_py_and_main_py_again(make_board):
    board = make_board(boot=BOOT_MARKS, main=MAIN_LOOP)
    assert board.wait_for("main_marks.txt", "m")
    r = board.mpremote("reset")  # soft reset on connect, then machine.reset()
    assert r.returncode == 0, r.stderr
    assert board.wait_for("main_marks.txt", "mm")
    assert board.read("boot_marks.txt") == "bbb"  # power-on, connect's soft reset, hard reset
    r = board.mpremote("exec", "import machine; print(machine.reset_cause() == machine.SOFT_RESET)")
    assert r.stdout == "True\n"  # what an ESP32 reports after machine.reset()


def test_sigterm_ends_the_board_cleanly(make_board):
    board = make_board()
    assert board.stop() == 0


def test_measure_exec_round_trip(make_board):
    """Prints the mpremote exec round trip (CLI, and the raw REPL alone)."""
    SerialTransport = pytest.importorskip("mpremote.transport_serial").SerialTransport

    board = make_board()
    cli = []
    for _ in range(5):
        t0 = time.perf_counter()
        r = board.mpremote("exec", "print(1)")
        cli.append(time.perf_counter() - t0)
        assert r.stdout == "1\n"
    t = SerialTransport(board.device)
    try:
        t.enter_raw_repl()
        raw = []
        for _ in range(50):
            t0 = time.perf_counter()
            assert t.exec("print(1)") == b"1\r\n"
            raw.append(time.perf_counter() - t0)
        t.exit_raw_repl()
    finally:
        t.close()
    print("\nmpremote exec (whole CLI run, incl. soft reset): median %.0f ms, max %.0f ms"
          % (statistics.median(cli) * 1e3, max(cli) * 1e3))
    print("raw-paste exec round trip: median %.2f ms, max %.2f ms"
          % (statistics.median(raw) * 1e3, max(raw) * 1e3))
    assert statistics.median(cli) < 2.0


def test_main_py_is_skipped_when_boot_py_raises(make_board):
    board = make_board(boot=BOOT_MARKS + "raise ValueError('broken boot')\n", main=MAIN_LOOP)
    assert board.wait_for("boot_marks.txt", "b")
    r = board.mpremote("exec", "print('repl still works')")
    assert r.stdout == "repl still works\n"
    assert board.read("main_marks.txt") == ""


def test_sys_exit_in_the_raw_repl_soft_resets_the_board(make_board):
    board = make_board(boot=BOOT_MARKS)
    assert board.wait_for("boot_marks.txt", "b")
    r = board.mpremote("exec", "import sys\nsys.exit()")
    assert r.returncode == 0, r.stderr
    assert board.wait_for("boot_marks.txt", "bbb")  # power-on, connect, sys.exit()


def _agent_pids(parent):
    """The MicroPython processes a simboard.py started (its children)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                out.append(int(d.name))
    return out


def _alive(pid):
    try:
        stat = Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_killing_simboard_cuts_the_power_its_micropython_process_ends_too(make_board):
    # A firmware that prints nothing for a while (a print into the dead
    # serial line would end it for the wrong reason).
    board = make_board(main=MAIN_LOOP.replace("print('tick', n)", "pass"))
    assert board.wait_for("main_marks.txt", "m")
    agents = _agent_pids(board.proc.pid)
    assert agents, "no interpreter process found"
    board.proc.kill()  # SIGKILL: no chance to clean up
    board.proc.wait()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in agents) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in agents), "the board's interpreter runs on after simboard.py was killed"
    n = len(board.read("ticks.txt"))
    time.sleep(0.3)
    assert len(board.read("ticks.txt")) == n  # nothing writes the flash any more


def test_a_ctrl_c_sent_while_the_board_boots_interrupts_main_py(make_board):
    board = make_board(main=MAIN_LOOP)  # no boot.py: the Ctrl-C must not vanish with it
    fd = os.open(board.device, os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        os.write(fd, b"\r\x03")  # before the interpreter is up
        out = b""
        end = time.monotonic() + 5
        while b">>> " not in out and time.monotonic() < end:
            try:
                os.set_blocking(fd, False)
                out += os.read(fd, 4096)
            except BlockingIOError:
                time.sleep(0.02)
        assert b"KeyboardInterrupt" in out and b">>> " in out, out[-300:]
    finally:
        os.close(fd)


def test_a_reset_right_after_the_board_starts_is_never_lost(tmp_path):
    sys.path.insert(0, str(REPO / "tools"))
    import deploy_board
    from board_session import BoardSession

    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text("print('evse firmware x version 1 on sim')\n" + MAIN_LOOP)
    lost = []
    for i in range(12):
        b = SimboardProcess(flash)
        try:
            time.sleep(0.02 * (i % 6))  # the interrupt lands at a different point of the boot each time
            d = BoardSession(b.device)
            try:
                d.interrupt()
                deploy_board.reset(d, log=lambda s: None)
                seen = deploy_board.watch(d, 5, settle=0.0, log=lambda s: None)
            finally:
                d.close()
            if not seen["started"]:
                lost.append(i)
        finally:
            b.stop()
    assert not lost, "resets lost in runs %s" % lost


def test_without_flash_the_board_gets_a_fresh_temporary_flash_and_says_where(tmp_path):
    p = subprocess.Popen([sys.executable, str(SIMBOARD)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    flash = None
    try:
        note = p.stderr.readline()
        device = p.stdout.readline().strip()
        assert device.startswith("/dev/pts/"), device
        assert note.startswith("simboard: flash in "), note
        flash = Path(note.split()[3])
        # empty but for the app partitions (.ota: outside the board's filesystem, sim/ota.py)
        assert flash.is_dir() and [x.name for x in flash.iterdir()] == [".ota"]
        r = subprocess.run([str(MPREMOTE), "connect", device, "exec", "open('hello.txt', 'w').write('hi')"],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        assert (flash / "hello.txt").read_text() == "hi"
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
        if flash is not None:
            import shutil

            shutil.rmtree(flash, ignore_errors=True)


# Both interpreters: on esp32 this failed in most runs before the agent kept a
# late Ctrl-C inside its loop (docs/simboard.md, "A Ctrl-C that comes late").
@pytest.mark.parametrize("interpreter", ["unix64", "esp32"])
def test_a_ctrl_c_meant_for_a_program_that_just_ended_does_not_tear_the_next_command(make_board, interpreter):
    """Raw REPL: a short program, a Ctrl-C while it starts, the next program
    already queued. The SIGINT reaches the agent as it reads that next
    command; it once lost the line it had just read (then: ValueError,
    interpreter exited, an unplanned hard reset)."""
    board = make_board(interpreter=interpreter)
    fd = os.open(board.device, os.O_RDWR | os.O_NOCTTY)
    out = b""
    try:
        tty.setraw(fd)
        os.write(fd, b"\r\x03\r\x01")
        os.set_blocking(fd, False)

        def read_for(seconds):
            nonlocal out
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    out += os.read(fd, 65536)
                except BlockingIOError:
                    time.sleep(0.01)

        read_for(1.0)
        assert b"raw REPL" in out, out
        out = b""
        for _ in range(10):
            os.write(fd, b"x=1\x04\x03x=2\x04")
            read_for(0.32)  # (simboard passes one SIGINT per 0.3 s)
        read_for(1.0)
    finally:
        os.close(fd)
    text = out.decode("utf-8", "replace")
    assert "interpreter exited" not in text and "ValueError" not in text, text[-1500:]
    assert text.count("OK") == 20, text[-1500:]  # every program ran


def test_a_storm_of_ctrl_c_raw_repl_entries_and_resets_never_loses_the_board_running_the_firmware(tmp_path):
    """The default (esp32) board running the frozen firmware, which prints
    trace lines and runs its MQTT link thread (its broker refuses): rounds of
    raw REPL entries, execs, Ctrl-C landing on programs just as they end with
    the next program queued, soft and hard resets. The board's interpreter
    must never die (a power-on reset in simboard's log beyond the first, or
    "interpreter exited" on the line), and every program must run. Before
    the agent kept a late Ctrl-C inside its loop, most race rounds lost it."""
    sys.path.insert(0, str(REPO / "tools"))
    import deploy_board
    from board_session import BoardSession

    flash = tmp_path / "flash"
    (flash / "data").mkdir(parents=True)
    for name in ("boot.py", "main.py"):
        (flash / name).write_text((REPO / name).read_text())
    (flash / "data" / "config.json").write_text(
        '{"bench_trace": true, "mqtt_host": "127.0.0.1", "mqtt_port": %d}' % free_port())
    board = SimboardProcess(flash)
    rounds = ["race", "exec", "soft", "race", "hard"] * 4
    console = []
    ran = 0
    try:
        for i, what in enumerate(rounds):
            s = BoardSession(board.device)
            try:
                s.interrupt()
                if what == "exec":
                    for k in range(3):
                        assert s.exec("print(%d * 3)" % k).strip() == str(k * 3)
                elif what == "race":
                    # Raw REPL: a short program, a Ctrl-C while it starts, the next
                    # program queued behind it; simboard passes one SIGINT per 0.3 s.
                    ser = s.t.serial
                    ser.timeout = 0.02
                    ser.read(1)  # the prompt after the banner
                    out = b""
                    for k in range(5):
                        ser.write(b"x=%d\x04\x03y=%d\x04" % (k, 100 * i + k))
                        end = time.monotonic() + 0.32
                        while time.monotonic() < end:
                            out += ser.read(max(1, ser.in_waiting))
                    end = time.monotonic() + 30  # an upper bound: the last answers come first
                    while out.count(b"OK") < 10 and time.monotonic() < end:
                        out += ser.read(max(1, ser.in_waiting))
                    console.append(out)
                    assert out.count(b"OK") == 10, out[-1500:]  # every program ran
                    s.interrupt()
                    assert s.exec("print(y)").strip() == str(100 * i + 4)
                elif what == "soft":
                    s.soft_reset()
                    lines, end = [], time.monotonic() + 30
                    while not any(ln.startswith("evse firmware") for ln in lines) and time.monotonic() < end:
                        lines += s.read_lines()
                    console.append("\n".join(lines).encode())
                    assert any(ln.startswith("evse firmware") for ln in lines), lines[-20:]
                else:
                    s.hard_reset()
                    seen = deploy_board.watch(s, 30, settle=0.2, log=lambda line: console.append(line.encode()))
                    assert seen["started"], seen
                ran += 1
            finally:
                s.close()
    finally:
        board.stop()
    assert ran == len(rounds)
    assert not any(b"interpreter exited" in c for c in console)
    assert board.log.count("hard reset, cause 1") == 1, board.log[-2000:]  # power-on only


def test_a_command_the_heap_cannot_hold_ends_with_memory_error_and_the_board_goes_on(make_board):
    """A board's REPL reports a MemoryError of a paste it cannot hold and
    reads the paste to its end; the emulated board's interpreter once died
    of it (the agent's own read of the command), a power-on reset mid-deploy."""
    sys.path.insert(0, str(REPO / "tools"))
    from board_session import BoardError, BoardSession

    board = make_board()
    s = BoardSession(board.device)
    try:
        s.interrupt()
        # The heap full of 1 KB blocks, then every other one of the last 16
        # freed: ~8 KB free in holes of ~1 KB, none of them 3 KB long.
        s.exec("_hog = []\ntry:\n    while True:\n        _hog.append(bytearray(1024))\nexcept MemoryError:\n"
               "    pass\nfor _i in range(16, 0, -2):\n    _hog[-_i] = None\nimport gc\ngc.collect()\n")
        big = "_x = %r\nprint(len(_x))\n" % ("y" * 3000)
        with pytest.raises(BoardError) as e:
            s.exec(big)
        assert not e.value.lost and "MemoryError" in str(e.value), e.value
        assert s.exec("_hog = None\ngc.collect()\nprint(6 * 7)").strip() == "42"
        assert s.exec(big).strip() == "3000"  # with the heap back, the same command runs
    finally:
        s.close()
    board.stop()
    assert board.log.count("hard reset, cause 1") == 1, board.log[-2000:]  # power-on only
