"""OCPP FirmwareManagement, part 2: end to end against the `ocpp` 2.1.0
central system (schema-validating, tests/host/test_ocpp_e2e.py), the
unmodified firmware on the simulated board, images served by a loopback HTTP
server (tests/host/fwserver.py) and signed here by tools/sign.py.

Every FirmwareStatusNotification and DiagnosticsStatusNotification the
charger sends is validated by the central system against the OCPP 1.6
schemas (one that does not validate is answered with a CALLERROR and never
recorded as a call: the waits below would fail).
"""

import os
import sys
import time

import pytest

pytest.importorskip("ocpp")

from ocpp.v16 import call  # noqa: E402
from test_ocpp_e2e import CentralSystem, Firmware  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))

import sign  # noqa: E402
from fwserver import FwServer, make_keys  # noqa: E402

NOW = "2020-01-01T00:00:00Z"  # a retrieveDate in the past: at once


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return make_keys(tmp_path_factory.mktemp("fwkeys"))


@pytest.fixture
def srv():
    s = FwServer()
    yield s
    s.close()


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


def test_an_update_arriving_during_a_charge_is_fetched_only_after_the_session_ends(cs, srv, board, keys):
    srv.routes["/fw.evfw"] = ("body", sign.pack(keys["good"][0], os.urandom(30000)))
    fw = Firmware("charge_then_idle.json", cs.url, board)
    try:
        cs.wait_call(
            "StatusNotification", timeout_s=30, where=lambda p: p["connectorId"] == 1 and p["status"] == "Charging"
        )
        cs.send(call.UpdateFirmware(location=srv.url("/fw.evfw"), retrieve_date=NOW))
        t_stop, _ = cs.wait_call("StopTransaction", timeout_s=60)
        t_dl, _ = _wait_fw(cs, "Downloading")
        assert t_dl > t_stop
        with srv.cond:
            assert ("GET", "/fw.evfw") in srv.requests  # fetched, after the end of the session
        # Then it goes on to the installer: without OTA partitions on this simulated board it refuses (reported).
        _, last = cs.wait(
            lambda d, m: (
                d == "in"
                and m[0] == 2
                and m[2] == "FirmwareStatusNotification"
                and m[3]["status"] in ("Installing", "InstallationFailed")
            ),
            60,
            "the install step",
        )
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
        import json

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
