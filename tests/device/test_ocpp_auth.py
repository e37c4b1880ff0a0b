# LocalAuthListManagement and the authorization cache (firmware/ocpp_auth.py):
# SendLocalList full and differential updates, their status codes and bounds,
# the list and the cache on flash (and a damaged file), the cache's eviction
# and ClearCache, and the decision for a presented card (online/offline x
# list/cache/unknown x the configuration keys), also through the charge point.
# timeout: 60
import gc
import json

import test_ocpp
import tmpdirs

from firmware import (
    ocpp,  # noqa: F401 - the charge point imports ocpp_auth
    ocpp_auth,
    ocpp_keys,
    ocpp_schema,
)

NOW = 1_800_000_000  # a wall second in 2027
PAST = "2026-01-01T00:00:00Z"
FUTURE = "2030-01-01T00:00:00.000Z"


def _auth(d, **keys):
    k = ocpp_keys.Keys(d + "/keys.json")
    for name in keys:
        assert k.change(name, keys[name]) == "Accepted", name
    return ocpp_auth.Auth(d, k, test_ocpp._Lock()), k


def _send(a, version, kind, items):
    p = {"listVersion": version, "updateType": kind, "localAuthorizationList": items}
    assert ocpp_schema.check("SendLocalList", p) is None, p
    return a.send_local_list(p, ocpp.parse_time)


def _item(tag, status=None, expiry=None):
    if status is None:
        return {"idTag": tag}
    info = {"status": status}
    if expiry is not None:
        info["expiryDate"] = expiry
    return {"idTag": tag, "idTagInfo": info}


def _with_dir(fn):
    d = tmpdirs.make("auth")
    try:
        fn(d)
    finally:
        tmpdirs.remove(d)


def test_a_full_update_replaces_the_list_and_sets_its_version():
    def t(d):
        a, _ = _auth(d)
        assert a.list_version() == 0  # empty
        assert (
            _send(a, 3, "Full", [_item("A", "Accepted"), _item("B", "Blocked"), _item("C", "Accepted", FUTURE)])
            == "Accepted"
        )
        assert a.list_version() == 3
        assert sorted(a.tags) == ["A", "B", "C"]
        assert a.tags["C"][1] == ocpp.parse_time(FUTURE) // 60  # minutes: a small int on the ESP32
        assert _send(a, 2, "Full", [_item("D", "Accepted")]) == "Accepted"  # a full list may go back in version
        assert sorted(a.tags) == ["D"] and a.list_version() == 2
        assert _send(a, 4, "Full", []) == "Accepted"  # an empty full list empties it
        assert a.tags == {} and a.list_version() == 0

    _with_dir(t)


def test_a_differential_update_adds_changes_and_deletes_entries():
    def t(d):
        a, _ = _auth(d)
        assert _send(a, 1, "Full", [_item("A", "Accepted"), _item("B", "Accepted")]) == "Accepted"
        # B becomes Blocked, C is added, A (no idTagInfo) is deleted; a deletion of an unknown tag is fine.
        assert (
            _send(a, 2, "Differential", [_item("B", "Blocked"), _item("C", "Accepted"), _item("A"), _item("ZZ")])
            == "Accepted"
        )
        assert sorted(a.tags) == ["B", "C"] and a.tags["B"][0] == "Blocked"
        assert a.list_version() == 2

    _with_dir(t)


def test_a_differential_update_not_newer_than_the_list_is_a_version_mismatch_and_changes_nothing():
    def t(d):
        a, _ = _auth(d)
        assert _send(a, 5, "Full", [_item("A", "Accepted")]) == "Accepted"
        for v in (5, 4):
            assert _send(a, v, "Differential", [_item("B", "Accepted")]) == "VersionMismatch"
        assert sorted(a.tags) == ["A"] and a.list_version() == 5

    _with_dir(t)


def test_updates_beyond_the_bounds_or_malformed_fail_and_change_nothing():
    def t(d):
        a, k = _auth(d)
        assert k.values["LocalAuthListMaxLength"] == str(ocpp_auth.LIST_MAX)
        assert k.values["SendLocalListMaxLength"] == str(ocpp_auth.SEND_MAX)
        assert k.change("LocalAuthListMaxLength", "1000") == "Rejected"  # read-only
        assert k.change("SendLocalListMaxLength", "1000") == "Rejected"
        assert _send(a, 1, "Full", [_item("A", "Accepted")]) == "Accepted"
        big = [_item("T%d" % i, "Accepted") for i in range(ocpp_auth.SEND_MAX + 1)]
        assert _send(a, 2, "Full", big) == "Failed"  # more than SendLocalListMaxLength in one message
        # Two messages of SEND_MAX fill LIST_MAX; one more entry would pass it.
        n = ocpp_auth.SEND_MAX
        assert _send(a, 2, "Full", [_item("T%d" % i, "Accepted") for i in range(n)]) == "Accepted"
        assert (
            _send(a, 3, "Differential", [_item("U%d" % i, "Accepted") for i in range(ocpp_auth.LIST_MAX - n)])
            == "Accepted"
        )
        assert len(a.tags) == ocpp_auth.LIST_MAX
        assert _send(a, 4, "Differential", [_item("V", "Accepted")]) == "Failed"
        assert (
            _send(a, 4, "Full", [_item("A"), _item("B", "Accepted")]) == "Failed"
        )  # a full list entry without idTagInfo
        assert _send(a, 4, "Full", [_item("B", "Accepted", "2030-13-45T99:00:00Z")]) == "Failed"  # an impossible expiry
        assert _send(a, 0, "Full", [_item("B", "Accepted")]) == "Failed"  # 0 and -1 have their own meaning
        assert len(a.tags) == ocpp_auth.LIST_MAX and a.list_version() == 3
        # The schema's own limits: CALLERRORs before the list sees them.
        assert (
            ocpp_schema.check("SendLocalList", {"listVersion": 1, "updateType": "Partial"})[0]
            == "PropertyConstraintViolation"
        )
        assert (
            ocpp_schema.check(
                "SendLocalList",
                {"listVersion": 1, "updateType": "Full", "localAuthorizationList": [{"idTag": "X" * 21}]},
            )[0]
            == "TypeConstraintViolation"
        )
        bad_status = {
            "listVersion": 1,
            "updateType": "Full",
            "localAuthorizationList": [{"idTag": "X", "idTagInfo": {"status": "Maybe"}}],
        }
        assert ocpp_schema.check("SendLocalList", bad_status)[0] == "PropertyConstraintViolation"
        assert ocpp_schema.check("SendLocalList", {"updateType": "Full"})[0] == "OccurenceConstraintViolation"
        assert ocpp_schema.check("GetLocalListVersion", {}) is None

    _with_dir(t)


def test_a_disabled_list_is_version_minus_one_refuses_updates_and_is_not_consulted():
    def t(d):
        a, k = _auth(d, LocalAuthorizeOffline="true")
        assert _send(a, 1, "Full", [_item("A", "Accepted")]) == "Accepted"
        assert a.decide("A", False, NOW) == ocpp_auth.ACCEPT
        assert k.change("LocalAuthListEnabled", "false") == "Accepted"
        assert a.list_version() == -1
        assert _send(a, 2, "Full", [_item("B", "Accepted")]) == "NotSupported"
        assert a.decide("A", False, NOW) == ocpp_auth.REFUSE  # unknown now

    _with_dir(t)


def test_the_list_survives_a_restart_and_a_damaged_file_gives_an_empty_list_with_a_note():
    def t(d):
        a, _ = _auth(d)
        assert _send(a, 7, "Full", [_item("A", "Accepted", FUTURE), _item("B", "Invalid")]) == "Accepted"
        b, _ = _auth(d)
        assert b.list_version() == 7 and b.tags == a.tags and b.notes == []
        for junk in (
            '{"version": 7, "tags": {"A": ["Acc',
            "\xff\xfe not json",
            '{"version": 7, "tags": {"A": "Accepted"}}',
            "[1, 2]",
        ):
            with open(d + "/" + ocpp_auth.LIST_FILE, "w") as f:
                f.write(junk)
            c, _ = _auth(d)
            assert c.tags == {} and c.list_version() == 0, junk
            assert len(c.notes) == 1 and ocpp_auth.LIST_FILE in c.notes[0], (junk, c.notes)
            # and it takes a new list
            assert _send(c, 8, "Full", [_item("C", "Accepted")]) == "Accepted"
        with open(d + "/" + ocpp_auth.LIST_FILE, "w") as f:
            f.write(" " * 20000)  # too large to be ours: not read at all
        assert _auth(d)[0].tags == {}
        # The charge point reports the note.
        cp = ocpp.Ocpp({"ocpp_url": "ws://127.0.0.1:9/ocpp/CP7"}, None, d)
        assert cp.stats["auth_notes"] and ocpp_auth.LIST_FILE in cp.stats["auth_notes"][0]

    _with_dir(t)


def test_the_cache_keeps_answers_evicts_the_least_recently_used_and_is_cleared():
    def t(d):
        a, k = _auth(d, LocalAuthorizeOffline="true")
        a.remember("A", {"status": "Accepted"}, ocpp.parse_time)
        assert a.decide("A", False, NOW) == ocpp_auth.ACCEPT
        for i in range(ocpp_auth.CACHE_MAX - 1):
            a.remember("T%d" % i, {"status": "Accepted"}, ocpp.parse_time)
        assert len(a.cache) == ocpp_auth.CACHE_MAX
        a.decide("T0", False, NOW)  # T0 and A used again: T1 is now the least recently used
        a.decide("A", False, NOW)
        a.remember("NEW", {"status": "Accepted"}, ocpp.parse_time)
        assert len(a.cache) == ocpp_auth.CACHE_MAX and "T1" not in a.cache and "A" in a.cache and "T0" in a.cache
        # On flash: a restart keeps it.
        b, _ = _auth(d)
        assert sorted(b.cache) == sorted(a.cache) and b.notes == []
        # The latest answer wins: A becomes Blocked.
        a.remember("A", {"status": "Blocked"}, ocpp.parse_time)
        assert a.decide("A", False, NOW) == ocpp_auth.REFUSE
        assert a.clear_cache() == "Accepted"
        assert a.cache == {}
        assert _auth(d)[0].cache == {}  # empty on flash too
        # Disabled: nothing cached, nothing looked up.
        assert k.change("AuthorizationCacheEnabled", "false") == "Accepted"
        a.remember("C", {"status": "Accepted"}, ocpp.parse_time)
        assert a.cache == {}
        with open(d + "/" + ocpp_auth.CACHE_FILE, "w") as f:
            f.write('{"A": ["Accepted", null, null, 1]}')
        c, _ = _auth(d, LocalAuthorizeOffline="true")
        assert c.decide("A", False, NOW) == ocpp_auth.REFUSE
        with open(d + "/" + ocpp_auth.CACHE_FILE, "w") as f:
            f.write('{"A": ["Accepted", "soon", null, 1]}')
        assert _auth(d)[0].cache == {} and _auth(d)[0].notes

    _with_dir(t)


# (online, where, entry status, expiry, LocalPreAuthorize, LocalAuthorizeOffline, AllowOfflineTxForUnknownId) -> decision
_A, _R, _Q = ocpp_auth.ACCEPT, ocpp_auth.REFUSE, ocpp_auth.ASK
DECISIONS = (
    # online: the central system decides, unless LocalPreAuthorize and a valid entry
    (True, "list", "Accepted", None, "false", "true", "true", _Q),
    (True, "list", "Accepted", None, "true", "false", "false", _A),
    (True, "cache", "Accepted", FUTURE, "true", "false", "false", _A),
    (True, "list", "Accepted", PAST, "true", "true", "true", _Q),  # expired: ask
    (True, "list", "Blocked", None, "true", "true", "true", _Q),
    (True, None, None, None, "true", "true", "true", _Q),
    # offline
    (False, "list", "Accepted", None, "false", "true", "false", _A),
    (False, "cache", "Accepted", None, "false", "true", "false", _A),
    (False, "list", "Accepted", FUTURE, "false", "true", "false", _A),
    (False, "list", "Accepted", PAST, "false", "true", "true", _R),  # expired never authorizes
    (False, "cache", "Accepted", PAST, "false", "true", "true", _R),
    (False, "list", "Blocked", None, "false", "true", "true", _R),
    (False, "list", "Expired", None, "false", "true", "true", _R),
    (False, "cache", "Invalid", None, "false", "true", "true", _R),
    (False, "list", "ConcurrentTx", None, "false", "true", "true", _R),
    (False, "list", "Accepted", None, "false", "false", "false", _R),  # list not used offline
    (False, "list", "Accepted", None, "false", "false", "true", _A),  # ... so it is an unknown card
    (False, None, None, None, "false", "true", "false", _R),
    (False, None, None, None, "false", "true", "true", _A),
    (False, None, None, None, "true", "false", "true", _A),
)


def test_the_decision_table_online_offline_list_cache_unknown_and_keys():
    def t(d):
        for online, where, status, expiry, pre, offline, unknown, want in DECISIONS:
            a, _ = _auth(d, LocalPreAuthorize=pre, LocalAuthorizeOffline=offline, AllowOfflineTxForUnknownId=unknown)
            assert a.clear_cache() == "Accepted"
            assert _send(a, 1, "Full", []) == "Accepted"
            if where == "list":
                assert _send(a, 2, "Full", [_item("CARD", status, expiry)]) == "Accepted"
            elif where == "cache":
                a.remember(
                    "CARD", {"status": status, "expiryDate": expiry} if expiry else {"status": status}, ocpp.parse_time
                )
            got = a.decide("CARD", online, NOW)
            assert got == want, (online, where, status, expiry, pre, offline, unknown, got)
        # An expiry cannot be checked without the wall clock: it does not authorize.
        a, _ = _auth(d, LocalAuthorizeOffline="true")
        assert _send(a, 3, "Full", [_item("CARD", "Accepted", FUTURE)]) == "Accepted"
        assert a.decide("CARD", False, None) == ocpp_auth.REFUSE
        # The list goes before the cache.
        a.remember("CARD", {"status": "Blocked"}, ocpp.parse_time)
        assert a.decide("CARD", False, NOW) == ocpp_auth.ACCEPT

    _with_dir(t)


class _Clock:
    def wall_time(self):
        return NOW


def test_the_charge_point_answers_list_calls_and_authorizes_offline_from_its_list():
    def t(d):
        with open(d + "/ocpp_keys.json", "w") as f:
            f.write('{"LocalAuthorizeOffline": "true"}')
        cp = test_ocpp._cp(d)  # its link writes into a list
        cp._clock = _Clock()
        frame = [
            2,
            "s1",
            "SendLocalList",
            {"listVersion": 1, "updateType": "Full", "localAuthorizationList": [_item("LOCAL1", "Accepted")]},
        ]
        cp._incoming(json.dumps(frame))
        assert cp._ws.sent[-1] == [3, "s1", {"status": "Accepted"}]
        cp._incoming('[2, "s2", "GetLocalListVersion", {}]')
        assert cp._ws.sent[-1] == [3, "s2", {"listVersion": 1}]
        cp._incoming('[2, "s3", "ClearCache", {}]')
        assert cp._ws.sent[-1] == [3, "s3", {"status": "Accepted"}]
        assert cp._commands == []  # all answered in the link
        # Offline (never connected): the listed card is granted, an unknown one refused.
        assert cp.authorize("NOBODY")[0] is False
        assert cp.authorize("LOCAL1") == (True, None)
        assert cp._grant == "LOCAL1" and cp._calls == []  # no Authorize queued
        # Online: an Authorize answer goes into the cache.
        cp.connected = cp.accepted = True
        assert cp.authorize("CARD9") == (True, None) and cp._calls[-1] == ["Authorize", {"idTag": "CARD9"}]
        cp._answered(["u", "Authorize", "call", {"idTag": "CARD9"}, 0], {"idTagInfo": {"status": "Accepted"}})
        assert cp.auth.cache["CARD9"][0] == "Accepted"
        # and a StartTransaction answer too (the central system's latest word on the card).
        entry = [1, "StartTransaction", 5, {"connectorId": 1, "idTag": "CARD9", "meterStart": 0, "timestamp": "t"}]
        cp._answered(
            ["u", "StartTransaction", "tx", entry, 0], {"transactionId": 3, "idTagInfo": {"status": "Blocked"}}
        )
        assert cp.auth.cache["CARD9"][0] == "Blocked"
        cp.connected = False
        assert cp.authorize("CARD9")[0] is False

    _with_dir(t)


def test_heap_of_a_full_list_and_cache_is_printed():
    def t(d):
        a, _ = _auth(d)
        gc.collect()
        m0 = gc.mem_alloc()
        for base in (0, ocpp_auth.SEND_MAX):
            kind = "Full" if base == 0 else "Differential"
            items = [_item("TAG%017d" % (base + i), "Accepted", FUTURE) for i in range(ocpp_auth.SEND_MAX)]
            assert _send(a, base + 1, kind, items) == "Accepted"
            items = None
        for i in range(ocpp_auth.CACHE_MAX):
            a.remember("CACHE%015d" % i, {"status": "Accepted", "expiryDate": FUTURE}, ocpp.parse_time)
        gc.collect()
        used = gc.mem_alloc() - m0
        print(
            "heap of a full local list (%d entries) and cache (%d entries): %d bytes"
            % (ocpp_auth.LIST_MAX, ocpp_auth.CACHE_MAX, used)
        )
        assert len(a.tags) == ocpp_auth.LIST_MAX and used > 0

    _with_dir(t)
