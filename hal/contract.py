"""The board contract: every method a board driver offers the firmware.

This module is documentation that runs: `Board` lists each method with its
units and what the board must guarantee; `hal/esp32.py` (real hardware) and
`sim/board.py` (the simulated board for the unix port) implement it. The
firmware (`firmware/`) talks to the board only through an object of this
shape and never imports `machine`, `socket` or `network` itself.

Rules every implementation keeps:
- All values are small ints (fit in 30 bits: an ESP32 boxes larger ints),
  in the unit the name says: `_mv` millivolts, `_ohm` ohms, `_dc` tenths of a
  degree Celsius, `_ms` milliseconds, `_pm` per mille (tenths of a percent).
- Methods called from the control tick allocate nothing: they return ints or
  bools, or fill a buffer the caller preallocated.
- `safe()` works in every state, never raises, and is idempotent: contactor
  open, pilot steady +12 V (state x1: "charging not allowed").
- Outputs stay as last commanded until commanded again (an ESP32 keeps its
  pins through a soft reset, which is why boot.py calls `safe()` first).
"""

# Pilot steady levels for pilot_steady().
PILOT_PLUS12 = 1  # x1: EVSE present, charging not allowed now (also the safe level)
PILOT_MINUS12 = -1  # state F: EVSE not available / fault

# contactor_feedback() and pe_ok() answers for a board without that input.
UNKNOWN = -1

# pp_ohm() when no resistor is seen (open circuit, or above the board's range).
PP_OPEN = -2

# pilot_read() for a half-period the burst could not see (no sample kept in
# it; e.g. the 40 us low half at 96 % duty): outside every IEC window, so a
# high level the board could not see reads as invalid (hal/pilotadc.py UNSEEN).
PILOT_UNSEEN = -30000

# temp_dc() when the board has no temperature sensor.
NO_TEMP = -32768

# NetIf.state() answers (the board's network interface, below).
LINK_DOWN = 0  # not started, or given up: call up() again (after a back-off)
LINK_CONNECTING = 1  # up() called: associating / link negotiation / DHCP
LINK_UP = 2  # link up with an IP address: sockets may be used
LINK_FAILED = 3  # the attempt failed (wrong password, no access point, no cable)

# NetIf.rssi_dbm() when there is no radio signal to report (Ethernet, not up).
NO_RSSI = -128


class Board:
    """Interface only: each method states its contract. Not instantiated."""

    # --- identity -----------------------------------------------------------
    name = "contract"
    # Number of current-sense channels (1 or 3; one per phase).
    adc_channels = 3
    # Samples per channel in one adc_burst(), and the per-channel sample rate.
    adc_burst_len = 64
    adc_rate_hz = 3200
    # Full-scale ADC code + 1 (4096 for a 12-bit ADC).
    adc_full_scale = 4096
    # True when the board has a phase-switch relay (1 or 3 phases to the EV).
    phase_relay = False
    # Where the firmware keeps its files (config, journal, counters).
    data_dir = "/data"
    # Every board also has `net`: network access for the MQTT link (the
    # hal/net.py module: tcp_connect(), tls_context(), and a wall-clock
    # ticks_ms()/ticks_diff()/sleep_ms() for the link thread), and `netif`:
    # its network interface (a NetIf, below: WiFi station, Ethernet, or the
    # host's network on the unix port).

    # --- clock: every firmware time goes through these ----------------------
    def ticks_ms(self):
        """Monotonic milliseconds. Wraps like time.ticks_ms(): the period is
        TICKS_PERIOD (2**30 on an ESP32). Compare only with ticks_diff()."""
        raise NotImplementedError

    def ticks_diff(self, a, b):
        """Signed a - b in ms, correct across one wrap of the period."""
        raise NotImplementedError

    def ticks_add(self, t, delta_ms):
        """t + delta_ms, wrapped into the period."""
        raise NotImplementedError

    def wait_tick(self, period_ms):
        """Block until period_ms after the previous wait_tick() returned (a
        fixed-rate loop; if the caller is late, return at once). On the
        simulated board this advances virtual time and the simulated world."""
        raise NotImplementedError

    def wall_time(self):
        """Seconds since 1970-01-01 UTC when the wall clock is set, else None."""
        raise NotImplementedError

    def set_wall_time(self, unix_s, ms=0):
        """Set the wall clock to unix_s seconds (+ ms milliseconds) since
        1970-01-01 UTC; wall_time() then counts on from it. Called from the
        network thread (NTP), never from the control tick."""
        raise NotImplementedError

    # --- control pilot -------------------------------------------------------
    def pilot_pwm(self, duty_pm):
        """Start (or change) the 1 kHz +-12 V PWM with duty in per mille
        (100 = 10 %). Accuracy +-5 us. State x2."""
        raise NotImplementedError

    def pilot_steady(self, level):
        """Stop the PWM and hold PILOT_PLUS12 (x1) or PILOT_MINUS12 (F)."""
        raise NotImplementedError

    def pilot_read(self, out):
        """Sample the pilot as the EV loads it. Fills out[0] with the high
        level and out[1] with the low level in mV. With PWM on, both are
        sampled in the matching half-period (classified by the PWM's phase,
        hal/pilotadc.py), each a median over the burst, and only once the
        front end has settled after an edge; a half-period the burst could
        not see (too short for a settled read, e.g. the low half at 96 %
        duty) reads PILOT_UNSEEN. With a steady pilot, out[1] = out[0].
        `out` is a preallocated array('i', 2)."""
        raise NotImplementedError

    def pp_ohm(self):
        """Resistance between proximity pilot and PE in ohms, PP_OPEN when
        none is seen, or UNKNOWN on a board without a PP input (tethered)."""
        raise NotImplementedError

    # --- contactor ------------------------------------------------------------
    def contactor(self, closed):
        """Command all contactor poles closed (True) or open (False)."""
        raise NotImplementedError

    def contactor_feedback(self):
        """Mirror contact: 1 when the main contacts are closed, 0 when open,
        UNKNOWN on a board without feedback. Contacts move some ms after the
        command (mechanical delay); a welded contactor stays at 1."""
        raise NotImplementedError

    # --- protection -------------------------------------------------------------
    def rcd_tripped(self):
        """True while the residual-current monitor (6 mA DC) reports a trip."""
        raise NotImplementedError

    def rcd_test(self, on):
        """Drive the RCD module's test input (True injects a test current,
        which a healthy module answers with a trip within ~100 ms)."""
        raise NotImplementedError

    def pe_ok(self):
        """Protective earth check: 1 present, 0 missing, UNKNOWN without one."""
        raise NotImplementedError

    def temp_dc(self):
        """Hottest temperature sensor in tenths of a degree C, or NO_TEMP."""
        raise NotImplementedError

    # --- current sense ------------------------------------------------------------
    def adc_burst(self, buf):
        """Fill buf (array('H'), adc_burst_len * adc_channels entries) with
        raw ADC codes, interleaved per frame: ch0, ch1, ch2, ch0, ... sampled
        at adc_rate_hz per channel. Returns nothing; allocates nothing."""
        raise NotImplementedError

    # Optional (firmware/meter.py uses it when a board has it):
    #
    # adc_burst_watched(buf, guard) -> frames
    #     adc_burst(), watching the pilot meanwhile: between frames the board
    #     reads the pilot (raw single reads, high or low phase of the PWM) and
    #     stops the burst early once guard[3] of those reads were suspect: above
    #     guard[0] mV, or strictly between guard[1] and guard[2] mV. Returns the
    #     frames filled (adc_burst_len when the burst completed). A 20 ms burst
    #     then never hides a pilot change from the charger for 20 ms. Allocates
    #     nothing. guard: array('i') of 4.

    def adc_ua_per_count(self, channel):
        """Nominal microamps of line current per ADC count for a channel, from
        the board description (CT ratio, burden, ADC reference). The firmware's
        per-channel calibration (firmware/meter.py) multiplies this."""
        raise NotImplementedError

    # --- energy management ----------------------------------------------------------
    def phase_switch(self, phases):
        """Move the phase-switch relay: phases 1 (L1 only) or 3. The firmware
        calls it only with the contactor open and the pilot steady for at
        least 10 s (firmware/charger.py switch_phases()). A board without a
        relay (phase_relay False) ignores it."""
        raise NotImplementedError

    def mains_read(self, out):
        """The house's grid current per phase from the board's own mains CTs:
        fills out[0..2] (a preallocated array('i', 3)) with mA, negative for
        export where the board can tell the direction. Returns False (and
        leaves out alone) on a board without mains CTs."""
        raise NotImplementedError

    # --- housekeeping ----------------------------------------------------------------
    def wdt_start(self, timeout_ms):
        """Start the hardware watchdog, or set a running one's timeout; a
        board resets when not fed in time."""
        raise NotImplementedError

    def wdt_feed(self):
        raise NotImplementedError

    def led(self, mode):
        """Status LED: 0 off, 1 on, 2 slow blink, 3 fast blink (fault)."""
        raise NotImplementedError

    def reset_cause(self):
        """Short text: 'power_on', 'watchdog', 'soft', 'hard', 'deepsleep'."""
        raise NotImplementedError

    def unique_id(self):
        """The chip's unique id as lowercase hex (an ESP32's factory MAC, 12
        digits), the same at every boot: the default device id derives from it."""
        raise NotImplementedError

    def safe(self):
        """Contactor open, RCD test off, pilot steady +12 V. Never raises."""
        raise NotImplementedError

    # --- firmware image: the OTA app partitions (firmware/update.py, docs/deploy.md) ---
    # Never called from the control tick; the contactor is open meanwhile.
    def ota_info(self):
        """None when the board has no OTA app partitions, else a dict:
        {"running": label, "next": label (where an update goes), "size": bytes
        of the next partition, "state": the running image's state: "valid",
        "pending" (booted once after ota_set_boot(): the next reset boots the
        previous image unless ota_mark_valid() is called first) or "unknown"
        (the board cannot tell; MicroPython on an ESP32 has no call for it)}."""
        raise NotImplementedError

    def ota_write(self, offset, buf):
        """Write buf at byte offset into the next partition. Each 4096-byte
        flash block is erased when a write reaches its start, so writes go in
        order (offset = the previous write's end). OSError on a flash error."""
        raise NotImplementedError

    def ota_read(self, offset, buf):
        """Fill buf (a bytearray or memoryview) from the next partition at offset."""
        raise NotImplementedError

    def ota_set_boot(self):
        """The next partition boots at the next reset, pending verify."""
        raise NotImplementedError

    def ota_mark_valid(self):
        """The running image is good: cancel the rollback. Free when it already is."""
        raise NotImplementedError

    def reset(self):
        """Hard reset (machine.reset() on a board): does not return there."""
        raise NotImplementedError


class NetIf:
    """The board's network interface (`board.netif`): interface only.

    Every method is called from the network thread (the MQTT link's thread,
    firmware/netup.py), never from the control tick. state() and rssi_dbm()
    are cheap (no allocation, no I/O wait) and may be polled often; up() may
    block for a driver's bring-up (a LAN8720's power-up settles for 100 ms,
    starting the WiFi driver takes a few hundred ms), never for the link
    itself: association, cable negotiation and DHCP go on in the background
    and state() reports them.
    """

    # "wifi" (station), "eth" (wired), or "host" (the unix port: the
    # computer's network, always up, nothing to bring up).
    kind = "host"

    def up(self, ssid, password):
        """Start bringing the interface up (ssid/password: WiFi only; an
        empty password joins an open network). Restarts an attempt already
        under way. Raises OSError when the hardware cannot be started."""
        raise NotImplementedError

    def down(self):
        """Disconnect and stop the interface. Never raises."""
        raise NotImplementedError

    def state(self):
        """LINK_DOWN, LINK_CONNECTING, LINK_UP or LINK_FAILED."""
        raise NotImplementedError

    def rssi_dbm(self):
        """Received signal strength of the access point in dBm (-100..0) while
        a WiFi link is up, else NO_RSSI."""
        raise NotImplementedError

    def ntp_start(self, host):
        """Send one SNTP request to host (UDP port 123). Returns at once after
        the DNS lookup (which may block this thread). Raises OSError."""
        raise NotImplementedError

    def ntp_poll(self):
        """The answer to the last ntp_start(): None while none has arrived,
        else (unix_s, ms) = the server's transmit time. Raises ValueError for
        a reply that is not a valid, synchronised server answer to our
        request (it is dropped), OSError for a socket error."""
        raise NotImplementedError
