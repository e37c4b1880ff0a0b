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
#            seq counts the messages of this boot from 1 (the host drops one
#            whose number it has seen: a message is never written twice now,
#            see _send).
# Usage: micropython simboard_agent.py FLASH_DIR CTL_IN_FD CTL_OUT_FD RESET_CAUSE FLASH_BLOCKS

import gc
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
    """Write one message whole, numbered as it goes out. A KeyboardInterrupt
    in the write (EINTR: nothing written) is not the agent's: written again."""
    _seq[0] += 1
    msg = tag + b" " + str(_seq[0]).encode() + rest + b"\n" + payload
    while True:
        try:
            _CTL_OUT.write(msg)
            return
        except KeyboardInterrupt:
            pass


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


def _settle():
    """Raise here a KeyboardInterrupt whose SIGINT has already arrived.

    The unix port's SIGINT handler only schedules the exception; the VM
    raises it at the next branch of the bytecode (or in the next call that
    checks, such as poll()), wherever that is. This loop is a branch: called
    inside a try, it puts a late Ctrl-C there and nowhere else."""
    n = 0
    while n < 1:
        n += 1


def _execute(g, kind, name, src):
    """Run one command; how it ended: (status, traceback)."""
    try:
        exec(compile(src, name, "single" if kind == "single" else "exec"), g)
        return _OK
    except SystemExit:
        return _EXIT
    except BaseException as e:  # the board reports everything, KeyboardInterrupt too
        return (b"exc", _traceback(e).encode())


_PIECE = 256
_BUF = bytearray(_PIECE)  # taken while the heap is empty: reading a command needs no more
_MV = memoryview(_BUF)


def _read_exact(n):
    """The n bytes of a command's source. All n are read from the pipe even
    when the heap cannot hold them (then MemoryError, after the last): the
    next command starts where the host put it, as a board's raw REPL reads
    a paste to its end."""
    chunks = []
    err = None
    while n > 0:
        k = _CTL_IN.readinto(_BUF, min(n, _PIECE))
        if not k:
            raise SystemExit(0)  # host went away
        n -= k
        if err is None:
            try:
                chunks.append(bytes(_MV[:k]))
            except MemoryError as e:
                err = e
                chunks = None
    if err is not None:
        raise err
    return b"".join(chunks)


def _load(name):
    """A flash file's source; None if it cannot be opened."""
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError:
        return None


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
    _serve({"__name__": "__main__"})


# A Ctrl-C (SIGINT, sent by the host while it thinks a program runs) can
# arrive just as that program ends, and its KeyboardInterrupt is raised at
# whatever branch the agent reaches next: the jump that leaves a `try` body
# (the handler is already popped there) or the jump back to the top of a
# loop are branches too. So the agent's loop between two programs, its jump
# back included, is inside one try, and every step can be done again: the
# report of a command stays in `report` until it went out, and nothing of
# the next command is read before _settle() has raised a late Ctrl-C.
#
# Why none is left after _settle(): the host sends the next command only
# after it read the previous one's report, and it sends no SIGINT from then
# until this agent reports "s" again. A SIGINT sent to this process before
# the command was written has been handled (the handler ran, the exception
# is scheduled) by the time the poll() that sees the command returns: the
# kernel runs a pending handler before it returns to user code.
#
# A MemoryError in the agent's own steps (the heap cannot hold a command or
# a traceback) ends that command with a MemoryError, as a board's REPL
# reports one; the agent goes on.
_OK = (b"ok", b"")
_EXIT = (b"exit", b"")
_NONE = (b"none", b"")
_KI = (b"exc", b"Traceback (most recent call last):\nKeyboardInterrupt: \n")
_NOMEM = (b"exc", b"Traceback (most recent call last):\nMemoryError: memory allocation failed\n")


def _serve(g):
    poll = select.poll()
    poll.register(_CTL_IN, select.POLLIN)
    report = None  # (status, traceback) of the last command, until the host has it
    while True:
        try:
            while True:
                if report is not None:
                    _send(b"d", b" " + report[0] + b" " + str(len(report[1])).encode(), report[1])
                    report = None
                poll.poll()  # wait without reading: nothing of a command is lost
                _settle()
                head = _CTL_IN.readline()
                if not head:
                    return  # the host went away
                _, kind, name, size = head.decode().split()
                report = _NOMEM  # until the command is read and runs: the heap could not hold it
                src = _read_exact(int(size))
                if kind == "file":
                    src = _load(name)
                    if src is None:
                        report = _NONE
                        continue
                # From "s" on, a Ctrl-C is this program's. If its
                # KeyboardInterrupt comes out anywhere but inside the program
                # (before exec, or while the report is built), the program
                # ended with it all the same.
                report = _KI
                _send(b"s")
                report = _execute(g, kind, name, src)
        except KeyboardInterrupt:
            pass  # a Ctrl-C for the program that ended: the REPL's, dropped
        except MemoryError:
            if report is _KI:
                report = _NOMEM  # the program's end could not be reported whole
            gc.collect()


main()
