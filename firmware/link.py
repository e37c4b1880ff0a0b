"""The MQTT link: umqtt.simple in its own thread, small locked queues to the loop.

Owns: the broker connection (connect with timeouts, TLS, keepalive pings,
dead-broker detection, reconnect with jittered exponential back-off), the
topics under `<prefix>/<id>/`, Home Assistant discovery after each connect,
and the queues between the control loop and this thread.

Never: delays the control tick. Every method the loop calls takes one lock
for a few list operations and returns; all network I/O (DNS, TCP connect,
TLS handshake, QoS 1 publish waiting for PUBACK) happens in the link thread.
The unix port has no GIL, so every field both threads touch is read and
written under `_lock`, and the lock is never held across I/O.

Sockets come from the board's `net` object (hal/net.py: TCP connect with a
timeout and TCP_NODELAY, TLS contexts, wall-clock sleeps, the thread's stack
size): the link hands the connected socket to umqtt.simple. `_Client` replaces
two of umqtt's methods, the same way for 1.3.4 and 1.8.0: connect() (1.3.4 has
no timeout and its TLS path imports `ussl`) and wait_msg() (umqtt's calls
setblocking(True), which on an ESP32 clears the socket's timeout, and reads a
whole PUBLISH into RAM however large). publish, subscribe, ping and disconnect
are umqtt.simple's own.

Topics (see docs/mqtt.md): status (retained), event, session, ack, online
(retained `1`, last will `0`), set/<name> (subscribed), and discovery under
`homeassistant/`.
"""

import _thread
import json
import os
import select
import sys

from micropython import const
from umqtt.simple import MQTTClient, MQTTException

import firmware
from firmware import commands
from firmware.backoff import BACKOFF_MAX_MS, BACKOFF_MIN_MS, Backoff, seed_for  # noqa: F401 (link.Backoff)
from firmware.linkthread import STABLE_MS, LinkThread  # noqa: F401 (link.STABLE_MS)

# Socket timeout for connect, CONNACK, SUBACK and PUBACK waits: at most this,
# at most half the keepalive, at least IO_TIMEOUT_MIN_MS.
IO_TIMEOUT_MAX_MS = const(10000)
IO_TIMEOUT_MIN_MS = const(500)
# Status: published when it changed (at most once per STATUS_MIN_MS) and at
# least every STATUS_MAX_MS even when unchanged.
STATUS_MIN_MS = const(1000)
STATUS_MAX_MS = const(60000)
# How long the thread waits for broker traffic before it looks at its queues
# again: the latency of a posted event when the link is idle.
IDLE_POLL_MS = const(20)
# Queue sizes (entries). Events drop the oldest when full (counted); sessions
# are refused when full (the journal keeps them and re-posts). Every command
# read from the broker gets exactly one ack: the link stops reading while
# COMMANDS_MAX commands and acks are in flight (TCP back-pressure). A QoS 1
# publish still reads whatever the broker sends while it waits for its PUBACK
# (umqtt.simple): commands that arrive then are answered "busy" from the ack
# queue; only a flood beyond ACKS_MAX unanswered commands is dropped (counted
# in stats["commands_dropped"] and stats["dropped"]).
OUT_MAX = const(16)
SESSIONS_MAX = const(8)
COMMANDS_MAX = const(8)
ACKS_MAX = const(64)
ACKED_MAX = const(16)
COMMAND_NAME_MAX = const(32)
THREAD_STACK_BYTES = const(16384)  # when the board's net does not say (TLS needs more than the default)
# Incoming PUBLISH packets: topics up to _TOPIC_MAX and payloads up to
# _PAYLOAD_MAX bytes are held; larger ones are read through a small buffer and
# thrown away (a command is at most commands.PAYLOAD_MAX bytes).
_TOPIC_MAX = const(128)
_PAYLOAD_MAX = const(128)
_SKIP_CHUNK = const(64)


def _discovery():
    """firmware.discovery, loaded only while the configs are published: as
    .mpy it holds ~14 KB of heap (unix port), ~3 KB of which stay after it is
    unloaded (interned names). Frozen, it costs no heap either way."""
    from firmware import discovery

    return discovery


def _unload_discovery():
    sys.modules.pop("firmware.discovery", None)
    try:
        delattr(firmware, "discovery")
    except AttributeError:
        pass


class _Ring:
    """Bounded FIFO in a preallocated list. Not locked: the Link holds its lock.
    `head_id` counts every removal, so a reader can tell whether the entry it
    peeked is still at the head after it let go of the lock."""

    def __init__(self, size):
        self._buf = [None] * size
        self._head = 0
        self.n = 0
        self.head_id = 0

    def push(self, item):
        """Append; when full drop the oldest. Returns True when one was dropped."""
        size = len(self._buf)
        dropped = self.n == size
        if dropped:
            self.pop()
        self._buf[(self._head + self.n) % size] = item
        self.n += 1
        return dropped

    def peek(self):
        return self._buf[self._head] if self.n else None

    def pop(self):
        if not self.n:
            return None
        item = self._buf[self._head]
        self._buf[self._head] = None
        self._head = (self._head + 1) % len(self._buf)
        self.n -= 1
        self.head_id += 1
        return item


class _Client(MQTTClient):
    """umqtt.simple with our own connect() (the socket is created, connected
    and optionally TLS-wrapped here, with a timeout on every step) and our own
    wait_msg() (the socket keeps that timeout, oversized messages are skipped,
    one publish/subscribe wait is bounded in time)."""

    net = None  # the board's hal/net.py, set by the Link
    clock = None  # the Link's clock (ticks_ms/ticks_diff); else the net's
    busy_since = None  # ticks_ms when a publish/subscribe began waiting for its ack
    limit_ms = 10000  # how long such a wait, or one incoming packet, may take
    _junk = None  # the buffer oversized payloads are read into and dropped

    def wait_msg(self):
        """Read one packet. A PUBLISH goes to the callback as (topic, payload,
        retained); payload None when it was larger than _PAYLOAD_MAX (read and
        discarded), topic None when the topic was. PINGRESP gives None; any
        other packet gives its first byte and the caller reads the rest
        (umqtt's publish and subscribe do, for PUBACK and SUBACK).

        Never calls setblocking(): every read keeps the socket's timeout (an
        ESP32 socket has none after setblocking(True), and a broker that went
        silent would hold the link forever). Raises OSError when a publish or
        subscribe has waited longer than limit_ms for its ack, however many
        other messages arrive meanwhile."""
        clock = self.clock
        t0 = clock.ticks_ms()
        if self.busy_since is not None and clock.ticks_diff(t0, self.busy_since) > self.limit_ms:
            raise OSError(110)  # ETIMEDOUT: no PUBACK/SUBACK in time
        sock = self.sock
        res = sock.read(1)
        if res is None:
            return None
        if not res:
            raise OSError(-1)  # the broker closed the connection
        op = res[0]
        if op == 0xD0:  # PINGRESP
            if sock.read(1) != b"\x00":
                raise OSError(-6)
            return None
        if op & 0xF0 != 0x30:
            return op
        size = self._recv_len()
        if size > 0x0FFFFFFF:
            raise OSError(-6)
        n = sock.read(2)
        if len(n) != 2:
            raise OSError(-1)
        tlen = n[0] << 8 | n[1]
        qos = (op >> 1) & 3
        size -= tlen + 2 + (2 if qos else 0)
        if size < 0 or qos == 3:
            raise OSError(-6)  # malformed
        topic = self._take(tlen, _TOPIC_MAX, t0)
        pid = sock.read(2) if qos else None
        msg = self._take(size, _PAYLOAD_MAX, t0)
        self.cb(topic, msg, op & 1)
        if qos == 1:
            sock.write(b"\x40\x02" + pid)
        elif qos == 2:
            raise OSError(-6)  # we subscribe with QoS 0: a broker never sends QoS 2
        return None

    def _take(self, n, most, t0):
        """n bytes from the socket; None (the bytes read and dropped through a
        small buffer) when n > most. The whole packet must arrive within
        limit_ms, however slowly a broker trickles it."""
        sock = self.sock
        if n <= most:
            data = sock.read(n) if n else b""
            if len(data) != n:
                raise OSError(-1)
            return data
        if self._junk is None:
            self._junk = bytearray(_SKIP_CHUNK)
        clock = self.clock
        while n:
            if clock.ticks_diff(clock.ticks_ms(), t0) > self.limit_ms:
                raise OSError(110)
            k = sock.readinto(self._junk, min(n, _SKIP_CHUNK))
            if not k:
                raise OSError(-1)
            n -= k
        return None

    def connect(self, clean_session=True, timeout=None, ssl_ctx=None):
        timeout_s = timeout if timeout is not None else IO_TIMEOUT_MAX_MS / 1000
        if self.clock is None:
            self.clock = self.net  # the board's net has a wall clock too
        raw = self.net.tcp_connect(self.server, self.port, timeout_s)
        self.sock = raw
        if ssl_ctx is not None:
            self.sock = ssl_ctx.wrap_socket(raw, server_hostname=self.server)
        self.sock.write(self._connect_packet(clean_session))
        resp = self.sock.read(4)
        if not resp or len(resp) != 4 or resp[0] != 0x20 or resp[1] != 0x02:
            raise OSError(-2)  # not a CONNACK (or the broker closed)
        if resp[3] != 0:
            raise MQTTException(resp[3])  # 4: bad user/password, 5: not authorised
        return resp[2] & 1

    def _connect_packet(self, clean_session):
        """CONNECT (MQTT 3.1.1) as one buffer: one write, one TCP segment."""
        fields = [self.client_id]
        flags = 0x02 if clean_session else 0
        if self.lw_topic:
            fields.append(self.lw_topic)
            fields.append(self.lw_msg)
            flags |= 0x04 | (self.lw_qos & 3) << 3 | (0x20 if self.lw_retain else 0)
        if self.user is not None:
            fields.append(self.user)
            fields.append(self.pswd)
            flags |= 0xC0
        body = bytearray(b"\x00\x04MQTT\x04")
        body.append(flags)
        body.append((self.keepalive >> 8) & 0xFF)
        body.append(self.keepalive & 0xFF)
        for f in fields:
            if isinstance(f, str):
                f = f.encode()
            body.append(len(f) >> 8)
            body.append(len(f) & 0xFF)
            body.extend(f)
        pkt = bytearray(b"\x10")
        n = len(body)
        while True:
            if n > 0x7F:
                pkt.append((n & 0x7F) | 0x80)
                n >>= 7
            else:
                pkt.append(n)
                break
        pkt.extend(body)
        return pkt


class Link(LinkThread):
    """The MQTT link; its thread's reconnect loop is firmware/linkthread.py's."""

    def __init__(self, cfg, clock, net, device_info=None):
        """clock: ticks_ms/ticks_diff in wall time (a board's `net` will do);
        net: the board's network access (hal/net.py); device_info: extra
        fields of Home Assistant's device block (serial_number, hw_version)."""
        self._clock = clock
        self._ticks = clock  # the thread's (firmware/linkthread.py)
        self._net = net
        self._cfg = cfg
        self._device_info = device_info
        dev_id = cfg["id"]
        base = "%s/%s/" % (cfg.get("mqtt_prefix") or "evse", dev_id)
        self.topic_base = base
        self._t_status = (base + "status").encode()
        self._t_event = (base + "event").encode()
        self._t_session = (base + "session").encode()
        self._t_ack = (base + "ack").encode()
        self._t_online = (base + "online").encode()
        self._t_set = (base + "set/").encode()
        self._t_mains = (base + "mains").encode()  # the house's grid current (docs/energy.md)
        self._t_ha = (_discovery().DISCOVERY_PREFIX + "/status").encode()
        _unload_discovery()
        self._keepalive_s = int(cfg.get("mqtt_keepalive_s") or 60)
        ka_ms = self._keepalive_s * 1000
        self._io_timeout_ms = max(IO_TIMEOUT_MIN_MS, min(IO_TIMEOUT_MAX_MS, ka_ms // 2))
        self.backoff = Backoff(seed_for(dev_id, int.from_bytes(os.urandom(4), "little")))

        self._lock = _thread.allocate_lock()
        # --- shared with the loop: only under _lock --------------------------
        self._out = _Ring(OUT_MAX)  # event payloads, QoS 1
        self._acks = _Ring(ACKS_MAX)  # (cmd, ok, error, note), QoS 1
        self._sessions = []  # [session_id, payload] until PUBACK, in order
        self._acked = _Ring(ACKED_MAX)
        self._commands = _Ring(COMMANDS_MAX)
        self._status = None
        self._mains = None  # the latest mains reading not yet taken (newest wins)
        self._stop_req = False
        # Set by the control loop while the contactor is closed: a TLS link does
        # not (re)connect then (firmware/linkthread.py); a plain one does.
        self.hold_tls = False
        # --- written by the thread, read by anyone (single-word writes) -------
        self.connected = False
        self.running = False
        self.stats = {
            "connects": 0,
            "reconnects": 0,  # connections lost or attempts failed
            "published": 0,
            "dropped": 0,  # events/acks dropped because the queue was full
            "commands_dropped": 0,
            "sessions_refused": 0,
            "mains_ignored": 0,  # retained or oversized mains readings
            "last_error": None,
            "last_backoff_ms": 0,
            "last_connect_ms": 0,  # how long the last successful connect took
        }
        # --- thread-only state -------------------------------------------------
        self._client = None
        self._poller = None
        self.netup = None  # firmware/netup.NetUp: polled by this thread; no broker while the network is down
        self._status_sent = None
        self._status_t = 0
        self._last_rx = 0
        self._last_ping = 0
        self._rediscover = False  # Home Assistant announced itself: send discovery again

    # ---- the loop's side: all non-blocking ---------------------------------------
    def start(self):
        self.start_thread(getattr(self._net, "LINK_STACK_BYTES", THREAD_STACK_BYTES))

    def post_status(self, payload):
        with self._lock:
            self._status = payload

    def post_event(self, payload):
        with self._lock:
            if self._out.push(payload):
                self.stats["dropped"] += 1

    def post_ack(self, cmd, ok, error, note=None):
        with self._lock:
            if self._acks.push((cmd, bool(ok), error, note)):
                self.stats["dropped"] += 1

    def post_session(self, session_id, payload):
        """Queue a closed session for QoS 1 delivery. False when the queue is
        full (post it again later: the journal still holds it). Posting an id
        already queued changes nothing, so a re-post cannot duplicate."""
        with self._lock:
            for entry in self._sessions:
                if entry[0] == session_id:
                    return True
            if len(self._sessions) >= SESSIONS_MAX:
                self.stats["sessions_refused"] += 1
                return False
            self._sessions.append([session_id, payload])
            return True

    def poll_acked(self):
        if not self._acked.n:  # one word read: no lock needed to see "empty"
            return None
        with self._lock:
            return self._acked.pop()

    def poll_mains(self):
        """The latest mains reading (payload bytes) since the last call, or None."""
        if self._mains is None:
            return None
        with self._lock:
            m = self._mains
            self._mains = None
            return m

    def poll_command(self):
        if not self._commands.n:
            return None
        with self._lock:
            return self._commands.pop()

    def pending_sessions(self):
        with self._lock:
            return len(self._sessions)

    # ---- the thread (its loop: firmware/linkthread.py) -----------------------------------
    def _tls(self):
        return bool(self._cfg.get("mqtt_tls"))

    def _connect(self):
        cfg = self._cfg
        t0 = self._clock.ticks_ms()
        user = cfg.get("mqtt_user") or None
        c = _Client(
            cfg["id"],
            cfg["mqtt_host"],
            port=int(cfg.get("mqtt_port") or 1883),
            user=user,
            password=(cfg.get("mqtt_password") or "") if user else None,
            keepalive=self._keepalive_s,
        )
        c.net = self._net
        c.clock = self._clock
        c.limit_ms = self._io_timeout_ms
        c.set_callback(self._on_message)
        c.set_last_will(self._t_online, b"0", retain=True, qos=1)
        self._client = c
        ctx = self._net.tls_context(cfg.get("mqtt_ca")) if cfg.get("mqtt_tls") else None
        c.connect(timeout=self._io_timeout_ms / 1000, ssl_ctx=ctx)
        c.publish(self._t_online, b"1", retain=True)
        self._acked_call(c.subscribe, self._t_set + b"+")
        self._acked_call(c.subscribe, self._t_ha)
        self._acked_call(c.subscribe, self._t_mains)  # any mode: the mode command may change it
        self._publish_discovery(c)
        self._poller = select.poll()
        self._poller.register(c.sock, select.POLLIN)
        now = self._clock.ticks_ms()
        self._last_rx = now
        self._last_ping = now
        self._status_sent = None  # publish the status at once
        self.stats["connects"] += 1
        self.stats["last_connect_ms"] = self._clock.ticks_diff(now, t0)
        self.connected = True

    def _drop(self, err):
        self.connected = False
        self.stats["reconnects"] += 1
        self.stats["last_error"] = repr(err)
        c = self._client
        self._client = None
        self._poller = None
        if c is not None and c.sock is not None:
            try:
                c.sock.close()
            except Exception:  # noqa: BLE001 - already broken
                pass

    def _acked_call(self, fn, *args):
        """A publish (QoS 1) or subscribe: umqtt waits for its PUBACK/SUBACK;
        our wait_msg() gives up when that takes longer than the I/O timeout."""
        c = self._client
        c.busy_since = self._clock.ticks_ms()
        try:
            fn(*args)
        finally:
            c.busy_since = None

    def _publish_discovery(self, c):
        self._rediscover = False
        try:
            for topic, payload in _discovery().configs(self._cfg, self.topic_base, self._device_info):
                c.publish(topic, payload, retain=True)
        finally:
            _unload_discovery()

    def _service(self):
        """One round: read what the broker sent, keep the link alive, send."""
        c = self._client
        with self._lock:
            backlog = self._commands.n + self._acks.n >= COMMANDS_MAX
        # With the command queue full, leave further messages in the socket
        # until the loop has taken some (TCP back-pressure instead of drops).
        for _obj, ev in () if backlog else self._poller.ipoll(IDLE_POLL_MS):
            if ev & (select.POLLHUP | select.POLLERR):
                raise OSError(-3)  # broker closed or socket error
            self._last_rx = self._clock.ticks_ms()
            if c.wait_msg() is not None:  # a packet umqtt does not consume outside publish()
                raise OSError(-4)
        if backlog:
            self._net.sleep_ms(IDLE_POLL_MS)
        now = self._clock.ticks_ms()
        if self._rediscover:
            self._publish_discovery(c)
        ka_ms = self._keepalive_s * 1000
        if not backlog and self._clock.ticks_diff(now, self._last_rx) > ka_ms:
            raise OSError(-5)  # nothing (not even PINGRESP) for a whole keepalive
        if self._clock.ticks_diff(now, self._last_ping) >= ka_ms // 2:
            c.ping()
            self._last_ping = now
        self._send_sessions(c)
        self._send_out(c)
        self._send_status(c, now)

    def _send_sessions(self, c):
        while not self._stop_req:
            with self._lock:
                entry = self._sessions[0] if self._sessions else None
            if entry is None:
                return
            self._acked_call(c.publish, self._t_session, entry[1], False, 1)  # returns after PUBACK
            self.stats["published"] += 1
            with self._lock:
                if self._sessions and self._sessions[0] is entry:
                    self._sessions.pop(0)
                self._acked.push(entry[0])

    def _send_out(self, c):
        """Acks first (a client waits for them), then events."""
        for ring, topic in ((self._acks, self._t_ack), (self._out, self._t_event)):
            while not self._stop_req:
                with self._lock:
                    item = ring.peek()
                    hid = ring.head_id
                if item is None:
                    break
                payload = item
                if ring is self._acks:
                    cmd, ok, error, note = item
                    ack = {"cmd": cmd, "ok": ok, "error": error}
                    if note is not None:  # how an accepted command was applied (a pause)
                        ack["note"] = note
                    # bytes: umqtt sizes a str payload by characters, and a command
                    # name with non-ASCII characters would corrupt the packet
                    payload = json.dumps(ack).encode()
                self._acked_call(c.publish, topic, payload, False, 1)
                self.stats["published"] += 1
                with self._lock:
                    if ring.head_id == hid:  # not dropped meanwhile
                        ring.pop()

    def _send_status(self, c, now):
        with self._lock:
            status = self._status
        if status is None:
            return
        age = self._clock.ticks_diff(now, self._status_t)
        if self._status_sent is None or (status != self._status_sent and age >= STATUS_MIN_MS) or age >= STATUS_MAX_MS:
            c.publish(self._t_status, status, retain=True)
            self._status_sent = status
            self._status_t = now
            self.stats["published"] += 1

    def _on_message(self, topic, msg, retained):
        """_Client.wait_msg callback (link thread): queue set/<name> commands
        for the loop; note Home Assistant's birth message. msg is None for a
        payload too large to hold (topic None for such a topic)."""
        if topic is None:
            return
        if topic == self._t_mains:
            # A measurement, not a command: the newest replaces an unread one,
            # and a retained reading is of unknown age (ignored).
            if msg is not None and not retained:
                with self._lock:
                    self._mains = bytes(msg)
            else:
                self.stats["mains_ignored"] += 1
            return
        if topic == self._t_ha:
            # HA announces "online" when it starts: it forgot non-retained
            # state, and maybe our configs. A retained announcement is old news.
            if msg == b"online" and not retained:
                self._rediscover = True
            return
        n = len(self._t_set)
        if topic[:n] != self._t_set:
            return
        try:
            name = bytes(topic[n : n + COMMAND_NAME_MAX + 1]).decode()
        except Exception:  # noqa: BLE001 - not UTF-8: commands.parse refuses "?"
            name = "?"
        error = None
        if msg is None:
            error = "payload too long"
        elif retained:
            error = commands.retained_error(name)
        with self._lock:
            if error is None and self._commands.n + self._acks.n < COMMANDS_MAX:
                self._commands.push((name, bytes(msg)))
                return
            if error is None:
                # Full (a burst arrived while a publish waited for its PUBACK):
                # answer instead of dropping silently; the sender may retry.
                self.stats["commands_dropped"] += 1
                error = "busy: too many commands, try again"
            if self._acks.push((name, False, error, None)):
                self.stats["dropped"] += 1

    def _goodbye(self):
        c = self._client
        if c is None:
            return
        try:
            # The last status may still wait for its once-a-second slot: send it,
            # so the retained status a backend sees while we are away is the final one.
            with self._lock:
                status = self._status
            if status is not None and status != self._status_sent:
                c.publish(self._t_status, status, retain=True)
                self._status_sent = status
            c.publish(self._t_online, b"0", retain=True)
            c.disconnect()  # broker discards the last will on a clean DISCONNECT
        except Exception as e:  # noqa: BLE001
            self.stats["last_error"] = repr(e)
        self._client = None
        self.connected = False
