"""One session with a MicroPython board over its serial line (a tty, a pty, or
any pyserial URL such as socket://host:port): the deploy tool's and the rig's
only way to a board.

Built on mpremote's transport (mpremote.transport_serial.SerialTransport):
entering the raw REPL, executing code, reading and removing files are its
calls. What this adds is what both tools need around them: interrupting a
running firmware without a soft reset (its state stays for the deploy to read,
and its exception path leaves the board safe), definitions made once per
connection, writing a file in base64 chunks (a third of the raw-REPL traffic of
mpremote's repr() chunks for binary files such as .mpy), the two resets, and
the console read line by line once the firmware runs.

Every failure is a BoardError: `lost` says whether the line or the board is
gone (no board, no REPL, a timeout) or the board answered with an error.
"""

import base64
import errno
import time

CHUNK_BYTES = 1536  # per raw-REPL exec: 2 KB of base64, small for an ESP32 heap
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"  # what a board sends when it enters the raw REPL
ENTER_READ_S = 0.1  # serial read timeout while entering the raw REPL (a booting board may drop input)
# Serial read timeout while talking to the raw REPL: how long a board may go
# without answering (a raw-paste window ack) before it counts as lost. A board
# busy with a flash erase, or a loaded host, pauses for a second or more.
EXEC_READ_S = 10.0
OPEN_TRIES = 5  # attempts to open the line ...
OPEN_RETRY_S = 0.25  # ... this far apart
CONSOLE_READ_S = 0.05  # serial read timeout while reading the console


class BoardError(Exception):
    """A board session failed; `lost`: the line or the board is gone (the
    deploy's exit 2), else the board answered with an error."""

    def __init__(self, msg, lost=True):
        super().__init__(msg)
        self.lost = lost


class BoardSession:
    def __init__(self, port, baud=115200, helpers=None):
        """Open the line. helpers: code defined once per connection in the
        REPL's globals, before the first exec() that asks for it."""
        try:
            from mpremote.transport import TransportError, TransportExecError
            from mpremote.transport_serial import SerialTransport
        except ImportError:
            raise BoardError("mpremote is not installed: run `make deps`", lost=False) from None
        self._TransportError = TransportError
        self._TransportExecError = TransportExecError
        # A line can be busy for a moment (the previous holder's exclusive
        # lock released as it exits; a USB serial adapter coming back after a
        # reset): a few tries over ~1 s before the board counts as absent.
        for attempt in range(OPEN_TRIES):
            try:
                self.t = SerialTransport(port, baudrate=baud)
                break
            except Exception as e:
                if attempt == OPEN_TRIES - 1:
                    raise BoardError("no board at %s: %s" % (port, e)) from None
                time.sleep(OPEN_RETRY_S)
        self.port = port
        self.helpers = helpers
        self._defined = False
        self._buf = b""

    def close(self):
        try:
            self.t.close()
        except Exception:
            pass

    def _lost(self, e):
        return BoardError("lost the board on %s: %s" % (self.port, e))

    # --- the raw REPL ---------------------------------------------------------------------
    def interrupt(self, timeout=3, attempts=3):
        """Ctrl-C whatever runs and enter the raw REPL without a soft reset;
        the working directory becomes "/"."""
        # A board that is resetting or booting loses (or defers) what it is
        # sent, so: short reads, and a few attempts, each bounded by `timeout`
        # even while the board keeps printing (mpremote's enter_raw_repl only
        # times out when the output pauses: a board streaming trace lines whose
        # Ctrl-C was lost would hold it up for ever).
        self.t.serial.timeout = ENTER_READ_S
        self._defined = False
        for _attempt in range(attempts):
            try:
                if self._enter_raw(timeout):
                    break
            except OSError as e:
                raise BoardError("no board at %s: %s" % (self.port, e)) from None
            # e.g. the Ctrl-C landed in boot.py (which lets nothing out) and main.py started: again
        else:
            raise BoardError("no MicroPython REPL answers on %s" % self.port)
        self.t.in_raw_repl = True
        self.t.serial.timeout = EXEC_READ_S

    def _enter_raw(self, timeout):
        """One attempt: Ctrl-C, Ctrl-A, the raw REPL banner, then in step
        with it (_sync), within `timeout` seconds in all. True when it came."""
        ser = self.t.serial
        ser.write(b"\r\x03")  # interrupt whatever runs
        ser.reset_input_buffer()
        ser.write(b"\r\x01")  # enter the raw REPL
        deadline = time.monotonic() + timeout
        if not self._read_until(RAW_BANNER, deadline):
            return False
        return self._sync(deadline)

    def _read_until(self, end, deadline):
        """Read one byte at a time until the input ends with `end` (what
        follows is left for the next reader); False at the deadline."""
        ser = self.t.serial
        seen = b""
        while time.monotonic() < deadline:
            got = ser.read(1)
            if got:
                seen = (seen + got)[-len(end) :]
                if seen == end:
                    return True
        return False

    def _sync(self, deadline):
        """Run `os.chdir('/')` in the plain raw REPL and read up to the end
        of its answer, so that nothing an earlier attempt left queued on the
        board is read as an answer later. A board whose Ctrl-C was lost
        (taken by boot.py, say) keeps that attempt's \\r\\x01 in its input
        buffer until its program ends, then prints one more raw REPL banner:
        mpremote would take it for the answer to its raw-paste request. The
        board answers in order, so once this command's output is read, the
        line holds only the prompt `>` that follows it (left for exec)."""
        self._nonce = getattr(self, "_nonce", 0) + 1
        n = 1000 * self._nonce + int(time.monotonic() * 1000) % 1000
        # the answer is computed on the board: the line never shows it before the command ran
        self.t.serial.write(b"import os\nos.chdir('/')\nprint('sync', %d + 1)\x04" % n)
        return self._read_until(b"sync %d\r\n\x04\x04" % (n + 1), deadline)

    def exec(self, code, timeout=20, helpers=True):
        """Run code in the raw REPL; its printed output as text."""
        if helpers and self.helpers and not self._defined:
            self._defined = True
            self.exec(self.helpers, helpers=False)
        self.t.serial.timeout = EXEC_READ_S  # not the console's short reads
        try:
            out, err = self.t.exec_raw(code, timeout=timeout)
        except self._TransportError as e:
            raise self._lost(e) from None
        except OSError as e:
            raise self._lost(e) from None
        if err:
            raise BoardError("board error: %s" % err.decode("utf-8", "replace").strip(), lost=False)
        return out.decode("utf-8", "replace")

    # --- files (paths on the board) ---------------------------------------------------------
    def _fs(self, call, path, *args, absent=errno.ENOENT):
        """An mpremote filesystem call on path; None when it fails with
        `absent` (the path is missing, or for mkdir already there)."""
        try:
            return call(path, *args)
        except OSError as e:
            if e.errno == absent:
                return None
            raise BoardError("board error: %s: %s" % (path, e), lost=False) from None
        except self._TransportExecError as e:
            raise BoardError("board error: %s: %s" % (path, e.error_output.strip()), lost=False) from None
        except self._TransportError as e:
            raise self._lost(e) from None

    def read_file(self, path):
        """A file's bytes; None when it does not exist."""
        data = self._fs(self.t.fs_readfile, path)
        return None if data is None else bytes(data)

    def remove(self, path):
        """Remove a file; nothing when it does not exist."""
        self._fs(self.t.fs_rmfile, path)

    def mkdir(self, path):
        """Make a directory; nothing when it exists."""
        self._fs(self.t.fs_mkdir, path, absent=errno.EEXIST)

    def write_file(self, path, data, progress=None, each=""):
        """Write a whole file in base64 chunks; the last chunk closes it.
        progress(n): bytes written so far; each: code run after every chunk
        (the deploy feeds the watchdog)."""
        n = max(1, (len(data) + CHUNK_BYTES - 1) // CHUNK_BYTES)
        for i in range(n):
            chunk = base64.b64encode(data[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES]).decode()
            code = "from binascii import a2b_base64 as _a2b\n_g=open(%r,'wb')\n" % path if i == 0 else ""
            code += "_g.write(_a2b(%r))\n%s" % (chunk, each)
            if i == n - 1:
                code += "_g.close()\n"
            self.exec(code)
            if progress:
                progress(min(len(data), (i + 1) * CHUNK_BYTES))

    def replace_file(self, path, data):
        """Write a file whole: a temp file, then one replacing rename (on a
        filesystem whose rename does not replace, FAT: remove, then rename)."""
        tmp = path + ".tmp"
        self.write_file(tmp, data)
        self.exec(
            "try:\n os.rename(%r, %r)\nexcept OSError:\n os.remove(%r)\n os.rename(%r, %r)\n" % (tmp, path, path, tmp, path),
            helpers=False,
        )

    # --- resets ------------------------------------------------------------------------------
    def soft_reset(self):
        """Leave the raw REPL and soft-reset from the friendly one: boot.py,
        then main.py runs the firmware."""
        try:
            self.t.exit_raw_repl()
            time.sleep(0.1)
            self.t.serial.write(b"\x04")
        except OSError as e:
            raise self._lost(e) from None

    def hard_reset(self):
        """machine.reset(): the board restarts; boot.py, main.py, the firmware runs."""
        try:
            self.t.exec_raw_no_follow("import machine\nmachine.reset()\n")
        except (self._TransportError, OSError) as e:
            raise self._lost(e) from None
        finally:
            self.t.in_raw_repl = False
        time.sleep(0.1)  # input sent while it resets is lost

    # --- the console ---------------------------------------------------------------------------
    def read_lines(self):
        """The console lines that arrived whole (without the line end), after
        waiting CONSOLE_READ_S at most for the first byte; [] when none."""
        ser = self.t.serial
        ser.timeout = CONSOLE_READ_S
        try:
            data = ser.read(1)
            if data:
                n = ser.in_waiting
                if n:
                    data += ser.read(n)
        except Exception as e:  # the port went away
            raise self._lost(e) from None
        if not data:
            return []
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        return [raw.decode("utf-8", "replace").rstrip("\r") for raw in lines]
