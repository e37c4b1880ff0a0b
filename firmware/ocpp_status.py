"""The charger as OCPP sees it: connector status and error codes, and the
stop reasons of transactions (docs/ocpp.md, "Messages").

Owns: the mapping from the charger's state, faults and session end reasons
to OCPP's ChargePointStatus, ChargePointErrorCode and StopTransaction reason.
Never: changes the charger.
"""

# Our session end reasons -> OCPP StopTransaction reasons.
REASONS = {"ev_unplugged": "EVDisconnected", "ev_stopped": "EVDisconnected", "remote_stop": "Remote", "power_loss": "PowerLoss"}
# Our fault codes -> ChargePointErrorCode (anything else: OtherError with the code as vendorErrorCode).
ERRORS = {
    "rcd_trip": "GroundFailure",
    "rcd_selftest": "GroundFailure",
    "pe_open": "GroundFailure",
    "overcurrent": "OverCurrentFailure",
    "weld": "PowerSwitchFailure",
    "relay_fail": "PowerSwitchFailure",
    "ct_stuck": "PowerMeterFailure",
    "ct_clip": "PowerMeterFailure",
    "diode": "EVCommunicationError",
    "pilot_invalid": "EVCommunicationError",
    "cp_short": "EVCommunicationError",
    "overtemp": "HighTemperature",
}


CP_AVAILABLE = ("Available", "NoError", None)  # connector 0: the charger as a whole
CP_UNAVAILABLE = ("Unavailable", "NoError", None)


class ConnectorStatus:
    """Connector 1's status from the charger. Remembers one thing: a
    transaction ended with the car still plugged in (Finishing until it is
    unplugged)."""

    def __init__(self):
        self.finishing = False

    def of(self, ch, reserved=False):
        """(status, errorCode, info) of connector 1 from the charger;
        `reserved`: a reservation holds it (firmware/ocpp_reserve.py)."""
        if ch.fault is not None:
            return "Faulted", ERRORS.get(ch.fault, "OtherError"), ch.fault
        plugged = ch.state[0] != "A"
        if not plugged:
            self.finishing = False
        if ch.session_active:
            if ch.contactor_on:
                return "Charging", "NoError", None
            if ch.duty_pm == 0:
                return "SuspendedEVSE", "NoError", None
            return "SuspendedEV", "NoError", None
        if not ch.enabled or ch.inhibit:  # disabled, or the journal is full (no new session)
            return "Unavailable", "NoError", None
        if reserved:
            return "Reserved", "NoError", None
        if not plugged:
            return "Available", "NoError", None
        return ("Finishing" if self.finishing else "Preparing"), "NoError", None


def stop_reason(reason):
    """The StopTransaction reason of our session end `reason`."""
    return REASONS.get(reason or "", "Other")
