# The checkpoint ring (firmware/nvlog.py) on the simulated NOR flash (sim/nor.py):
# a power cut while charging loses at most one checkpoint step of energy, a torn
# record is ignored, a recovered session is never doubled, and the area is
# erased only while the contactor is open. The 22 kW board, the copy of its
# flash a power cut leaves and the boot after it: sim/powercut.py.
import gc
import random
from binascii import crc32

import tmpdirs
from fakeboard import FakeBoard

from firmware import nvlog
from sim import powercut
from sim.nor import PowerCut


def fresh_dir(name):
    return tmpdirs.make("evse-nvlog-" + name)


def _run(fw, sim, seconds):
    for _ in range(int(seconds * 100)):
        fw.tick()
        sim.wait_tick(10)


class RamNor(FakeBoard):
    """The test board with a checkpoint area in RAM (NOR semantics), for the
    ring's own specifications."""

    def __init__(self, kb=8):
        super().__init__(start=0)
        self.img = bytearray(b"\xff" * (kb * 1024))
        self.erased = []

    def nvlog_size(self):
        return len(self.img)

    def nvlog_erase(self, sector):
        self.erased.append(sector)
        for i in range(sector * 4096, sector * 4096 + 4096):
            self.img[i] = 0xFF

    def nvlog_write(self, offset, buf):
        img = self.img
        i = 0
        n = len(buf)
        while i < n:
            img[offset + i] &= buf[i]
            i += 1

    def nvlog_read(self, offset, buf):
        img = self.img
        i = 0
        n = len(buf)
        while i < n:
            buf[i] = img[offset + i]
            i += 1


def test_the_record_check_is_crc32_as_binascii_computes_it():
    buf = bytearray(b"0123456789abcdefghijklmnopqr" + bytes(4))
    assert nvlog._crc(buf, 28) == 0  # the CRC was not there yet
    want = crc32(b"0123456789abcdefghijklmnopqr") & 0xFFFFFFFF
    got = buf[28] | buf[29] << 8 | buf[30] << 16 | buf[31] << 24
    assert got == want
    assert nvlog._crc(buf, 28) == 1  # and now it checks


def test_the_newest_valid_record_of_a_session_wins_at_boot():
    b = RamNor()
    nv = nvlog.NvLog(b)
    nv.scan()
    nv.begin("evse-1-1", 0, (1000, 250))
    for k in range(1, 6):
        b.t = k * 1000
        assert nv.append(b.t, k * 60000, 16000, 3)
    again = nvlog.NvLog(b)
    again.scan()
    rec = {"id": "evse-1-1", "start": 1700000000, "energy_mwh": 0, "meter_start_mwh": 1000250}
    assert again.merge(rec)
    assert rec["energy_mwh"] == 300000 and rec["meter_stop_mwh"] == 1000250 + 300000
    assert rec["end"] == 1700000005 and rec["peak_a"] == 16.0 and rec["phases"] == 3
    assert again.seq == 5  # numbering goes on above every record found
    # another session's records are not this one's
    assert not again.merge({"id": "evse-1-2", "start": 1, "energy_mwh": 0})
    # the journal's checkpoint, when ahead, is kept
    ahead = {"id": "evse-1-1", "start": 1, "energy_mwh": 400000}
    assert not again.merge(ahead) and ahead["energy_mwh"] == 400000


def test_a_torn_record_is_ignored_and_the_one_before_it_wins():
    b = RamNor()
    nv = nvlog.NvLog(b)
    nv.scan()
    nv.begin("evse-1-1", 0, (0, 0))
    assert nv.append(1000, 50000, 8000, 1)
    assert nv.append(2000, 100000, 8000, 1)
    assert nv.append(3000, 150000, 8000, 1)
    # the third program was cut after 13 bytes: energy half written, no CRC
    off = 2 * nvlog.REC_BYTES
    for i in range(13, nvlog.REC_BYTES):
        b.img[off + i] = 0xFF
    b.img[off + 12] |= 0x0F
    again = nvlog.NvLog(b)
    again.scan()
    assert again.damaged == 1
    rec = {"id": "evse-1-1", "start": 100, "energy_mwh": 0}
    assert again.merge(rec) and rec["energy_mwh"] == 100000
    # the torn slot is never programmed over: the next record goes after it
    again.begin("evse-2-1", 0, (0, 0))
    assert again.append(3000, 20000, 1000, 1)
    third = nvlog.NvLog(b)
    third.scan()
    assert third.damaged == 1 and len(third.found) == 2


def test_appending_a_checkpoint_allocates_nothing():
    b = RamNor(kb=8)
    nv = nvlog.NvLog(b)
    nv.scan()
    nv.begin("evse-1-1", 0, (5, 5))
    nv.append(1, 1, 1, 1)  # first use of every path
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        e = 1
        due = 0
        while e < 100:
            if nv.due(e * 1000, e * 400000):  # one step (390.6 Wh on 8 KB) each time
                due += 1
                nv.append(e * 1000, e * 400000, 16000, 3)  # into the second sector too
            e += 1
        grew = gc.mem_alloc() - before
    finally:
        gc.enable()
    assert grew == 0, grew
    assert nv.programs == 100 and due == 99


def test_a_full_ring_stops_checkpoints_and_erases_only_when_allowed():
    b = RamNor(kb=8)  # two sectors: 256 records
    nv = nvlog.NvLog(b)
    nv.scan()
    nv.begin("evse-1-1", 0, (0, 0))
    n = 0
    while nv.append(n, n * 100000, 1000, 1):
        n += 1
    assert n == 256 and nv.full and nv.missed == 1 and b.erased == []
    assert not nv.reclaim(True)  # the contactor is closed: never
    assert b.erased == []
    nv.end()
    assert nv.reclaim(False) and nv.reclaim(False) and not nv.reclaim(False)
    assert sorted(b.erased) == [0, 1] and nv.free_slots() == 256


def test_history_is_erased_while_idle_but_never_the_open_sessions_newest_record():
    b = RamNor(kb=12)  # three sectors
    nv = nvlog.NvLog(b)
    nv.scan()
    nv.begin("evse-1-1", 0, (0, 0))
    for k in range(130):  # into the second sector
        nv.append(k, k * 100000, 1000, 1)
    # contactor open in the middle of the session (the EV paused): the
    # finished sector may go, the one holding the newest record may not
    assert nv.reclaim(False) and b.erased == [0]
    assert not nv.reclaim(False)
    again = nvlog.NvLog(b)
    again.scan()
    rec = {"id": "evse-1-1", "start": 0, "energy_mwh": 0}
    assert again.merge(rec) and rec["energy_mwh"] == 129 * 100000


def test_the_wear_goes_round_the_ring_across_sessions_and_boots():
    b = RamNor(kb=12)  # three sectors
    nv = nvlog.NvLog(b)
    nv.scan()
    used = []
    for k in range(4):
        nv.begin("evse-1-%d" % k, 0, (0, 0))
        assert nv.append(1000, 100000, 1000, 1)
        used.append(nv._newest)
        nv.end()
        if k == 1:  # a reboot before the history was erased: writing goes on after the newest record
            nv = nvlog.NvLog(b)
            nv.scan()
        while nv.reclaim(False):
            pass
    assert used == [0, 1, 2, 0], used
    assert b.erased == [0, 1, 2, 0], b.erased


def test_a_power_cut_during_a_long_charge_loses_at_most_one_checkpoint_step():
    d = fresh_dir("cut")
    sim, fw = powercut.board(d)
    step_mwh = fw.nvlog.step_mwh
    sim.set_ev("C")
    random.seed(12)
    cuts = sorted(6000 + random.getrandbits(16) * 10 // 6 for _ in range(6))  # 1 to 19 minutes in
    snaps = []
    tick = 0
    for at in cuts:
        while tick < at:
            fw.tick()
            sim.wait_tick(10)
            tick += 1
        assert fw.charger.contactor_on
        snap = d + "-cut%d" % len(snaps)
        powercut.copy_flash(d, snap)
        snaps.append((snap, fw.meter.session_mwh))
    assert sim.nor.erase_log == []  # nothing erased during the whole charge
    for snap, metered in snaps:
        _, fw2 = powercut.board(snap)
        (rec,) = powercut.power_loss_records(fw2)
        lost = metered - rec["energy_mwh"]
        assert 0 <= lost <= step_mwh, (lost, step_mwh, metered)
        assert rec["meter_stop_mwh"] - rec["meter_start_mwh"] == rec["energy_mwh"]
        assert fw2.meter.lifetime_mwh() >= rec["meter_stop_mwh"]
        tmpdirs.remove(snap)


def test_without_a_checkpoint_area_a_power_cut_loses_the_whole_charge():
    # What the ring fixes: the journal alone (no flash write while the
    # contactor is closed) keeps only the session's opening record.
    d = fresh_dir("none")
    sim, fw = powercut.board(d, nvlog_kb=0)
    sim.set_ev("C")
    _run(fw, sim, 120)
    metered = fw.meter.session_mwh
    assert metered > 600000
    _, fw2 = powercut.board(d, nvlog_kb=0)
    (rec,) = powercut.power_loss_records(fw2)
    assert rec["energy_mwh"] == 0


def test_a_program_torn_by_the_power_cut_is_ignored_and_the_session_keeps_the_record_before():
    d = fresh_dir("torn")
    sim, fw = powercut.board(d)
    sim.set_ev("C")
    _run(fw, sim, 60)
    before = fw.nvlog.programs
    assert before >= 5
    kept = fw.nvlog._kept_mwh  # the energy the newest record holds
    sim.nor.tear_program(17)  # the next checkpoint is cut halfway through
    try:
        _run(fw, sim, 60)
        raise AssertionError("no checkpoint was written")
    except PowerCut:
        pass
    _, fw2 = powercut.board(d)
    (rec,) = powercut.power_loss_records(fw2)
    assert rec["energy_mwh"] == kept
    assert fw2.nvlog.damaged == 1
    assert any("damaged checkpoints" in n for n in fw2.notes)


def _boot(d):
    """A boot on the flash `d` (the previous firmware is dropped first: a
    power cut leaves nothing of it in RAM, and a 112 KB heap holds one)."""
    gc.collect()
    return powercut.board(d)


def test_a_recovered_session_is_never_doubled_by_a_second_power_cut():
    d = fresh_dir("twice")
    sim, fw = _boot(d)
    sim.set_ev("C")
    _run(fw, sim, 90)
    # cut 1; boot: the session is closed as power_loss from the ring ...
    sim = fw = None
    sim, fw = _boot(d)
    (rec,) = powercut.power_loss_records(fw)
    assert rec["energy_mwh"] > 400000
    life = fw.meter.lifetime_mwh()
    # ... cut 2 at once, before the ring's history was erased: nothing doubles
    sim = fw = None
    sim, fw = _boot(d)
    assert fw.recovered == [] and [r["id"] for r in powercut.power_loss_records(fw)] == [rec["id"]]
    assert powercut.power_loss_records(fw)[0]["energy_mwh"] == rec["energy_mwh"]
    assert fw.meter.lifetime_mwh() == life
    # ... and after a journal compaction and the erase of the history
    fw.journal.compact()
    _run(fw, sim, 2)  # idle: the ring's history is erased
    assert sim.nor.erases >= 1 and fw.nvlog.pending_erases() == 0
    sim = fw = None
    sim, fw = _boot(d)
    assert fw.recovered == [] and [r["id"] for r in powercut.power_loss_records(fw)] == [rec["id"]]
    assert powercut.power_loss_records(fw)[0]["energy_mwh"] == rec["energy_mwh"]
    assert fw.meter.lifetime_mwh() == life


def test_a_session_without_the_wall_clock_is_recovered_with_a_monotonic_end():
    d = fresh_dir("mono")
    sim, fw = powercut.board(d)
    sim.set_ev("C")
    _run(fw, sim, 70)
    _, fw2 = powercut.board(d)
    (rec,) = powercut.power_loss_records(fw2)
    start, end = rec["start"], rec["end"]
    assert start["boot"] == end["boot"] == 1
    assert 50000 <= sim.ticks_diff(end["mono_ms"], start["mono_ms"]) <= 70000, (start, end)


def test_no_erase_while_the_contactor_is_closed_over_sessions_and_pauses():
    d = fresh_dir("closed")
    sim, fw = powercut.board(d)
    seen = []
    fw.on_event = seen.append
    for k in range(3):
        sim.set_ev("C")
        _run(fw, sim, 1100 if k == 0 else 200)  # the first fills more than a sector: history mid-charge
        sim.set_ev("B")  # a pause: the contactor opens, the session goes on
        _run(fw, sim, 3)
        sim.set_ev("C")
        _run(fw, sim, 60)
        sim.set_ev("A")
        _run(fw, sim, 5)
    assert len([e for e in seen if e["event"] == "session"]) == 3
    assert sim.nor.erases >= 2  # history was erased between sessions ...
    assert sim.nor.energized_erases() == 0, sim.nor.erase_log  # ... never with the contactor closed
    assert sim.nor.overwrites == 0  # and never a program into space that was not erased
    assert not [e for e in seen if e["event"] in ("nvlog_full", "nvlog_low")]


def test_the_published_lifetime_follows_the_checkpoints_and_never_goes_backwards_across_a_power_cut():
    # No filesystem write while charging (the default): what status() publishes
    # as the lifetime reading is what the ring keeps.
    d = fresh_dir("published")
    sim, fw = powercut.board(d)
    sim.set_ev("C")
    published = []
    for _ in range(12):
        _run(fw, sim, 10)
        published.append(fw.status()["lifetime_wh"])
    assert published[-1] > 500 and published == sorted(published)
    _, fw2 = powercut.board(d)
    assert fw2.status()["lifetime_wh"] >= max(published), (fw2.status()["lifetime_wh"], published)
