"""The board end both deploy paths share (tools/deploy.py: the A/B slots in
tools/deploy_slots.py, a whole image in tools/deploy_image.py).

Owns: the exit codes and DeployError; the one step every deploy starts with
(BoardStep: open the line, interrupt the firmware, check it is not busy
charging, read what the path needs) and ends with (reset, close); the code
defined on the board for the deploy; verified uploads; watching the board
come up after the reset.
Never does: decide what is written where (the paths do).
"""

import hashlib
import json
import re
import sys
import time
from pathlib import Path

from board_session import BoardError, BoardSession

REPO = Path(__file__).resolve().parent.parent

EXIT_OK, EXIT_ERROR, EXIT_NO_BOARD, EXIT_BUSY, EXIT_BYTECODE, EXIT_FULL, EXIT_HASH, EXIT_NOT_UP, EXIT_OLD = range(9)
CHARGING_STATES = ("C2", "D2")  # energy flows (or may): state names of firmware/facts.py STATES
ROOT_FILES = ("boot.py", "main.py")  # copied as source (the slot path adds /slots.mpy and /store.mpy)
UPDATE_KEY = "/data/update_key.json"  # firmware/update.py: the public key images must be signed for
WATCH_S = 10.0  # how long to watch the board come up after the reset
SETTLE_S = 1.0  # after the firmware started, how long it must not fail


class DeployError(Exception):
    def __init__(self, code, msg):
        super().__init__(msg)
        self.code = code


def sha256(data):
    """The hex SHA-256 the board's _sha() prints for the same bytes."""
    return hashlib.sha256(data).hexdigest()


def firmware_version(src):
    text = (src / "firmware" / "__init__.py").read_text()
    m = re.search(r"^VERSION\s*=\s*[\"']([^\"']+)[\"']", text, re.M)
    if not m:
        raise DeployError(EXIT_ERROR, "no VERSION = \"...\" in %s/firmware/__init__.py" % src)
    return m.group(1)


# --- code that runs on the board --------------------------------------------------------
# Defined once per connection (BoardSession helpers), in the REPL's globals (shared with main.py).
BOARD_HELPERS = """
import os, sys, json, hashlib, binascii
def _mv(a, b):
    os.rename(a, b)
def _feed():
    try:
        _hal.wdt_feed()
    except Exception:
        pass
def _each(p, fn):
    b = bytearray(1024)
    m = memoryview(b)
    with open(p, 'rb') as f:
        while True:
            n = f.readinto(b)
            if not n:
                break
            fn(m[:n])
def _sha(p):
    h = hashlib.sha256()
    _each(p, h.update)
    return binascii.hexlify(h.digest()).decode()
def _walk(d):
    try:
        it = list(os.ilistdir(d))
    except OSError:
        return
    for e in it:
        p = d + '/' + e[0]
        if e[1] & 0x4000:
            _walk(p)
        else:
            _feed()
            print('F', p, _sha(p))
def _hash(ps):
    for p in ps:
        _feed()
        try:
            print('F', p, _sha(p))
        except OSError:
            print('F', p, '-')
def _mkdirs(ds):
    for d in ds:
        try:
            os.mkdir(d)
        except OSError:
            pass
def _rm(ps):
    for p in ps:
        try:
            os.remove(p)
        except OSError:
            pass
def _cp(s, d):
    with open(d, 'wb') as g:
        _each(s, g.write)
    _feed()
"""

# Run right after the interrupt: the firmware's state, then (one exec later) the rest.
FW_STATE = """
import gc, json
_hal = None
try:
    _c = _fw.charger
    _hal = _fw.hal
    _hal.wdt_feed()
    for _i in range(5):
        _hal.wait_tick(10)  # let the contacts move (wall time on a board, virtual on the sim)
    _hal.wdt_feed()
    print(json.dumps([_c.state, bool(_c.contactor_on), _hal.contactor_feedback()]))
except Exception:
    print('null')
try:
    del _fw, _c  # the deploy needs the heap; only the HAL stays (watchdog feeding)
except Exception:
    pass
import sys
# The stopped firmware's modules: from a slot their bytecode is in the heap
# (~45 KB at 112 KB on the ESP32-faithful interpreter). The firmware never
# runs on in this boot (the deploy ends with a reset); the HAL's modules stay.
for _m in [m for m in sys.modules if m.split('.')[0] in ('firmware', 'sim', 'slots', 'store', 'umqtt')]:
    del sys.modules[_m]
gc.collect()
"""

def reset(board, log):
    """machine.reset() (boot.py, main.py: the firmware runs again); a failure is only logged."""
    try:
        board.hard_reset()
    except BoardError as e:
        log("deploy: could not reset the board: %s" % e)


def soft_reset(board, log):
    """Ctrl-D: boot.py, main.py, the firmware runs again in the same image
    (no bootloader: a pending image stays pending). A failure is only logged."""
    try:
        board.soft_reset()
    except BoardError as e:
        log("deploy: could not soft-reset the board: %s" % e)


def file_hashes(out):
    """{path: sha256 or None} from the 'F path sha' lines (_walk, _hash) in a board's output."""
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "F":
            found[parts[1]] = None if parts[2] == "-" else parts[2]
    return found


def hashes(board, code):
    """{path: sha256 or None} from the 'F path sha' lines code prints on the board."""
    return file_hashes(board.exec(code))


def watch(board, seconds, target=None, settle=SETTLE_S, log=print):
    """Read the console after a reset for up to `seconds`. Returns a dict:
    report (the last `slots: {...}` boot report), started (the firmware
    printed its start line after it), version (from that line: what was
    really imported), failure (the last `main: firmware failed` line),
    image (the last `image: {...}` report: the OTA partition that runs)."""
    seen = {"report": None, "started": False, "version": None, "failure": None, "image": None}
    end = time.monotonic() + seconds
    settle_s, settle = settle, None
    while time.monotonic() < end and (settle is None or time.monotonic() < settle):
        try:
            lines = board.read_lines()
        except BoardError:
            time.sleep(0.1)
            continue
        for line in lines:
            line = line.strip()
            if not line:
                continue
            log("board| " + line)
            if line.startswith("slots: {"):
                try:
                    seen["report"] = json.loads(line[7:])
                except ValueError:
                    pass
                seen["started"], settle = False, None
            elif line.startswith("image: {"):
                try:
                    seen["image"] = json.loads(line[7:])
                except ValueError:
                    pass
            elif line.startswith("evse firmware"):
                m = re.search(r" version (\S+)", line)
                seen["started"], seen["version"] = True, m and m.group(1)
                # a new slot must survive SETTLE_S; a fallback is final
                rep = seen["report"] or {}
                rolled = rep.get("rollback") and rep.get("slot") != target
                settle = time.monotonic() + (min(0.2, settle_s) if rolled else settle_s)
            elif line.startswith("main: firmware failed"):
                seen["failure"], seen["started"], settle = line, False, None
    return seen


# --- the step every deploy starts with ---------------------------------------------------
def check_busy(board, force, log):
    """Run right after the interrupt: the firmware's state (FW_STATE). Refuses
    (EXIT_BUSY) while the contacts still read closed, or while a session
    charges unless force (then it was stopped by the interrupt)."""
    line = board.exec(FW_STATE, helpers=False).strip().splitlines()
    fw = json.loads(line[-1]) if line else None
    if fw is None:
        log("interrupted: no firmware state on the board (not running our main.py)")
        return
    state, contactor_on, feedback = fw
    log("interrupted: firmware state %s%s, contacts now read %s (feedback %s)" % (
        state, " (contactor was on)" if contactor_on else "", {1: "closed", 0: "open"}.get(feedback, "unknown"), feedback))
    if feedback == 1:
        raise DeployError(EXIT_BUSY, "board busy: the contactor still reads closed after the interrupt "
                          "(welded?): not writing anything")
    if state in CHARGING_STATES or contactor_on:
        if not force:
            raise DeployError(EXIT_BUSY, "board busy: charging (state %s), use --force" % state)
        log("--force: the charging session (state %s) was stopped" % state)


class BoardStep:
    """One deploy's board, as a `with` block: open() opens the line, interrupts
    the firmware (Ctrl-C: its exception path opens the contactor and sets the
    pilot steady) without a soft reset, checks it is not busy (check_busy) and
    reads its info. Leaving the block resets the board unless the path took
    that over (reset_needed False), closes the line, and turns a BoardError
    into the deploy's exit 2 (the board is lost) or 1 (it answered an error).
    soft_end(info): True when the closing reset must be a soft one (the image
    path: a hard reset would roll back an image still pending verify)."""

    def __init__(self, port, force, log, soft_end=None):
        self.port, self.force, self.log, self.soft_end = port, force, log, soft_end
        self.board = None
        self.info = None
        self.reset_needed = False

    def open(self, read_info, info_when_busy=False):
        """read_info(board) after the busy check; info_when_busy: read it even
        when the board is refused (soft_end needs it). Returns the info."""
        self.board = BoardSession(self.port, helpers=BOARD_HELPERS)
        self.board.interrupt()
        self.reset_needed = True
        refused = True
        try:
            check_busy(self.board, self.force, self.log)
            refused = False
        finally:
            if info_when_busy or not refused:
                self.info = read_info(self.board)
        return self.info

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if self.reset_needed:
            if self.soft_end and self.info and self.soft_end(self.info):
                soft_reset(self.board, self.log)
            else:
                reset(self.board, self.log)
        if self.board is not None:
            self.board.close()
        if isinstance(e, BoardError):
            raise DeployError(EXIT_NO_BOARD if e.lost else EXIT_ERROR, str(e)) from None
        return False


# --- uploads both paths make --------------------------------------------------------------
class Deploy:
    """What both paths count and write: the uploads over the line (the CLI's
    last line), with progress; root files replaced verified."""

    def __init__(self, args, log=print, before_write=None):
        self.args = args
        self.log = log
        self.before_write = before_write  # callable(board), tests: check the board before any write
        self.files = 0  # uploaded over the line (copies on the board do not count)
        self.bytes = 0
        self.total = 0  # bytes planned, for the progress percentage
        self.done = 0

    def upload(self, board, path, data):
        start = self.done
        tty = sys.stdout.isatty()

        def progress(n):
            pct = 100 * (start + n) // max(self.total, 1)
            sys.stdout.write("\r  [%3d%%] %-40s %6d B" % (pct, path, len(data)))
            sys.stdout.flush()

        board.write_file(path, data, progress if tty else None, each="_feed()\n")
        self.done += len(data)
        if tty:
            sys.stdout.write("\n")
        else:
            self.log("  [%3d%%] %s %d B" % (100 * self.done // max(self.total, 1), path, len(data)))
        self.files += 1
        self.bytes += len(data)

    def write_root(self, board, root, changed):
        """Root files (not slotted): temp + verify + rename, only the changed ones."""
        if not changed:
            return
        if any(p.startswith("/data/") for p in changed):
            board.exec("_mkdirs(['/data'])")
        if not self.total:
            self.total = sum(len(root[p]) for p in changed)
        for p in changed:
            self.upload(board, p + ".new", root[p])
        self.verify(board, {p + ".new": sha256(root[p]) for p in changed})
        board.exec("".join("_mv(%r, %r)\n" % (p + ".new", p) for p in changed))

    def verify(self, board, expect):
        got = hashes(board, "_hash(%r)" % sorted(expect))
        bad = [p for p, sha in sorted(expect.items()) if got.get(p) != sha]
        if bad:
            board.exec("_rm(%r)" % [p for p in bad if p.endswith(".new")])
            raise DeployError(EXIT_HASH, "hash mismatch after upload: %s (nothing switched; run the deploy again)" % ", ".join(bad))

    @staticmethod
    def update_key_bytes(path):
        """The public key file (tools/sign.py pubkey) checked as the board reads it."""
        try:
            data = Path(path).read_bytes()
            key = json.loads(data)
            n = int(key["n"], 16)
            if not 2048 <= n.bit_length() <= 4096 or not isinstance(key["e"], int) or key["e"] < 3:
                raise ValueError("not an RSA public key of 2048-4096 bits")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise DeployError(EXIT_ERROR, "bad --update-key %s: %s (make one with tools/sign.py pubkey)" % (path, e)) from None
        return data
