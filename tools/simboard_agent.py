# The interpreter side of tools/simboard.py. Runs inside the MicroPython unix port,
# one process per boot: a soft or hard reset of the emulated board starts a new one,
# which is what gives every boot fresh interpreter state.
#
# Owns: mounting the board's flash folder at "/", the ESP32-like sys.path, a
# `machine` module with reset()/reset_cause(), and executing the code the host
# sends in one persistent globals dict (the REPL's __main__ namespace).
# Never does: any REPL framing. The host (simboard.py) speaks the serial
# protocol; this side only runs code and reports how it ended.
#
# Pipes (numbers given on the command line, opened before the flash is mounted):
#   fd 1 and 2: the program's output, passed to the serial line by the host.
#   ctl_in:  host -> agent  b"x <kind> <name> <len>\n" + source, kind one of
#            "exec" (raw REPL / paste), "single" (one friendly REPL entry),
#            "file" (run flash file <name> if it exists; source empty).
#   ctl_out: agent -> host  b"h <seq> <len>\n" + banner   once, when ready
#                           b"s <seq>\n"                   code starts running
#                           b"d <seq> <status> <len>\n" + traceback   code ended:
#                             status ok | exc | exit (SystemExit) | none (no file)
#                           b"R <seq>\n"                   machine.reset() called
#            seq counts the messages of this boot from 1: a message sent twice
#            (a Ctrl-C landed in its write, see _send) is dropped by the host.
# Usage: micropython simboard_agent.py FLASH_DIR CTL_IN_FD CTL_OUT_FD RESET_CAUSE FLASH_BLOCKS

import io
import os
import select
import sys
import time

import machine as _machine
import vfs

_AGENT = sys.argv[0]
_CTL_IN = open("/dev/fd/" + sys.argv[2], "rb")
_CTL_OUT = open("/dev/fd/" + sys.argv[3], "wb")
_CAUSE = int(sys.argv[4])  # reported by machine.reset_cause()


_seq = [0]


def _send(tag, rest=b"", payload=b""):
    """Send one message; True when a Ctrl-C (SIGINT) arrived meanwhile.

    The KeyboardInterrupt of a SIGINT that lands here is raised after the
    write returned (the message went out) or instead of it (EINTR, nothing
    written): the message is sent again under the same sequence number and
    the host drops a repeat. The caller decides what the Ctrl-C was for."""
    _seq[0] += 1
    msg = tag + b" " + str(_seq[0]).encode() + rest + b"\n" + payload
    intr = False
    while True:
        try:
            _CTL_OUT.write(msg)
            return intr
        except KeyboardInterrupt:
            intr = True


class _Machine:
    # ESP32 values of machine.reset_cause(); after machine.reset() an ESP32
    # reports SOFT_RESET, after power-on PWRON_RESET.
    PWRON_RESET = 1
    HARD_RESET = 2
    WDT_RESET = 3
    DEEPSLEEP_RESET = 4
    SOFT_RESET = 5

    def __getattr__(self, name):
        return getattr(_machine, name)

    def reset(self):
        # Like the real thing, nothing after this call runs: not even the
        # caller's `finally`. The host kills this process and boots again.
        _send(b"R")
        while True:
            try:
                time.sleep(1)
            except BaseException:
                pass

    def reset_cause(self):
        return _CAUSE

    def unique_id(self):
        return b"\x24\x0a\xc4\x51\x4d\x01"

    def freq(self, hz=None):
        return 240000000


# The emulated OTA app partitions (sim/ota.py) live in the flash folder under
# this name; on a board they are partitions of their own, outside the
# filesystem: hidden from listings and from statvfs.
_OTA_DIR = ".ota"


class _Flash:
    """The board's flash: a VfsPosix on the host folder, plus what LittleFS on
    an ESP32 reports and VfsPosix does not: file sizes in ilistdir (mpremote
    `fs ls` shows them) and statvfs of a flash partition of FLASH_BLOCKS blocks
    (reported only: a write past it still succeeds here)."""

    BLOCK = 4096

    def __init__(self, root, blocks):
        self.p = vfs.VfsPosix(root)
        self.blocks = blocks

    def mount(self, readonly, mkfs):
        return self.p.mount(readonly, mkfs)

    def umount(self):
        return self.p.umount()

    def open(self, path, mode):
        return self.p.open(path, mode)

    def chdir(self, path):
        return self.p.chdir(path)

    def getcwd(self):
        return self.p.getcwd()

    def mkdir(self, path):
        return self.p.mkdir(path)

    def remove(self, path):
        return self.p.remove(path)

    def rename(self, old, new):
        # VfsPosix (v1.29) joins both paths to its root in one shared buffer,
        # so a rename whose two paths are absolute renames `new` onto itself
        # (ENOENT). The agent keeps the process cwd at the flash root, so the
        # old path relative to it names the same file.
        if old.startswith("/") and new.startswith("/") and self.p.getcwd() in ("", "/"):
            old = old[1:]
        return self.p.rename(old, new)

    def rmdir(self, path):
        return self.p.rmdir(path)

    def stat(self, path):
        return self.p.stat(path)

    def ilistdir(self, path):
        base = "" if path in ("", ".") else path.rstrip("/") + "/"
        root = path in ("", ".", "/")
        for entry in self.p.ilistdir(path):
            if root and entry[0] == _OTA_DIR:
                continue  # the app partitions are not in the filesystem partition
            size = 0
            if entry[1] == 0x8000:
                size = self.p.stat(base + entry[0])[6]
            yield (entry[0], entry[1], entry[2], size)

    def _used(self, path):
        used = 1  # the directory itself
        for name, kind, _, size in self.ilistdir(path):
            if kind == 0x4000:
                used += self._used(path.rstrip("/") + "/" + name)
            else:
                used += (size + self.BLOCK - 1) // self.BLOCK
        return used

    def statvfs(self, path):
        free = max(self.blocks - self._used("/"), 0)
        return (self.BLOCK, self.BLOCK, self.blocks, free, free, 0, 0, 0, 0, 255)


def _traceback(exc):
    buf = io.StringIO()
    sys.print_exception(exc, buf)
    # Drop this file's own frames: a board shows only the user's code.
    mine = '  File "' + _AGENT + '"'
    lines = [ln for ln in buf.getvalue().split("\n") if not ln.startswith(mine)]
    return "\n".join(lines)


def _run(g, kind, name, src):
    status = "ok"
    tb = ""
    try:
        if kind == "file":
            try:
                with open(name, "rb") as f:
                    src = f.read()
            except OSError:
                status = "none"
        if status == "ok":
            if _send(b"s"):
                raise KeyboardInterrupt  # the Ctrl-C was for this program
            mode = "single" if kind == "single" else "exec"
            exec(compile(src, name, mode), g)
    except SystemExit:
        status = "exit"
    except BaseException as e:  # the board reports everything, KeyboardInterrupt too
        status = "exc"
        tb = _traceback(e)
    data = tb.encode()
    _send(b"d", b" " + status.encode() + b" " + str(len(data)).encode(), data)  # a late Ctrl-C: ignored


def _read_exact(n):
    chunks = []
    while n > 0:
        b = _CTL_IN.read(n)
        if not b:
            raise SystemExit(0)  # host went away
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def main():
    vfs.umount("/")
    vfs.mount(_Flash(sys.argv[1], int(sys.argv[5])), "/")
    os.chdir("/")  # VfsPosix resolves relative paths against the process cwd
    sys.path.clear()
    sys.path.extend(["", ".frozen", "/lib"])
    sys.modules["machine"] = _Machine()
    impl = sys.implementation
    ver = "v%d.%d.%d" % impl.version[:3]
    if len(impl.version) > 3 and impl.version[3]:
        ver += "-" + impl.version[3]
    banner = ("MicroPython %s on simboard; %s with unix port" % (ver, impl._machine)).encode()
    _send(b"h", b" " + str(len(banner)).encode(), banner)
    g = {"__name__": "__main__"}
    poll = select.poll()
    poll.register(_CTL_IN, select.POLLIN)
    while True:
        try:
            # Wait without reading: a Ctrl-C that came after the code ended is
            # raised in or right after poll(), never in the middle of a line
            # (the host sends one only while code runs, so none follows the
            # next command).
            poll.poll()
        except KeyboardInterrupt:
            continue
        head = _CTL_IN.readline()
        if not head:
            return
        _, kind, name, size = head.decode().split()
        _run(g, kind, name, _read_exact(int(size)))


main()
