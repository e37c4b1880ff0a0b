# firmware/update.py's Installer against the simulated board's OTA partitions
# (sim/ota.py files in a scratch folder): an image goes into the partition that
# is not running, is read back and checked, and only then set to boot; every
# refusal leaves the boot choice as it was. The signature check itself is
# firmware/signature.py's (its own tests); here a stand-in verify() accepts
# exactly b"signed:" + digest, so the Installer's use of it is what is tested.
import hashlib
import json
import sys

import tmpdirs

import firmware
from firmware import imagestate, update
from sim import ota
from sim.board import SimBoard

SIZE = 64 * 1024  # small partitions: the test is about the logic, not the size


class _Sig:
    @staticmethod
    def verify(digest, sig, key):
        return key == "k" and sig == b"signed:" + digest


def _stub_signature():
    sys.modules["firmware.signature"] = _Sig
    firmware.signature = _Sig


def _board():
    root = tmpdirs.make("ota")
    d = root + "/ota"
    ota.flash(d, b"OLD" * 100, size=SIZE)
    data = root + "/data"
    import os

    os.mkdir(data)
    imagestate._report = None
    return SimBoard(data_dir=data, ota_dir=d), root


def _image(n, seed=7):
    return bytes((i * seed + (i >> 8)) & 0xFF for i in range(n))


def _install(b, img, key="k", sig=None, chunk=1000, allow_unsigned=False):
    inst = update.Installer(b, key, allow_unsigned=allow_unsigned)
    inst.begin(len(img))
    for i in range(0, len(img), chunk):
        inst.write(img[i:i + chunk])
    if sig is None:
        sig = b"signed:" + hashlib.sha256(img).digest()
    return inst.finish(sig)


def _boots(b):
    od = ota.read_otadata(b.ota_dir)
    return max(ota.LABELS, key=lambda x: od[x]["seq"]), od


def _reason(fn):
    try:
        fn()
    except update.UpdateError as e:
        return e.reason
    return None


def test_an_image_goes_into_the_partition_not_running_and_boots_next_pending_verify():
    _stub_signature()
    b, root = _board()
    try:
        img = _image(10000)  # not a multiple of the 4 KB block
        assert b.ota_info() == {"running": "ota_0", "next": "ota_1", "size": SIZE, "state": "valid"}
        _install(b, img, chunk=777)
        with open(ota.part_path(b.ota_dir, "ota_1"), "rb") as f:
            assert f.read(len(img)) == img
            assert f.read(12288 - len(img)) == b"\xff" * (12288 - len(img)), "the rest of the last block is erased"
        label, od = _boots(b)
        assert label == "ota_1" and od["ota_1"]["state"] == "new", od
        with open(ota.part_path(b.ota_dir, "ota_0"), "rb") as f:
            assert f.read(300) == b"OLD" * 100, "the running partition is never written"
    finally:
        tmpdirs.remove(root)


def test_a_bad_signature_is_refused_and_nothing_switches():
    _stub_signature()
    b, root = _board()
    try:
        img = _image(5000)
        assert _reason(lambda: _install(b, img, sig=b"signed:" + bytes(32))) == "signature"
        assert _reason(lambda: _install(b, img, sig=b"")) == "signature"
        assert _boots(b)[0] == "ota_0"
        assert ota.read_otadata(b.ota_dir)["ota_1"]["state"] == "undefined"
    finally:
        tmpdirs.remove(root)


def test_without_a_key_nothing_is_accepted_unless_unsigned_images_are_allowed():
    _stub_signature()
    b, root = _board()
    try:
        img = _image(5000)
        assert _reason(lambda: _install(b, img, key=None)) == "signature"
        assert _boots(b)[0] == "ota_0"
        _install(b, img, key=None, sig=b"", allow_unsigned=True)
        assert _boots(b)[0] == "ota_1"
    finally:
        tmpdirs.remove(root)


def test_an_image_larger_than_the_partition_is_refused_before_anything_is_written():
    _stub_signature()
    b, root = _board()
    try:
        inst = update.Installer(b, "k")
        assert _reason(lambda: inst.begin(SIZE + 1)) == "size"
        assert _reason(lambda: inst.write(b"x")) == "write", "no write without a begin"
        with open(ota.part_path(b.ota_dir, "ota_1"), "rb") as f:
            assert f.read(16) == b"\xff" * 16
        inst.begin(10)
        assert _reason(lambda: inst.write(b"x" * 11)) == "size"
    finally:
        tmpdirs.remove(root)


def test_an_incomplete_image_is_refused():
    _stub_signature()
    b, root = _board()
    try:
        img = _image(5000)
        inst = update.Installer(b, "k")
        inst.begin(len(img))
        inst.write(img[:4000])
        assert _reason(lambda: inst.finish(b"signed:" + hashlib.sha256(img).digest())) == "size"
        assert _boots(b)[0] == "ota_0"
    finally:
        tmpdirs.remove(root)


def test_flash_that_reads_back_differently_is_refused_as_a_hash_mismatch():
    _stub_signature()
    b, root = _board()
    try:
        img = _image(9000)
        inst = update.Installer(b, "k")
        inst.begin(len(img))
        inst.write(img[:4096])
        # A bit flips in the partition after it was written (a bad sector).
        with open(ota.part_path(b.ota_dir, "ota_1"), "r+b") as f:
            f.seek(100)
            f.write(b"\x00")
        inst.write(img[4096:])
        assert _reason(lambda: inst.finish(b"signed:" + hashlib.sha256(img).digest())) == "hash"
        assert _boots(b)[0] == "ota_0"
    finally:
        tmpdirs.remove(root)


def test_a_write_that_starts_inside_a_block_written_earlier_ands_like_nor_flash():
    # Two writes into the same block without an erase between them: the
    # second one cannot set bits again, which the read-back check catches.
    _stub_signature()
    b, root = _board()
    try:
        b.ota_write(0, b"\x0f" * 10)
        b.ota_write(5, b"\xf0" * 5)  # inside block 0, which is not erased again
        buf = bytearray(10)
        b.ota_read(0, buf)
        assert bytes(buf) == b"\x0f" * 5 + b"\x00" * 5, buf
    finally:
        tmpdirs.remove(root)


def test_a_board_without_partitions_refuses_with_no_partitions():
    from fakeboard import FakeBoard

    assert _reason(lambda: update.Installer(FakeBoard(), "k").begin(10)) == "no partitions"


def test_an_image_that_did_not_confirm_is_reported_as_rolled_back_once_and_marking_valid_is_free_after():
    _stub_signature()
    b, root = _board()
    try:
        img = _image(3000)
        _install(b, img)
        # The bootloader boots it (new -> pending) ...
        assert ota.select(b.ota_dir) == "ota_1"
        imagestate._report = None
        rep = imagestate.report(b)
        assert rep == {"partition": "ota_1", "state": "pending", "rollback": None}, rep
        # ... and a reset before mark_valid() boots ota_0 again.
        assert ota.select(b.ota_dir) == "ota_0"
        imagestate._report = None
        rep = imagestate.report(b)
        assert rep["partition"] == "ota_0" and rep["rollback"].startswith("ota_1 "), rep
        with open(b.data_dir + "/ota.json") as f:
            assert json.loads(f.read())["to"] is None, "the rollback is noticed once"
        # A second install that is marked valid stays.
        _install(b, img)
        assert ota.select(b.ota_dir) == "ota_1"
        imagestate._report = None
        assert imagestate.report(b)["state"] == "pending"
        imagestate.mark_valid(b)
        assert imagestate.report(b)["state"] == "valid"
        assert ota.select(b.ota_dir) == "ota_1"
        assert ota.read_otadata(b.ota_dir)["ota_1"]["state"] == "valid"
    finally:
        imagestate._report = None
        tmpdirs.remove(root)


def test_while_the_running_image_is_not_marked_valid_no_image_may_overwrite_its_fallback():
    _stub_signature()
    b, root = _board()
    try:
        img = _image(3000)
        _install(b, img)
        assert ota.select(b.ota_dir) == "ota_1"  # booted, pending verify
        imagestate._report = None
        assert _reason(lambda: _install(b, _image(3000, seed=3))) == "pending"
        with open(ota.part_path(b.ota_dir, "ota_0"), "rb") as f:
            assert f.read(300) == b"OLD" * 100, "the fallback is untouched"
        imagestate.mark_valid(b)
        _install(b, _image(3000, seed=3))
        assert _boots(b)[0] == "ota_0"
    finally:
        imagestate._report = None
        tmpdirs.remove(root)
