"""The checkpoint ring: an open session's energy on raw NOR flash, written
while charging without ever erasing then.

Owns: the board's checkpoint area (hal/contract.py nvlog_*): fixed 32-byte
records appended while a session runs, the sectors erased beforehand while
the contactor is open, and at boot the newest valid record of each session,
which the journal's power_loss recovery takes when it is ahead of its own
checkpoint (docs/journal.md "The checkpoint ring").
Never does: erase while the contactor is closed (the caller says; reclaim()
refuses anyway), allocate in due()/append(), decide anything about charging,
or touch the filesystem.

Record (little-endian): magic 0xC7 0x4E, version, phases, seq (u32: the
ring's order), sid (CRC-32 of the session id), energy mWh (u32), meter
start Wh (u32) and its mWh (u16), peak current in 10 mA (u16), ms since the
session started (u32), CRC-32 of the 28 bytes before it. A record never
crosses a 256-byte page, so one program writes it. A torn program (power cut)
or a stray bit fails the CRC and is skipped; its slot is never written again
until the sector is erased. RAM: ~0.4 KB of buffers.
"""

from binascii import crc32

import micropython
from micropython import const

from firmware.session import wh

REC_BYTES = const(32)
SECTOR_BYTES = const(4096)  # hal/contract.py NVLOG_SECTOR
_SLOTS = const(128)  # records per sector
_PAGE = const(256)
_M0 = const(0xC7)
_M1 = const(0x4E)
_VERSION = const(1)
# When a checkpoint is due: after STEP of energy (the ring's slots shared out
# over SESSION_MWH, at least MIN_STEP), or after EVERY_MS with any energy.
# 64 KB (2048 slots): every 48.8 Wh, so one ring holds a 100 kWh session.
_SESSION_MWH = const(100000000)  # 100 kWh
_MIN_STEP_MWH = const(10000)  # 10 Wh
EVERY_MS = const(60000)
_MAX_ELAPSED = const(0x3FFFFFFF)
_HALF_TICKS = const(1 << 29)

# An erased slot (a literal: frozen, it stays in flash, not in the heap).
_BLANK_REC = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"


@micropython.viper
def _crc(buf, n: int) -> int:
    # CRC-32 (IEEE, as binascii.crc32) of buf[0:n], stored little-endian at
    # buf[n:n+4]; returns 1 when the bytes that were there already matched.
    # Machine words only: nothing is allocated, even where the value passes 2**30.
    b = ptr8(buf)  # noqa: F821 (viper built-ins)
    poly = (uint(0xEDB8) << 16) | uint(0x8320)  # noqa: F821
    ones = (uint(0xFFFF) << 16) | uint(0xFFFF)  # noqa: F821
    c = ones
    i = 0
    while i < n:
        c ^= uint(b[i])  # noqa: F821
        k = 0
        while k < 8:
            if c & 1:
                c = (c >> 1) ^ poly
            else:
                c = c >> 1
            k += 1
        i += 1
    c ^= ones
    same = 1
    k = 0
    while k < 4:
        v = int((c >> (8 * k)) & 0xFF)
        if b[n + k] != v:
            same = 0
        b[n + k] = v
        k += 1
    return same


def _u32(b, i):
    """Unsigned 32-bit field (a long int above 2**30: boot and recovery only)."""
    return b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)


def _put32(b, i, v):
    b[i] = v & 0xFF
    b[i + 1] = (v >> 8) & 0xFF
    b[i + 2] = (v >> 16) & 0xFF
    b[i + 3] = (v >> 24) & 0xFF


def sid_key(sid):
    """The 4 bytes a record holds for a session id (CRC-32 of its text)."""
    c = crc32(sid.encode()) & 0xFFFFFFFF
    return bytes((c & 0xFF, (c >> 8) & 0xFF, (c >> 16) & 0xFF, c >> 24))


def valid(rec):
    """True when a 32-byte slot holds a record that checks."""
    if rec[0] != _M0 or rec[1] != _M1 or rec[2] != _VERSION:
        return False
    tmp = bytearray(rec)  # _crc writes the CRC it computes: not into the caller's bytes
    return _crc(tmp, REC_BYTES - 4) == 1


class NvLog:
    def __init__(self, hal):
        self.hal = hal
        size = hal.nvlog_size()
        self.sectors = size // SECTOR_BYTES
        self.slots = self.sectors * _SLOTS
        self.step_mwh = _SESSION_MWH // self.slots if self.slots else 0
        if self.step_mwh < _MIN_STEP_MWH:
            self.step_mwh = _MIN_STEP_MWH
        self._blank = bytearray(self.sectors)  # 1: the sector reads all 0xFF
        self._keep = bytearray(self.sectors)  # 1: holds the newest record of a session left open at boot
        self._newest = -1  # sector of this session's newest record, -1: none yet
        self._rec = bytearray(REC_BYTES)  # the record being written
        self._rd = bytearray(REC_BYTES)  # a slot read back before programming it
        self._sec = -1  # sector being written, -1: none yet
        self._slot = 0  # next slot in it
        self.seq = 0  # the next record's sequence number
        self.active = False
        self._e_mwh = 0  # energy when the last record was due (written or not)
        self._kept_mwh = 0  # energy of the newest record written
        self._t = 0  # ticks of the last record (or the session start)
        self._el = 0  # ms since the session started, as of the last record
        self.programs = 0  # records written since boot
        self.erases = 0
        self.missed = 0  # checkpoints due that found no erased slot
        self.skipped = 0  # slots found not blank when about to program them
        self.damaged = 0  # non-blank slots that did not check, at boot
        self.error = None  # the last flash error, as text
        self.full = False  # this session ran out of erased slots
        self.found = {}  # at boot: sid bytes -> (sector, newest valid record)
        self.taken = []  # ids of sessions merge() brought forward

    # --- boot ----------------------------------------------------------------
    def scan(self):
        """Read the whole area once (at boot): which sectors are blank, the
        newest valid record of every session, the next sequence number."""
        if not self.sectors:
            return
        page = bytearray(_PAGE)
        blank_page = _BLANK_REC * (_PAGE // REC_BYTES)  # boot only: freed after the scan
        hal = self.hal
        best = {}
        top = -1
        top_sec = -1
        for s in range(self.sectors):
            blank = True
            for p in range(SECTOR_BYTES // _PAGE):
                off = s * SECTOR_BYTES + p * _PAGE
                try:
                    hal.nvlog_read(off, page)
                except OSError as e:
                    self.error = "nvlog: cannot read: %r" % (e,)
                    blank = False
                    break
                if page == blank_page:
                    continue
                blank = False
                for i in range(0, _PAGE, REC_BYTES):
                    rec = page[i : i + REC_BYTES]
                    if rec == _BLANK_REC:
                        continue
                    if not valid(rec):
                        self.damaged += 1
                        continue
                    seq = _u32(rec, 4)
                    if seq > top:
                        top = seq
                        top_sec = s
                    key = bytes(rec[8:12])
                    old = best.get(key)
                    if old is None or seq > _u32(old[1], 4):
                        best[key] = (s, bytes(rec))
            self._blank[s] = 1 if blank else 0
        self.seq = top + 1 if top + 1 < _MAX_ELAPSED else 0
        self.found = best
        # Writing goes on in the sector after the newest record's (never into
        # a sector of an earlier boot): the wear goes round the ring.
        self._sec = top_sec
        self._slot = _SLOTS

    def merge(self, rec):
        """A session the journal closes as power_loss (rec: its opening
        record with the journal's last checkpoint merged in): take the
        ring's newest record of it when that holds more energy. True when
        rec was changed."""
        got = self.found.get(sid_key(rec.get("id", "")))
        if got is None:
            return False
        b = got[1]
        e = _u32(b, 12)
        if e <= (rec.get("energy_mwh") or 0):
            return False
        start_wh = _u32(b, 16)
        start_mwh = b[20] | (b[21] << 8)
        ms = rec.get("meter_start_mwh")
        if isinstance(ms, int) and ms // 1000 != start_wh:
            return False  # another session's record (a CRC collision): not ours to take
        meter = start_wh * 1000 + start_mwh + e
        rec["energy_mwh"] = e
        rec["energy_wh"] = wh(e)
        rec["meter_stop_mwh"] = meter
        rec["meter_stop_wh"] = wh(meter)
        peak = (b[22] | (b[23] << 8)) * 10
        if peak / 1000 > (rec.get("peak_a") or 0):
            rec["peak_a"] = round(peak / 1000, 2)
        if b[3] > (rec.get("phases") or 0):
            rec["phases"] = b[3]
        el = _u32(b, 24)
        start = rec.get("start")
        if isinstance(start, int):
            rec["end"] = start + el // 1000
        elif isinstance(start, dict) and isinstance(start.get("mono_ms"), int):
            el = el if el < _HALF_TICKS else _HALF_TICKS - 1  # ticks_add() takes less than half a period
            rec["end"] = {"boot": start.get("boot"), "mono_ms": self.hal.ticks_add(start["mono_ms"], el)}
        self.taken.append(rec.get("id"))
        return True

    def settle(self, open_ids):
        """After the journal's recovery: sectors that hold the newest record
        of a session the journal still has open (its close could not be
        written) are kept; every other record is history, erased when idle."""
        for sid in open_ids:
            got = self.found.get(sid_key(sid))
            if got is not None:
                self._keep[got[0]] = 1
        self.found = {}

    # --- a session -------------------------------------------------------------
    def begin(self, sid, now, meter_wh):
        """A session starts (not in the control tick: it allocates).
        meter_wh: the lifetime reading (Wh, mWh) at its start."""
        r = self._rec
        r[0] = _M0
        r[1] = _M1
        r[2] = _VERSION
        r[3] = 0
        r[8:12] = sid_key(sid)
        _put32(r, 16, meter_wh[0])
        r[20] = meter_wh[1] & 0xFF
        r[21] = meter_wh[1] >> 8
        self.active = self.sectors > 0
        self.full = False
        self._newest = -1
        self._e_mwh = 0
        self._kept_mwh = 0
        self._t = now
        self._el = 0

    def due(self, now, energy_mwh):
        """A checkpoint should be written now. Allocates nothing."""
        if not self.active:
            return False
        de = energy_mwh - self._e_mwh
        if de >= self.step_mwh:
            return True
        return de > 0 and self.hal.ticks_diff(now, self._t) >= EVERY_MS

    def append(self, now, energy_mwh, peak_ma, phases):
        """Program one record into erased space (never erases). True when
        written; False when no erased slot is left (`full`, `missed`) or the
        flash failed (`error`). Allocates nothing."""
        hal = self.hal
        el = self._el + hal.ticks_diff(now, self._t)
        self._el = el if el < _MAX_ELAPSED else _MAX_ELAPSED
        self._t = now
        self._e_mwh = energy_mwh
        r = self._rec
        r[3] = phases
        _put32(r, 4, self.seq)
        _put32(r, 12, energy_mwh)
        p = peak_ma // 10
        if p > 0xFFFF:
            p = 0xFFFF
        r[22] = p & 0xFF
        r[23] = p >> 8
        _put32(r, 24, self._el)
        _crc(r, REC_BYTES - 4)
        rd = self._rd
        while True:
            if self._sec < 0 or self._slot >= _SLOTS:
                if not self._next_sector():
                    self.missed += 1
                    self.full = True
                    return False
            off = self._sec * SECTOR_BYTES + self._slot * REC_BYTES
            self._slot += 1
            try:
                hal.nvlog_read(off, rd)
                if rd != _BLANK_REC:
                    self.skipped += 1  # not erased (a torn erase, a stray bit): never program over it
                    continue
                hal.nvlog_write(off, r)
            except OSError:
                self.error = "nvlog: flash error"
                return False
            self.seq += 1
            if self.seq >= _MAX_ELAPSED:
                self.seq = 0
            self.programs += 1
            self._newest = self._sec
            self._kept_mwh = energy_mwh
            return True

    def _next_sector(self):
        n = self.sectors
        s = self._sec
        k = 0
        while k < n:
            s += 1
            if s >= n:
                s = 0
            if self._blank[s]:
                self._blank[s] = 0
                self._sec = s
                self._slot = 0
                return True
            k += 1
        return False

    def end(self):
        """The session closed in the journal: its records are history."""
        self.active = False

    # --- erasing, while the contactor is open only ------------------------------
    def free_slots(self):
        n = 0
        for s in range(self.sectors):
            n += self._blank[s]
        n *= _SLOTS
        if self._sec >= 0:
            n += _SLOTS - self._slot
        return n

    def reclaim(self, contactor_closed):
        """Erase one sector that holds only history (at most one per call: an
        erase stalls the loop 45-400 ms). Never while the contactor is
        closed. True when a sector was erased."""
        if contactor_closed or not self.sectors:
            return False
        for s in range(self.sectors):
            if not self._erasable(s):
                continue
            try:
                self.hal.nvlog_erase(s)
            except OSError as e:
                self.error = "nvlog: cannot erase sector %d: %r" % (s, e)
                return False
            self.erases += 1
            self._blank[s] = 1
            if s == self._sec:
                self._slot = _SLOTS  # the cursor stays: the next record goes to the next erased sector
            return True
        return False

    def pending_erases(self):
        """Sectors reclaim() would erase."""
        n = 0
        for s in range(self.sectors):
            if self._erasable(s):
                n += 1
        return n

    def _erasable(self, s):
        # Not blank, no open session's newest record (nor the sector this
        # session writes into: a record due while the contactor is open).
        if self._blank[s] or self._keep[s]:
            return False
        return not (self.active and (s == self._sec or s == self._newest))

    def checkpoint_meter_wh(self):
        """The lifetime Wh the newest record of this session stands for
        (what a power cut can no longer take back), or 0."""
        if self._newest < 0:
            return 0
        r = self._rec
        return _u32(r, 16) + ((r[20] | (r[21] << 8)) + self._kept_mwh) // 1000
