"""The image deploy (tools/deploy.py --image): a whole firmware image
(MicroPython with the firmware frozen) into the inactive OTA app partition.

After deploy_board.BoardStep (open, interrupt, check busy, read what the
board has for an update): uploaded into firmware/update.py's Installer on the
board, read back and verified there (SHA-256, and the signature with
--sign-key when the board has a key), set to boot pending verify, reset,
watched; the bootloader boots the previous image at a reset before the
firmware marks the new one valid (docs/deploy.md).

Owns: the image upload and its checks. Never does: hard-reset a board whose
running image is still pending verify (that would roll it back), or switch
before the board verified the whole image.
"""

import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from board_session import BoardError
from deploy_board import (
    EXIT_BUSY,
    EXIT_ERROR,
    EXIT_FULL,
    EXIT_HASH,
    EXIT_NOT_UP,
    EXIT_OK,
    REPO,
    ROOT_FILES,
    UPDATE_KEY,
    BoardStep,
    Deploy,
    DeployError,
    firmware_version,
    hashes,
    reset,
    sha256,
    watch,
)

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


def _pending(info):
    """The running image is not yet marked valid: end with a soft reset."""
    return (info["ota"] or {}).get("state") == "pending"


class ImageDeploy(Deploy):
    def run(self):
        args = self.args
        src = Path(args.source).resolve()
        t0 = time.monotonic()
        with BoardStep(args.port, args.force, self.log, soft_end=_pending) as step:
            # read-only, even when the board is busy: whether the running image is pending
            info = step.open(lambda b: json.loads(b.exec(IMAGE_INFO).strip().splitlines()[-1]), info_when_busy=True)
            board = step.board
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
            self.log("image: %d bytes, sha256 %s" % (len(data), sha256(data)[:16]))
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
            root_changed = [p for p, d in sorted(root.items()) if on_board.get(p) != sha256(d)]
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
            ok, out = _call(board, "print(_I.finish(%r, %r, %r))" % (sig, sha256(data), firmware_version(src)))
            if not ok:
                raise DeployError(EXIT_HASH, "the board refused the image (%s): %s (nothing switched)" % (
                    update_reason(out) or "?", out.splitlines()[-1] if out else ""))
            self.log("switched: %s boots next, pending verify; fallback %s" % (oi["next"], oi["running"]))
            step.reset_needed = False
            reset(board, self.log)
            self.elapsed = time.monotonic() - t0
            return self.watch_image(board, oi, firmware_version(src))

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
        ok, out = _call(board, "print(_I.check(%r, %r))" % (sig, sha256(data)))
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

