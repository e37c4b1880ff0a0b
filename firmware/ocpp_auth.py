"""OCPP 1.6J LocalAuthListManagement and the authorization cache: which card
may charge without asking the central system.

Owns: the local authorization list (SendLocalList Full/Differential,
GetLocalListVersion), the authorization cache (idTagInfo of Authorize,
StartTransaction and StopTransaction answers; ClearCache), both kept on flash
(replaced atomically) and bounded, and the decision for a presented card
(decide()) per LocalAuthorizeOffline, LocalPreAuthorize and
AllowOfflineTxForUnknownId.

Never: touches the charger or the network. The link thread changes the list
and the cache (file writes happen there, outside the lock); the loop only
reads them under the Ocpp lock (decide(): a dict lookup).
Entries: the list idTag -> (status, expiry), the cache idTag -> [status,
expiry, last use]; status one of STATUSES (shared strings), expiry in wall
minutes (UTC, a small int on the ESP32; rounded down, so an entry expires
up to a minute early) or None. parentIdTag is not kept (no group stops yet).
RAM: printed by tests/device/test_ocpp_auth.py for a full list and cache.
"""

import json

from micropython import const

from firmware import store

LIST_MAX = const(64)  # LocalAuthListMaxLength: entries on the board
SEND_MAX = const(32)  # SendLocalListMaxLength: entries in one SendLocalList (fits the 8 KB message limit)
CACHE_MAX = const(32)  # cache entries; the least recently used goes first
_FILE_MAX_BYTES = const(12288)  # a larger file is damaged: read as empty
LIST_FILE = "ocpp_list.json"
CACHE_FILE = "ocpp_cache.json"

STATUSES = ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx")  # idTagInfo status

# Decisions for a presented card.
ACCEPT = "accept"  # charge now, without an Authorize
REFUSE = "refuse"
ASK = "ask"  # online: send Authorize, the answer decides

# The configuration keys of this profile: name -> (default, writable, kind), as firmware/ocpp_keys.py KEYS.
KEYS = {
    "AllowOfflineTxForUnknownId": ("false", 1, "b"),
    "AuthorizationCacheEnabled": ("true", 1, "b"),
    "LocalAuthListEnabled": ("true", 1, "b"),
    "LocalAuthListMaxLength": (str(LIST_MAX), 0, "i"),
    "SendLocalListMaxLength": (str(SEND_MAX), 0, "i"),
}


def valid(entry, now):
    """An entry (status, expiry minute or None, ...) authorizes at wall second
    `now`: Accepted and not expired (an expiry with the clock unset counts as
    expired: it cannot be checked)."""
    if entry[0] != "Accepted":
        return False
    return entry[1] is None or now is not None and now // 60 < entry[1]


def _status(s):
    """The shared string of an idTagInfo status, or None."""
    for v in STATUSES:
        if v == s:
            return v
    return None


def _expiry(info, parse_time):
    """Expiry minute of an idTagInfo: None without expiryDate, 0 (long past)
    for one that cannot be read."""
    if "expiryDate" not in info:
        return None
    t = parse_time(info["expiryDate"])
    return 0 if t is None else t // 60


def _entries(raw, n_max):
    """Checked {tag: [status, expiry, ...]} from a file's dict, statuses
    shared; None when any entry is malformed."""
    if not isinstance(raw, dict) or len(raw) > n_max:
        return None
    for tag in raw:
        e = raw[tag]
        if not (isinstance(tag, str) and 0 < len(tag) <= 20 and isinstance(e, list) and len(e) >= 2):
            return None
        if _status(e[0]) is None or not (e[1] is None or isinstance(e[1], int)):
            return None
        e[0] = _status(e[0])
    return raw


class Auth:
    def __init__(self, data_dir, keys, lock):
        """keys: the Ocpp Keys (values by name); lock: the Ocpp lock."""
        self._keys = keys
        self._lock = lock
        self.list_path = data_dir + "/" + LIST_FILE
        self.cache_path = data_dir + "/" + CACHE_FILE
        self.notes = []  # what was wrong with the files at start
        self.flash_errors = 0
        self.version = 0
        self.tags = {}  # the local list: idTag -> (status, expiry minute or None)
        self.cache = {}  # idTag -> [status, expiry minute or None, last use]
        self._use = 0
        raw, note = store.load_json(self.list_path, _FILE_MAX_BYTES)
        if raw is not None:
            tags = _entries(raw.get("tags") if isinstance(raw, dict) else None, LIST_MAX)
            v = raw.get("version") if isinstance(raw, dict) else None
            if tags is None or not isinstance(v, int) or v < 0:
                note = self.list_path + " malformed: the local list starts empty"
            else:
                for tag in tags:
                    self.tags[tag] = (tags[tag][0], tags[tag][1])
                self.version = v
        if note:
            self.notes.append(note)
        raw, note = store.load_json(self.cache_path, _FILE_MAX_BYTES)
        if raw is not None:
            cache = _entries(raw, CACHE_MAX)
            if cache is None:
                note = self.cache_path + " malformed: the cache starts empty"
            else:
                for tag in cache:
                    e = cache[tag]
                    self.cache[tag] = [e[0], e[1], e[2] if len(e) > 2 and isinstance(e[2], int) else 0]
                    self._use = max(self._use, self.cache[tag][2])
        if note:
            self.notes.append(note)

    def _on(self, key):
        return self._keys.values[key] == "true"

    # ---- the loop -------------------------------------------------------------------
    def decide(self, tag, online, now):
        """ACCEPT, REFUSE or ASK for card `tag` presented at wall second `now`.
        The local list (when enabled) goes before the cache (when enabled).
        Online: a valid entry starts at once with LocalPreAuthorize, else the
        central system is asked. Offline: an entry that does not authorize
        (Blocked, Expired, Invalid, ConcurrentTx, past its expiry) refuses; a
        valid one accepts with LocalAuthorizeOffline; anything else is an
        unknown card, accepted only with AllowOfflineTxForUnknownId."""
        with self._lock:
            e = self.tags.get(tag) if self._on("LocalAuthListEnabled") else None
            if e is None and self._on("AuthorizationCacheEnabled"):
                e = self.cache.get(tag)
                if e is not None:
                    self._use += 1
                    e[2] = self._use
        ok = e is not None and valid(e, now)
        if online:
            return ACCEPT if ok and self._on("LocalPreAuthorize") else ASK
        if e is not None and not ok:
            return REFUSE
        if ok and self._on("LocalAuthorizeOffline"):
            return ACCEPT
        return ACCEPT if self._on("AllowOfflineTxForUnknownId") else REFUSE

    # ---- the link thread -------------------------------------------------------------
    def list_version(self):
        """GetLocalListVersion: -1 when the list is disabled, 0 when it is empty."""
        if not self._on("LocalAuthListEnabled"):
            return -1
        return self.version if self.tags else 0

    def send_local_list(self, p, parse_time):
        """SendLocalList (payload checked to its schema): its UpdateStatus.
        Full replaces the list, Differential adds/updates the entries with
        idTagInfo and removes those without; either way all or nothing."""
        if not self._on("LocalAuthListEnabled"):
            return "NotSupported"
        version = p["listVersion"]
        items = p.get("localAuthorizationList") or []
        full = p["updateType"] == "Full"
        if len(items) > SEND_MAX or version < 1:  # 0 and -1 mean "empty" and "disabled"
            return "Failed"
        if not full and version <= self.version:
            return "VersionMismatch"
        tags = {} if full else dict(self.tags)
        for item in items:
            info = item.get("idTagInfo")
            if info is None:
                if full:
                    return "Failed"  # a full list gives every entry its idTagInfo
                tags.pop(item["idTag"], None)
                continue
            expiry = _expiry(info, parse_time)
            if expiry == 0:
                return "Failed"  # an expiry that is no date
            tags[item["idTag"]] = (_status(info["status"]), expiry)
        if len(tags) > LIST_MAX:
            return "Failed"
        try:
            store.write(self.list_path, json.dumps({"version": version, "tags": tags}))
        except OSError:
            self.flash_errors += 1
            return "Failed"  # the old list stays, in RAM and on flash
        with self._lock:
            self.tags = tags
            self.version = version
        return "Accepted"

    def remember(self, tag, info, parse_time):
        """An idTagInfo from the central system (Authorize, StartTransaction,
        StopTransaction answers) into the cache, when enabled. Written to
        flash only when the entry changed."""
        if not isinstance(info, dict) or not isinstance(tag, str) or not self._on("AuthorizationCacheEnabled"):
            return
        status = _status(info.get("status"))
        if status is None:
            return
        expiry = _expiry(info, parse_time)  # unreadable: 0, expired, never authorizes
        with self._lock:
            old = self.cache.get(tag)
            if old is not None and old[0] is status and old[1] == expiry:
                return
            if old is None and len(self.cache) >= CACHE_MAX:
                oldest = None
                for t in self.cache:
                    if oldest is None or self.cache[t][2] < self.cache[oldest][2]:
                        oldest = t
                del self.cache[oldest]
            self._use += 1
            self.cache[tag] = [status, expiry, self._use]
            snapshot = dict(self.cache)
        self._write_cache(snapshot)

    def clear_cache(self):
        """ClearCache: "Accepted" when the cache is empty in RAM and on flash."""
        with self._lock:
            self.cache = {}
        return "Accepted" if self._write_cache({}) else "Rejected"

    def _write_cache(self, cache):
        try:
            store.write(self.cache_path, json.dumps(cache))
            return True
        except OSError:
            self.flash_errors += 1
            return False
