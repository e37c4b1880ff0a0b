#!/usr/bin/env python3
"""An emulated MicroPython board on a serial line, for mpremote and tools/deploy.py.

Opens a pseudo-terminal (and optionally a TCP port) and answers on it like an
ESP32 running MicroPython: friendly REPL, raw REPL, raw-paste mode, Ctrl-C,
soft reset (Ctrl-D) and hard reset (machine.reset()). Code runs in a
MicroPython unix port (tools/simboard_agent.py) with the board's flash folder
mounted at "/": by default the ESP32-faithful one (build/esp32, 32-bit, 112 KB
heap, firmware/hal/umqtt frozen like a board image built from manifest.py),
or with --interpreter unix64 the venv's 64-bit one. With the ESP32-faithful
one the board has two OTA app partitions (FLASH/.ota, sim/ota.py) and an
emulated bootloader (tools/simboard_bootloader.py): each hard reset runs the
image (the interpreter program) in the partition it chooses, with ESP-IDF's
rollback of an image not marked valid. See docs/simboard.md for what it does
not model.

The first line on stdout is the device path (e.g. /dev/pts/5); then it serves
until SIGTERM or SIGINT (exit code 0). Without --flash the flash is a fresh
temporary folder, named on stderr. However simboard.py ends, its interpreter
ends with it (a killed board has no power). Exit code 2: bad arguments or the
interpreter could not start.

Owns: the serial protocol (REPL framing, flow control, resets) and the
interpreter process of each boot.
Never does: run board code in CPython, or choose the partition that boots.
"""

import argparse
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
import tty

from simboard_bootloader import Bootloader

HERE = os.path.dirname(os.path.abspath(__file__))
AGENT = os.path.join(HERE, "simboard_agent.py")

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
SOFT_REBOOT = b"MPY: soft reboot\r\n"
PASTE_BANNER = b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== "
# MICROPY_REPL_STDIN_BUFFER_MAX is 256 on an ESP32; the raw-paste window is half.
PASTE_WINDOW = 128
# ESP32 machine.reset_cause() values (see the agent's machine module).
PWRON_RESET = 1
SOFT_RESET_CAUSE = 5
# A second SIGINT while the first is still pending would make the unix port
# exit, so interrupts to a running program are spaced at least this far apart.
INTERRUPT_GAP_S = 0.3
# Serial output kept for a reader that is slow or absent; beyond it, dropped
# (a UART with nobody listening loses bytes too).
OUT_CAP_BYTES = 1 << 20
AGENT_EXIT_WAIT_S = 1.0
TAIL_BYTES = 600  # of the interpreter's last output, logged (-v) when it dies
PR_SET_PDEATHSIG = 1  # linux/prctl.h

CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E = 1, 2, 3, 4, 5
COMPOUND = ("if", "while", "for", "def", "class", "try", "with", "async", "@", "match")


class StartError(Exception):
    """The unix-port interpreter could not be started."""


def needs_more(text):
    """Friendly REPL: does this input need a continuation line (`... `)?

    A simplified mp_repl_continue_with_input: open brackets or triple quotes,
    a trailing backslash, or a compound statement not yet ended by an empty line.
    """
    depth = 0
    quote = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = None
        elif c == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif c in "'\"":
            quote = c * 3 if text.startswith(c * 3, i) else c
            i += len(quote) - 1
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        i += 1
    if depth > 0 or (quote and len(quote) == 3) or text.endswith("\\"):
        return True
    first = text.lstrip().split(None, 1)[0] if text.strip() else ""
    first = first.rstrip(":").split("(")[0]
    if first in COMPOUND or text.lstrip().startswith("@"):
        return not text.endswith("\n")
    return False


def _die_with(parent):
    """For the agent's preexec_fn: the kernel SIGKILLs the agent when
    simboard.py ends, however it ends (SIGKILL included): killing the board
    cuts its power, the firmware does not run on in the background."""

    def arm():
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            return  # not Linux: the agent ends when it next writes to a closed pipe
        if os.getppid() != parent:  # simboard died before the prctl
            os._exit(1)

    return arm


class Agent:
    """One MicroPython unix-port process: one boot of the board."""

    def __init__(self, args, cause, program=None):
        self.ctl_in_r, self.ctl_in_w = os.pipe()
        self.ctl_out_r, self.ctl_out_w = os.pipe()
        cmd = [program or args.micropython]
        if args.heapsize:
            cmd += ["-X", "heapsize=" + args.heapsize]
        cmd += [AGENT, args.flash, str(self.ctl_in_r), str(self.ctl_out_w), str(cause)]
        cmd.append(str(args.flash_kb // 4))  # 4 KiB LittleFS blocks
        env = dict(os.environ)
        env.pop("MICROPYPATH", None)
        try:
            self.proc = self._spawn(cmd, env)
        except OSError:
            for fd in (self.ctl_in_r, self.ctl_in_w, self.ctl_out_r, self.ctl_out_w):
                os.close(fd)
            raise
        os.close(self.ctl_in_r)
        os.close(self.ctl_out_w)
        self.out_fd = self.proc.stdout.fileno()
        os.set_blocking(self.out_fd, False)
        os.set_blocking(self.ctl_out_r, False)
        self.ctl_buf = b""
        self.seq = 0  # the last control message taken from this agent
        self.last_sigint = 0.0
        self.eof = False
        self.tail = b""  # its last output, for the log when it dies

    def _spawn(self, cmd, env):
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(self.ctl_in_r, self.ctl_out_w),
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C is for simboard, not the board
            preexec_fn=_die_with(os.getpid()),
        )

    def send(self, kind, name, src):
        msg = b"x %s %s %d\n" % (kind.encode(), name.encode(), len(src)) + src
        os.write(self.ctl_in_w, msg)  # blocking: the agent reads everything it is sent

    def interrupt(self):
        """SIGINT the program; False when it could not be sent (yet)."""
        now = time.monotonic()
        if now - self.last_sigint >= INTERRUPT_GAP_S and self.proc.poll() is None:
            self.last_sigint = now
            self.proc.send_signal(signal.SIGINT)
            return True
        return False

    def read_output(self):
        """Whatever the program printed so far (b"" if nothing)."""
        chunks = []
        while True:
            try:
                b = os.read(self.out_fd, 65536)
            except BlockingIOError:
                break
            if not b:
                self.eof = True
                break
            chunks.append(b)
        out = b"".join(chunks)
        self.tail = (self.tail + out)[-TAIL_BYTES:]
        return out

    def messages(self):
        """Complete control messages as (tag, fields, payload); None at EOF."""
        try:
            b = os.read(self.ctl_out_r, 65536)
        except BlockingIOError:
            return []
        if not b:
            return None
        self.ctl_buf += b
        out = []
        while b"\n" in self.ctl_buf:
            head, rest = self.ctl_buf.split(b"\n", 1)
            fields = head.decode().split()
            size = int(fields[-1]) if fields[0] in ("h", "d") else 0
            if len(rest) < size:
                break
            self.ctl_buf = rest[size:]
            seq = int(fields[1])
            if seq <= self.seq:
                continue  # sent again after a Ctrl-C hit its write (simboard_agent._send)
            self.seq = seq
            out.append((fields[0], fields[2:], rest[:size]))
        return out

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for fd in (self.ctl_in_w, self.ctl_out_r):
            os.close(fd)
        self.proc.stdout.close()


class Sink:
    """A serial output: the pty master or a TCP client. Non-blocking, queued."""

    def __init__(self, fd, sock=None):
        self.fd = fd
        self.sock = sock
        self.queue = bytearray()
        self.connected = True

    def put(self, data):
        if not self.connected:
            return  # nobody on the line: the bytes are lost, as on a UART
        room = OUT_CAP_BYTES - len(self.queue)
        self.queue += data[: max(room, 0)]
        self.flush()

    def flush(self):
        while self.queue:
            try:
                n = os.write(self.fd, self.queue)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.queue.clear()  # peer gone
                return
            del self.queue[:n]


class ReplMachine:
    """The REPL state machine (what pyexec.c and ports/esp32/main.c do)."""

    def __init__(self, args):
        self.args = args
        self.sel = selectors.DefaultSelector()
        self.master, slave = os.openpty()
        self.device = os.ttyname(slave)
        tty.setraw(slave)  # kept by the pty while the master is open
        os.close(slave)  # so that reading the master tells whether anyone has it open
        os.set_blocking(self.master, False)
        self.pty_sink = Sink(self.master)
        self.pty_sink.connected = False
        self.sinks = [self.pty_sink]
        self.listener = None
        self.client = None
        if args.tcp is not None:
            self.listener = socket.socket()
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind(("127.0.0.1", args.tcp))
            self.listener.listen(1)
            self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        self.agent = None
        self.banner = b""
        self.inbuf = bytearray()
        self.raw_mode = False  # pyexec_mode_kind: the REPL a soft reset returns to
        self.state = "boot"  # boot | friendly | raw | paste | rawpaste | exec
        self.line = bytearray()
        self.cont = False
        self.last_cr = False
        self.esc = 0
        self.job = None  # what runs: "boot", "main", "raw", "rawpaste", "friendly"
        self.pending_interrupt = False
        self.running = False
        self.boot_ok = True
        self.paste_left = PASTE_WINDOW
        self.cause = PWRON_RESET
        self.stop = False
        # The emulated bootloader: which app partition runs (None: no
        # partitions, every boot runs args.micropython).
        self.bootloader = Bootloader(args.flash, self.log, self.emit) if args.ota else None

    # ---- output -------------------------------------------------------------
    def emit(self, data):
        for s in self.sinks:
            s.put(data)

    def emit_cooked(self, data):
        # A board's stdout turns every "\n" into "\r\n".
        if data:
            self.emit(data.replace(b"\n", b"\r\n"))

    def log(self, msg):
        if self.args.verbose:
            print("simboard: " + msg, file=sys.stderr, flush=True)

    # ---- resets -------------------------------------------------------------
    def start_agent(self, boot=False, rollback=None):
        """A new interpreter process: a soft reset runs the same image
        again; boot (a hard reset) first lets the bootloader choose it."""
        if self.agent:
            self.sel.unregister(self.agent.out_fd)
            self.sel.unregister(self.agent.ctl_out_r)
            self.agent.kill()
            self.agent = None
        if self.bootloader:
            self.agent = self.bootloader.boot(lambda program: Agent(self.args, self.cause, program), boot, rollback)
            if self.agent is None:
                raise StartError("no bootable image in %s (ota_0 and ota_1 aborted or invalid)" % self.bootloader.dir)
        else:
            self.agent = Agent(self.args, self.cause)
        self.sel.register(self.agent.out_fd, selectors.EVENT_READ, "out")
        self.sel.register(self.agent.ctl_out_r, selectors.EVENT_READ, "ctl")
        self.state = "boot"
        self.running = False
        self.pending_interrupt = False
        self.banner = b""

    def hard_reset(self, cause, rollback=None):
        self.log("hard reset, cause %d" % cause)
        self.cause = cause
        self.inbuf.clear()  # a reset clears the UART buffers
        self.raw_mode = False
        self.start_agent(boot=True, rollback=rollback)

    def soft_reset(self):
        self.log("soft reset")
        self.emit(SOFT_REBOOT)
        self.start_agent()

    def booted(self):
        """The agent said hello: run boot.py (then main.py in friendly mode)."""
        self.run_job("boot", "file", "boot.py", b"")

    def enter_repl(self):
        self.line.clear()
        self.cont = False
        if self.raw_mode:
            self.state = "raw"
            self.emit(RAW_BANNER + b">")
        else:
            self.state = "friendly"
            self.emit(self.banner + b'\r\nType "help()" for more information.\r\n>>> ')

    # ---- running code -------------------------------------------------------
    def run_job(self, job, kind, name, src):
        self.job = job
        self.state = "exec"
        self.running = False
        self.agent.send(kind, name, src)

    def job_done(self, status, tb):
        self.emit_cooked(self.agent.read_output())
        job = self.job
        self.job = None
        self.running = False
        if job != "boot":
            self.pending_interrupt = False
        # else: a Ctrl-C that reached no program (no boot.py, or it ended
        # first) stays pending for main.py, as a board's scheduled
        # KeyboardInterrupt fires at the next bytecode: otherwise it is lost,
        # and what the host sent after it waits behind main.py.
        if job in ("raw", "rawpaste"):
            self.emit(b"\x04")
            if status == "exc":
                self.emit_cooked(tb)
            self.emit(b"\x04")
        elif status == "exc":
            self.emit_cooked(tb)
        if status == "exit":
            return self.soft_reset()
        if job == "boot":
            self.boot_ok = status in ("ok", "none")
            if not self.raw_mode and self.boot_ok:
                return self.run_job("main", "file", "main.py", b"")
            self.pending_interrupt = False  # the REPL takes the Ctrl-C
            return self.enter_repl()
        if job == "main":
            return self.enter_repl()
        if job in ("raw", "rawpaste"):
            self.state = "raw"
            self.emit(b">")
        else:
            self.state = "friendly"
            self.line.clear()
            self.cont = False
            self.emit(b">>> ")

    def agent_died(self):
        if self.stop:
            return
        try:
            rc = self.agent.proc.wait(timeout=AGENT_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            rc = "?"  # stdout closed but still running: kill() below ends it
        out = self.agent.read_output()
        if not self.banner and self.bootloader and self.bootloader.image is not None:
            why = out.decode("utf-8", "replace").strip()[-200:]
            return self.hard_reset(PWRON_RESET, rollback=self.bootloader.not_started("exit code %s: %s" % (rc, why)))
        if not self.banner:
            raise StartError("the interpreter did not start (%s, exit code %s): %s" % (
                self.args.micropython, rc, out.decode("utf-8", "replace").strip()))
        self.emit_cooked(out)
        self.log("interpreter exited (code %s); its last output: %r" % (rc, self.agent.tail))
        self.emit(b"\r\nsimboard: interpreter exited (code %s); hard reset\r\n" % str(rc).encode())
        self.hard_reset(PWRON_RESET)

    def on_ctl(self):
        msgs = self.agent.messages()
        if msgs is None:
            return self.agent_died()
        for tag, fields, payload in msgs:
            if tag == "h":
                self.banner = payload
                self.booted()
            elif tag == "s":
                self.running = True
                if self.pending_interrupt and self.agent.interrupt():
                    self.pending_interrupt = False
            elif tag == "d":
                self.job_done(fields[0], payload)
            elif tag == "R":
                self.emit_cooked(self.agent.read_output())
                return self.hard_reset(SOFT_RESET_CAUSE)
        self.pump()

    # ---- input --------------------------------------------------------------
    def on_input(self, data):
        self.inbuf += data
        self.pump()

    def pump(self):
        while True:
            if self.state in ("exec", "boot"):
                # Only Ctrl-C reaches a running program; the rest waits in the
                # buffer for the REPL, as in a board's stdin ring buffer.
                if CTRL_C in self.inbuf and self.state == "exec":
                    del self.inbuf[self.inbuf.index(CTRL_C)]
                    self.pending_interrupt = True
                    if self.running and self.agent.interrupt():
                        self.pending_interrupt = False
                    continue
                return
            if not self.inbuf:
                return
            c = self.inbuf.pop(0)
            if self.state == "raw":
                self.raw_char(c)
            elif self.state == "rawpaste":
                self.rawpaste_char(c)
            elif self.state == "paste":
                self.paste_char(c)
            else:
                self.friendly_char(c)

    def raw_char(self, c):
        if c == CTRL_A:
            if len(self.line) == 2 and self.line[0] == CTRL_E:
                if self.line[1] != ord("A"):
                    self.emit(b"R\x00")
                    self.line.clear()
                    return
                self.emit(b"R\x01" + struct.pack("<H", PASTE_WINDOW) + b"\x01")
                self.line.clear()
                self.paste_left = PASTE_WINDOW
                self.state = "rawpaste"
                return
            self.line.clear()
            self.emit(RAW_BANNER + b">")
        elif c == CTRL_B:
            self.raw_mode = False
            self.emit(b"\r\n")
            self.enter_repl()
        elif c == CTRL_C:
            self.line.clear()
        elif c == CTRL_D:
            self.emit(b"OK")
            if not self.line:
                self.emit(b"\r\n")
                return self.soft_reset()
            src = bytes(self.line)
            self.line.clear()
            self.run_job("raw", "exec", "<stdin>", src)
        else:
            self.line.append(c)

    def rawpaste_char(self, c):
        if c == CTRL_D:
            self.emit(b"\x04")
            src = bytes(self.line)
            self.line.clear()
            self.log("raw-paste: %d bytes" % len(src))
            return self.run_job("rawpaste", "exec", "<stdin>", src)
        if c == CTRL_C:
            self.line.clear()
            self.state = "raw"
            self.emit(b"\x04\x04KeyboardInterrupt: \r\n\x04>")
            return
        self.line.append(c)
        self.paste_left -= 1
        if self.paste_left == 0:
            self.emit(b"\x01")
            self.paste_left = PASTE_WINDOW

    def paste_char(self, c):
        if c == CTRL_C:
            self.emit(b"\r\n>>> ")
            self.line.clear()
            self.state = "friendly"
        elif c == CTRL_D:
            self.emit(b"\r\n")
            src = bytes(self.line)
            self.line.clear()
            self.run_job("friendly", "exec", "<stdin>", src)
        else:
            self.line.append(c)
            self.emit(b"\r\n=== " if c == 13 else bytes([c]))

    def friendly_char(self, c):
        if self.esc:  # swallow escape sequences (arrow keys): no history/editing
            self.esc = 0 if (self.esc > 1 and 0x40 <= c <= 0x7E) else self.esc + 1
            return
        was_cr, self.last_cr = self.last_cr, c == 13
        if c == 27:
            self.esc = 1
        elif c == CTRL_C:
            self.line.clear()
            self.cont = False
            self.emit(b"\r\n>>> ")
        elif c in (CTRL_A, CTRL_B, CTRL_D, CTRL_E) and not self.line:
            self.friendly_control(c)
        elif c in (8, 127):
            if self.line and self.line[-1] != 10:
                self.line.pop()
                self.emit(b"\x08 \x08")
        elif c == 13 or (c == 10 and not was_cr):
            self.friendly_enter()
        elif c >= 32 or c == 9:
            self.line.append(c)
            self.emit(bytes([c]))

    def friendly_control(self, c):
        if self.cont and c == CTRL_D:
            return self.friendly_run()
        if self.cont:
            return
        if c == CTRL_A:
            self.raw_mode = True
            self.emit(b"\r\n")
            self.enter_repl()
        elif c == CTRL_B:
            self.emit(b"\r\n")
            self.enter_repl()
        elif c == CTRL_D:
            self.emit(b"\r\n")
            self.soft_reset()
        elif c == CTRL_E:
            self.emit(PASTE_BANNER)
            self.state = "paste"

    def friendly_enter(self):
        self.emit(b"\r\n")
        text = self.line.decode("utf-8", "replace")
        if not text.strip() and not self.cont:
            self.line.clear()
            self.emit(b">>> ")
            return
        if needs_more(text):
            self.cont = True
            self.line.append(10)
            self.emit(b"... ")
            return
        self.friendly_run()

    def friendly_run(self):
        src = bytes(self.line).rstrip(b"\n")
        self.line.clear()
        self.cont = False
        self.run_job("friendly", "single", "<stdin>", src)

    # ---- TCP ----------------------------------------------------------------
    def accept(self):
        conn, _ = self.listener.accept()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.drop_client()  # one serial line: a new connection replaces the old
        self.client = conn
        self.sinks.append(Sink(conn.fileno(), conn))
        self.sel.register(conn, selectors.EVENT_READ, "client")
        self.log("tcp client connected")

    def drop_client(self):
        if self.client:
            self.sel.unregister(self.client)
            self.sinks = [s for s in self.sinks if s.sock is not self.client]
            self.client.close()
            self.client = None

    # ---- the pty ------------------------------------------------------------
    def read_pty(self):
        """Read the pty master; notice whether a program has the device open.

        With nobody on the slave side the master reads EIO (and polls as always
        ready), so it is then taken out of the selector and probed every loop.
        """
        try:
            data = os.read(self.master, 4096)
        except BlockingIOError:
            data = b""
        except OSError:
            if self.pty_sink.connected:
                self.log("pty closed")
                self.pty_sink.connected = False
                self.pty_sink.queue.clear()
                self.sel.unregister(self.master)
            return
        if not self.pty_sink.connected:
            self.log("pty opened")
            self.pty_sink.connected = True
            self.sel.register(self.master, selectors.EVENT_READ, "pty")
        if data:
            self.on_input(data)

    # ---- main loop ----------------------------------------------------------
    def serve(self):
        self.hard_reset(PWRON_RESET)
        while not self.stop:
            if not self.pty_sink.connected:
                self.read_pty()
            waiting = any(s.queue for s in self.sinks) or not self.pty_sink.connected
            for key, _ in self.sel.select(0.01 if waiting else 0.5):
                what = key.data
                if what == "pty":
                    self.read_pty()
                elif what == "listen":
                    self.accept()
                elif what == "client":
                    try:
                        data = self.client.recv(4096)
                    except (BlockingIOError, ConnectionError):
                        data = b""
                    if data:
                        self.on_input(data)
                    else:
                        self.drop_client()
                elif what == "out":
                    self.emit_cooked(self.agent.read_output())
                    if self.agent.eof:
                        self.agent_died()
                elif what == "ctl":
                    self.on_ctl()
            for s in self.sinks:
                s.flush()
        self.agent.kill()


def default_micropython():
    here = os.path.join(os.path.dirname(sys.executable), "micropython")
    repo = os.path.join(HERE, "..", ".venv", "bin", "micropython")
    for path in (here, repo):
        if os.access(path, os.X_OK):
            return os.path.abspath(path)
    return "micropython"


# The two interpreters a board can run: (default heap, how to find the program).
# esp32: the launcher tools/mpbuild.py writes (build/esp32/micropython): 32-bit,
# the firmware, the HAL, umqtt.simple 1.8.0 and the simulator frozen, i.e. the
# board image manifest.py describes (plus the simulator that stands in for the
# hardware); 112k is the heap of an ESP32_GENERIC without PSRAM.
# unix64: the venv's unix port; 128k leaves ~120 KB free after boot.
INTERPRETERS = {"esp32": "112k", "unix64": "128k"}
ESP32_LAUNCHER = os.path.join(HERE, "..", "build", "esp32", "micropython")


def esp32_micropython():
    """The ESP32-faithful interpreter, built (tools/mpbuild.py) if out of date;
    None with the reason printed when it cannot be."""
    mpbuild = os.path.join(HERE, "mpbuild.py")
    p = subprocess.run([sys.executable, mpbuild, "build", "--quiet"], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        return None
    return os.path.abspath(ESP32_LAUNCHER)


def esp32_binary():
    """The ESP32-faithful interpreter's program itself (not its launcher):
    the image a fresh emulated board holds in ota_0."""
    import json

    with open(os.path.join(os.path.dirname(ESP32_LAUNCHER), "stamp.json")) as f:
        return json.load(f)["paths"]["micropython_bin"]


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Emulate a MicroPython board (ESP32-like) on a pseudo-terminal, for "
        "mpremote and tools/deploy.py. Prints the device path (/dev/pts/N) as the first "
        "line of stdout, then serves until SIGTERM.",
        epilog="example: tools/simboard.py --flash /tmp/flash & mpremote connect /dev/pts/N ls",
    )
    p.add_argument("--flash", help="folder that is the board's flash (its '/'); created if missing "
                   "(default: a fresh temporary folder, named on stderr and kept after the board stops)")
    p.add_argument("--tcp", type=int, metavar="PORT", help="also serve on 127.0.0.1:PORT (mpremote connect socket://127.0.0.1:PORT)")
    p.add_argument("--flash-kb", type=int, default=2048, help="flash partition size os.statvfs('/') reports, in KiB (default: 2048, an ESP32 with 4 MB flash); not enforced")
    p.add_argument("--interpreter", choices=sorted(INTERPRETERS), default="esp32",
                   help="esp32 (default): the ESP32-faithful interpreter with the firmware frozen (build/esp32, "
                   "built by tools/mpbuild.py when out of date); unix64: the 64-bit unix port in .venv")  # fmt: skip
    p.add_argument("--heapsize", help="MicroPython heap (default: 112k for esp32, the heap of an ESP32 without "
                   "PSRAM; 128k for unix64)")  # fmt: skip
    p.add_argument("--micropython", help="the interpreter program (default: build/esp32/micropython for esp32, "
                   ".venv/bin/micropython for unix64); with app partitions (esp32) the bootloader runs the "
                   "image in the partition it boots instead")  # fmt: skip
    p.add_argument("--no-ota", dest="ota", action="store_false",
                   help="no OTA app partitions: every boot runs --micropython (default with --interpreter esp32: "
                   "two partitions in FLASH/.ota, an emulated bootloader with rollback, docs/simboard.md)")  # fmt: skip
    p.add_argument("--reflash", action="store_true",
                   help="write the built interpreter (or --image-file) into ota_0 and boot it, as esptool would; "
                   "without it a flash folder keeps the image it has")  # fmt: skip
    p.add_argument("--image-file", help="the image a fresh board gets in ota_0 (default: the built ESP32-faithful "
                   "interpreter)")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="log resets and connections to stderr")
    args = p.parse_args(argv)
    if args.flash is None:
        import tempfile

        args.flash = tempfile.mkdtemp(prefix="simboard-flash-")
        print("simboard: flash in %s (a fresh folder; --flash DIR to choose one)" % args.flash, file=sys.stderr, flush=True)
    if args.heapsize is None:
        args.heapsize = INTERPRETERS[args.interpreter]
    if args.micropython is None:
        args.micropython = default_micropython() if args.interpreter == "unix64" else esp32_micropython()
        if args.micropython is None:
            p.exit(2, "simboard: the ESP32-faithful interpreter could not be built (make esp32), "
                   "or use --interpreter unix64\n")  # fmt: skip
    if args.interpreter != "esp32":
        args.ota = False  # an image is the ESP32-faithful interpreter with the firmware frozen
    if args.ota and args.image_file is None:
        try:
            args.image_file = esp32_binary()
        except (OSError, ValueError, KeyError) as e:
            p.exit(2, "simboard: no built ESP32-faithful interpreter to flash into ota_0 (%s): make esp32\n" % e)
    args.flash = os.path.abspath(args.flash)
    try:
        os.makedirs(args.flash, exist_ok=True)
    except OSError as e:
        p.exit(2, "simboard: cannot create flash folder %s: %s\n" % (args.flash, e.strerror))
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        board = ReplMachine(args)
    except OSError as e:
        print("simboard: cannot open the serial line: %s" % e, file=sys.stderr)
        return 2
    try:
        if board.bootloader:  # a fresh board (or --reflash): before the device path is printed
            board.bootloader.flash_fresh(args.image_file, args.reflash)
    except (OSError, ValueError) as e:
        print("simboard: cannot write the app partitions: %s" % e, file=sys.stderr)
        return 2

    def stop(signum, frame):
        board.stop = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(board.device, flush=True)
    try:
        board.serve()
    except StartError as e:
        print("simboard: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
