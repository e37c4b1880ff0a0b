# A small LittleFS (as on an ESP32) or FAT file system in RAM, mounted at a
# fresh path: real ENOSPC when it fills, and FAT's rename rules.
import os

import vfs


class RamDisk:
    """A block device of `blocks` x `block_bytes` bytes (the vfs protocol)."""

    def __init__(self, blocks, block_bytes=512):
        self.bs = block_bytes
        self.data = bytearray(blocks * block_bytes)

    def readblocks(self, n, buf, off=0):
        a = n * self.bs + off
        buf[:] = self.data[a : a + len(buf)]

    def writeblocks(self, n, buf, off=None):
        a = n * self.bs + (off or 0)
        self.data[a : a + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return len(self.data) // self.bs
        if op == 5:  # block size
            return self.bs
        if op == 6:  # erase
            return 0
        return None


_n = [0]


def mount(blocks=64, fat=False):
    """Mount a fresh RAM file system; returns its path (e.g. /ramfs1)."""
    bd = RamDisk(blocks)
    fs = vfs.VfsFat if fat else vfs.VfsLfs2
    fs.mkfs(bd)
    _n[0] += 1
    path = "/ramfs%d-%d" % (_n[0], os.urandom(1)[0])
    vfs.mount(fs(bd), path)
    return path


def fill(path):
    """Fill the file system with filler files until a write fails with
    ENOSPC. Returns their paths (remove some to free room)."""
    made = []
    chunk = b"\xff" * 256
    while True:
        p = "%s/filler%d" % (path, len(made))
        try:
            with open(p, "wb") as f:
                f.write(chunk)
        except OSError as e:
            assert e.args[0] == 28, e  # ENOSPC
            try:
                os.remove(p)
            except OSError:
                pass
            return made
        made.append(p)


def unmount(path):
    vfs.umount(path)
