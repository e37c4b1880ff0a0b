"""End to end over OCPP 1.6J: the local authorization list and the
authorization cache (firmware/ocpp_auth.py) against the `ocpp` package's
central system (the one of test_ocpp_e2e.py, validating every message).

What a charging network relies on when its central system is away: a card on
the list it sent charges, and that transaction reaches it once when it is
back; an unknown card is refused (unless AllowOfflineTxForUnknownId); a card
the central system accepted before is remembered in the cache, and ClearCache
forgets it.

Each firmware run starts with the central system already down (or up), so
nothing depends on how fast the machine is: the tests wait on messages and
trace records, and end a run (SIGKILL, as a power cut) once they saw what
they waited for.
"""

import os

import pytest
import test_ocpp_e2e as e2e  # skips this module too without the ocpp package
from ocpp.v16 import call

Firmware, _keys, _once_each = e2e.Firmware, e2e._keys, e2e._once_each
cs, data_dir = e2e.cs, e2e.data_dir  # the fixtures: a central system on a free port, a scratch flash

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(os.path.dirname(__file__), "..", "..", ".venv", "bin", "micropython")),
    reason="run make deps first",
)


def _card(fw, tag, timeout_s=30):
    """The charger's answer to card `tag`: the command record of its step."""
    _, r = fw.wait(lambda r: r.get("command") == "authorize" and r.get("payload") == tag, timeout_s, "card " + tag)
    return r


def _entry(tag, status=None, expiry=None):
    if status is None:
        return {"idTag": tag}
    info = {"status": status}
    if expiry:
        info["expiryDate"] = expiry
    return {"idTag": tag, "idTagInfo": info}


def _offline_session(cs, data_dir, scenario, tag):
    """A boot with the central system down, where card `tag` charges; the run, ended."""
    cs.down()
    fw = Firmware(scenario, cs.url, data_dir)
    assert _card(fw, tag)["ok"] is True
    fw.wait(lambda r: r.get("session") is not None and r.get("contactor"), 30, "charging")
    assert fw.finish() == 0
    return fw


def _back_online(cs, data_dir, txid, then=None):
    """The central system back, the charger booted again: wait for the
    StopTransaction of transaction `txid` (the central system numbers them
    from 101), send the CALLs of `then`(), end the run."""
    cs.up()
    fw = Firmware("idle_long.json", cs.url, data_dir)
    try:
        cs.wait_call("StopTransaction", 60, lambda p: p["transactionId"] == txid)
        if then is not None:
            then()
    finally:
        fw.kill()


def test_a_listed_card_charges_offline_and_its_transaction_arrives_once(cs, data_dir):
    # 1. Online: the central system sends its list, then a differential update.
    fw = Firmware("idle_long.json", cs.url, data_dir)
    try:
        cs.wait_call("StatusNotification", where=lambda p: p["connectorId"] == 1)
        assert cs.send(call.GetLocalListVersion()).list_version == 0
        full = [
            _entry("LOCAL1", "Accepted"),
            _entry("BLOCKED1", "Blocked"),
            _entry("OLD1", "Accepted", "2020-01-01T00:00:00Z"),
            _entry("GONE1", "Accepted"),
        ]
        assert (
            cs.send(call.SendLocalList(list_version=1, update_type="Full", local_authorization_list=full)).status
            == "Accepted"
        )
        diff = [_entry("GONE1"), _entry("LOCAL2", "Accepted")]
        assert (
            cs.send(
                call.SendLocalList(list_version=1, update_type="Differential", local_authorization_list=diff)
            ).status
            == "VersionMismatch"
        )
        assert (
            cs.send(
                call.SendLocalList(list_version=2, update_type="Differential", local_authorization_list=diff)
            ).status
            == "Accepted"
        )
        assert cs.send(call.GetLocalListVersion()).list_version == 2
        assert cs.send(call.ChangeConfiguration(key="LocalAuthorizeOffline", value="true")).status == "Accepted"
        keys = {k["key"]: k["value"] for k in cs.send(call.GetConfiguration()).configuration_key}
        assert keys["LocalAuthListEnabled"] == "true" and keys["AllowOfflineTxForUnknownId"] == "false"
        assert "LocalAuthListManagement" in keys["SupportedFeatureProfiles"].split(",")
    finally:
        fw.kill()  # a power cut: the list was on flash before its Accepted went out
    # 2. The central system is away; the charger boots again and cards are presented.
    fw = _offline_session(cs, data_dir, "offline_cards.json", "LOCAL1")
    assert _card(fw, "UNKNOWN1")["ok"] is False  # not listed, not cached
    assert _card(fw, "BLOCKED1")["ok"] is False
    assert _card(fw, "OLD1")["ok"] is False  # expired
    assert [r for r in fw.records() if r["contactor"] and r["t"] < 6] == []  # no energy before the listed card
    # 3. Back: the queued transaction goes out, once.
    _back_online(cs, data_dir, 101)
    _once_each(cs)
    (_, _, _, start), (_, _, _, stop) = cs.calls("StartTransaction")[0], cs.calls("StopTransaction")[0]
    assert start["idTag"] == "LOCAL1" and stop["idTag"] == "LOCAL1" and stop["transactionId"] == 101
    assert stop["meterStop"] > start["meterStart"]
    assert cs.calls("Authorize") == []  # decided on the charger


def test_an_unknown_card_charges_offline_only_with_allow_offline_tx_for_unknown_id(cs, data_dir):
    _keys(data_dir, AllowOfflineTxForUnknownId="true")
    _offline_session(cs, data_dir, "offline_cards.json", "UNKNOWN1")
    _back_online(cs, data_dir, 101)
    assert cs.calls("StartTransaction")[0][3]["idTag"] == "UNKNOWN1"


def test_a_card_accepted_online_is_cached_for_offline_use_until_clear_cache(cs, data_dir):
    _keys(data_dir, LocalAuthorizeOffline="true")
    # Online: the central system accepts TAG0001 (Authorize): the charger caches it.
    fw = Firmware("charge_tag.json", cs.url, data_dir)
    cs.wait_call("Authorize")
    cs.wait_call("StopTransaction", timeout_s=40)
    assert fw.finish() == 0  # a clean end: that StopTransaction is not sent again later
    # Offline: the cached card charges.
    _offline_session(cs, data_dir, "offline_tag.json", "TAG0001")
    # Online again: that session goes out, then ClearCache.
    cleared = []
    _back_online(cs, data_dir, 102, lambda: cleared.append(cs.send(call.ClearCache()).status))
    assert cleared == ["Accepted"]
    # Offline: forgotten, refused.
    cs.down()
    fw = Firmware("offline_tag.json", cs.url, data_dir)
    assert _card(fw, "TAG0001")["ok"] is False
    assert fw.finish() == 0
    assert all(not r["contactor"] for r in fw.records())
    assert len(cs.calls("Authorize")) == 1  # only the online one
