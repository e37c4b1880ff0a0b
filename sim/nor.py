"""A NOR flash partition in a file, for the simulated board's checkpoint area
(hal/contract.py nvlog_*): an erase sets a 4 KB sector to 0xFF; programming
ANDs the new bytes into the old ones (bits only go from 1 to 0), so a write
into space that was not erased corrupts as it would on a real chip, and is
counted. The file is written through at every operation, so a process killed
with SIGKILL leaves the flash as a power cut would.

A power cut in the middle of an operation: tear_program(n) / tear_erase(n)
arm the next program / erase to stop after n bytes (the next byte half
programmed) and raise PowerCut. Never deployed to a board. RAM: ~0.6 KB,
the image stays in the file.
"""

import io
import os
from array import array

SECTOR = 4096
_CHUNK = 256
_LOG_LEN = 16  # erases kept for erase_log (all are counted)


class PowerCut(BaseException):
    """The power went: raised from a torn flash operation. A BaseException,
    so the firmware's own error handling does not swallow it."""


class Nor:
    def __init__(self, path, size):
        self.path = path
        self.size = size
        self.erases = 0
        self.programs = 0
        self.overwrites = 0  # programs into bytes that were not erased (bits that stayed 0)
        # The last _LOG_LEN erases, in preallocated rings (nothing kept grows
        # on the heap over a long run): see erase_log.
        self._log_ms = array("q", [0] * _LOG_LEN)
        self._log_sec = bytearray(_LOG_LEN)
        self._log_closed = bytearray(_LOG_LEN)
        self._closed_n = 0  # erases with the contactor commanded closed, all of them
        self.program_log_closed = 0  # programs with the contactor closed (allowed)
        self._tear_p = -1
        self._tear_e = -1
        self._buf = bytearray(_CHUNK)
        self._vn = _CHUNK  # the length of _view, a memoryview of _buf kept for the next call
        self._view = memoryview(self._buf)
        self._full = self._view
        try:
            have = os.stat(path)[6]
        except OSError:
            have = -1
        if have < 0:
            f = io.open(path, "wb")  # a new chip: erased (0xFF) from the factory
            f.close()
            have = 0
        self._f = io.open(path, "r+b")
        if have < size:
            self._fill(have, size - have, 0xFF)

    def close(self):
        self._f.close()

    def _fill(self, off, n, value):
        b = self._buf
        for i in range(_CHUNK):
            b[i] = value
        f = self._f
        f.seek(off)
        while n > 0:
            k = n if n < _CHUNK else _CHUNK
            f.write(self._part(k))
            n -= k

    def _part(self, n):
        """_buf's first n bytes as a memoryview; the same object while n does
        not change (nothing allocated per operation; all of it: _full)."""
        if n == _CHUNK:
            return self._full
        if n != self._vn:
            self._vn = n
            self._view = memoryview(self._buf)[:n]
        return self._view

    def tear_program(self, nbytes):
        """The next program writes its first nbytes, half the bits of the
        next byte, then the power goes (PowerCut)."""
        self._tear_p = nbytes

    def tear_erase(self, nbytes):
        """The next erase clears its sector's first nbytes, then the power
        goes (PowerCut): the rest keeps its old contents."""
        self._tear_e = nbytes

    def erase(self, sector, closed, now_ms):
        if not 0 <= sector < self.size // SECTOR:
            raise OSError(22)  # EINVAL, as esp_partition_erase_range() outside the partition
        i = self.erases % _LOG_LEN
        self._log_ms[i] = now_ms
        self._log_sec[i] = sector & 0xFF
        self._log_closed[i] = 1 if closed else 0
        self.erases += 1
        if closed:
            self._closed_n += 1
        n = SECTOR
        torn = self._tear_e >= 0
        if torn:
            n = self._tear_e
            self._tear_e = -1
        self._fill(sector * SECTOR, n, 0xFF)
        if torn:
            raise PowerCut()

    def write(self, offset, buf, closed):
        n = len(buf)
        if offset < 0 or offset + n > self.size or n > _CHUNK:
            raise OSError(22)
        f = self._f
        old = self._buf
        view = self._part(n)
        f.seek(offset)
        f.readinto(view)
        torn = self._tear_p >= 0
        upto = n
        if torn:
            upto = self._tear_p if self._tear_p < n else n
            self._tear_p = -1
        bad = False
        i = 0
        while i < n:
            v = buf[i]
            if old[i] & v != v:
                bad = True
            if i < upto:
                old[i] &= v
            elif i == upto and torn:
                old[i] &= v | 0x55  # half of its bits made it
            i += 1
        if bad:
            self.overwrites += 1
        self.programs += 1
        if closed:
            self.program_log_closed += 1
        f.seek(offset)
        f.write(view)
        if torn:
            raise PowerCut()

    def read(self, offset, buf):
        n = len(buf)
        if offset < 0 or offset + n > self.size:
            raise OSError(22)
        f = self._f
        f.seek(offset)
        f.readinto(buf)

    @property
    def erase_log(self):
        """[(now_ms, sector, contactor commanded closed)] of the last 16
        erases, oldest first (built when read: for tests and summaries)."""
        n = self.erases
        return [(self._log_ms[k % _LOG_LEN], self._log_sec[k % _LOG_LEN], bool(self._log_closed[k % _LOG_LEN]))
                for k in range(max(0, n - _LOG_LEN), n)]

    def energized_erases(self):
        """Erases with the contactor commanded closed (all, not only the last 16)."""
        return self._closed_n
