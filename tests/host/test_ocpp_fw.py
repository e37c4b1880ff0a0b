"""OCPP FirmwareManagement, part 1: firmware/ocpp_fw.py and firmware/http.py
on both MicroPython interpreters (tests/device/fwcheck.py drives them as the
OCPP link does), against a loopback HTTP server, with images signed here by
tools/sign.py and a recording installer. What must hold: only an image whose
signature and SHA-256 verify reaches the installer's finish(); a bad one is
refused before a byte is written; a server that fails is tried `retries`
times; no download runs while a session is active; the pending step is on
flash and the boot after it reports Installed or (old version: the
bootloader went back) InstallationFailed.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sign  # noqa: E402
from fwserver import FwServer  # noqa: E402
from mpscript import run_json  # noqa: E402

FUTURE = "2020-01-01T00:00:00Z"  # retrieveDate in the past: at once


def _image(keys, n=20000, signer="good"):
    data = os.urandom(n)
    return data, sign.pack(keys[signer][0], data)


def _run(exe, tmp_path, keys, request, **kw):
    run = {"data": str(tmp_path), "key": str(keys["good"][1]), "request": request}
    run.update(kw)
    p = tmp_path / "run.json"
    p.write_text(json.dumps(run))
    return run_json(exe, "fwcheck.py", p, timeout_s=120)


def _req(url, retries=2, interval=0):
    return {"location": url, "retrieveDate": FUTURE, "retries": retries, "retryInterval": interval}


def _statuses(out):
    return [s for a, s in out["posted"] if a == "FirmwareStatusNotification"]


@pytest.mark.parametrize("kind", ["body", "chunked", "redirect"])
def test_a_signed_image_streams_into_the_installer_and_the_board_resets_into_it(
    mp_interpreter, tmp_path, keys, srv, kind
):
    data, blob = _image(keys, 50000)
    srv.routes["/fw.evfw"] = ("chunked" if kind == "chunked" else "body", blob)
    srv.routes["/old/fw.evfw"] = ("redirect", "/fw.evfw")
    path = "/old/fw.evfw" if kind == "redirect" else "/fw.evfw"
    out = _run(mp_interpreter[1], tmp_path, keys, _req(srv.url(path)))
    assert _statuses(out) == ["Downloading", "Downloaded", "Installing"]
    inst = out["installer"]
    assert inst["begin"] == len(data) and inst["bytes"] == len(data) and inst["finish"] == 256
    assert inst["sha256"] == hashlib.sha256(data).hexdigest() and inst["key_ok"]
    assert inst["writes"] >= len(data) // 2048  # streamed in pieces, never whole
    assert out["resets"] == 1 and out["safes"] == 1  # outputs safe, then the reset into the new image
    assert out["state"]["step"] == "reboot" and out["state"]["from"] == "1.0"


def test_after_the_reset_the_new_version_reports_installed_and_the_old_one_installation_failed(
    mp_interpreter, tmp_path, keys, srv
):
    _data, blob = _image(keys)
    srv.routes["/fw.evfw"] = ("body", blob)
    out = _run(mp_interpreter[1], tmp_path, keys, _req(srv.url("/fw.evfw")))
    assert out["resets"] == 1
    state_file = tmp_path / "ocpp_fw.json"
    saved = state_file.read_bytes()
    # The boot into the new image: nothing is reported before the firmware ran long enough to be marked good.
    early = _run(mp_interpreter[1], tmp_path, keys, None, version="2.0", ticks=10, max_s=0.5)
    assert _statuses(early) == [] and early["trigger"] == "Installing"
    new = _run(mp_interpreter[1], tmp_path, keys, None, version="2.0", ticks=100000, busy_passes=100)
    assert new["busy_seen"] == []  # nothing reported (no flash written) while a session is active
    assert _statuses(new) == ["Installed"] and new["state"] == {} and new["trigger"] == "Idle"
    # The same install, but the bootloader went back to the old image (same version running).
    state_file.write_bytes(saved)
    old = _run(mp_interpreter[1], tmp_path, keys, None, version="1.0", ticks=100000)
    assert _statuses(old) == ["InstallationFailed"] and old["state"] == {}


def test_on_a_board_with_ota_partitions_the_running_partition_tells_installed_from_a_rollback(
    mp_interpreter, tmp_path, keys, srv
):
    _data, blob = _image(keys)
    srv.routes["/fw.evfw"] = ("body", blob)
    out = _run(mp_interpreter[1], tmp_path, keys, _req(srv.url("/fw.evfw")), ota={"running": "ota_0", "next": "ota_1"})
    assert out["resets"] == 1 and out["state"]["to"] == "ota_1"
    saved = (tmp_path / "ocpp_fw.json").read_bytes()
    # The new image runs (even one built with the same version string): Installed.
    new = _run(mp_interpreter[1], tmp_path, keys, None, ticks=100000, ota={"running": "ota_1", "next": "ota_0"})
    assert _statuses(new) == ["Installed"]
    # The bootloader went back to ota_0 (the new image never marked itself valid): InstallationFailed.
    (tmp_path / "ocpp_fw.json").write_bytes(saved)
    old = _run(
        mp_interpreter[1], tmp_path, keys, None, version="2.0", ticks=100000, ota={"running": "ota_0", "next": "ota_1"}
    )
    assert _statuses(old) == ["InstallationFailed"]


@pytest.mark.parametrize("how", ["other_key", "flipped_signature", "flipped_image", "not_signed"])
def test_an_image_that_does_not_verify_is_never_installed(mp_interpreter, tmp_path, keys, srv, how):
    data, blob = _image(keys, signer="other" if how == "other_key" else "good")
    blob = bytearray(blob)
    if how == "flipped_signature":
        blob[100] ^= 1
    elif how == "flipped_image":
        blob[-1] ^= 1
    elif how == "not_signed":
        blob = bytearray(data)
    srv.routes["/fw.evfw"] = ("body", bytes(blob))
    out = _run(mp_interpreter[1], tmp_path, keys, _req(srv.url("/fw.evfw"), retries=2))
    st = _statuses(out)
    inst = out["installer"]
    assert out["resets"] == 0
    assert inst is None or inst["finish"] is None  # finish() never called: nothing switched
    if how == "flipped_image":
        # The signature is fine, the body is not what was signed: a damaged download, tried again, then given up.
        assert st == ["Downloading", "Downloading", "DownloadFailed"] and inst["aborted"]
    elif how == "not_signed":
        assert st == ["Downloading", "Downloading", "DownloadFailed"] and inst is None
    else:
        assert st == ["Downloading", "InstallationFailed"] and inst is None  # refused from the header: no flash written
    assert out["state"] == {}


def test_a_server_that_is_down_or_answers_404_is_tried_retries_times_then_download_failed(
    mp_interpreter, tmp_path, keys, srv
):
    srv.routes["/fw.evfw"] = ("status", 404)
    out = _run(mp_interpreter[1], tmp_path, keys, _req(srv.url("/fw.evfw"), retries=3, interval=1))
    assert _statuses(out) == ["Downloading"] * 3 + ["DownloadFailed"]
    assert srv.requests.count(("GET", "/fw.evfw")) == 3
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    out = _run(mp_interpreter[1], tmp_path, keys, _req("http://127.0.0.1:%d/fw.evfw" % port, retries=2))
    assert _statuses(out) == ["Downloading", "Downloading", "DownloadFailed"] and out["installer"] is None


def test_a_body_cut_short_is_a_failed_download_and_the_installer_is_aborted(mp_interpreter, tmp_path, keys, srv):
    _data, blob = _image(keys)
    srv.routes["/fw.evfw"] = ("cut", blob, len(blob) // 2)
    out = _run(mp_interpreter[1], tmp_path, keys, _req(srv.url("/fw.evfw"), retries=1))
    assert _statuses(out) == ["Downloading", "DownloadFailed"]
    assert out["installer"]["aborted"] and out["installer"]["finish"] is None and out["resets"] == 0


def test_an_installer_refusing_the_image_is_installation_failed(mp_interpreter, tmp_path, keys, srv):
    _data, blob = _image(keys)
    srv.routes["/fw.evfw"] = ("body", blob)
    out = _run(mp_interpreter[1], tmp_path, keys, _req(srv.url("/fw.evfw")), installer="fail_finish")
    assert _statuses(out) == ["Downloading", "Downloaded", "Installing", "InstallationFailed"] and out["resets"] == 0
    out = _run(mp_interpreter[1], tmp_path, keys, _req(srv.url("/fw.evfw")), installer="fail_begin")
    assert _statuses(out) == ["Downloading", "InstallationFailed"] and out["resets"] == 0


def test_no_key_on_the_board_means_nothing_is_installed(mp_interpreter, tmp_path, keys, srv):
    _data, blob = _image(keys)
    srv.routes["/fw.evfw"] = ("body", blob)
    out = _run(mp_interpreter[1], tmp_path, keys, _req(srv.url("/fw.evfw")), key=str(tmp_path / "none.json"))
    assert _statuses(out) == ["Downloading", "InstallationFailed"] and out["installer"] is None
    assert srv.requests == []  # not even downloaded


def test_nothing_is_downloaded_while_a_session_is_active(mp_interpreter, tmp_path, keys, srv):
    _data, blob = _image(keys)
    srv.routes["/fw.evfw"] = ("body", blob)
    out = _run(mp_interpreter[1], tmp_path, keys, _req(srv.url("/fw.evfw")), busy_passes=200)
    assert out["busy_seen"] == [] and out["resets"] == 1  # nothing before the session ended, then the whole update
    assert _statuses(out) == ["Downloading", "Downloaded", "Installing"]


def test_a_request_waiting_for_its_retrieve_date_survives_a_reset(mp_interpreter, tmp_path, keys, srv):
    _data, blob = _image(keys)
    srv.routes["/fw.evfw"] = ("body", blob)
    req = _req(srv.url("/fw.evfw"))
    req["retrieveDate"] = "2099-01-01T00:00:00Z"
    out = _run(mp_interpreter[1], tmp_path, keys, req, max_s=0.5)
    assert _statuses(out) == [] and srv.requests == [] and out["state"]["step"] == "wait"
    assert out["trigger"] == "Idle"  # nothing reported yet: waiting is not an update step of 1.6
    state = json.loads((tmp_path / "ocpp_fw.json").read_text())
    state["at"] = 0  # the date has come while the board was off
    (tmp_path / "ocpp_fw.json").write_text(json.dumps(state))
    out = _run(mp_interpreter[1], tmp_path, keys, None)
    assert _statuses(out) == ["Downloading", "Downloaded", "Installing"] and out["resets"] == 1


def test_benchmark_download_rate_and_heap(mp_interpreter, tmp_path, keys, srv):
    data, blob = _image(keys, 1024 * 1024)
    srv.routes["/fw.evfw"] = ("body", blob)
    out = _run(mp_interpreter[1], tmp_path, keys, _req(srv.url("/fw.evfw")), max_s=120)
    assert out["installer"]["bytes"] == len(data) and out["resets"] == 1
    ms = max(out["elapsed_ms"], 1)
    print(
        "\nUpdateFirmware of a 1 MiB signed image on loopback, %s: %d ms (%.0f KB/s, 2 KB buffer, 100 ms slices); "
        "heap after import of firmware.ocpp_fw (+http, fwimage, signature, store): %d bytes"
        % (mp_interpreter[0], ms, len(blob) / 1.024 / ms, out["import_heap"])
    )


def test_an_https_location_is_fetched_only_from_a_server_the_ca_vouches_for(mp_interpreter, tmp_path, keys):
    import ssl

    from test_link_secure import _pki

    pki = _pki(str(tmp_path))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["server"], str(tmp_path / "server.key"))
    s = FwServer(ssl_ctx=ctx)
    try:
        data, blob = _image(keys)
        s.routes["/fw.evfw"] = ("chunked", blob)
        out = _run(mp_interpreter[1], tmp_path, keys, _req(s.url("/fw.evfw")), ca=pki["ca"])
        assert _statuses(out) == ["Downloading", "Downloaded", "Installing"] and out["installer"]["bytes"] == len(data)
        out = _run(mp_interpreter[1], tmp_path, keys, _req(s.url("/fw.evfw"), retries=1), ca=pki["other"])
        assert _statuses(out) == ["Downloading", "DownloadFailed"] and out["installer"] is None
    finally:
        s.close()


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b'{"step": "wait"}', b'{"step": "wait", "loc": "http://x/", "at": "soon", "tries": 1, "every": 0}',
     b'{"step": "reboot"}', b'{"step": "dance", "loc": "http://x/"}', b"\xff" * 3000],
)  # fmt: skip
def test_a_damaged_update_state_on_flash_is_ignored_with_a_note(mp_interpreter, tmp_path, keys, content):
    (tmp_path / "ocpp_fw.json").write_bytes(content)
    out = _run(mp_interpreter[1], tmp_path, keys, None, ticks=100000, max_s=0.3)
    assert out["posted"] == [] and out["resets"] == 0 and out["trigger"] == "Idle"
    assert out["notes"]


def test_a_redirect_loop_and_a_server_that_never_answers_are_failed_downloads(mp_interpreter, tmp_path, keys, srv):
    srv.routes["/loop"] = ("redirect", "/loop")
    out = _run(mp_interpreter[1], tmp_path, keys, _req(srv.url("/loop"), retries=1))
    assert _statuses(out) == ["Downloading", "DownloadFailed"]
    assert srv.requests.count(("GET", "/loop")) == 4  # the request and 3 redirects followed, no more
    import socket

    mute = socket.socket()  # accepts (the kernel's backlog) and never answers
    mute.bind(("127.0.0.1", 0))
    mute.listen(4)
    try:
        url = "http://127.0.0.1:%d/fw.evfw" % mute.getsockname()[1]
        out = _run(mp_interpreter[1], tmp_path, keys, _req(url, retries=1), max_s=60)
        assert _statuses(out) == ["Downloading", "DownloadFailed"]  # after the 10 s I/O timeout
        assert any("timed out" in n.lower() or "110" in n or "etimedout" in n.lower() for n in out["notes"]), out[
            "notes"
        ]
    finally:
        mute.close()


def test_a_session_that_begins_after_the_install_delays_the_reset_until_it_ends(mp_interpreter, tmp_path, keys, srv):
    _data, blob = _image(keys)
    srv.routes["/fw.evfw"] = ("body", blob)
    out = _run(mp_interpreter[1], tmp_path, keys, _req(srv.url("/fw.evfw")), busy_on="Installing", busy_ms=5000)
    assert _statuses(out) == ["Downloading", "Downloaded", "Installing"]
    assert out["resets_in_session"] == 0 and out["resets"] == 1  # none while it ran, one after


def test_a_session_that_begins_during_the_download_aborts_it_and_it_starts_again_after(
    mp_interpreter, tmp_path, keys, srv
):
    data, blob = _image(keys, 30000)
    srv.routes["/fw.evfw"] = ("slow", blob)
    out = _run(
        mp_interpreter[1], tmp_path, keys, _req(srv.url("/fw.evfw"), retries=1), busy_on="Downloading", busy_ms=1000
    )
    # The first attempt stopped when the session began (installer aborted), a second one after it, not counted
    # as a failed attempt (retries=1 allows no second failure).
    assert _statuses(out) == ["Downloading", "Downloading", "Downloaded", "Installing"]
    assert srv.requests.count(("GET", "/fw.evfw")) == 2
    assert out["installer"]["bytes"] == len(data) and out["resets"] == 1
