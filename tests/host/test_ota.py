"""tools/deploy.py --image against the emulated esp32 board: a whole firmware
image (the ESP32-faithful interpreter with a tree's firmware frozen into it,
tools/mpbuild.py image) goes into the inactive OTA app partition, verified on
the board, and boots "pending verify"; the emulated bootloader (sim/ota.py,
tools/simboard.py) rolls back an image that was not marked valid before a
reset, or that does not start at all.

Each test starts its own board (tools/simboard.py, --interpreter esp32) on a
fresh flash folder, whose ota_0 holds the built interpreter (the firmware of
this checkout), and reads the result from the console and from the
partitions' files (FLASH/.ota). Run with -s to see the measured figures.
"""

import hashlib
import json
import os
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
DEPLOY = REPO / "tools" / "deploy.py"
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(Path(__file__).parent))
import deploy  # noqa: E402
import deploy_board  # noqa: E402
from board_session import BoardSession  # noqa: E402
from emulated_board import EmulatedBoard, esp32_ready  # noqa: E402
from test_deploy import DeployTarget  # noqa: E402
from test_esp32_board import board_exec  # noqa: E402

BUILT = deploy_board.firmware_version(REPO)  # the version of the image a fresh emulated board holds

pytestmark = pytest.mark.skipif(not (REPO / ".venv" / "bin" / "mpremote").exists(), reason="needs .venv (make deps)")


@pytest.fixture(scope="module")
def esp32():
    ok, why = esp32_ready()
    if not ok:
        pytest.skip("the ESP32-faithful interpreter cannot be built (make esp32): " + why)


class OtaBoard(EmulatedBoard):
    """The emulated esp32 board with its OTA partitions in flash/.ota."""

    wait_charging = DeployTarget.wait_charging

    def wait_started(self, timeout_s=60):
        """Read the console until the firmware printed its start line: the
        board has booted (an event, not a guess at how long that takes)."""
        fd = os.open(self.port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        try:
            buf = b""
            end = time.monotonic() + timeout_s
            while b"evse firmware" not in buf:
                ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
                assert ready, "the board never started its firmware; console: %r" % buf[-2000:]
                buf += os.read(fd, 4096)
        finally:
            os.close(fd)

    def otadata(self):
        return json.loads((self.flash / ".ota" / "otadata.json").read_text())

    def partition_head(self, label, n=4096):
        with open(self.flash / ".ota" / (label + ".bin"), "rb") as f:
            return f.read(n)

    def power_cycle(self, watch=8.0):
        """Interrupt whatever runs, machine.reset(), and report what boots."""
        for _attempt in range(3):
            b = BoardSession(self.port)
            try:
                b.interrupt()
                deploy_board.reset(b, log=lambda s: None)
                seen = deploy_board.watch(b, watch, settle=0.5, log=lambda s: None)
                if seen["started"]:
                    return seen
            finally:
                b.close()
        return seen


@pytest.fixture
def make_board(tmp_path, esp32):
    boards = []

    def make(config=None, sim=None):
        flash = tmp_path / ("flash%d" % len(boards))
        (flash / "data").mkdir(parents=True)
        for name in ("boot.py", "main.py"):
            shutil.copy(REPO / name, flash / name)
        (flash / "data" / "config.json").write_text(json.dumps(config or {"id": "ota1"}))
        if sim:
            (flash / "data" / "sim.json").write_text(json.dumps(sim))
        b = OtaBoard(flash)
        boards.append(b)
        b.wait_started()
        return b

    yield make
    for b in boards:
        b.stop()


def make_tree(root, version, crash=False):
    """A copy of this checkout's firmware with VERSION = version (crash:
    firmware.app raises on import), as tools/mpbuild.py image freezes it."""
    t = root / ("tree-" + version)
    if t.exists():
        return t
    for name in ("firmware", "hal", "sim"):
        shutil.copytree(REPO / name, t / name, ignore=shutil.ignore_patterns("__pycache__"))
    (t / "tools").mkdir()
    shutil.copy(REPO / "tools" / "esp32_unix_manifest.py", t / "tools")
    for name in ("boot.py", "main.py", "manifest.py"):
        shutil.copy(REPO / name, t / name)
    (t / "firmware" / "__init__.py").write_text('VERSION = "%s"\n' % version)
    if crash:
        app = t / "firmware" / "app.py"
        app.write_text('raise RuntimeError("broken on purpose")\n' + app.read_text())
    return t


def run_deploy(board, tree, *extra, watch=10):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(DEPLOY), "--port", board.port, "--source", str(tree), "--image",
                        *extra, "--watch", str(watch)], capture_output=True, text=True, timeout=180)  # fmt: skip
    r.elapsed = time.monotonic() - t0
    return r


def erased(data):
    return data == b"\xff" * len(data)


def test_an_image_boots_the_new_version_from_the_other_partition_and_alternates(make_board, tmp_path, capsys):
    board = make_board()
    assert board.otadata()["ota_0"]["state"] == "valid" and erased(board.partition_head("ota_1"))
    r = run_deploy(board, make_tree(tmp_path, "2.0.0"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "board runs version 2.0.0 from ota_1, pending" in r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("1 files, ")
    od = board.otadata()
    assert od["ota_1"]["state"] == "pending" and od["ota_0"]["state"] == "valid", od
    image = json.loads(subprocess.run([sys.executable, str(REPO / "tools" / "mpbuild.py"), "image", "--tree",
                                       str(make_tree(tmp_path, "2.0.0"))], capture_output=True, text=True,
                                      check=True).stdout)  # fmt: skip
    with open(board.flash / ".ota" / "ota_1.bin", "rb") as f:
        assert hashlib.sha256(f.read(image["size"])).hexdigest() == image["sha256"]
    up = re.search(r"uploaded (\d+) bytes in ([\d.]+) s", r.stdout)
    # The firmware marks the image valid after 30 s of running; here at once.
    out = board_exec(board.port, "import gc\nfrom firmware import imagestate\nimagestate.mark_valid(_fw.hal)\n"
                     "gc.collect()\nprint('alloc', gc.mem_alloc(), 'free', gc.mem_free())")  # fmt: skip
    assert board.otadata()["ota_1"]["state"] == "valid"
    alloc = int(re.search(r"alloc (\d+)", out).group(1))
    r2 = run_deploy(board, make_tree(tmp_path, "3.0.0"))
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "board runs version 3.0.0 from ota_0" in r2.stdout, "the next image goes into the other partition"
    with capsys.disabled():
        print("\nimage deploy to the emulated esp32 board: image %d KB, upload %s s (%.0f KB/s), whole deploy "
              "%.1f s incl. the image build and 1 s of watching; heap after boot with the firmware frozen "
              "(interrupted, collected): %.1f KB live" % (int(up.group(1)) // 1024, up.group(2),
                                                          int(up.group(1)) / 1024 / float(up.group(2)), r.elapsed,
                                                          alloc / 1024))  # fmt: skip


def test_an_image_not_marked_valid_before_a_reset_is_rolled_back_by_the_bootloader(make_board, tmp_path):
    board = make_board()
    r = run_deploy(board, make_tree(tmp_path, "2.0.0"))
    assert r.returncode == 0, r.stdout + r.stderr
    # Another image now would overwrite the fallback of this unconfirmed one:
    # refused, and the refusal's restart (a soft reset) does not roll it back.
    r = run_deploy(board, make_tree(tmp_path, "2.0.1"))
    assert r.returncode == deploy.EXIT_BUSY, r.stdout + r.stderr
    assert "board busy: the board refused the image (pending)" in r.stderr, r.stderr
    assert board.otadata()["ota_1"]["state"] == "pending"
    seen = board.power_cycle()  # a reset within its first 30 s: not marked valid
    assert seen["started"] and seen["version"] == BUILT, seen
    assert seen["image"]["partition"] == "ota_0" and "ota_1 (version 2.0.0" in seen["image"]["rollback"], seen
    assert board.otadata()["ota_1"]["state"] == "aborted"
    seen = board.power_cycle()
    assert seen["version"] == BUILT and seen["image"]["partition"] == "ota_0", "never booted again"
    r = run_deploy(board, make_tree(tmp_path, "2.0.1"))
    assert r.returncode == 0 and "board runs version 2.0.1 from ota_1" in r.stdout, r.stdout + r.stderr


def test_an_image_that_crashes_at_boot_is_rolled_back_and_the_deploy_exits_7(make_board, tmp_path):
    board = make_board()
    r = run_deploy(board, make_tree(tmp_path, "6.6.6", crash=True))
    assert r.returncode == deploy.EXIT_NOT_UP, r.stdout + r.stderr
    assert "broken on purpose" in r.stdout
    assert "the bootloader rolled back to ota_0" in r.stdout, r.stdout
    assert board.otadata()["ota_1"]["state"] == "aborted"
    seen = board.power_cycle()
    assert seen["version"] == BUILT, seen


def test_an_image_that_does_not_start_at_all_is_rolled_back(make_board, tmp_path):
    board = make_board()
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x7fELF" + bytes(range(256)) * 400)  # not a program the board can run
    r = run_deploy(board, make_tree(tmp_path, "2.0.0"))  # the board needs its boot files; then the junk
    assert r.returncode == 0, r.stdout + r.stderr
    board_exec(board.port, "from firmware import imagestate\nimagestate.mark_valid(_fw.hal)")
    r = subprocess.run([sys.executable, str(DEPLOY), "--port", board.port, "--source", str(REPO), "--image",
                        str(junk), "--watch", "10"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == deploy.EXIT_NOT_UP, r.stdout + r.stderr
    assert "the bootloader rolled back to ota_1" in r.stdout, r.stdout
    assert board.otadata()["ota_0"]["state"] == "invalid"
    assert board.power_cycle()["version"] == "2.0.0"


def test_a_corrupt_upload_is_refused_on_the_board_and_nothing_switches(make_board, tmp_path, capsys):
    board = make_board()
    before = board.otadata()

    def flip_a_bit(b):
        # A flash write that lands wrong: the partition no longer reads back what was sent.
        b.exec("_ow = _hal.ota_write\n"
               "def _bad(off, buf):\n"
               "    if off == 8192:\n"
               "        buf = bytearray(buf)\n"
               "        buf[5] ^= 1\n"
               "    _ow(off, buf)\n"
               "_hal.ota_write = _bad\n")  # fmt: skip

    code = deploy.main(["--port", board.port, "--source", str(make_tree(tmp_path, "2.0.0")), "--image",
                        "--watch", "6"], before_write=flip_a_bit)  # fmt: skip
    out = capsys.readouterr()
    assert code == deploy.EXIT_HASH, out.out + out.err
    assert "refused the image (hash)" in out.err and "nothing switched" in out.err, out.err
    assert board.otadata() == before
    seen = board.power_cycle()
    assert seen["version"] == BUILT and seen["image"]["partition"] == "ota_0", seen


@pytest.mark.skipif(not (REPO / "tools" / "sign.py").exists() or shutil.which("openssl") is None,
                    reason="needs tools/sign.py and openssl")  # fmt: skip
def test_a_board_with_a_key_takes_only_an_image_signed_with_it(make_board, tmp_path):
    import sign

    good, bad = tmp_path / "good.pem", tmp_path / "bad.pem"
    sign.keygen(good)
    sign.keygen(bad)
    board = make_board()
    (board.flash / "data" / "update_key.json").write_text(json.dumps(sign.public_key(good)))
    tree = make_tree(tmp_path, "2.0.0")
    before = board.otadata()
    r = run_deploy(board, tree)
    assert r.returncode == deploy.EXIT_ERROR and "only takes signed images" in r.stderr, r.stdout + r.stderr
    r = run_deploy(board, tree, "--sign-key", str(bad))
    assert r.returncode == deploy.EXIT_HASH, r.stdout + r.stderr
    assert "refused the image (signature)" in r.stderr and board.otadata() == before
    assert board.power_cycle()["version"] == BUILT
    r = run_deploy(board, tree, "--sign-key", str(good))
    assert r.returncode == 0 and "signature good" in r.stdout, r.stdout + r.stderr
    assert "board runs version 2.0.0 from ota_1" in r.stdout


def test_update_key_installs_the_boards_key_and_from_then_on_only_signed_images_are_taken(make_board, tmp_path):
    import sign

    key, pub = tmp_path / "k.pem", tmp_path / "k.json"
    sign.keygen(key)
    sign.write_public(key, pub)
    board = make_board()
    bad = tmp_path / "bad.json"
    bad.write_text('{"n": "abcd", "e": 65537}')
    before = board.otadata()
    r = run_deploy(board, make_tree(tmp_path, "2.0.0"), "--update-key", str(bad))
    assert r.returncode == deploy.EXIT_ERROR and "bad --update-key" in r.stderr, r.stdout + r.stderr
    assert board.otadata() == before and not (board.flash / "data" / "update_key.json").exists()
    r = run_deploy(board, make_tree(tmp_path, "2.0.0"), "--sign-key", str(key), "--update-key", str(pub))
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((board.flash / "data" / "update_key.json").read_text()) == sign.public_key(key)
    r = run_deploy(board, make_tree(tmp_path, "2.0.1"))
    assert r.returncode == deploy.EXIT_ERROR and "only takes signed images" in r.stderr, r.stdout + r.stderr


def test_a_killed_upload_leaves_the_old_image_running_and_the_next_deploy_completes(make_board, tmp_path):
    board = make_board()
    tree = make_tree(tmp_path, "2.0.0")
    assert run_deploy(board, tree, "--dry-run").returncode == 0  # the image is built (and cached) first
    p = subprocess.Popen([sys.executable, "-u", str(DEPLOY), "--port", board.port, "--source", str(tree), "--image"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines = []
    for line in p.stdout:
        lines.append(line)
        if "%] ota_1" in line and " 0%]" not in line:  # the upload is under way
            p.send_signal(signal.SIGKILL)
            break
    p.wait()
    assert any("%] ota_1" in x for x in lines), lines
    assert not any(x.startswith("switched:") for x in lines), lines
    assert board.otadata()["ota_1"]["state"] == "undefined"
    seen = board.power_cycle()
    assert seen["version"] == BUILT and seen["image"]["partition"] == "ota_0", seen
    r = run_deploy(board, tree)
    assert r.returncode == 0 and "board runs version 2.0.0 from ota_1" in r.stdout, r.stdout + r.stderr


def test_a_charging_board_is_refused_before_anything_is_written(make_board, tmp_path):
    board = make_board(config={"id": "ota1", "bench_trace": True}, sim={"ev": "C"})
    board.wait_charging()
    before = board.otadata()
    r = run_deploy(board, make_tree(tmp_path, "2.0.0"))
    assert r.returncode == deploy.EXIT_BUSY, r.stdout + r.stderr
    assert "board busy: charging (state C2), use --force" in r.stderr
    assert board.otadata() == before and erased(board.partition_head("ota_1"))
    assert r.stdout.strip().splitlines()[-1] == "0 files, 0 bytes uploaded"


def test_the_partitions_are_not_in_the_boards_filesystem(make_board):
    board = make_board()
    out = board_exec(board.port, "import os\nprint(sorted(os.listdir('/')), os.statvfs('/')[3])")
    names, free = out.rsplit(" ", 1)
    assert ".ota" not in names, out
    assert int(free) * 4096 > 1900 * 1024, "3 MB of partitions would not fit a 2 MB filesystem"
    assert os.path.getsize(board.flash / ".ota" / "ota_0.bin") == 0x180000


def _image(tree):
    r = subprocess.run([sys.executable, str(REPO / "tools" / "mpbuild.py"), "image", "--tree", str(tree)],
                       capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(r.stdout), "built image" in r.stderr


def test_images_are_built_from_their_trees_content_and_cached_by_it(esp32, tmp_path):
    a = make_tree(tmp_path, "2.0.0")
    b = make_tree(tmp_path, "6.6.6", crash=True)
    first, _ = _image(a)
    other, _ = _image(b)
    assert other["sha256"] != first["sha256"]
    again, built = _image(a)
    assert again == first and not built, "the same content: the cached image"
    # Rebuilt after the other tree (whose files are newer than this tree's
    # copies): the image must still hold this tree's bytecode.
    Path(first["image"]).unlink()
    rebuilt, built = _image(a)
    assert built and rebuilt["sha256"] == first["sha256"]


def test_a_board_without_app_partitions_is_told_so_and_nothing_is_written(tmp_path, esp32):
    flash = tmp_path / "flash"
    (flash / "data").mkdir(parents=True)
    for name in ("boot.py", "main.py"):
        shutil.copy(REPO / name, flash / name)
    board = EmulatedBoard(flash, interpreter="unix64", heapsize="384k")  # no partitions on that board
    try:
        r = subprocess.run([sys.executable, str(DEPLOY), "--port", board.port], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr  # the firmware in a slot (unix64 has none frozen)
        junk = tmp_path / "image.bin"
        junk.write_bytes(b"x" * 1000)
        r = subprocess.run([sys.executable, str(DEPLOY), "--port", board.port, "--image", str(junk)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        board.stop()
    assert r.returncode == deploy.EXIT_ERROR, r.stdout + r.stderr
    assert "no OTA app partitions" in r.stderr
    assert r.stdout.strip().splitlines()[-1] == "0 files, 0 bytes uploaded"
    assert not (flash / ".ota").exists()


def test_reflash_puts_the_built_interpreter_back_into_ota_0_as_esptool_would(make_board, tmp_path):
    board = make_board()
    r = run_deploy(board, make_tree(tmp_path, "2.0.0"))
    assert r.returncode == 0, r.stdout + r.stderr
    board.stop()
    p = subprocess.Popen([sys.executable, str(REPO / "tools" / "simboard.py"), "--flash", str(board.flash),
                          "--reflash"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        port = p.stdout.readline().strip()
        od = json.loads((board.flash / ".ota" / "otadata.json").read_text())
        assert od["ota_0"]["state"] == "valid" and od["ota_1"]["seq"] == 0, od
        out = board_exec(port, "import firmware\nprint('V', firmware.VERSION)")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
    assert "V %s" % BUILT in out, out
