# A small LittleFS (as on an ESP32) or FAT file system in RAM, mounted at a
# fresh path: real ENOSPC when it fills, and FAT's rename rules.
import os

import vfs


class RamDisk:
    """A block device of `blocks` x `block_bytes` bytes (the vfs protocol),
    one small buffer per block: no large contiguous allocation."""

    def __init__(self, blocks, block_bytes):
        self.bs = block_bytes
        self.blocks = [bytearray(block_bytes) for _ in range(blocks)]

    def _span(self, n, buf, off, write):
        bs = self.bs
        mv = memoryview(buf)
        done = 0
        while done < len(buf):
            b = n + (off + done) // bs
            o = (off + done) % bs
            k = min(bs - o, len(buf) - done)
            if write:
                self.blocks[b][o : o + k] = mv[done : done + k]
            else:
                mv[done : done + k] = self.blocks[b][o : o + k]
            done += k

    def readblocks(self, n, buf, off=0):
        self._span(n, buf, off, False)

    def writeblocks(self, n, buf, off=None):
        self._span(n, buf, off or 0, True)

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return len(self.blocks)
        if op == 5:  # block size
            return self.bs
        if op == 6:  # erase
            return 0
        return None


_n = [0]


def mount(blocks=64, fat=False):
    """Mount a fresh RAM file system; returns its path (e.g. /ramfs1).
    LittleFS in 256-byte blocks (16 KB for 64: small enough for an ESP32-sized
    test heap), FAT in 512-byte sectors (its minimum)."""
    bd = RamDisk(blocks, 512 if fat else 256)
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
