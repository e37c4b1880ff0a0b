# timeout: 60
# Every file the firmware reads, damaged every way a flash or a person can
# damage it: bounded reads, defaults and a note, never an exception; a full
# flash (ENOSPC) on a real LittleFS in RAM. firmware/store.py and its users.
import os

import tmpdirs

from firmware import journal as jmod
from firmware import store
from firmware.journal import Journal
from firmware.session import SessionTracker


class _Clock:
    def ticks_ms(self):
        return 0

    def ticks_diff(self, a, b):
        return a - b


def _tmpdir():
    return tmpdirs.make("evse-store")


def _write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _rec(sid, mwh=1000):
    return {"id": sid, "start": 1700000000, "end": 1700003600, "energy_mwh": mwh, "reason": "ev_unplugged", "tag": None}


def _ids(j):
    return [r["id"] for r in j.pending()]


def _three_closed(d):
    j = Journal(d)
    j.boot()
    for i in range(3):
        j.close_session(_rec("evse1-1-%d" % (i + 1), mwh=1000 * (i + 1)))


def _tree_rm(d):
    tmpdirs.remove(d)


def test_a_directory_in_place_of_any_journal_file_neither_stops_the_boot_nor_repeats_a_counter():
    for name in (jmod.JOURNAL_FILE, jmod.TMP_FILE, jmod.BOOT_FILE, jmod.BOOT_FILE + ".tmp"):
        d = _tmpdir()
        try:
            _three_closed(d)  # boot 1 and three pending sessions
            os.mkdir(d + "/" + name + "x")  # an empty one and one with content
            try:
                os.remove(d + "/" + name)
            except OSError:
                pass
            os.rename(d + "/" + name + "x", d + "/" + name)
            os.mkdir(d + "/" + name + "/inside")
            j = Journal(d)
            n = j.boot()
            assert n >= 2, (name, n)
            assert j.close_session(_rec("evse1-%d-1" % n)), name
            assert j.error is None, (name, j.error)
            k = Journal(d)
            assert "evse1-%d-1" % n in _ids(k), name
            assert k.boot() > n, name
            if name != jmod.JOURNAL_FILE:  # the sessions it held are still there
                assert "evse1-1-3" in _ids(k), name
        finally:
            _tree_rm(d)


def test_a_crc_valid_record_with_a_huge_tag_is_recovered_with_the_tag_cut():
    d = _tmpdir()
    try:
        rec = {"id": "evse1-1-1", "start": 1700000000, "energy_mwh": 0, "tag": "T" * 1960}  # the frame just fits (2048 bytes)
        _write_bytes(d + "/" + jmod.JOURNAL_FILE, jmod.frame(jmod.KIND_OPEN, json_bytes(rec)))
        j = Journal(d)
        j.boot()
        assert j.recover(1700000100) == ["evse1-1-1"]
        got = Journal(d).pending()
        assert [r["id"] for r in got] == ["evse1-1-1"] and got[0]["reason"] == "power_loss"
        assert 0 < len(got[0]["tag"]) <= 64
    finally:
        _tree_rm(d)


def json_bytes(obj):
    import json

    return json.dumps(obj).encode()


def test_an_oversized_or_out_of_range_boot_counter_is_a_note_not_a_crash():
    d = _tmpdir()
    try:
        Journal(d).boot()
        Journal(d).boot()
        _write_bytes(d + "/" + jmod.BOOT_FILE, b"9" * 5000)
        j = Journal(d)
        assert j.boot() == 3  # from the journal's boot frame
        assert j.notes and "boot.cnt" in j.notes[0]
        # A CRC-valid boot frame with a counter no small int can hold is ignored.
        with open(d + "/" + jmod.JOURNAL_FILE, "ab") as f:
            f.write(jmod.frame(jmod.KIND_BOOT, b'{"n": 1' + b"0" * 600 + b"}"))
        os.remove(d + "/" + jmod.BOOT_FILE)
        assert Journal(d).boot() == 4
    finally:
        _tree_rm(d)


def test_the_journal_remembers_the_highest_meter_reading_of_any_record():
    d = _tmpdir()
    try:
        j = Journal(d)
        t = SessionTracker(_Clock(), "evse1", j.boot())
        t.begin(0, None, meter_start_mwh=5000)
        j.open_session(t.opening())
        j.checkpoint(t.id, t.checkpoint(1000, None, 700, 5700))
        assert j.meter_mwh == 5700
        assert Journal(d).meter_mwh == 5700  # read back from flash
    finally:
        _tree_rm(d)


def test_a_full_flash_never_raises_refuses_sessions_and_recovers_when_room_returns():
    import ramdisk

    root = ramdisk.mount(64)
    try:
        d = root + "/data"
        j = Journal(d)
        t = SessionTracker(_Clock(), "evse1", j.boot())
        t.begin(0, None, meter_start_mwh=0)
        assert j.open_session(t.opening())
        fillers = ramdisk.fill(root)
        ok = True
        for i in range(40):  # checkpoints until one meets the full flash
            ok = j.checkpoint(t.id, t.checkpoint(1000 * i, None, 100 * i, 100 * i))
            if not ok:
                break
        assert not ok and j.error and "28" in j.error
        assert j.full()  # no new session while the flash is full
        assert not j.open_session({"id": "evse1-1-2"})
        # Reboots on the full flash: no exception, in compaction or anywhere.
        for _ in range(3):
            k = Journal(d)
            k.boot()
            k.recover(1700000000)
            assert k.full()
        for p in fillers[:8]:
            os.remove(p)
        assert k.retry() and not k.full()
        n = k.boot_n
        assert Journal(d).boot() > n
    finally:
        ramdisk.unmount(root)


def test_read_is_bounded_and_says_why_a_file_is_unusable():
    d = _tmpdir()
    try:
        p = d + "/f"
        assert store.read(p, 10) == (None, None)  # no file: no error
        _write_bytes(p, b"x" * 11)
        data, err = store.read(p, 10)
        assert data is None and "more than 10" in err
        os.remove(p)
        os.mkdir(p)
        data, err = store.read(p, 10)
        assert data is None and "directory" in err
        store.write(p, "new")  # the directory is moved out of the way
        assert store.read(p, 10) == (b"new", None)
    finally:
        _tree_rm(d)


def test_write_replaces_atomically_and_a_missing_file_is_read_from_its_complete_temp():
    for fat in (False, True):
        import ramdisk

        root = ramdisk.mount(64, fat=fat)
        try:
            p = root + "/cfg"
            store.write(p, b"one")
            store.write(p, b"two", True)
            assert store.read(p, 64) == (b"two", None)
            assert store.read(p + ".bak", 64) == (b"one", None)
            assert sorted(os.listdir(root)) == ["cfg", "cfg.bak"]
            # FAT's replace, cut between its remove and its rename.
            _write_bytes(p + ".tmp", b"three")
            os.remove(p)
            assert store.read(p, 64) == (b"three", None)
            store.settle(p)
            assert sorted(os.listdir(root)) == ["cfg", "cfg.bak"]
            assert store.read(p, 64) == (b"three", None)
        finally:
            ramdisk.unmount(root)


def test_json_files_invalid_utf8_huge_or_deeply_nested_give_an_error_not_an_exception():
    from firmware import config

    d = _tmpdir()
    try:
        p = d + "/config.json"
        bad = (
            b'{"id": "\xff\xfe"}',  # invalid UTF-8
            b'{"id": ' + b"[" * 2000 + b"]" * 2000 + b"}",  # 2000 levels deep
            None,  # 3 MB
        )
        for data in bad:
            if data is None:
                with open(p, "wb") as f:
                    f.write(b'{"max_current_a": 10, "id": "')
                    chunk = b"a" * 4096
                    for _ in range(768):
                        f.write(chunk)
                    f.write(b'"}')
            else:
                _write_bytes(p, data)
            cfg, errors = config.load(p)
            assert cfg == config.defaults() and errors, data
        os.remove(p)
        os.mkdir(p)
        cfg, errors = config.load(p)
        assert cfg == config.defaults() and "directory" in errors[0]
    finally:
        _tree_rm(d)


def test_every_single_bit_flip_of_the_lifetime_file_falls_back_to_its_backup():
    from firmware import meter as mt
    from firmware.meter import Meter

    class _Hal:
        adc_channels = 3
        adc_burst_len = 64
        adc_rate_hz = 3200
        adc_full_scale = 4096

        def adc_ua_per_count(self, ch):
            return 60000

    d = _tmpdir()
    try:
        p = d + "/lifetime.txt"
        good = mt._record(589, 123).encode()
        for i in range(len(good) * 8):
            flipped = bytearray(good)
            flipped[i // 8] ^= 1 << (i % 8)
            _write_bytes(p, flipped)
            _write_bytes(p + ".bak", mt._record(344, 0).encode())
            m = Meter(_Hal())
            err = m.load(p)
            if m.meter_wh() != (589, 123):  # (a hex digit's case flipped: still valid)
                assert m.meter_wh() == (344, 0) and "damaged" in err, (i, bytes(flipped))
        os.remove(p)
        os.mkdir(p)
        m = Meter(_Hal())
        assert "directory" in m.load(p) and m.meter_wh() == (344, 0)
        _write_bytes(d + "/cal.json", b'{"gain_ppm": [1000000, "\xff"]}')
        err = m.load_cal(d + "/cal.json")
        assert err and "JSON" in err and m.gains() == [1000000, 1000000, 1000000]
    finally:
        _tree_rm(d)
