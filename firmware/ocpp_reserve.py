"""OCPP 1.6 Reservation: ReserveNow and CancelReservation for the one
connector (docs/ocpp.md, "Reservation").

Owns: the reservation in force (its id, connector, expiry, idTag and
parentIdTag), the answer to ReserveNow and CancelReservation, which cards it
admits, and its copy on flash (RES_FILE, replaced atomically through
firmware/store.py when the reservation changed, read back at boot: a reboot
keeps the connector reserved; a damaged file is ignored with a note).
Never: touches the charger or the network itself; the charge point
(firmware/ocpp.py) holds the charger's `reserved` flag in step with
`active()`, refuses other cards, and calls save() when flash writes are
allowed (never while the contactor is closed: docs/architecture.md).
"""

import json

from micropython import const

from firmware import store
from firmware.ocpp_time import parse_time

# The configuration key of this profile: name -> (default, writable, kind), as firmware/ocpp_keys.py KEYS.
KEYS = {"ReserveConnectorZeroSupported": ("true", 0, "b")}
RES_FILE = "ocpp_res.json"  # {} or {"id", "connector", "expiry", "tag", "parent"}
_FILE_MAX_BYTES = const(256)  # two 20-character idTags and three numbers take ~110 bytes
_TAG_MAX = const(20)  # an idTag is a CiString20


def _tag(v, none_ok):
    return (v is None and none_ok) or (isinstance(v, str) and 0 < len(v) <= _TAG_MAX)


class Reservation:
    def __init__(self, path=None, wall=None):
        """path: the file on flash (None: RAM only); wall: the wall second
        at boot (None: the clock is not set yet), to drop an expired one."""
        self.id = None  # reservationId; None: no reservation
        self.connector = 0
        self.expiry = 0  # wall seconds (UTC)
        self.tag = None
        self.parent = None
        self.path = path
        self.dirty = False  # changed since the file was written
        self.flash_errors = 0  # writes that failed (flash full or broken): never raised into the loop
        self.note = None  # why the file on flash was not used (None: fine, or none there)
        if path is not None:
            self._load(wall)

    def _load(self, wall):
        saved, self.note = store.load_json(self.path, _FILE_MAX_BYTES)
        if saved is None or saved == {}:
            return
        if (
            not isinstance(saved, dict)
            or not isinstance(saved.get("id"), int)
            or saved.get("connector") not in (0, 1)
            or not isinstance(saved.get("expiry"), int)
            or not _tag(saved.get("tag"), False)
            or "parent" not in saved
            or not _tag(saved["parent"], True)
        ):
            self.note = "%s is damaged: no reservation restored" % self.path
            return
        self.id = saved["id"]
        self.connector = saved["connector"]
        self.expiry = saved["expiry"]
        self.tag = saved["tag"]
        self.parent = saved["parent"]
        if self.expired(wall):
            self.end()  # expired while the board was off

    def save(self):
        """Write the reservation in force (or none) to flash if it changed;
        False when the write failed (counted; not tried again until the
        next change)."""
        if not self.dirty or self.path is None:
            return True
        self.dirty = False
        if self.id is None:
            rec = {}
        else:
            rec = {"id": self.id, "connector": self.connector, "expiry": self.expiry, "tag": self.tag, "parent": self.parent}
        try:
            store.write(self.path, json.dumps(rec))
        except OSError:
            self.flash_errors += 1
            return False
        return True

    def active(self):
        return self.id is not None

    def reserve(self, p, ch, wall, zero_ok):
        """ReserveNow.req `p` (schema-checked) against charger `ch` at wall
        second `wall` (None: the clock is not set): the answer's status.
        The same reservationId replaces its reservation."""
        c = p["connectorId"]
        if c > 1 or (c == 0 and not zero_ok):
            return "Rejected"
        expiry = parse_time(p["expiryDate"])
        if expiry is None or wall is None or expiry <= wall:
            return "Rejected"  # not UTC, already past, or no clock to tell when it ends
        if ch.fault is not None:
            return "Faulted"
        if not ch.enabled or ch.inhibit:
            return "Unavailable"
        if self.id is not None and self.id != p["reservationId"]:
            return "Occupied"  # reserved for another reservation
        if ch.session_active or ch.state[0] != "A":
            return "Occupied"  # a car is plugged in, or a transaction runs
        self.id = p["reservationId"]
        self.connector = c
        self.expiry = expiry
        self.tag = p["idTag"]
        self.parent = p.get("parentIdTag")
        self.dirty = True
        return "Accepted"

    def cancel(self, reservation_id):
        """CancelReservation: the answer's status."""
        if self.id is None or self.id != reservation_id:
            return "Rejected"
        self.end()
        return "Accepted"

    def admits(self, tag, parent):
        """Card `tag` (with its parentIdTag `parent`, None when not known) may
        use the reserved connector."""
        return tag == self.tag or (self.parent is not None and parent == self.parent)

    def expired(self, wall):
        return self.id is not None and wall is not None and wall >= self.expiry

    def end(self):
        if self.id is not None:
            self.dirty = True
        self.id = None
        self.tag = None
        self.parent = None
