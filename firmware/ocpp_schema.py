"""Checks of incoming OCPP 1.6J CALLs against the rules of the OCPP 1.6 JSON
schemas (edition 2 with errata): required fields, types, enumerations,
string lengths, no unknown properties.

Owns: the table of the CALLs a charge point receives and the error code
each kind of violation gets. Never touches the charger: a CALL that does not
check is answered with a CALLERROR by the link and goes no further.

Errors (OCPP-J 1.6 section 4.2.3): a payload that is not an object or has a
property the schema does not know -> FormationViolation; a required field
missing -> OccurenceConstraintViolation (the 1.6 spelling); a wrong type or a
string over its maxLength -> TypeConstraintViolation (the CiStringNType is
the data type, as the `ocpp` package's central system maps it); a value
outside its enumeration or range -> PropertyConstraintViolation.
"""

# Field kinds: "s" + max length (CiString), "i" integer, "e" enumeration
# (the allowed values follow), "o" object (not checked further here), "b"
# boolean, "t" date-time string, "a" array of strings of the given length.
# One rule: (name, required, kind, arg).
_AVAIL = ("Inoperative", "Operative")
_TRIGGERS = (
    "BootNotification",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "MeterValues",
    "StatusNotification",
)

CALLS = {
    "RemoteStartTransaction": (("connectorId", 0, "i", 1), ("idTag", 1, "s", 20), ("chargingProfile", 0, "o", None)),
    "RemoteStopTransaction": (("transactionId", 1, "i", None),),
    "Reset": (("type", 1, "e", ("Hard", "Soft")),),
    "ChangeAvailability": (("connectorId", 1, "i", 0), ("type", 1, "e", _AVAIL)),
    "GetConfiguration": (("key", 0, "a", 50),),
    "ChangeConfiguration": (("key", 1, "s", 50), ("value", 1, "s", 500)),
    "TriggerMessage": (("requestedMessage", 1, "e", _TRIGGERS), ("connectorId", 0, "i", 0)),
    "UnlockConnector": (("connectorId", 1, "i", 0),),
    "ClearCache": (),
    "DataTransfer": (("vendorId", 1, "s", 255), ("messageId", 0, "s", 50), ("data", 0, "s", None)),
}

# OCPP 1.6 actions a central system may send that this charge point does not
# offer yet: NotSupported ("recognised but not supported"); anything else is
# NotImplemented.
KNOWN = (
    "CancelReservation",
    "ClearChargingProfile",
    "GetCompositeSchedule",
    "GetDiagnostics",
    "GetLocalListVersion",
    "ReserveNow",
    "SendLocalList",
    "SetChargingProfile",
    "UpdateFirmware",
)

FORMATION = "FormationViolation"
OCCURENCE = "OccurenceConstraintViolation"
TYPE = "TypeConstraintViolation"
PROPERTY = "PropertyConstraintViolation"
NOT_IMPLEMENTED = "NotImplemented"
NOT_SUPPORTED = "NotSupported"


def _is_int(v):
    return isinstance(v, int) and v is not True and v is not False


def check(action, payload):
    """None when `payload` of CALL `action` follows its schema, else
    (error code, description)."""
    rules = CALLS.get(action)
    if rules is None:
        if action in KNOWN:
            return NOT_SUPPORTED, action + " is not supported"
        return NOT_IMPLEMENTED, "unknown action"
    if not isinstance(payload, dict):
        return FORMATION, "payload must be an object"
    n = 0
    for name, required, kind, arg in rules:
        if name not in payload:
            if required:
                return OCCURENCE, name + " is required"
            continue
        n += 1
        v = payload[name]
        if kind == "s":
            if not isinstance(v, str):
                return TYPE, name + " must be a string"
            if arg is not None and len(v) > arg:
                return TYPE, "%s longer than %d" % (name, arg)
        elif kind == "i":
            if not _is_int(v):
                return TYPE, name + " must be an integer"
            if arg is not None and v < arg:
                return PROPERTY, "%s below %d" % (name, arg)
        elif kind == "e":
            if not isinstance(v, str):
                return TYPE, name + " must be a string"
            if v not in arg:
                return PROPERTY, name + " not an allowed value"
        elif kind == "o":
            if not isinstance(v, dict):
                return TYPE, name + " must be an object"
        elif kind == "a":
            if not isinstance(v, list):
                return TYPE, name + " must be an array"
            for s in v:
                if not isinstance(s, str):
                    return TYPE, name + " must hold strings"
                if len(s) > arg:
                    return TYPE, "%s entry longer than %d" % (name, arg)
    if n != len(payload):
        return FORMATION, "unknown property"
    return None
