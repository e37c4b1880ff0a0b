"""Append-only, checksummed session journal on the board's filesystem.

Owns: every session record from the moment it opens until the broker has
acknowledged it (PUBACK), through power cuts and reboots; the boot counter.
Never does: lose or silently drop a closed session, raise on a damaged file,
talk to the network, or run inside the control tick (it does file I/O).
The file format, size policy and costs are in docs/journal.md.

Frame on flash: magic 0xEC 0x4A, kind (1 byte), payload length (2 bytes LE),
CRC-32 of kind + length + payload (4 bytes LE), then the JSON payload. A frame
that does not check (torn by a power cut, or corrupt) is skipped: the reader
searches for the next magic and counts one `skipped` per damaged stretch.

Public methods take a lock: the link thread may ack() while the main loop
writes.
"""

import json
import os

from firmware import store

try:
    from micropython import const
except ImportError:  # CPython host tools may import this module too

    def const(x):
        return x


try:
    from binascii import crc32 as _crc32
except ImportError:  # a port built without MICROPY_PY_BINASCII_CRC32
    _crc32 = None

try:
    from _thread import allocate_lock as _new_lock
except ImportError:

    class _NoLock:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def _new_lock():
        return _NoLock()


MAGIC0 = const(0xEC)
MAGIC1 = const(0x4A)
_MAGIC = b"\xecJ"
HDR_BYTES = const(9)
MAX_PAYLOAD_BYTES = const(2048)
_SCAN_CHUNK = const(64)
# A pending session is remembered as one small int: offset << 12 | frame
# bytes (a frame is at most HDR_BYTES + MAX_PAYLOAD_BYTES < 4096), so the
# file may grow to 2**18 bytes before the int would pass 2**30.
_LEN_BITS = const(12)
_LEN_MASK = const(0xFFF)
MAX_BYTES_LIMIT = const(1 << 17)

KIND_BOOT = const(0x42)  # "B" {"n": boot counter}
KIND_OPEN = const(0x4F)  # "O" the session as it opened (SessionTracker.opening())
KIND_CHECKPOINT = const(0x43)  # "C" {"id": ..., progress fields}
KIND_CLOSED = const(0x53)  # "S" the full session record
KIND_ACK = const(0x41)  # "A" {"id": ...} the broker has it

JOURNAL_FILE = "journal.bin"
TMP_FILE = JOURNAL_FILE + ".tmp"  # a compaction in progress (firmware/store.py)
BOOT_FILE = "boot.cnt"
_BOOT_MAX_BYTES = const(16)  # "1073741823\n" and some slack: anything longer is damaged
_SMALL_INT = const(1 << 30)
_TRIM_CHARS = const(64)  # strings of a record too large to write are cut to this


_table = None


def crc32_soft(data, crc=0):
    """CRC-32 (IEEE, as zlib/binascii) in Python, for ports without
    binascii.crc32. Slow and boxes ints above 2**30: journal writes only."""
    global _table
    if _table is None:
        from array import array

        _table = array("I", range(256))
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
            _table[i] = c
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32(data, crc=0):
    if _crc32 is None:
        return crc32_soft(data, crc)
    return _crc32(data, crc) & 0xFFFFFFFF


def _frame_crc(kind, n, payload):
    return crc32(payload, crc32(bytes((kind, n & 0xFF, n >> 8))))


def frame(kind, payload):
    """The bytes of one journal frame."""
    n = len(payload)
    c = _frame_crc(kind, n, payload)
    hdr = bytes((MAGIC0, MAGIC1, kind, n & 0xFF, n >> 8, c & 0xFF, (c >> 8) & 0xFF, (c >> 16) & 0xFF, c >> 24))
    return hdr + payload


def _check(hdr, payload):
    """True when a 9-byte header and its payload form a valid frame."""
    if hdr[0] != MAGIC0 or hdr[1] != MAGIC1:
        return False
    n = hdr[3] | (hdr[4] << 8)
    if len(payload) != n:
        return False
    c = hdr[5] | (hdr[6] << 8) | (hdr[7] << 16) | (hdr[8] << 24)
    return _frame_crc(hdr[2], n, payload) == c


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _trimmed(rec):
    """A copy of a record with every long string cut to _TRIM_CHARS."""
    out = {}
    for k in rec:
        v = rec[k]
        out[k] = v[:_TRIM_CHARS] if isinstance(v, str) else v
    return out


class Journal:
    def __init__(self, dir, max_bytes=32768):
        self.dir = dir
        self.path = dir + "/" + JOURNAL_FILE
        self._tmp = dir + "/" + TMP_FILE
        self._boot_path = dir + "/" + BOOT_FILE
        if not 1024 <= max_bytes <= MAX_BYTES_LIMIT:
            raise ValueError("journal max_bytes out of range")
        self.max_bytes = max_bytes
        # Live data (pending + open sessions) may fill max_bytes - slack; the
        # slack is room to append between compactions.
        self.slack_bytes = max_bytes // 4
        self.skipped = 0  # damaged stretches passed over while reading
        self.dropped = 0  # closed sessions not recorded because the journal was full
        self.compactions = 0
        self.boot_n = 0
        # The highest meter reading (mWh) any record holds: the lifetime
        # counter must never restart below it (firmware/app.py).
        self.meter_mwh = 0
        # None, or why the last write failed (ENOSPC: a full flash). While
        # set, full() is True: no new session starts (docs/journal.md).
        self.error = None
        self.notes = []  # damaged files met while opening, for the boot report
        self._lock = _new_lock()
        try:
            os.mkdir(dir)
        except OSError:
            pass
        with self._lock:
            self._load()

    # --- reading -------------------------------------------------------------
    def _load(self):
        self._pending = {}  # id -> offset << 12 | frame bytes
        self._open = {}  # id -> [offset, bytes, checkpoint offset or -1, bytes]
        self._boot_at = None  # (offset, bytes) of the newest boot frame
        self.size = 0
        self.dead = 0  # bytes of frames no longer needed
        try:
            # A compaction cut short: dropped, or finished (FAT, store.py).
            store.settle(self.path)
            with open(self.path, "rb") as f:
                self._scan(f)
        except OSError as e:
            if exists(self.path):  # a directory, or unreadable: out of the way
                self.notes.append("journal: %s unusable (%r): started empty" % (self.path, e))
                store.make_way(self.path)
            self.size = self.dead = 0
            return
        if self.skipped:
            self._compact()  # drop the damaged bytes now; the counter stays

    def _scan(self, f):
        hdr = bytearray(HDR_BYTES)
        off = 0
        while True:
            f.seek(off)
            got = f.readinto(hdr)
            if not got:
                break
            n = hdr[3] | (hdr[4] << 8)
            obj = None
            if got == HDR_BYTES and n <= MAX_PAYLOAD_BYTES:
                payload = f.read(n)
                if _check(hdr, payload):
                    try:
                        obj = json.loads(payload)
                    except ValueError:
                        obj = None
            if obj is not None:
                try:
                    self._apply(hdr[2], off, HDR_BYTES + n, obj)
                except (KeyError, TypeError, AttributeError):
                    self.dead += HDR_BYTES + n  # checks, but not a record we know
                off += HDR_BYTES + n
                continue
            self.skipped += 1
            nxt = self._resync(f, off + 1)
            self.dead += nxt - off
            off = nxt
        self.size = off

    def _resync(self, f, off):
        """Offset of the next magic at or after off, or the end of the file."""
        while True:
            f.seek(off)
            chunk = f.read(_SCAN_CHUNK)
            if len(chunk) < 2:
                return off + len(chunk)
            i = chunk.find(_MAGIC)
            if i >= 0:
                return off + i
            off += len(chunk) - 1  # the last byte may start a magic

    def _read(self, off, n):
        """The record of the frame at off, or None (counted) when it no longer
        checks: flash that rotted after it was written."""
        try:
            with open(self.path, "rb") as f:
                f.seek(off)
                buf = f.read(n)
        except OSError:
            buf = b""
        if len(buf) == n and _check(buf[:HDR_BYTES], buf[HDR_BYTES:]):
            return json.loads(buf[HDR_BYTES:])
        self.skipped += 1
        return None

    # --- state: one rule for reading back and for writing ---------------------
    def _apply(self, kind, off, n, obj):
        if kind == KIND_BOOT:
            b = obj["n"]
            if not isinstance(b, int) or not 0 <= b < _SMALL_INT:
                raise TypeError  # checks, but no counter we can use
            if self._boot_at is not None:
                self.dead += self._boot_at[1]
            self._boot_at = (off, n)
            if b > self.boot_n:
                self.boot_n = b
            return
        sid = obj["id"]
        m = obj.get("meter_stop_mwh")
        if isinstance(m, int) and m > self.meter_mwh:
            self.meter_mwh = m
        if kind == KIND_OPEN and sid not in self._open and sid not in self._pending:
            self._open[sid] = [off, n, -1, 0]
            return
        if kind == KIND_CHECKPOINT and sid in self._open:
            o = self._open[sid]
            if o[2] >= 0:
                self.dead += o[3]
            o[2] = off
            o[3] = n
            return
        if kind == KIND_CLOSED and sid not in self._pending:
            self._pending[sid] = (off << _LEN_BITS) | n
            o = self._open.pop(sid, None)
            if o is not None:
                self.dead += o[1] + o[3]
            return
        if kind == KIND_ACK and sid in self._pending:
            self.dead += self._pending.pop(sid) & _LEN_MASK
        self.dead += n  # acks, duplicates, strays, unknown kinds

    # --- writing ---------------------------------------------------------------
    def _append(self, kind, obj):
        """Write one frame. False (nothing recorded, `error` says why) when the
        record cannot be written: never raises into the control loop."""
        payload = json.dumps(obj).encode()
        if len(payload) > MAX_PAYLOAD_BYTES:
            obj = _trimmed(obj)  # e.g. a tag read back from a damaged file
            payload = json.dumps(obj).encode()
            if len(payload) > MAX_PAYLOAD_BYTES:
                self.error = "journal record too large"
                return False
        data = frame(kind, payload)
        if self.size + len(data) > self.max_bytes and self.dead:
            self._compact()
        try:
            with open(self.path, "ab") as f:
                f.write(data)
        except OSError as e:
            self.error = "journal: cannot write %s: %r" % (self.path, e)
            try:
                size = os.stat(self.path)[6]  # a partial frame: skipped on reading
            except OSError:
                size = self.size
            if size > self.size:
                self.dead += size - self.size
                self.size = size
            return False
        off = self.size
        self.size += len(data)
        self._apply(kind, off, len(data), obj)
        self.error = None
        return True

    def _compact(self):
        """Rewrite only live frames (newest boot, pending sessions in order,
        open sessions with their last checkpoint) to a temp file, then rename
        it over the journal. On a full flash the journal stays as it was."""
        try:
            self._rewrite()
        except OSError as e:
            self.error = "journal: compaction failed: %r" % (e,)
            store.make_way(self._tmp)

    def _rewrite(self):
        store.make_way(self._tmp)
        src = open(self.path, "rb") if exists(self.path) else None
        try:
            dst = open(self._tmp, "wb")
        except OSError:
            if src is not None:
                src.close()
            raise
        pos = 0
        boot_at = self._boot_at
        pending = {}
        opened = {}
        try:
            if self.boot_n:
                data = frame(KIND_BOOT, json.dumps({"n": self.boot_n}).encode())
                dst.write(data)
                boot_at = (0, len(data))
                pos = len(data)
            moved = {}  # old packed -> new packed
            for p in sorted(self._pending.values()):
                n = self._copy(src, dst, p >> _LEN_BITS, p & _LEN_MASK)
                if n:
                    moved[p] = (pos << _LEN_BITS) | n
                    pos += n
            for sid in self._pending:
                p = moved.get(self._pending[sid])
                if p is not None:
                    pending[sid] = p
            moved = None
            for sid, o in self._in_order(self._open):
                n = self._copy(src, dst, o[0], o[1])
                if not n:
                    continue
                opened[sid] = [pos, n, -1, 0]
                pos += n
                if o[2] >= 0:
                    m = self._copy(src, dst, o[2], o[3])
                    if m:
                        opened[sid][2] = pos
                        opened[sid][3] = m
                        pos += m
        finally:
            dst.close()
            if src is not None:
                src.close()
        store.replace(self._tmp, self.path)
        self._boot_at = boot_at
        self._pending = pending
        self._open = opened
        self.size = pos
        self.dead = 0
        self.compactions += 1

    def _copy(self, src, dst, off, n):
        """Copy one frame if it still checks; returns its length or 0."""
        src.seek(off)
        buf = src.read(n)
        if len(buf) != n or not _check(buf[:HDR_BYTES], buf[HDR_BYTES:]):
            self.skipped += 1
            return 0
        dst.write(buf)
        return n

    @staticmethod
    def _in_order(d):
        items = list(d.items())
        items.sort(key=lambda kv: kv[1][0])
        return items

    # --- boot counter ----------------------------------------------------------
    def _read_counter(self):
        data, err = store.read(self._boot_path, _BOOT_MAX_BYTES)
        n = 0
        if data is not None:
            try:
                n = int(data)
            except ValueError:
                n = -1
            if not 0 <= n < _SMALL_INT:
                err = "%s is damaged" % self._boot_path
                n = 0
        if err:
            self.notes.append("journal: %s: boot counter from the journal" % err)
        return n

    def boot(self):
        """Count this boot and return the new counter: above every counter in
        the counter file and in the journal, so it never repeats while either
        survives. When neither can be written (a full flash) `error` says so
        and full() refuses sessions, so no session id can repeat."""
        with self._lock:
            n = max(self._read_counter(), self.boot_n) + 1
            self.boot_n = n
            self._write_boot()
            return n

    def _write_boot(self):
        n = self.boot_n
        try:
            store.write(self._boot_path, "%d\n" % n)
        except OSError as e:
            self.error = "journal: cannot write %s: %r" % (self._boot_path, e)
            return False
        return self._append(KIND_BOOT, {"n": n})

    def retry(self):
        """After a failed write: try again to record the boot (the smallest
        write there is). True when the journal is writable again."""
        with self._lock:
            if self.error is None:
                return True
            return self._write_boot()

    # --- sessions --------------------------------------------------------------
    def live_bytes(self):
        """Bytes of the frames a compaction would keep."""
        return self.size - self.dead

    def compact(self):
        """Rewrite the file with live frames only, now (e.g. while idle)."""
        with self._lock:
            if self.size:
                self._compact()

    def full(self):
        """True when pending and open sessions fill max_bytes - slack_bytes,
        or the last write failed (`error`): open_session() refuses until acks
        free room or a write succeeds again (see docs/journal.md)."""
        return self.error is not None or self.size - self.dead > self.max_bytes - self.slack_bytes

    def open_session(self, rec):
        """Record a session as it starts. False (nothing written) when full():
        the app should raise an event and not start charging."""
        with self._lock:
            if rec["id"] in self._open or rec["id"] in self._pending:
                return True
            if self.full():
                return False
            return self._append(KIND_OPEN, rec)

    def checkpoint(self, sid, fields):
        """Record the progress of an open session (replaces the previous
        checkpoint). False when the session is not open in the journal."""
        with self._lock:
            if sid not in self._open:
                return False
            rec = dict(fields)
            rec["id"] = sid
            return self._append(KIND_CHECKPOINT, rec)

    def close_session(self, rec):
        """Record a finished session; it stays pending until ack(). A session
        opened in the journal is always written (the slack keeps room for it);
        one that was refused at open is written if there is room now, else
        counted in `dropped` and False is returned. Closing twice is harmless."""
        with self._lock:
            sid = rec["id"]
            if sid in self._pending:
                return True
            if sid not in self._open and self.full():
                self.dropped += 1
                return False
            if not self._append(KIND_CLOSED, rec):
                self.dropped += 1
                return False
            return True

    def ack(self, sid):
        """The broker has the session: forget it. Unknown or repeated ids are
        ignored (False)."""
        with self._lock:
            if sid not in self._pending:
                return False
            return self._append(KIND_ACK, {"id": sid})

    def pending_count(self):
        return len(self._pending)

    def pending(self, limit=None):
        """Closed, unacknowledged session records, oldest first (at most
        `limit` of them, read from flash one by one)."""
        with self._lock:
            out = []
            for p in sorted(self._pending.values()):
                if limit is not None and len(out) >= limit:
                    break
                rec = self._read(p >> _LEN_BITS, p & _LEN_MASK)
                if rec is not None:
                    out.append(rec)
            return out

    def open_ids(self):
        return list(self._open)

    def recover(self, now_info, ahead=None):
        """At boot: close every session left open as "power_loss", with its
        last checkpoint merged over its opening record (energy and end time
        as of that checkpoint). `now_info` (wall seconds or {"boot", "mono_ms"})
        is kept as "recovered". ahead(rec), when given, may bring rec further
        forward from a newer checkpoint kept elsewhere (firmware/nvlog.py).
        Returns the ids closed, oldest first."""
        with self._lock:
            done = []
            for sid, o in self._in_order(self._open):
                rec = self._read(o[0], o[1])
                if rec is None:
                    rec = {"id": sid}
                if o[2] >= 0:
                    cp = self._read(o[2], o[3])
                    if cp is not None:
                        rec.update(cp)
                if ahead is not None:
                    ahead(rec)
                rec["reason"] = "power_loss"
                rec["recovered"] = now_info
                if self._append(KIND_CLOSED, rec):
                    done.append(sid)
            return done
