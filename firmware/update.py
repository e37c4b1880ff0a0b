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
partitions", "pending" (the running image is not marked valid yet: the next
partition holds its fallback), "size", "write", "hash", "signature". Nothing boots differently
after a refusal: ota_set_boot() is the last call of a successful finish().

finish() leaves a note of what it installed (firmware/imagestate.py, which
reports after the reset whether the bootloader rolled it back, and marks a
running image valid: small, so the firmware imports only that at boot).

Never runs in the control tick; never imports machine.
"""

import hashlib
from binascii import hexlify

from firmware import imagestate

KEY_FILE = "update_key.json"  # under board.data_dir: /data/update_key.json
READ_BYTES = 4096  # re-read buffer of finish(): one flash block


class UpdateError(Exception):
    """An image refused. reason: "no partitions", "pending", "size", "write",
    "hash" or "signature"; the message says more."""

    def __init__(self, reason, detail=""):
        super().__init__("%s: %s" % (reason, detail) if detail else reason)
        self.reason = reason


def has_key(board):
    """True when the board holds a key file (usable or not): then only
    images signed for it may be installed."""
    import os

    try:
        os.stat(board.data_dir + "/" + KEY_FILE)
        return True
    except OSError:
        return False


def load_key(board):
    """The board's public key for images, or None (no key file, or an
    unusable one: the reason is printed; such a board takes no image)."""
    if not has_key(board):
        return None
    from firmware import signature

    key, err = signature.load_key(board.data_dir + "/" + KEY_FILE)
    if key is None:
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
        self._digest = None  # SHA-256 of what was written, once complete
        self._checked = None  # (signature, sha256) check() passed with

    def begin(self, size):
        """Start an image of `size` bytes; refuses one that cannot fit."""
        self.abort()
        info = self.board.ota_info()
        if info is None:
            raise UpdateError("no partitions", "this board's image has no OTA app partitions")
        rep = imagestate.report(self.board)
        if rep is not None and rep["state"] == "pending":
            # The next partition holds the fallback of this unconfirmed image
            # (ESP-IDF's esp_ota_begin refuses the same).
            raise UpdateError("pending", "the running image in %s is not marked valid yet: its fallback in %s "
                              "would be overwritten" % (info["running"], info["next"]))  # fmt: skip
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
        if self._digest is None:
            self._digest = self._h.digest()  # once: a finished hash cannot be read again
        digest = self._digest
        if self._checked == (signature, sha256):
            return hexlify(digest).decode()  # finish() after a check(): not read twice
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
        self._checked = (signature, sha256)
        return hexd

    def finish(self, signature=None, sha256=None, version=None):
        """check(), then the note of what was installed, then the new image
        is set to boot at the next reset (pending verify). Returns the SHA-256 hex."""
        hexd = self.check(signature, sha256)
        info = self._info
        imagestate.write_note(self.board, {"to": info["next"], "from": info["running"], "sha256": hexd,
                                           "version": version, "rollback": None})  # fmt: skip
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
        self._checked = None
