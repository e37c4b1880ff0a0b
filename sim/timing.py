"""Timing profiles of the simulated board: what each board call, flash
operation, garbage collection and TLS handshake costs in virtual time.

- "ideal": everything takes no time (fast functional tests).
- "esp32": an ESP32-WROOM-32 at 240 MHz running MicroPython v1.2x, LittleFS on
  a W25Q32-class NOR flash. Every figure below names its source. Python's own
  run time is charged from costs measured once, never from the host clock, so
  the same scenario and seed give the same trace on any machine.

The flash and GC costs reach the board through two module stand-ins installed
at import: `os` (rename, remove) and `gc` (collect) in sys.modules, and
`builtins.open`; each charges the active timed board (the last SimBoard built
with a timed profile) for work under its data directory, and otherwise does
exactly what the real one does. Modules imported before this one have their
`os`/`gc` names rebound. Never deployed to a board.
"""

import builtins
import gc as _gc
import os as _os
import sys

try:
    from _thread import get_ident as _thread_id
except ImportError:  # a port without threads: every call is the control loop's

    def _thread_id():
        return 0


# Python on a 240 MHz ESP32 against this project's development machine: the
# project's working figure (docs/benchmarks.md, "The ESP32 factor").
ESP32_FACTOR = 100
# Measured once on the MicroPython unix port (`make bench`, docs/benchmarks.md,
# quiet machine): a plain control tick 9 us, a tick with the current-sense
# burst 55 us. A tick makes PLAIN_TICK_CALLS board calls that cost Python time
# (SimBoard.calls / Firmware.ticks over demo_session.json: 7.1; pilot_read,
# temp_dc, pp_ohm, contactor_feedback, rcd_tripped, contactor, wdt_feed); its
# Python time is spread evenly over them.
PLAIN_TICK_US = 9
METER_TICK_US = 55
PLAIN_TICK_CALLS = 7


class Profile:
    """Costs in microseconds of virtual time (0 everywhere: ideal)."""

    def __init__(self, name, **costs):
        self.name = name
        self.timed = bool(costs)
        self.py_call_us = 0  # the firmware's Python run between two board calls
        self.adc_read_us = 0  # one ADC.read_uv() called from Python
        self.pilot_burst_reads = 0  # reads of a pilot burst with PWM on / steady
        self.pilot_steady_reads = 0
        self.pilot_spacing_us = 0  # between two burst reads (board file spacing_us)
        self.pilot_levels_us = 0  # Python that turns a burst into two levels
        self.gpio_us = 0  # Pin.value() from Python
        self.pwm_us = 0  # PWM.duty_ns()/duty_u16() from Python
        self.meter_py_us = 0  # the meter's Python work on one current-sense burst
        self.fs_open_us = 0  # LittleFS open for reading (metadata lookup)
        self.fs_commit_us = 0  # LittleFS write + close of a small file (a metadata commit)
        self.fs_rename_us = 0  # LittleFS rename / remove (a metadata commit)
        self.page_us = 0  # NOR page program, 256 bytes
        self.erase_us = 0  # NOR 4 KB sector erase, typical
        self.erase_long_us = 0  # ... maximum
        self.erase_long_every = 0  # one erase in this many takes erase_long_us (0: never)
        self.gc_us = 0  # one garbage collection of the heap
        self.gc_budget = 0  # bytes allocated (unix port) after which MicroPython collects by itself
        self.tls_us = 0  # one TLS handshake, holding the GIL
        self.inline_max = 0  # littlefs keeps files up to this size inside the metadata block
        for k in costs:
            if not hasattr(self, k):
                raise ValueError("unknown cost: " + k)
            setattr(self, k, costs[k])


IDEAL = Profile("ideal")

ESP32 = Profile(
    "esp32",
    # Python run time: PLAIN_TICK_US x ESP32_FACTOR = 0.9 ms a tick.
    py_call_us=PLAIN_TICK_US * ESP32_FACTOR // PLAIN_TICK_CALLS,
    # ADC.read_uv(): ~10 us in C, 35-55 us a read from Python (MicroPython
    # issue 7495): the upper end.
    adc_read_us=55,
    # hal/esp32.py: 48 reads 43 us apart with PWM on (hal/boards/esp32_devkit.json),
    # STEADY_BURST = 9 reads when steady; levels()/median() in Python.
    pilot_burst_reads=48,
    pilot_steady_reads=9,
    pilot_spacing_us=43,
    pilot_levels_us=1000,  # estimate: ~10 us on the unix port x ESP32_FACTOR
    gpio_us=20,  # estimate: one method call into machine_pin.c from Python
    pwm_us=50,  # estimate: ports/esp32/machine_pwm.c reprograms the LEDC channel
    meter_py_us=(METER_TICK_US - PLAIN_TICK_US) * ESP32_FACTOR,
    # LittleFS on NOR flash: a file write or rename costs 10-60 ms (measured on
    # ESP32 boards, e.g. MicroPython discussion "littlefs slow writes"); the low end
    # here, the erases below come on top.
    fs_open_us=1000,  # estimate: a metadata lookup, flash reads only (cached, 40 MHz QIO)
    fs_commit_us=10000,
    fs_rename_us=10000,
    # Winbond W25Q32JV datasheet (8.6 AC characteristics): page program tPP
    # 0.7 ms typical (3 ms max); 4 KB sector erase tSE 45 ms typical, 400 ms
    # max. While the flash is programmed or erased the ESP32's flash cache is
    # off and both cores stall (ESP-IDF "SPI Flash API: concurrency constraints").
    page_us=700,
    # littlefs (lfs.c, inline_max default): files up to 1/8 of a 4 KB block live
    # in the directory's metadata; a larger file's append copies its last block
    # to a fresh, erased one (copy-on-write): one erase per committed write.
    inline_max=512,
    erase_us=45000,
    erase_long_us=400000,
    # The datasheet gives only typical and maximum: one erase in 50 is charged
    # the maximum (a modelling choice, seeded: the same run gives the same stalls).
    erase_long_every=50,
    # gc.collect() of a ~100 KB internal heap: 5-15 ms (MicroPython forum
    # measurements on ESP32; PR 10235 for PSRAM: ~20 ms); the upper end.
    gc_us=15000,
    # MicroPython collects by itself when an allocation does not fit: with
    # ~112 KB of heap of which the firmware's code and state take most
    # (docs/benchmarks.md), ~32 KB (unix-port bytes) of garbage is the budget.
    gc_budget=32768,
    # extmod/modtls_mbedtls.c holds the GIL through the handshake: 1.2 s on an
    # ESP32 (micropython-esp32 issue 131), up to ~2 s reported (Moddable issue 389).
    tls_us=1200000,
)

# The worst board this project should meet: Python at the slow end of the
# factor's range (150x), every sector erase at the datasheet maximum, the
# longest TLS handshake reported (~2 s, Moddable issue 389).
_SLOW = 150
ESP32_WORST = Profile("esp32_worst", **dict(
    (k, getattr(ESP32, k)) for k in dir(ESP32) if k.endswith("_us") or k in (
        "pilot_burst_reads", "pilot_steady_reads", "gc_budget", "inline_max")))
ESP32_WORST.py_call_us = PLAIN_TICK_US * _SLOW // PLAIN_TICK_CALLS
ESP32_WORST.pilot_levels_us = ESP32.pilot_levels_us * _SLOW // ESP32_FACTOR
ESP32_WORST.meter_py_us = (METER_TICK_US - PLAIN_TICK_US) * _SLOW
ESP32_WORST.erase_us = ESP32.erase_long_us
ESP32_WORST.page_us = 3000  # W25Q32JV tPP maximum (the typical 0.7 ms above)
ESP32_WORST.tls_us = 2000000

PROFILES = {"ideal": IDEAL, "esp32": ESP32, "esp32_worst": ESP32_WORST}


def get(name):
    """The profile called `name` (ValueError for an unknown one)."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError("unknown timing profile: %s (known: %s)" % (name, ", ".join(PROFILES))) from None


_GC_LOOK_EVERY = 200  # loop iterations between looks at the heap (gc.mem_alloc() scans all of it)


class Costs:
    """The flash, GC and TLS model of one timed SimBoard: charges its clock
    (board._spend / board._call, so the world moves on meanwhile) and keeps
    the list of stalls."""

    def __init__(self, board, profile):
        self.board = board
        self.p = profile
        self.data_dir = board.data_dir
        self.stalls = []  # (now_ms, kind, us, energized)
        self._flash_w = []  # (path, size before) of files opened for writing, unsettled
        self._programmed = 0  # bytes in the metadata log since its last compaction
        self.erases = 0
        self.excluded = 0  # bytes the simulation's tooling allocated since the last collection
        self._gc_base = self.mem_alloc()  # the firmware's bytes allocated after the last collection
        self._loop_thread = _thread_id()  # the control loop's thread (the board is made there)
        self._gc_n = 0  # loop iterations since the heap was last looked at

    def _stall(self, kind, us):
        b = self.board
        self.stalls.append((b.now_ms, kind, us, b.contactor_commanded))
        b._spend(us)

    def tick_end(self):
        """End of a loop iteration: settle the flash writes (page programs,
        erases); MicroPython collects by itself when the firmware's garbage
        outgrew the heap (looked at every _GC_LOOK_EVERY iterations)."""
        if self._flash_w:
            self._settle()
        self._gc_n += 1
        if self._gc_n >= _GC_LOOK_EVERY:
            self._gc_n = 0
            a = self.mem_alloc()
            if a < self._gc_base:
                self._gc_base = a  # the unix port collected by itself
            elif self.p.gc_budget and a - self._gc_base > self.p.gc_budget:
                self.collect()
                self._stall("gc_auto", self.p.gc_us)

    def flash_opened(self, path, write):
        """The firmware opened a file on the flash."""
        if self._flash_w:
            self._settle()
        if write:
            try:
                size = _os.stat(path)[6]
            except OSError:
                size = 0
            self._flash_w.append((path, size))
            self.board._call(self.p.fs_commit_us)
        else:
            self.board._call(self.p.fs_open_us)

    def flash_meta(self):
        """A rename or remove: one metadata commit."""
        if self._flash_w:
            self._settle()
        self.board._call(self.p.fs_rename_us)
        self._program(256)

    def mem_alloc(self):
        """gc.mem_alloc() as the firmware sees it: without what the
        simulation's own tooling (trace records) allocated."""
        return _gc.mem_alloc() - self.excluded

    def collect(self):
        _gc.collect()
        self.excluded = 0
        self._gc_base = _gc.mem_alloc()

    def alloc_mark(self):
        return _gc.mem_alloc()

    def alloc_exclude(self, mark):
        d = _gc.mem_alloc() - mark
        if d > 0:
            self.excluded += d

    def tls(self):
        """A TLS handshake started (any thread): the control loop pays it at
        its next board call (the handshake holds the GIL)."""
        self._held("tls", self.p.tls_us)

    def _held(self, kind, us):
        """A stall in another thread that holds the GIL: the control loop pays
        it at its next board call (the world moves in the loop's thread only)."""
        b = self.board
        self.stalls.append((b.now_ms, kind, us, b.contactor_commanded))
        b._stall_us += us

    def gc(self):
        """gc.collect() by the firmware: paid at once in the control loop's
        thread; from another thread (a link collecting before it connects) at
        the loop's next board call, like a TLS handshake."""
        self.collect()
        if _thread_id() == self._loop_thread:
            self._stall("gc", self.p.gc_us)
        else:
            self._held("gc", self.p.gc_us)

    def _settle(self):
        """Charge the files written since the last look: a file larger than
        inline_max has its last block copied to an erased one; a small one
        is programmed into the metadata log (at least one page)."""
        w = self._flash_w
        self._flash_w = []
        p = self.p
        for path, before in w:
            try:
                size = _os.stat(path)[6]
            except OSError:
                size = before
            if size > p.inline_max:
                self._erase()
                n = size % 4096 or 4096
                self.board._spend((n + 255) // 256 * p.page_us)
                self._program(256)  # the metadata commit that points at it
            else:
                n = size - before
                self._program(n if n > 256 else 256)

    def _program(self, nbytes):
        """Program nbytes into the metadata log; a full 4 KB block is
        compacted into an erased one."""
        self.board._spend((nbytes + 255) // 256 * self.p.page_us)
        self._programmed += nbytes
        while self._programmed >= 4096:
            self._programmed -= 4096
            self._erase()

    def nor_erase(self):
        """A raw sector erase of the checkpoint area (hal nvlog_erase)."""
        self._erase()

    def nor_program(self, nbytes):
        """A raw page program of the checkpoint area (hal nvlog_write): the
        flash cache is off meanwhile, so it is a stall of both cores too."""
        self._stall("program", (nbytes + 255) // 256 * self.p.page_us)

    def _erase(self):
        p = self.p
        self.erases += 1
        long_ = p.erase_long_every and self.board._rand((1, p.erase_long_every)) == 1
        self._stall("erase_long" if long_ else "erase", p.erase_long_us if long_ else p.erase_us)


# --- the stand-ins: flash and GC charged to the active timed board --------------------------
active = None  # the Costs of the last SimBoard built with a timed profile
_real_open = builtins.open


def _charged(path):
    c = active
    if c is None or not isinstance(path, str):
        return None
    return c if path.startswith(c.data_dir) else None


def _open(path, mode="r", *args, **kw):
    f = _real_open(path, mode, *args, **kw)
    b = _charged(path)
    if b is not None:
        b.flash_opened(path, "w" in mode or "a" in mode or "+" in mode)
    return f


class _Os:
    """`os` with rename and remove charged to the active timed board."""

    def __getattr__(self, name):
        return getattr(_os, name)

    def rename(self, a, b):
        _os.rename(a, b)
        brd = _charged(a)
        if brd is not None:
            brd.flash_meta()

    def remove(self, p):
        _os.remove(p)
        brd = _charged(p)
        if brd is not None:
            brd.flash_meta()


class _Gc:
    """`gc` with collect() charged to the active timed board, and
    mem_alloc() without the simulation's own garbage."""

    def __getattr__(self, name):
        return getattr(_gc, name)

    def collect(self):
        c = active
        if c is None:
            _gc.collect()
        else:
            c.gc()

    def mem_alloc(self):
        c = active
        return _gc.mem_alloc() if c is None else c.mem_alloc()


class _TlsContext:
    """An SSLContext whose wrap_socket (the handshake) charges the board's Costs."""

    def __init__(self, ctx, board):
        self._ctx = ctx
        self._board = board

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def wrap_socket(self, *args, **kw):
        self._board.tls()
        return self._ctx.wrap_socket(*args, **kw)


class Net:
    """hal/net.py for a simulated board: the same sockets and clock, with
    every TLS handshake charged to the board's control loop."""

    def __init__(self, net, board):
        self._net = net
        self._board = board

    def __getattr__(self, name):
        return getattr(self._net, name)

    def tls_context(self, ca_path=None, cert_path=None, key_path=None):
        return _TlsContext(self._net.tls_context(ca_path, cert_path, key_path), self._board)


def _install():
    """Modules imported from now on get the stand-ins; those imported before
    (the firmware, when it came first) have their `os`/`gc` names rebound."""
    builtins.open = _open
    so, sg = _Os(), _Gc()
    for m in list(sys.modules.values()):
        if getattr(m, "os", None) is _os:
            m.os = so
        if getattr(m, "gc", None) is _gc:
            m.gc = sg
    sys.modules["os"] = so
    sys.modules["gc"] = sg


_install()
