"""Small files on flash: bounded reads and atomic replace, one rule for all.

Owns how the firmware reads and replaces every small file it keeps
(config.json, lifetime.txt, cal.json, boot.cnt, the journal's compaction,
/slot.json): a read never takes more than its bound, never raises, and says
why a file was not usable; a replace writes PATH.tmp completely, then renames
it over PATH.

The one FAT rule: a rename onto an existing file is atomic on LittleFS and
POSIX; FAT (MicroPython's driver, or one that refuses) removes PATH first, so
for a moment only PATH.tmp exists, complete. read() therefore takes PATH.tmp
whenever PATH is missing (a torn PATH.tmp from a first write cut short fails
its caller's content check like any damaged file).

A directory where a file belongs (left by a mistaken copy) is moved out of the
way by write(), so it cannot stop the charger for good. Never imports machine;
compiled twice by tools/deploy.py (/store.mpy at the flash root, beside
/slots.mpy, and firmware/store.mpy in each slot).
"""

import os

_S_IFDIR = 0x4000


def _stat(p):
    try:
        return os.stat(p)
    except OSError:
        return None


def read(path, max_bytes):
    """(data, error): data is the file's bytes, or None when there is no
    usable file; error is None (fine, or no file at all) or a text saying why
    the file was not usable (a directory, larger than max_bytes, unreadable)."""
    for p in (path, path + ".tmp"):
        st = _stat(p)
        if st is None:
            continue
        if st[0] & _S_IFDIR:
            return None, "%s is a directory" % p
        if st[6] > max_bytes:
            return None, "%s has %d bytes, more than %d" % (p, st[6], max_bytes)
        try:
            with open(p, "rb") as f:
                # the file's size, not the bound: a 4 KB buffer for a 30-byte
                # config can be more contiguous heap than an ESP32 running a
                # slot of .mpy files has left
                return f.read(st[6]), None
        except (OSError, MemoryError) as e:
            return None, "cannot read %s: %r" % (p, e)
    return None, None


def load_json(path, max_bytes):
    """(value, error) of a JSON file read with read(): value None when the
    file is missing or unusable (invalid UTF-8, not JSON, too deep)."""
    data, err = read(path, max_bytes)
    if data is None:
        return None, err
    try:
        return _json().loads(data.decode()), None
    except (ValueError, MemoryError, RuntimeError):  # UnicodeError is a ValueError
        return None, "%s is not valid JSON" % path


def _json():
    import json

    return json


def make_way(path):
    """Remove a directory (or a stale file) where a file is to be written; a
    directory with content is renamed to PATH.bad. True when the way is free."""
    st = _stat(path)
    if st is None:
        return True
    try:
        if not st[0] & _S_IFDIR:
            os.remove(path)
            return True
        try:
            os.rmdir(path)
        except OSError:
            bad = path + ".bad"
            if _stat(bad) is not None:
                return False
            os.rename(path, bad)
        return True
    except OSError:
        return False


def replace(src, dst):
    """Rename src over dst (the FAT rule above)."""
    try:
        os.rename(src, dst)
    except OSError:
        if not make_way(dst):
            raise
        os.rename(src, dst)


def write(path, data, backup=False):
    """Replace path with data (bytes or str) atomically: path.tmp, then one
    rename. With backup the previous file first becomes path.bak, so two
    complete copies exist at every moment. Raises OSError (ENOSPC: the old
    file stays as it was and path.tmp is removed)."""
    tmp = path + ".tmp"
    st = _stat(tmp)
    if st is not None and st[0] & _S_IFDIR:
        make_way(tmp)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    if backup and _stat(path) is not None:
        replace(path, path + ".bak")
    replace(tmp, path)


def settle(path):
    """At start-up, finish or discard a replace cut short: a leftover
    path.tmp beside path is dropped, one without path becomes path."""
    if _stat(path + ".tmp") is None:
        return
    if _stat(path) is not None:
        make_way(path + ".tmp")
    else:
        replace(path + ".tmp", path)
