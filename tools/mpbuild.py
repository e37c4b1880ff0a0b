#!/usr/bin/env python3
"""Build the ESP32-faithful MicroPython from the pinned source (`make esp32`).

From MicroPython v1.29.0-preview-731-g1c3c201149 (source archive pinned by
sha256 below) this builds, in build/esp32/ (never committed):

  mpy-cross     the bytecode compiler of that version
  micropython   a launcher for the unix port built like an ESP32: 32-bit words
                (CC="gcc -m32": 31-bit small ints, ticks wrapping at 2**30),
                single-precision floats, a GIL bounced every 32 branches, TLS
                (mbedtls), _thread, sockets, VfsRom; the firmware, the HAL and
                umqtt.simple frozen into it by tools/esp32_unix_manifest.py
                (which includes the board manifest, manifest.py), plus the
                simulator. The launcher starts it with the ESP32's 112 KB heap
                (a later `-X heapsize=` wins) and puts frozen modules before
                the filesystem on sys.path, as on a board, whose root holds no
                firmware sources (the unix port puts "" first).

The source is `micropython-1c3c201149.tar.gz`, looked for in --source,
$EVSE_MICROPYTHON_SRC, then ../shared/vendor/ next to the repository (or
next to its main worktree); a git checkout of that commit with its
submodules lib/mbedtls and lib/micropython-lib works too (README.md).

A second run with the same inputs (archive, build flags, manifests and every
frozen file) does nothing; changed firmware files are rebuilt incrementally by
make (~10 s). Needs gcc with 32-bit support (Debian: gcc-multilib) and make.

Subcommands:
  build   make build/esp32 up to date (the default)
  check   exit 1 when the build is missing or older than its inputs
  paths   print the paths of the build as JSON
  image   the firmware image of an emulated board for the tree --tree (default
          this checkout): the ESP32-faithful interpreter with that tree's
          firmware frozen by its manifests, built in its own build folder
          (build-image: only the frozen content is rebuilt and the program
          relinked) and kept by content in build/esp32/images/; prints
          {"image": path, "size": bytes, "sha256": hex} (tools/deploy.py --image)

Exit codes: 0 ok, 1 `check`: out of date, 2 failure (source missing or not
the pinned one, no 32-bit compiler, build error); the message says what to do.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / "build" / "esp32"
SOURCE_ENV = "EVSE_MICROPYTHON_SRC"

# The pinned source: MicroPython v1.29.0-preview-731-g1c3c201149 (2026-08-19).
MP_COMMIT = "1c3c201149"
MP_ARCHIVE = "micropython-%s.tar.gz" % MP_COMMIT
MP_ARCHIVE_SHA256 = "e21b78062f783997fba835471c2d378b70d1d151e9cad07264649195535c1cd1"
MP_TOPDIR = "micropython-%s" % MP_COMMIT

# The unix port configured like an ESP32 (ports/esp32/mpconfigport.h): what
# differs from the stock unix build is all here. FFI and BTREE are off because
# the archive leaves out lib/libffi and lib/berkeley-db (the ESP32 has neither
# ffi nor a need for btree here). -march=x86: @native/@viper code in frozen
# modules becomes 32-bit x86 machine code (a board gets xtensawin).
UNIX_MAKE_ARGS = [
    "VARIANT=standard",
    "BUILD=build-esp32",
    "CC=gcc -m32",
    "MICROPY_PY_FFI=0",
    "MICROPY_PY_BTREE=0",
    "MICROPY_PY_THREAD_GIL=1",
    "CFLAGS_EXTRA=-DMICROPY_FLOAT_IMPL=MICROPY_FLOAT_IMPL_FLOAT -DMICROPY_PY_THREAD_GIL_VM_DIVISOR=32",
    "MPY_CROSS_FLAGS=-march=x86",
]
MPY_CROSS_ARCH = "x86"  # for .mpy files run by this interpreter (native code)
ESP32_HEAP = "112k"  # ESP32_GENERIC without PSRAM: 56 KB, grown once to ~112 KB
UNIX_MANIFEST = REPO / "tools" / "esp32_unix_manifest.py"
BOARD_MANIFEST = REPO / "manifest.py"
EXIT_OK, EXIT_STALE, EXIT_FAILED = 0, 1, 2

# The launcher: the ESP32's heap unless the caller gives another (the last
# -X heapsize wins), frozen modules first. A script gets its own directory as
# sys.path[0] from the port; for -c and -m the port puts "" (the working
# directory, which holds firmware/ sources in a checkout) first, so the launcher
# moves it last (one line before -c code: argv entries of 256+ bytes crash the
# port, the code cannot travel as one) and runs -m MOD through
# `__import__(MOD, None, None, False)`, the port's own way to import as __main__.
_LAUNCHER = r"""#!/usr/bin/env bash
# ESP32-faithful MicroPython, written by tools/mpbuild.py (do not edit).
bin='@BIN@'
export MICROPYPATH=".frozen${MICROPYPATH:+:$MICROPYPATH}"
opts=(-X heapsize=@HEAP@)
first="__import__('sys').path.append(__import__('sys').path.pop(0))"
while (($#)); do
    case $1 in
    -X) opts+=("$1" "$2"); shift 2 ;;
    -O*|-v|-i) opts+=("$1"); shift ;;
    -c) exec "$bin" "${opts[@]}" -c "$first
$2" "${@:3}" ;;
    -m) exec "$bin" "${opts[@]}" -c "$first;__import__('sys').argv.pop(0);__import__(__import__('sys').argv[0],None,None,False)" "${@:2}" ;;
    *) break ;;
    esac
done
exec "$bin" "${opts[@]}" "$@"
"""


class BuildError(Exception):
    """A failure the user must act on; the message says what to do."""


def log(msg):
    print("mpbuild: " + msg, file=sys.stderr, flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- the source --------------------------------------------------------------------------------
def _main_worktree():
    """The main worktree of this repository when REPO is a linked worktree, else None."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--path-format=absolute", "--git-common-dir"],
                             capture_output=True, text=True, check=False, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    common = Path(out.stdout.strip()) if out.returncode == 0 else None
    return common.parent if common and common.name == ".git" and common.parent != REPO else None


def find_source(given):
    """The source to build: (kind, path), kind "archive" or "checkout"."""
    if given is None and os.environ.get(SOURCE_ENV):
        given = os.environ[SOURCE_ENV]
    if given is not None:
        path = Path(given).expanduser().resolve()
        if path.is_dir():
            return "checkout", path
        if path.is_file():
            return "archive", path
        raise BuildError("MicroPython source %s does not exist: pass the pinned archive %s or a git checkout "
                         "of commit %s (README.md, 'The ESP32-faithful interpreter')" % (path, MP_ARCHIVE, MP_COMMIT))  # fmt: skip
    tried = []
    for root in (REPO, _main_worktree()):
        if root is None:
            continue
        candidate = root.parent / "shared" / "vendor" / MP_ARCHIVE
        tried.append(str(candidate))
        if candidate.is_file():
            return "archive", candidate
    raise BuildError("the pinned MicroPython source %s was not found (looked at %s): pass --source PATH or set $%s "
                     "to the archive or to a git checkout of commit %s with its submodules (README.md)"
                     % (MP_ARCHIVE, ", ".join(tried), SOURCE_ENV, MP_COMMIT))  # fmt: skip


def verify_archive(path):
    digest = sha256_file(path)
    if digest != MP_ARCHIVE_SHA256:
        raise BuildError("%s has sha256 %s, but %s is pinned (tools/mpbuild.py): it is not the pinned MicroPython "
                         "source; get the right archive or a git checkout of commit %s" % (path, digest, MP_ARCHIVE_SHA256, MP_COMMIT))  # fmt: skip
    return digest


def verify_checkout(path):
    out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    head = out.stdout.strip()
    if out.returncode != 0 or not head.startswith(MP_COMMIT):
        raise BuildError("%s is not a git checkout of MicroPython commit %s (HEAD: %s): `git -C %s checkout %s`"
                         % (path, MP_COMMIT, head or out.stderr.strip(), path, MP_COMMIT))  # fmt: skip
    for sub in ("lib/mbedtls/include", "lib/micropython-lib/micropython"):
        if not (path / sub).is_dir():
            raise BuildError("%s lacks %s: run `git -C %s submodule update --init lib/mbedtls lib/micropython-lib`"
                             % (path, sub, path))  # fmt: skip
    return head


def unpack(archive, digest, cache):
    """The archive unpacked under cache/src (once per archive digest); returns the source root."""
    src_root = cache / "src"
    top = src_root / MP_TOPDIR
    stamp = src_root / ".unpacked"
    if top.is_dir() and stamp.is_file() and stamp.read_text().strip() == digest:
        return top
    log("unpacking %s into %s" % (archive.name, src_root))
    shutil.rmtree(src_root, ignore_errors=True)
    src_root.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tf:
        for m in tf.getmembers():  # the archive is verified; refuse odd entries anyway
            name = Path(m.name)
            if name.is_absolute() or ".." in name.parts or not (name.parts and name.parts[0] == MP_TOPDIR):
                raise BuildError("%s holds an unexpected entry %r: not extracting" % (archive, m.name))
            if not (m.isfile() or m.isdir() or m.issym()):
                raise BuildError("%s holds a special file %r: not extracting" % (archive, m.name))
        tf.extractall(src_root, filter="data")  # Python 3.10 backports have it too
    stamp.write_text(digest + "\n")
    return top


# --- what the frozen build depends on ----------------------------------------------------------
def path_vars(top, port):
    return {"MPY_DIR": str(top), "MPY_LIB_DIR": str(top / "lib" / "micropython-lib"),
            "PORT_DIR": str(top / "ports" / port), "BOARD_DIR": str(top / "ports" / port / "boards")}  # fmt: skip


def manifest_files(top, manifest, port, **options):
    """[(path on the device, file on the host)] frozen by `manifest` for `port`,
    read with MicroPython's own manifest reader (tools/manifestfile.py)."""
    sys.path.insert(0, str(top / "tools"))
    try:
        import manifestfile
    finally:
        sys.path.pop(0)
    m = manifestfile.ManifestFile(manifestfile.MODE_FREEZE, path_vars(top, port))
    try:
        m.include(str(manifest), **options)
    except manifestfile.ManifestFileError as e:
        raise BuildError("manifest %s: %s" % (manifest, e)) from None
    return [(r.target_path, r.full_path) for r in m.files()]


def inputs_digest(source_id, top):
    """One digest over everything the build depends on: the source, the build
    flags, this tool, the manifests and every frozen file."""
    h = hashlib.sha256()
    for part in [source_id, ESP32_HEAP] + UNIX_MAKE_ARGS:
        h.update(part.encode() + b"\0")
    files = [Path(__file__).resolve(), UNIX_MANIFEST, BOARD_MANIFEST]
    files += [Path(full) for _target, full in sorted(manifest_files(top, UNIX_MANIFEST, "unix"))]
    for f in files:
        h.update(str(f).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def image_digest(source_id, top, manifest):
    """The content key of an image: the source, the build flags, this tool
    and every frozen file by its path on the device and its bytes (not where
    the tree is: two checkouts of the same firmware give the same image)."""
    h = hashlib.sha256()
    for part in [source_id] + UNIX_MAKE_ARGS:
        h.update(part.encode() + b"\0")
    h.update(Path(__file__).resolve().read_bytes() + b"\0")
    for target, full in sorted(manifest_files(top, manifest, "unix")):
        h.update(target.encode() + b"\0" + Path(full).read_bytes() + b"\0")
    return h.hexdigest()


# --- building ----------------------------------------------------------------------------------
def build_paths(top, cache):
    return {
        "source": str(top),
        "mpy_cross": str(top / "mpy-cross" / "build" / "mpy-cross"),
        "micropython_bin": str(top / "ports" / "unix" / "build-esp32" / "micropython"),
        "micropython": str(cache / "micropython"),  # the launcher: use this one
        "mpy_cross_arch": MPY_CROSS_ARCH,
        "heap": ESP32_HEAP,
    }


def _make(args, jobs, what):
    cmd = ["make", "-j%d" % jobs] + args
    log("building %s: %s" % (what, " ".join(cmd)))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BuildError("`make` is not installed (Debian: apt-get install build-essential gcc-multilib)") from None
    if p.returncode != 0:
        tail = "\n".join((p.stdout + p.stderr).splitlines()[-25:])
        hint = ""
        if "gnu/stubs-32.h" in p.stderr or "cannot find -lgcc" in p.stderr or "crt1.o" in p.stderr:
            hint = "\nno 32-bit C library: install gcc-multilib (Debian: apt-get install gcc-multilib)"
        raise BuildError("building %s failed (make exit %d):\n%s%s" % (what, p.returncode, tail, hint))


def check_compiler():
    """A clear message when gcc cannot build 32-bit programs, before a long make."""
    with tempfile.TemporaryDirectory(prefix="mpbuild-") as d:
        c = Path(d) / "t.c"
        c.write_text("#include <stdio.h>\nint main(void) { return sizeof(void *) != 4; }\n")
        try:
            p = subprocess.run(["gcc", "-m32", str(c), "-o", str(Path(d) / "t")], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise BuildError("gcc is not installed (Debian: apt-get install build-essential gcc-multilib)") from None
        if p.returncode != 0:
            raise BuildError("gcc cannot build 32-bit programs (%s): install gcc-multilib (Debian: apt-get install "
                             "gcc-multilib)" % (p.stderr.strip().splitlines() or ["?"])[-1])  # fmt: skip


def write_launcher(paths):
    text = _LAUNCHER.replace("@BIN@", paths["micropython_bin"]).replace("@HEAP@", ESP32_HEAP)
    target = Path(paths["micropython"])
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, target)


def prepare(args):
    """Locate and verify the source; returns (top, source_id)."""
    kind, path = find_source(args.source)
    if kind == "archive":
        digest = verify_archive(path)
        return unpack(path, digest, args.cache), "archive:" + digest
    return path, "checkout:" + verify_checkout(path)


def cmd_build(args):
    args.cache.mkdir(parents=True, exist_ok=True)
    top, source_id = prepare(args)
    paths = build_paths(top, args.cache)
    stamp = args.cache / "stamp.json"
    digest = inputs_digest(source_id, top)
    if _up_to_date(stamp, digest, paths):
        if not args.quiet:
            log("up to date: %s" % paths["micropython"])
        return EXIT_OK
    check_compiler()
    _make(["-C", str(top / "mpy-cross")], args.jobs, "mpy-cross")
    _make(["-C", str(top / "ports" / "unix")] + UNIX_MAKE_ARGS + ["FROZEN_MANIFEST=" + str(UNIX_MANIFEST)],
          args.jobs, "the ESP32-faithful unix port")  # fmt: skip
    write_launcher(paths)
    stamp.write_text(json.dumps({"inputs": digest, "paths": paths}, indent=1) + "\n")
    log("built %s" % paths["micropython"])
    return EXIT_OK


def _up_to_date(stamp, digest, paths):
    try:
        old = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return (old.get("inputs") == digest and old.get("paths") == paths
            and all(os.access(paths[k], os.X_OK) for k in ("mpy_cross", "micropython_bin", "micropython")))  # fmt: skip


IMAGE_BUILD = "build-image"  # the unix port's build folder for images: build-esp32 stays the board's own


def cmd_image(args):
    """Build (or find in the cache) the image of the tree args.tree."""
    tree = Path(args.tree).resolve()
    manifest = tree / "tools" / "esp32_unix_manifest.py"
    if not manifest.is_file():
        raise BuildError("%s has no tools/esp32_unix_manifest.py: not a tree of this firmware" % tree)
    args.cache.mkdir(parents=True, exist_ok=True)
    top, source_id = prepare(args)
    digest = image_digest(source_id, top, manifest)
    images = args.cache / "images"
    out = images / (digest[:24] + ".bin")
    if not out.is_file():
        check_compiler()
        port = top / "ports" / "unix"
        if not (port / IMAGE_BUILD).is_dir() and (port / "build-esp32").is_dir():
            # Start from the board's own build (timestamps kept): only the
            # frozen content is rebuilt and the program relinked.
            shutil.copytree(port / "build-esp32", port / IMAGE_BUILD, symlinks=True)
        # The frozen .mpy files are rebuilt only when their source is newer,
        # and the trees of two images share these names (firmware/app.py):
        # a tree copied with its old mtimes would get the other tree's bytecode.
        shutil.rmtree(port / IMAGE_BUILD / "frozen_mpy", ignore_errors=True)
        _make(["-C", str(top / "mpy-cross")], args.jobs, "mpy-cross")
        make_args = [a for a in UNIX_MAKE_ARGS if not a.startswith("BUILD=")] + ["BUILD=" + IMAGE_BUILD]
        _make(["-C", str(port)] + make_args + ["FROZEN_MANIFEST=" + str(manifest)], args.jobs,
              "the image of %s" % tree)  # fmt: skip
        images.mkdir(exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        shutil.copyfile(port / IMAGE_BUILD / "micropython", tmp)
        tmp.chmod(0o755)
        os.replace(tmp, out)
        log("built image %s" % out)
    data = out.read_bytes()
    print(json.dumps({"image": str(out), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}))
    return EXIT_OK


def cmd_check(args):
    top, source_id = prepare(args)
    paths = build_paths(top, args.cache)
    if _up_to_date(args.cache / "stamp.json", inputs_digest(source_id, top), paths):
        log("up to date")
        return EXIT_OK
    log("out of date or missing: run `make esp32` (tools/mpbuild.py build)")
    return EXIT_STALE


def cmd_paths(args):
    top, _source_id = prepare(args)
    print(json.dumps(build_paths(top, args.cache), indent=1))
    return EXIT_OK


def build_parser():
    p = argparse.ArgumentParser(
        prog="mpbuild.py",
        description="Build mpy-cross and an ESP32-faithful MicroPython unix port (32-bit, single floats, GIL, "
        "firmware frozen) from the pinned MicroPython source into build/esp32/. Does nothing when up to date.",
        epilog="exit codes: 0 ok, 1 check: out of date, 2 failure (the message says what to do)",
    )
    p.add_argument("command", nargs="?", default="build", choices=("build", "check", "paths", "image"),
                   help="build (default), check (exit 1 when out of date), paths (print them as JSON), "
                   "image (the emulated board's firmware image of --tree, printed as JSON)")  # fmt: skip
    p.add_argument("--tree", default=str(REPO), help="image: the firmware tree to freeze (default: this checkout)")
    p.add_argument("--source", help="the pinned archive %s or a git checkout of commit %s (default: $%s, then "
                   "../shared/vendor/ next to the repository)" % (MP_ARCHIVE, MP_COMMIT, SOURCE_ENV))  # fmt: skip
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="build directory (default: build/esp32)")
    p.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1, help="parallel make jobs (default: all cores)")
    p.add_argument("--quiet", "-q", action="store_true", help="say nothing when up to date")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.cache = args.cache.resolve()
    try:
        return {"build": cmd_build, "check": cmd_check, "paths": cmd_paths, "image": cmd_image}[args.command](args)
    except BuildError as e:
        log("error: %s" % e)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
