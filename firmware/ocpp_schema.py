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

# Field kinds: "s" + max length (CiString; None: any length), "i" integer
# (arg: its minimum or None), "n" number, "t" date-time string, "e"
# enumeration (arg: the allowed values), "o" object (arg: its rules), "p"
# array of objects (arg: their rules), "a" array of strings (arg: their
# maximum length). One rule: (name, required, kind, arg).
_AVAIL = ("Inoperative", "Operative")
_TRIGGERS = (
    "BootNotification",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "MeterValues",
    "StatusNotification",
)

# ChargingProfile (RemoteStartTransaction, SetChargingProfile).
_PERIOD = (("startPeriod", 1, "i", 0), ("limit", 1, "n", None), ("numberPhases", 0, "i", 1))
_SCHEDULE = (
    ("duration", 0, "i", 0),
    ("startSchedule", 0, "t", None),
    ("chargingRateUnit", 1, "e", ("A", "W")),
    ("chargingSchedulePeriod", 1, "p", _PERIOD),
    ("minChargingRate", 0, "n", None),
)
_PURPOSES = ("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile")
PROFILE = (
    ("chargingProfileId", 1, "i", None),
    ("transactionId", 0, "i", None),
    ("stackLevel", 1, "i", 0),
    ("chargingProfilePurpose", 1, "e", _PURPOSES),
    ("chargingProfileKind", 1, "e", ("Absolute", "Recurring", "Relative")),
    ("recurrencyKind", 0, "e", ("Daily", "Weekly")),
    ("validFrom", 0, "t", None),
    ("validTo", 0, "t", None),
    ("chargingSchedule", 1, "o", _SCHEDULE),
)

# SendLocalList's AuthorizationData.
_TAG_INFO = (
    ("expiryDate", 0, "t", None),
    ("parentIdTag", 0, "s", 20),
    ("status", 1, "e", ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx")),
)
_AUTH_DATA = (("idTag", 1, "s", 20), ("idTagInfo", 0, "o", _TAG_INFO))

CALLS = {
    "RemoteStartTransaction": (("connectorId", 0, "i", 1), ("idTag", 1, "s", 20), ("chargingProfile", 0, "o", PROFILE)),
    "RemoteStopTransaction": (("transactionId", 1, "i", None),),
    "Reset": (("type", 1, "e", ("Hard", "Soft")),),
    "ChangeAvailability": (("connectorId", 1, "i", 0), ("type", 1, "e", _AVAIL)),
    "GetConfiguration": (("key", 0, "a", 50),),
    "ChangeConfiguration": (("key", 1, "s", 50), ("value", 1, "s", 500)),
    "TriggerMessage": (("requestedMessage", 1, "e", _TRIGGERS), ("connectorId", 0, "i", 0)),
    "UnlockConnector": (("connectorId", 1, "i", 0),),
    "ClearCache": (),
    "SendLocalList": (("listVersion", 1, "i", None), ("localAuthorizationList", 0, "p", _AUTH_DATA), ("updateType", 1, "e", ("Differential", "Full"))),
    "GetLocalListVersion": (),
    "DataTransfer": (("vendorId", 1, "s", 255), ("messageId", 0, "s", 50), ("data", 0, "s", None)),
    "SetChargingProfile": (("connectorId", 1, "i", 0), ("csChargingProfiles", 1, "o", PROFILE)),
    "ClearChargingProfile": (("id", 0, "i", None), ("connectorId", 0, "i", 0), ("chargingProfilePurpose", 0, "e", _PURPOSES), ("stackLevel", 0, "i", 0)),
    "GetCompositeSchedule": (("connectorId", 1, "i", 0), ("duration", 1, "i", 0), ("chargingRateUnit", 0, "e", ("A", "W"))),
    "ReserveNow": (("connectorId", 1, "i", 0), ("expiryDate", 1, "t", None), ("idTag", 1, "s", 20), ("parentIdTag", 0, "s", 20), ("reservationId", 1, "i", None)),
    "CancelReservation": (("reservationId", 1, "i", None),),
    "UpdateFirmware": (("location", 1, "s", None), ("retries", 0, "i", None), ("retrieveDate", 1, "t", None), ("retryInterval", 0, "i", None)),
    "GetDiagnostics": (
        ("location", 1, "s", None), ("retries", 0, "i", None), ("retryInterval", 0, "i", None), ("startTime", 0, "t", None), ("stopTime", 0, "t", None),
    ),  # fmt: skip
}

# OCPP 1.6 actions a central system may send that this charge point does not
# offer yet: NotSupported ("recognised but not supported"); anything else is
# NotImplemented.
KNOWN = (
    # the 1.6 security extension's
    "CertificateSigned",
    "DeleteCertificate",
    "ExtendedTriggerMessage",
    "GetInstalledCertificateIds",
    "GetLog",
    "InstallCertificate",
    "SignedUpdateFirmware",
)

FORMATION = "FormationViolation"
OCCURENCE = "OccurenceConstraintViolation"
TYPE = "TypeConstraintViolation"
PROPERTY = "PropertyConstraintViolation"
NOT_IMPLEMENTED = "NotImplemented"
NOT_SUPPORTED = "NotSupported"


def check(action, payload):
    """None when `payload` of CALL `action` follows its schema, else
    (error code, description)."""
    rules = CALLS.get(action)
    if rules is None:
        if action in KNOWN:
            return NOT_SUPPORTED, action + " is not supported"
        return NOT_IMPLEMENTED, "unknown action"
    return check_object(payload, rules)


def check_object(obj, rules):
    """None when `obj` follows `rules`, else (error code, description)."""
    if not isinstance(obj, dict):
        return FORMATION, "payload must be an object"
    n = 0
    for name, required, kind, arg in rules:
        if name not in obj:
            if required:
                return OCCURENCE, name + " is required"
            continue
        n += 1
        v = obj[name]
        if kind == "s" or kind == "t":
            if not isinstance(v, str):
                return TYPE, name + " must be a string"
            if arg is not None and len(v) > arg:
                return TYPE, "%s longer than %d" % (name, arg)
            if kind == "t" and (len(v) < 19 or v[4] != "-" or v[10] != "T"):
                return PROPERTY, name + " must be a date-time"
        elif kind == "i" or kind == "n":
            if v is True or v is False or not (isinstance(v, int) or kind == "n" and isinstance(v, float)):
                return TYPE, name + (" must be an integer" if kind == "i" else " must be a number")
            if arg is not None and v < arg:
                return PROPERTY, "%s below %d" % (name, arg)
        elif kind == "e":
            if not isinstance(v, str):
                return TYPE, name + " must be a string"
            if v not in arg:
                return PROPERTY, name + " not an allowed value"
        elif kind == "o" or kind == "p":  # an object, or an array of them
            if not isinstance(v, dict if kind == "o" else list):
                return TYPE, name + (" must be an object" if kind == "o" else " must be an array")
            for item in (v,) if kind == "o" else v:
                if not isinstance(item, dict):
                    return TYPE, name + " must hold objects"
                err = check_object(item, arg)
                if err is not None:
                    return err
        elif kind == "a":
            if not isinstance(v, list):
                return TYPE, name + " must be an array"
            for item in v:
                if not isinstance(item, str):
                    return TYPE, name + " must hold strings"
                if len(item) > arg:
                    return TYPE, "%s entry longer than %d" % (name, arg)
    if n != len(obj):
        return FORMATION, "unknown property"
    return None
