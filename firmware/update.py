"""Install a whole firmware image into the inactive OTA app partition.

Owns the update path that keeps code out of RAM (docs/deploy.md, "Code out
of RAM"): a MicroPython image with this firmware frozen into it is written
into the partition the running image is not in, checked, and set to boot
once, "pending verify". The board's bootloader boots the previous image at
the next reset unless the firmware marks the new one valid first
(mark_valid(), after HEALTHY_AFTER ticks of running, firmware/app.py).

Installer(board, key): begin(size), write(chunk) in order, finish(signature).
finish() re-reads the whole image from the partition and hashes it; the
image is set to boot only when that SHA-256 matches the one computed while
writing, and the signature over it verifies with the board's public key
(firmware/signature.py: RSA-2048, PKCS#1 v1.5, SHA-256; the key is
KEY_FILE, {"n": hex, "e": 65537}). A board without a key accepts no image,
unless the Installer is made with allow_unsigned=True: only tools/deploy.py
over the REPL does that (and says so), never a remote update (OCPP).

Every refusal is an UpdateError whose `reason` is one short word: "no
partitions", "size", "write", "hash", "signature". Nothing boots differently
after a refusal: ota_set_boot() is the last call of a successful finish().

Also owns the board's note of what it installed (NOTE_FILE, under the board's
data_dir): an image set to boot that is not the one running at the next boot
was rolled back by the bootloader; report() says so once per boot (the MQTT
boot event, main.py's `image:` line that tools/deploy.py watches).

Never runs in the control tick; never imports machine.
"""

import hashlib
from binascii import hexlify

from firmware import store

KEY_FILE = "update_key.json"  # under board.data_dir: /data/update_key.json
NOTE_FILE = "ota.json"  # under board.data_dir
READ_BYTES = 4096  # re-read buffer of finish(): one flash block
_NOTE_MAX_BYTES = 512


class UpdateError(Exception):
    """An image refused. reason: "no partitions", "size", "write", "hash" or
    "signature"; the message says more."""

    def __init__(self, reason, detail=""):
        super().__init__("%s: %s" % (reason, detail) if detail else reason)
        self.reason = reason


def load_key(board):
    """The board's public key for images, or None (no key file, or unusable:
    the reason is printed)."""
    from firmware import signature

    key, err = signature.load_key(board.data_dir + "/" + KEY_FILE)
    if key is None and err:
        print("update: no usable key:", err)
    return key


class Installer:
    def __init__(self, board, key, allow_unsigned=False):
        self.board = board
        self.key = key
        self.allow_unsigned = allow_unsigned
        self._size = -1  # -1: not begun
        self._pos = 0
        self._h = None
        self._info = None
        self._digest = None  # verified by check()

    def begin(self, size):
        """Start an image of `size` bytes; refuses one that cannot fit."""
        self.abort()
        info = self.board.ota_info()
        if info is None:
            raise UpdateError("no partitions", "this board's image has no OTA app partitions")
        if self.key is None and not self.allow_unsigned:
            raise UpdateError("signature", "no key on the board (%s): no image can be verified" % KEY_FILE)
        if not isinstance(size, int) or size <= 0 or size > info["size"]:
            raise UpdateError("size", "%s bytes do not fit partition %s (%d bytes)" % (size, info["next"], info["size"]))
        self._info = info
        self._size = size
        self._pos = 0
        self._h = hashlib.sha256()

    def write(self, chunk):
        """The next bytes of the image, in order."""
        if self._size < 0:
            raise UpdateError("write", "not begun")
        n = len(chunk)
        if self._pos + n > self._size:
            self.abort()
            raise UpdateError("size", "more than the %d bytes begun" % self._size)
        try:
            self.board.ota_write(self._pos, chunk)
        except OSError as e:
            self.abort()
            raise UpdateError("write", "flash write at %d: %r" % (self._pos, e)) from None
        self._h.update(chunk)
        self._pos += n

    def check(self, signature=None, sha256=None):
        """Verify the whole image as it is in the partition: its SHA-256 read
        back equals the one computed while writing (and `sha256`, hex, when
        given), and the signature verifies. Returns the SHA-256 in hex. Sets
        nothing to boot."""
        if self._size < 0:
            raise UpdateError("write", "not begun")
        if self._pos != self._size:
            raise UpdateError("size", "%d of %d bytes written" % (self._pos, self._size))
        digest = self._h.digest()
        h = hashlib.sha256()
        buf = bytearray(READ_BYTES)
        mv = memoryview(buf)
        off = 0
        try:
            while off < self._size:
                n = min(READ_BYTES, self._size - off)
                part = mv[:n]
                self.board.ota_read(off, part)
                h.update(part)
                off += n
        except OSError as e:
            raise UpdateError("write", "flash read at %d: %r" % (off, e)) from None
        hexd = hexlify(digest).decode()
        if h.digest() != digest:
            raise UpdateError("hash", "the partition reads back a different image than was written")
        if sha256 is not None and sha256 != hexd:
            raise UpdateError("hash", "image sha256 %s, expected %s" % (hexd, sha256))
        if self.key is not None:
            from firmware import signature as sig

            if not signature or not sig.verify(digest, signature, self.key):
                raise UpdateError("signature", "the signature does not verify with the board's key")
        elif not self.allow_unsigned:
            raise UpdateError("signature", "no key on the board")
        self._digest = digest
        return hexd

    def finish(self, signature=None, sha256=None, version=None):
        """check(), then the note of what was installed, then the new image
        is set to boot at the next reset (pending verify). Returns the SHA-256 hex."""
        hexd = self.check(signature, sha256)
        info = self._info
        _write_note({"to": info["next"], "from": info["running"], "sha256": hexd, "version": version,
                     "rollback": None}, self.board)  # fmt: skip
        try:
            self.board.ota_set_boot()
        except OSError as e:
            raise UpdateError("write", "set_boot: %r" % (e,)) from None
        self._size = -1
        return hexd

    def abort(self):
        """Forget an image in progress (what was written stays in the inactive partition, unused)."""
        self._size = -1
        self._pos = 0
        self._h = None
        self._digest = None


# --- after the reset: which image runs, and was the new one rolled back ---------------------
_report = None  # this boot's report, computed once


def _note_path(board):
    return board.data_dir + "/" + NOTE_FILE


def _read_note(board):
    note, _ = store.load_json(_note_path(board), _NOTE_MAX_BYTES)
    return note if isinstance(note, dict) else None


def _write_note(note, board):
    import json

    store.write(_note_path(board), json.dumps(note))


def report(board):
    """{"partition": running label, "state": "valid"|"pending"|"unknown",
    "rollback": None or "<label> (version v, sha256 abc...) did not confirm:
    running <label>"}, or None on a board without OTA partitions. The first
    call of a boot notices a rollback and records it in the note; later calls
    return the same dict. Never raises."""
    global _report
    if _report is not None:
        return _report
    try:
        info = board.ota_info()
        if info is None:
            return None
        note = _read_note(board) or {}
        rollback = note.get("rollback")
        to = note.get("to")
        if to is not None and to != info["running"]:
            rollback = "%s (version %s, sha256 %s) did not confirm: running %s" % (
                to, note.get("version"), str(note.get("sha256"))[:12], info["running"])
            note["to"] = None
            note["rollback"] = rollback
            _write_note(note, board)
            print("update: rollback:", rollback)
        state = info["state"]
        if state == "unknown" and to is not None and to == info["running"]:
            state = "pending"  # installed, not yet marked valid (an ESP32 cannot say so itself)
        _report = {"partition": info["running"], "state": state, "rollback": rollback}
    except Exception as e:
        print("update: report failed:", repr(e))
        _report = None
    return _report


def mark_valid(board):
    """The firmware ran healthily (firmware/app.py, with slots.mark_good()):
    cancel the bootloader's rollback unless the board says the image is
    already valid. Never raises."""
    try:
        info = board.ota_info()
        if info is None or info["state"] == "valid":
            return
        board.ota_mark_valid()
        note = _read_note(board)
        if note and note.get("to") == info["running"]:
            note["to"] = None
            _write_note(note, board)
        if _report is not None:
            _report["state"] = "valid"
        print("update: image in %s marked valid" % info["running"])
    except Exception as e:
        print("update: mark_valid failed:", repr(e))
