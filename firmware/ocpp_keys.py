"""The OCPP configuration keys: their defaults, which are writable, the
check of a new value, and the changed ones on flash.

Owns: KEYS (every key the charge point knows, with those of the other
profiles merged in: firmware/ocpp_auth.py, firmware/ocpp_smart.py) and
Keys, the values in force (`ocpp_keys.json`: only the changed ones, replaced
atomically through firmware/store.py; a damaged file gives the defaults).
Never: sends anything; the charge point (firmware/ocpp.py) answers
GetConfiguration/ChangeConfiguration with it.
"""

import json

from firmware import ocpp_auth, ocpp_reserve, ocpp_smart, store

KEYS_FILE = "ocpp_keys.json"

MEASURANDS = ("Energy.Active.Import.Register", "Current.Import", "Power.Active.Import", "Temperature")

# name: (default, writable, kind). kind "i" integer >= 0, "b" boolean, "m"
# comma-separated measurands, "s" string. Values go over the wire as strings.
KEYS = {
    "AuthorizeRemoteTxRequests": ("false", 0, "b"),
    "ClockAlignedDataInterval": ("0", 1, "i"),
    "ConnectionTimeOut": ("60", 1, "i"),
    "ConnectorPhaseRotation": ("NotApplicable", 1, "s"),
    "GetConfigurationMaxKeys": ("32", 0, "i"),
    "HeartbeatInterval": ("300", 1, "i"),
    "LocalAuthorizeOffline": ("false", 1, "b"),
    "LocalPreAuthorize": ("false", 1, "b"),
    "MeterValuesAlignedData": ("", 1, "m"),
    "MeterValuesSampledData": (",".join(MEASURANDS), 1, "m"),
    "MeterValuesSampledDataMaxLength": ("4", 0, "i"),
    "MeterValueSampleInterval": ("60", 1, "i"),
    "NumberOfConnectors": ("1", 0, "i"),
    "ResetRetries": ("1", 1, "i"),
    "StopTransactionOnEVSideDisconnect": ("true", 0, "b"),
    "StopTransactionOnInvalidId": ("false", 0, "b"),
    "StopTxnAlignedData": ("", 1, "m"),
    "StopTxnSampledData": ("", 1, "m"),
    "SupportedFeatureProfiles": ("Core,FirmwareManagement,LocalAuthListManagement,RemoteTrigger,SmartCharging,Reservation", 0, "s"),
    "TransactionMessageAttempts": ("3", 1, "i"),
    "TransactionMessageRetryInterval": ("60", 1, "i"),
    "UnlockConnectorOnEVSideDisconnect": ("false", 0, "b"),
    "WebSocketPingInterval": ("0", 1, "i"),
}
KEYS.update(ocpp_auth.KEYS)  # LocalAuthListManagement and the cache
KEYS.update(ocpp_smart.KEYS)  # SmartCharging's read-only keys
KEYS.update(ocpp_reserve.KEYS)  # Reservation's


def check_key_value(name, value):
    """The value to store for configuration key `name`, or None when it is
    not acceptable (wrong format, an unsupported measurand)."""
    kind = KEYS[name][2]
    if kind == "i":
        if not value.isdigit() or len(value) > 9:
            return None
        return str(int(value))
    if kind == "b":
        v = value.lower()
        return v if v in ("true", "false") else None
    if kind == "m":
        if not value:
            return ""
        parts = value.split(",")
        if len(parts) > 4:
            return None
        for p in parts:
            if p.strip() not in MEASURANDS:
                return None
        return ",".join(p.strip() for p in parts)
    return value


class Keys:
    """The OCPP configuration keys: defaults, and the changed ones on flash
    (`path`, replaced atomically)."""

    def __init__(self, path):
        self.path = path
        self.values = {}
        for k in KEYS:
            self.values[k] = KEYS[k][0]
        try:
            with open(path) as f:
                saved = json.loads(f.read())
            for k in saved:
                if k in KEYS and KEYS[k][1] and isinstance(saved[k], str):
                    v = check_key_value(k, saved[k])
                    if v is not None:
                        self.values[k] = v
        except (OSError, ValueError, TypeError):
            pass  # missing or damaged: the defaults

    def get_int(self, name):
        return int(self.values[name])

    def change(self, name, value):
        """ChangeConfiguration: "Accepted", "Rejected" or "NotSupported"."""
        if name not in KEYS:
            return "NotSupported"
        if not KEYS[name][1]:
            return "Rejected"
        v = check_key_value(name, value)
        if v is None:
            return "Rejected"
        self.values[name] = v
        changed = {}
        for k in KEYS:
            if self.values[k] != KEYS[k][0]:
                changed[k] = self.values[k]
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps(changed))
            store.replace(tmp, self.path)
        except OSError:
            return "Rejected"  # flash full or broken: the change would not survive a reset
        return "Accepted"

    def listing(self, names):
        """GetConfiguration.conf payload for `names` (None: all keys)."""
        known = []
        unknown = []
        for k in KEYS if names is None else names:
            if k in KEYS:
                known.append({"key": k, "readonly": not KEYS[k][1], "value": self.values[k]})
            elif k not in unknown:
                unknown.append(k)
        out = {"configurationKey": known}
        if unknown:
            out["unknownKey"] = unknown
        return out
