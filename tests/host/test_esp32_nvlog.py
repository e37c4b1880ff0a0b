"""The ESP32 driver's checkpoint area (hal/esp32.py nvlog_*) against a fake
`esp32.Partition` that behaves as MicroPython's ports/esp32/esp32_partition.c
does: writeblocks(block, buf) erases the blocks first, writeblocks(block,
buf, offset) only programs (NOR: bits go from 1 to 0), ioctl(6, block)
erases one 4 KB block, ioctl(4)/ioctl(5) give the block count and size. And
the partition table that holds it (hal/boards/partitions-4MiB-ota-nvlog.csv)."""

import json
import sys
import types

import pytest
from test_esp32_hal import REPO, _boardfile, devkit, hw  # noqa: F401 (hw: the driver loaded against fake machine/time)


class FakePartition:
    TYPE_APP = 0
    TYPE_DATA = 1
    table = {}  # label -> FakePartition

    def __init__(self, size):
        self.img = bytearray(b"\xff" * size)
        self.erased = []
        self.plain_writes = 0  # writeblocks without an offset: an erase the firmware must never cause

    @classmethod
    def find(cls, type=TYPE_APP, subtype=255, label=None):
        p = cls.table.get(label)
        return [p] if p is not None and type == cls.TYPE_DATA else []

    def ioctl(self, op, arg):
        if op == 4:
            return len(self.img) // 4096
        if op == 5:
            return 4096
        if op == 6:
            self.erased.append(arg)
            self.img[arg * 4096:(arg + 1) * 4096] = b"\xff" * 4096
            return 0
        return None

    def readblocks(self, block, buf, offset=0):
        a = block * 4096 + offset
        buf[:] = self.img[a:a + len(buf)]

    def writeblocks(self, block, buf, offset=None):
        a = block * 4096
        if offset is None:
            self.plain_writes += 1
            self.img[a:a + len(buf)] = b"\xff" * len(buf)
        else:
            a += offset
        for i, v in enumerate(buf):
            self.img[a + i] &= v


@pytest.fixture
def esp32_mod(monkeypatch):
    m = types.ModuleType("esp32")
    FakePartition.table = {}
    m.Partition = FakePartition
    monkeypatch.setitem(sys.modules, "esp32", m)
    return FakePartition


def test_the_checkpoint_area_programs_without_erasing_and_erases_one_sector_on_request(hw, esp32_mod):  # noqa: F811
    mod, _machine, _clock = hw
    part = esp32_mod.table["nvlog"] = esp32_mod(65536)
    b = mod.Esp32Board(board=devkit())
    assert b.nvlog_size() == 65536
    b.nvlog_write(4096 * 3 + 64, bytes(range(32)))
    assert part.erased == [] and part.plain_writes == 0
    got = bytearray(32)
    b.nvlog_read(4096 * 3 + 64, got)
    assert bytes(got) == bytes(range(32))
    b.nvlog_write(4096 * 3 + 64, b"\xf0" * 32)  # over old data: ANDed, as NOR does
    b.nvlog_read(4096 * 3 + 64, got)
    assert bytes(got) == bytes(v & 0xF0 for v in range(32))
    b.nvlog_erase(3)
    assert part.erased == [3]
    b.nvlog_read(4096 * 3 + 64, got)
    assert bytes(got) == b"\xff" * 32


def test_a_board_without_the_partition_has_no_checkpoint_area_and_says_why(hw, esp32_mod):  # noqa: F811
    mod, _machine, _clock = hw
    b = mod.Esp32Board(board=devkit())
    assert b.nvlog_size() == 0 and "nvlog" in b.nvlog_note
    desc = devkit()
    del desc["nvlog"]
    assert mod.Esp32Board(board=desc).nvlog_size() == 0


def test_the_board_file_names_the_partition_with_a_valid_label(hw):  # noqa: F811
    mod, _machine, _clock = hw
    desc = devkit()
    desc["nvlog"] = {"label": "x" * 16}
    with pytest.raises(_boardfile(mod).BoardFileError, match="nvlog.label"):
        _boardfile(mod).validate(desc)
    desc["nvlog"] = {}
    with pytest.raises(_boardfile(mod).BoardFileError, match="nvlog.label"):
        _boardfile(mod).validate(desc)


def _table():
    rows = []
    for line in (REPO / "hal" / "boards" / "partitions-4MiB-ota-nvlog.csv").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, kind, sub, off, size = [c.strip() for c in line.split(",")][:5]
            rows.append((name, kind, sub, int(off, 0), int(size, 0)))
    return rows


def test_the_partition_table_keeps_the_ota_slots_and_adds_a_64_kb_checkpoint_area_within_4_mb():
    rows = _table()
    by = {r[0]: r for r in rows}
    assert by["ota_0"][3:] == (0x10000, 0x180000) and by["ota_1"][3:] == (0x190000, 0x180000)  # the stock OTA layout
    labels = {json.loads(p.read_text()).get("nvlog", {}).get("label") for p in (REPO / "hal" / "boards").glob("*.json")}
    assert labels == {"nvlog"}
    nv = by["nvlog"]
    assert nv[1] == "data" and nv[4] == 0x10000 and nv[3] % 4096 == 0
    end = 0x9000
    for name, kind, _sub, off, size in rows:  # in order, no overlap, aligned
        assert off >= end, name
        assert off % (0x10000 if kind == "app" else 0x1000) == 0, name
        end = off + size
    assert end <= 0x400000
    assert "vfs" in by  # explicit: MicroPython then adds no automatic one
