"""OCPP 1.6 Reservation: ReserveNow and CancelReservation for the one
connector (docs/ocpp.md, "Reservation").

Owns: the reservation in force (its id, connector, expiry, idTag and
parentIdTag), the answer to ReserveNow and CancelReservation, and which
cards it admits. Never: touches the charger or the network itself; the
charge point (firmware/ocpp.py) holds the charger's `reserved` flag in step
with `active()` and refuses other cards. Kept in RAM only: a reboot ends it.
"""

from firmware.ocpp_time import parse_time

# The configuration key of this profile: name -> (default, writable, kind), as firmware/ocpp_keys.py KEYS.
KEYS = {"ReserveConnectorZeroSupported": ("true", 0, "b")}


class Reservation:
    def __init__(self):
        self.id = None  # reservationId; None: no reservation
        self.connector = 0
        self.expiry = 0  # wall seconds (UTC)
        self.tag = None
        self.parent = None

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
        self.id = None
        self.tag = None
        self.parent = None
