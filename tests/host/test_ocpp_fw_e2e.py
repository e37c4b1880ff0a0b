"""OCPP FirmwareManagement, part 2: end to end against the `ocpp` 2.1.0
central system (schema-validating, tests/host/test_ocpp_e2e.py), the
unmodified firmware on the simulated board, images served by a loopback HTTP
server (tests/host/fwserver.py) and signed here by tools/sign.py.

Every FirmwareStatusNotification and DiagnosticsStatusNotification the
charger sends is validated by the central system against the OCPP 1.6
schemas (one that does not validate is answered with a CALLERROR and never
recorded as a call: the waits below would fail).
"""

import json
import os
import sys
import time

import pytest

pytest.importorskip("ocpp")

from ocpp.v16 import call  # noqa: E402
from test_ocpp_e2e import SCEN, CentralSystem, Firmware  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import sign  # noqa: E402

from sim import ota  # noqa: E402  (CPython: the emulated bootloader, as tools/simboard.py runs it)

NOW = "2020-01-01T00:00:00Z"  # a retrieveDate in the past: at once


@pytest.fixture
def board(tmp_path, keys):
    """The board's flash with the public key of the "good" pair on it."""
    d = tmp_path / "flash"
    d.mkdir()
    (d / "update_key.json").write_bytes(keys["good"][1].read_bytes())
    return str(d)


@pytest.fixture
def cs():
    c = CentralSystem()
    yield c
    c.close()


def _fw_statuses(cs):
    return [p["status"] for _, _, _, p in cs.calls("FirmwareStatusNotification")]


def _wait_fw(cs, status, timeout_s=60):
    return cs.wait_call("FirmwareStatusNotification", timeout_s=timeout_s, where=lambda p: p["status"] == status)


def _booted(cs):
    cs.wait_call("StatusNotification", where=lambda p: p["connectorId"] == 1, timeout_s=30)


def test_an_image_signed_with_another_key_is_refused_and_reported_installation_failed(cs, srv, board, keys):
    srv.routes["/fw.evfw"] = ("body", sign.pack(keys["other"][0], os.urandom(30000)))
    fw = Firmware("idle_long.json", cs.url, board)
    try:
        _booted(cs)
        assert cs.send(call.UpdateFirmware(location=srv.url("/fw.evfw"), retrieve_date=NOW)) is not None
        _wait_fw(cs, "InstallationFailed")
        assert _fw_statuses(cs) == ["Downloading", "InstallationFailed"]
        # Nothing under way any more: a triggered notification says Idle.
        assert cs.send(call.TriggerMessage(requested_message="FirmwareStatusNotification")).status == "Accepted"
        cs.wait(
            lambda d, m: d == "in" and m[0] == 2 and m[2] == "FirmwareStatusNotification" and m[3]["status"] == "Idle",
            20,
            "Idle",
        )
        assert (
            not os.path.exists(os.path.join(board, "ocpp_fw.json"))
            or open(os.path.join(board, "ocpp_fw.json")).read() == "{}"
        )
    finally:
        fw.kill()


def test_a_server_that_is_down_gives_download_failed_after_the_retries(cs, board):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    fw = Firmware("idle_long.json", cs.url, board)
    try:
        _booted(cs)
        t0 = time.monotonic()
        cs.send(
            call.UpdateFirmware(
                location="http://127.0.0.1:%d/fw.evfw" % port, retrieve_date=NOW, retries=3, retry_interval=1
            )
        )
        _wait_fw(cs, "DownloadFailed")
        assert _fw_statuses(cs) == ["Downloading", "Downloading", "Downloading", "DownloadFailed"]
        times = [t for t, _, _, p in cs.calls("FirmwareStatusNotification")]
        assert times[0] >= t0 and all(b - a >= 1.0 - 0.05 for a, b in zip(times[:3], times[1:3]))  # retryInterval kept
    finally:
        fw.kill()


def test_an_update_arriving_during_a_charge_is_fetched_only_after_the_session_ends(cs, srv, board, keys, tmp_path):
    ota_dir = tmp_path / "ota"
    ota.flash(str(ota_dir), image=b"the running image")
    ota.select(str(ota_dir))
    image = os.urandom(30000)
    srv.routes["/fw.evfw"] = ("body", sign.pack(keys["good"][0], image))
    fw = Firmware(_ota_scenario(tmp_path, ota_dir, "charge_then_idle.json"), cs.url, board)
    try:
        cs.wait_call(
            "StatusNotification", timeout_s=30, where=lambda p: p["connectorId"] == 1 and p["status"] == "Charging"
        )
        cs.send(call.UpdateFirmware(location=srv.url("/fw.evfw"), retrieve_date=NOW))
        t_stop, _ = cs.wait_call("StopTransaction", timeout_s=60)
        t_dl, _ = _wait_fw(cs, "Downloading")
        assert t_dl > t_stop  # nothing fetched, nothing written to flash, while the session ran
        _wait_fw(cs, "Installing")
        assert _fw_statuses(cs) == ["Downloading", "Downloaded", "Installing"]
        assert (ota_dir / "ota_1.bin").read_bytes()[: len(image)] == image
    finally:
        fw.kill()


def test_get_diagnostics_uploads_a_summary_and_reports_each_step(cs, srv, board):
    fw = Firmware("idle_long.json", cs.url, board)
    try:
        _booted(cs)
        r = cs.send(call.GetDiagnostics(location=srv.url("/diag/"), retries=2, retry_interval=1))
        assert r.file_name and r.file_name.endswith(".json")
        cs.wait_call("DiagnosticsStatusNotification", where=lambda p: p["status"] == "Uploaded")
        st = [p["status"] for _, _, _, p in cs.calls("DiagnosticsStatusNotification")]
        assert st == ["Uploading", "Uploaded"]
        with srv.cond:
            path, body = srv.uploads[0]
        assert path == "/diag/" + r.file_name
        d = json.loads(body)
        assert d["chargePointId"] == "CP0001" and d["configuration"]["HeartbeatInterval"]
        # A location we cannot upload to (ftp): no file name, nothing sent.
        r = cs.send(call.GetDiagnostics(location="ftp://example.invalid/diag/"))
        assert r.file_name is None
    finally:
        fw.kill()


def test_a_failing_upload_is_retried_then_upload_failed(cs, srv, board):
    srv.put_status = 500
    fw = Firmware("idle_long.json", cs.url, board)
    try:
        _booted(cs)
        cs.send(call.GetDiagnostics(location=srv.url("/diag"), retries=2, retry_interval=1))
        cs.wait_call("DiagnosticsStatusNotification", where=lambda p: p["status"] == "UploadFailed")
        st = [p["status"] for _, _, _, p in cs.calls("DiagnosticsStatusNotification")]
        assert st == ["Uploading", "Uploading", "UploadFailed"]
        with srv.cond:
            assert len(srv.uploads) == 2
    finally:
        fw.kill()


# (frame, expected CALLERROR code or ("result", payload))
BAD = [
    ('[2, "f1", "UpdateFirmware", {"location": "http://x/fw"}]', "OccurenceConstraintViolation"),
    ('[2, "f2", "UpdateFirmware", {"retrieveDate": "%s"}]' % NOW, "OccurenceConstraintViolation"),
    ('[2, "f3", "UpdateFirmware", {"location": 5, "retrieveDate": "%s"}]' % NOW, "TypeConstraintViolation"),
    ('[2, "f4", "UpdateFirmware", {"location": "http://x/fw", "retrieveDate": "soon"}]', "PropertyConstraintViolation"),
    (
        '[2, "f5", "UpdateFirmware", {"location": "http://x/fw", "retrieveDate": "%s", "retries": "3"}]' % NOW,
        "TypeConstraintViolation",
    ),
    (
        '[2, "f6", "UpdateFirmware", {"location": "http://x/fw", "retrieveDate": "%s", "x": 1}]' % NOW,
        "FormationViolation",
    ),
    ('[2, "f7", "GetDiagnostics", {}]', "OccurenceConstraintViolation"),
    ('[2, "f8", "GetDiagnostics", {"location": "http://x/", "startTime": 3}]', "TypeConstraintViolation"),
    ('[2, "f9", "GetDiagnostics", {"location": "http://x/", "retryInterval": 1.5}]', "TypeConstraintViolation"),
    ('[2, "f10", "UpdateFirmware", []]', "FormationViolation"),
    ('[2, "f11", "GetDiagnostics", {"location": "ftp://x/"}]', ("result", {})),
]


def test_malformed_firmware_calls_get_the_right_callerror_and_start_nothing(cs, srv, board):
    fw = Firmware("idle_long.json", cs.url, board)
    try:
        _booted(cs)
        for frame, _want in BAD:
            cs.send_raw(frame)
        for frame, want in BAD:
            uid = frame.split('"')[1]
            _, m = cs.wait(lambda d, m, uid=uid: d == "in" and m[0] in (3, 4) and m[1] == uid, 20, uid)
            if isinstance(want, tuple):
                assert m[0] == 3 and m[2] == want[1], (frame, m)
            else:
                assert m[0] == 4 and m[2] == want, (frame, m)
        # Nothing else follows from them: a round trip through the link's queue, then nothing of them seen.
        assert cs.send(call.TriggerMessage(requested_message="Heartbeat")).status == "Accepted"
        n = len(cs.calls("Heartbeat"))
        cs.wait(
            lambda d, m: d == "in" and m[0] == 2 and m[2] == "Heartbeat" and len(cs.calls("Heartbeat")) > n,
            20,
            "Heartbeat",
        )
        assert cs.calls("FirmwareStatusNotification") == [] and srv.requests == []
    finally:
        fw.kill()


# ---- through the emulated OTA partitions and bootloader (sim/ota.py) ----------------------------


def _fw_status_after(cs, n, timeout_s):
    """The status of the FirmwareStatusNotification after the first n."""
    cs.wait(
        lambda d, m: len(cs.calls("FirmwareStatusNotification")) > n,
        timeout_s,
        "FirmwareStatusNotification %d" % (n + 1),
    )
    return cs.calls("FirmwareStatusNotification")[n][3]["status"]


def _ota_scenario(tmp_path, ota_dir, base="idle_long.json", until=None):
    """A copy of an OCPP scenario whose simulated board has OTA partitions in ota_dir."""
    with open(os.path.join(SCEN, base)) as f:
        sc = json.load(f)
    sc["sim"] = dict(sc.get("sim") or {}, ota_dir=str(ota_dir))
    if until is not None:
        sc["until"] = until
    p = tmp_path / ("ota_" + base)
    p.write_text(json.dumps(sc))
    return str(p)


def _install(cs, srv, board, keys, tmp_path):
    """A good signed image through UpdateFirmware into ota_1: (image, ota dir, scenario path)."""
    ota_dir = tmp_path / "ota"
    ota.flash(str(ota_dir), image=b"the running image")
    assert ota.select(str(ota_dir)) == "ota_0"  # the bootloader's first boot
    scen = _ota_scenario(tmp_path, ota_dir)
    image = os.urandom(40000)
    srv.routes["/fw.evfw"] = ("chunked", sign.pack(keys["good"][0], image))
    fw = Firmware(scen, cs.url, board)
    try:
        _booted(cs)
        cs.send(call.UpdateFirmware(location=srv.url("/fw.evfw"), retrieve_date=NOW))
        _wait_fw(cs, "Installing")
        # The state on flash and the board's reset (a no-op on the unix port) follow once idle.
        deadline = time.monotonic() + 30
        path = os.path.join(board, "ocpp_fw.json")
        while time.monotonic() < deadline and '"reboot"' not in (open(path).read() if os.path.exists(path) else ""):
            time.sleep(0.05)
    finally:
        fw.kill()  # the reset: the process ends, as a board's does
    assert _fw_statuses(cs) == ["Downloading", "Downloaded", "Installing"]
    part = (ota_dir / "ota_1.bin").read_bytes()
    assert part[: len(image)] == image  # the update partition holds the image...
    od = json.loads((ota_dir / "otadata.json").read_text())
    assert od["ota_1"]["state"] == "new" and od["ota_1"]["seq"] > od["ota_0"]["seq"]  # ...and boots next
    assert json.loads(open(os.path.join(board, "ocpp_fw.json")).read())["to"] == "ota_1"
    return image, ota_dir, scen


def test_a_good_image_is_installed_into_the_update_partition_and_reported_installed_after_the_reboot(
    cs, srv, board, keys, tmp_path
):
    _image, ota_dir, scen = _install(cs, srv, board, keys, tmp_path)
    assert ota.select(str(ota_dir)) == "ota_1"  # the bootloader at the reset: the new image, pending verify
    n = len(cs.calls("FirmwareStatusNotification"))
    fw = Firmware(scen, cs.url, board)
    try:
        # Installed only after the firmware ran long enough to mark its image valid (30 s of running).
        status = _fw_status_after(cs, n, 120)
        assert status == "Installed"
        assert json.loads((ota_dir / "otadata.json").read_text())["ota_1"]["state"] == "valid"
    finally:
        fw.kill()


def test_an_image_that_never_marked_itself_valid_is_rolled_back_and_reported_installation_failed(
    cs, srv, board, keys, tmp_path
):
    _image, ota_dir, scen = _install(cs, srv, board, keys, tmp_path)
    assert ota.select(str(ota_dir)) == "ota_1"
    n = len(cs.calls("BootNotification"))
    fw = Firmware(scen, cs.url, board)
    try:
        cs.wait(
            lambda d, m: (
                d == "in" and m[0] == 2 and m[2] == "BootNotification" and len(cs.calls("BootNotification")) > n
            ),
            30,
            "boot",
        )
    finally:
        fw.kill()  # the new image dies before it was marked valid
    assert ota.select(str(ota_dir)) == "ota_0"  # the bootloader goes back
    n = len(cs.calls("FirmwareStatusNotification"))
    assert n == 3  # nothing reported by the image that died
    fw = Firmware(scen, cs.url, board)
    try:
        status = _fw_status_after(cs, n, 120)
        assert status == "InstallationFailed"
        assert json.loads((ota_dir / "otadata.json").read_text())["ota_1"]["state"] == "aborted"
    finally:
        fw.kill()
