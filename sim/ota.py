"""The emulated ESP32's OTA app partitions and its bootloader's choice.

An ESP32 with the OTA partition table (`BOARD_VARIANT=OTA`) has two app
partitions, ota_0 and ota_1, and a small "otadata" record saying which one
boots and in what state. This module keeps the same three things as files in
one folder (`<flash>/.ota` on the emulated board, tools/simboard.py):

    ota_0.bin, ota_1.bin  PART_SIZE bytes each, NOR-like: erased bytes are 0xFF
    otadata.json          {"ota_0": {"seq": 1, "state": "valid"}, "ota_1": {...}}
    boot.json             {"running": "ota_0", "rollback": null, "state":
                          "valid", "size": PART_SIZE}: what the bootloader
                          booted this time (on a board the running partition
                          is known from the flash mapping); SimBoard.ota_info()
                          reads only this at boot, not this module (RAM)

States, as in ESP-IDF's app rollback (esp_ota_ops.h): "new" after
set_boot(); the bootloader turns a "new" entry into "pending" and boots it;
an entry still "pending" at the next boot was not marked valid in time: the
bootloader marks it "aborted" and boots the other one. "valid" after
mark_valid(). "invalid": an image that does not start. An entry with seq 0
was never set to boot.

Runs under CPython (tools/simboard.py, the bootloader) and MicroPython
(sim/board.py, the app's calls). Files are replaced whole (temp + rename).
Never imports machine; never deployed to a real board.
"""

import json
import os

LABELS = ("ota_0", "ota_1")
OTA_DIR_NAME = ".ota"  # the folder in the emulated board's flash (its "/.ota")
PART_SIZE = 0x180000  # 1.5 MB: the ESP32 port's partitions-4MiB-ota.csv app partitions
BLOCK = 4096  # erase unit of the ESP32's SPI flash
OTADATA = "otadata.json"
BOOTINFO = "boot.json"


def other(label):
    return LABELS[1] if label == LABELS[0] else LABELS[0]


def part_path(d, label):
    return d + "/" + label + ".bin"


def _load(path):
    try:
        with open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def _save(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(obj))
    os.rename(tmp, path)


def read_otadata(d):
    """The otadata dict, or None when the folder holds no partitions."""
    od = _load(d + "/" + OTADATA)
    if not isinstance(od, dict) or not all(isinstance(od.get(x), dict) for x in LABELS):
        return None
    return od


def write_otadata(d, od):
    _save(d + "/" + OTADATA, od)


def running(d):
    """(label, rollback) of the boot in progress: what boot.json says, else
    the entry the bootloader would take (no bootloader ran: tests)."""
    b = _load(d + "/" + BOOTINFO)
    if isinstance(b, dict) and b.get("running") in LABELS:
        return b["running"], b.get("rollback")
    od = read_otadata(d)
    if od is None:
        return None, None
    best = max(LABELS, key=lambda x: od[x].get("seq", 0))
    return best, None


def info(d):
    """The board's ota_info() dict (hal/contract.py), or None without partitions."""
    od = read_otadata(d)
    if od is None:
        return None
    run, _ = running(d)
    nxt = other(run)
    state = od[run].get("state")
    return {"running": run, "next": nxt, "size": size_of(d, nxt),
            "state": state if state in ("valid", "pending") else "unknown"}


def write(d, label, offset, buf):
    """Write buf at offset into partition `label`, NOR flash: a block is
    erased (0xFF) when the write reaches its start; bytes written into a
    block erased earlier AND with what is there."""
    path = part_path(d, label)
    n = len(buf)
    if offset < 0 or offset + n > size_of(d, label):
        raise OSError(22)  # EINVAL, as esp_partition_write past the end
    mv = memoryview(buf)
    head = min((-offset) % BLOCK, n)  # bytes before the next block start
    with open(path, "r+b") as f:
        if head:
            f.seek(offset)
            old = f.read(head)
            f.seek(offset)
            f.write(bytes(old[i] & mv[i] for i in range(head)))
        if head < n:
            f.seek(offset + head)
            f.write(mv[head:])
            pad = (-(offset + n)) % BLOCK  # the rest of the last block: erased
            if pad:
                f.write(b"\xff" * pad)


def read(d, label, offset, buf):
    if offset < 0 or offset + len(buf) > size_of(d, label):
        raise OSError(22)
    with open(part_path(d, label), "rb") as f:
        f.seek(offset)
        f.readinto(buf)


def _boot_info(d, choice, rollback, od):
    st = od[choice].get("state") if choice else None
    _save(d + "/" + BOOTINFO, {"running": choice, "rollback": rollback, "size": size_of(d, other(choice)) if choice else 0,
                               "state": st if st in ("valid", "pending") else "unknown"})  # fmt: skip


def _fill(f, n):
    ff = b"\xff" * BLOCK
    while n >= BLOCK:
        f.write(ff)
        n -= BLOCK
    if n:
        f.write(ff[:n])


def flash(d, image=None, size=PART_SIZE):
    """New partitions: ota_0 holds `image` (bytes, or a path to read) and
    boots, valid; ota_1 is erased. Like flashing a board with esptool."""
    try:
        os.mkdir(d)
    except OSError:
        pass  # exists
    if isinstance(image, str):
        with open(image, "rb") as f:
            image = f.read()
    image = image or b""
    if len(image) > size:
        raise ValueError("image of %d bytes does not fit a %d-byte partition" % (len(image), size))
    with open(part_path(d, LABELS[0]), "wb") as f:
        f.write(image)
        _fill(f, size - len(image))
    with open(part_path(d, LABELS[1]), "wb") as f:
        _fill(f, size)
    write_otadata(d, {LABELS[0]: {"seq": 1, "state": "valid"}, LABELS[1]: {"seq": 0, "state": "undefined"}})
    try:
        os.remove(d + "/" + BOOTINFO)
    except OSError:
        pass


def size_of(d, label):
    try:
        return os.stat(part_path(d, label))[6]
    except OSError:
        return 0


def set_boot(d, label):
    """esp_ota_set_boot_partition: `label` boots at the next reset, "new"."""
    od = read_otadata(d)
    seq = max(od[x].get("seq", 0) for x in LABELS) + 1
    od[label] = {"seq": seq, "state": "new"}
    write_otadata(d, od)


def mark_valid(d, label):
    """esp_ota_mark_app_valid_cancel_rollback for the running `label`."""
    od = read_otadata(d)
    if od is not None and od[label].get("state") in ("pending", "new"):
        od[label]["state"] = "valid"
        write_otadata(d, od)
        b = _load(d + "/" + BOOTINFO)
        if isinstance(b, dict) and b.get("running") == label:
            _boot_info(d, label, b.get("rollback"), od)


def select(d, rollback=None):
    """The bootloader at a hard reset: the label to boot (None: nothing
    bootable), after updating otadata: a "pending" entry that was not marked
    valid becomes "aborted" (rollback), a "new" one becomes "pending". Writes
    boot.json, with the label rolled back from (an aborted one, or
    `rollback`: an image that did not start) or None."""
    od = read_otadata(d)
    if od is None:
        return None
    changed = False
    choice = None
    for label in sorted(LABELS, key=lambda x: -od[x].get("seq", 0)):
        e = od[label]
        st = e.get("state")
        if e.get("seq", 0) <= 0 or st in ("aborted", "invalid", "undefined"):
            continue
        if st == "pending":
            e["state"] = "aborted"
            rollback = label
            changed = True
            continue
        if st == "new":
            e["state"] = "pending"
            changed = True
        choice = label
        break
    if changed:
        write_otadata(d, od)
    _boot_info(d, choice, rollback, od)
    return choice


def failed(d, label):
    """The image in `label` did not start: never boot it again."""
    od = read_otadata(d)
    if od is not None:
        od[label]["state"] = "invalid"
        write_otadata(d, od)
