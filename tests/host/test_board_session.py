"""tools/board_session.py, the one way the rig and the deploy tool reach a board,
against the emulated board (tools/simboard.py) on a pty: files through
mpremote's transport, base64 chunked writes, the interrupt without a soft
reset, the soft reset into main.py, console lines, and which failures mean the
board is lost."""

import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(Path(__file__).parent))
from board_session import CHUNK_BYTES, BoardError, BoardSession  # noqa: E402
from emulated_board import EmulatedBoard  # noqa: E402

pytestmark = pytest.mark.skipif(
    not ((BIN / "micropython").exists() and (BIN / "mpremote").exists()),
    reason="needs .venv with micropython and mpremote (make deps)",
)

# main.py of the test board: a firmware stand-in that counts on the console.
MAIN = "import time\nn = 0\nwhile True:\n    n += 1\n    print('tick', n)\n    time.sleep_ms(50)\n"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    flash = tmp_path_factory.mktemp("session") / "flash"
    (flash / "data").mkdir(parents=True)
    (flash / "main.py").write_text(MAIN)
    b = EmulatedBoard(flash)
    yield b
    b.stop()


def wait_for_tick(s, n=1, within_s=15):
    """The console lines until main.py printed `tick n`."""
    lines, end = [], time.monotonic() + within_s
    while time.monotonic() < end and "tick %d" % n not in lines:
        lines += s.read_lines()
    return lines


@pytest.fixture
def session(board):
    s = BoardSession(board.port)
    wait_for_tick(s)  # booted: main.py runs
    s.interrupt()
    yield s
    s.soft_reset()  # main.py runs again for the next test
    s.close()


def test_a_binary_file_of_several_chunks_is_written_and_read_back_unchanged(board, session):
    data = bytes(range(256)) * (2 * CHUNK_BYTES // 256 + 3)  # every byte value, 3 chunks
    done = []
    session.write_file("/data/blob.bin", data, progress=done.append)
    assert (board.flash / "data" / "blob.bin").read_bytes() == data
    assert session.read_file("/data/blob.bin") == data
    assert done[-1] == len(data) and len(done) == 3


def test_a_missing_file_reads_as_none_and_removing_it_is_no_error(session):
    assert session.read_file("/data/no-such-file") is None
    session.remove("/data/no-such-file")


def test_mkdir_makes_a_directory_and_one_that_exists_is_no_error(board, session):
    session.mkdir("/data/new")
    assert (board.flash / "data" / "new").is_dir()
    session.mkdir("/data/new")
    session.mkdir("/data")


def test_replace_file_replaces_an_existing_file_whole_and_leaves_no_temp(board, session):
    (board.flash / "data" / "cfg.json").write_text('{"old": true}')
    session.replace_file("/data/cfg.json", b'{"new": 1}')
    assert (board.flash / "data" / "cfg.json").read_text() == '{"new": 1}'
    assert not (board.flash / "data" / "cfg.json.tmp").exists()
    session.remove("/data/cfg.json")
    assert not (board.flash / "data" / "cfg.json").exists()


def test_an_error_on_the_board_is_a_board_error_that_is_not_a_lost_board(session):
    with pytest.raises(BoardError) as e:
        session.exec("raise ValueError('bad input')")
    assert not e.value.lost and "ValueError: bad input" in str(e.value)
    assert session.exec("print(6 * 7)").strip() == "42"  # the session goes on


def test_helpers_are_defined_once_before_the_first_exec_that_wants_them(board):
    s = BoardSession(board.port, helpers="_calls = []\ndef _twice(x):\n    _calls.append(x)\n    return 2 * x\n")
    try:
        wait_for_tick(s)
        s.interrupt()
        assert s.exec("print(_twice(21))").strip() == "42"
        assert s.exec("print(_twice(1), len(_calls))").strip() == "2 2"  # not redefined: calls kept
    finally:
        s.soft_reset()
        s.close()


def test_soft_reset_runs_main_again_and_its_console_comes_as_whole_lines(session):
    session.soft_reset()
    lines = wait_for_tick(session, 3)
    ticks = [x for x in lines if x.startswith("tick ")]
    assert ticks[:3] == ["tick 1", "tick 2", "tick 3"], lines  # counting from 1: main.py started anew
    assert not any("\r" in x or "\n" in x for x in lines)
    session.interrupt()  # and the REPL answers again
    assert session.exec("print('back')").strip() == "back"


def test_no_board_on_the_port_is_a_lost_board(tmp_path):
    with pytest.raises(BoardError) as e:
        BoardSession(str(tmp_path / "no-such-tty"))
    assert e.value.lost and "no board at" in str(e.value)


def test_a_ctrl_c_taken_by_boot_py_costs_an_attempt_and_its_queued_raw_repl_entry_does_not_confuse_exec(tmp_path):
    # boot.py takes the first attempt's Ctrl-C and main.py starts: that
    # attempt's \r\x01 waits on the board until main.py is interrupted by the
    # next one, then the board prints one more raw REPL banner. It once came
    # where mpremote expected the answer to its raw-paste request (the exec
    # failed: "could not exec command").
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "boot.py").write_text("import time\nopen('booting', 'w').close()\ntry:\n    time.sleep(60)\n"
                                   "except KeyboardInterrupt:\n    print('boot.py took the Ctrl-C')\n")
    (flash / "main.py").write_text(MAIN)
    b = EmulatedBoard(flash)
    try:
        end = time.monotonic() + 30
        while not (flash / "booting").exists():
            assert time.monotonic() < end, "boot.py never ran"
            time.sleep(0.02)
        s = BoardSession(b.port)
        try:
            s.interrupt(timeout=1)
            for k in range(3):
                assert s.exec("print(%d * 7)" % k).strip() == str(k * 7)
        finally:
            s.close()
    finally:
        b.stop()
