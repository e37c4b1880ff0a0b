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
timeout and TCP_NODELAY, TLS contexts, wall-clock sleeps): the link hands the
connected socket to umqtt.simple, because 1.3.4's connect() has no timeout and
its TLS path imports `ussl`. `_Client.connect` replaces connect() in both 1.3.4
and the latest micropython-lib version; everything else (publish, subscribe,
check_msg, ping, disconnect) is umqtt.simple's own and the same in both.

Topics (see docs/mqtt.md): status (retained), event, session, ack, online
(retained `1`, last will `0`), set/<name> (subscribed), and discovery under
`homeassistant/`.
"""

import _thread
import json
import os
import select

from micropython import const
from umqtt.simple import MQTTClient, MQTTException

from firmware import discovery

# Back-off between connection attempts: full jitter, uniform in
# [0, min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2^n)] (n = failures so far), so a
# fleet that lost its broker at the same moment does not return in one storm.
BACKOFF_MIN_MS = const(1000)
BACKOFF_MAX_MS = const(300000)  # 5 min
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
THREAD_STACK_BYTES = const(16384)  # TLS handshakes need more than the default



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


class Backoff:
    """Reconnect delays with full jitter. Its own small generator (30-bit
    xorshift: small ints on an ESP32) so each device, and each simulated
    device in a test, has an independent, seedable sequence."""

    def __init__(self, seed):
        self._s = (seed & 0x3FFFFFFF) or 1
        self.failures = 0

    def _rand(self):
        s = self._s
        s ^= (s << 7) & 0x3FFFFFFF
        s ^= s >> 9
        s ^= (s << 8) & 0x3FFFFFFF
        self._s = s
        return s

    def next_ms(self):
        n = self.failures
        ceiling = BACKOFF_MAX_MS if n >= 9 else min(BACKOFF_MAX_MS, BACKOFF_MIN_MS << n)
        self.failures = n + 1
        return self._rand() % (ceiling + 1)

    def reset(self):
        self.failures = 0


def seed_for(dev_id, extra=0):
    """30-bit seed from the device id (FNV-1a folded) mixed with `extra`."""
    h = 0x811C9DC5 & 0x3FFFFFFF
    for b in dev_id.encode() if isinstance(dev_id, str) else dev_id:
        h = ((h ^ b) * 0x01000193) & 0x3FFFFFFF
    return h ^ (extra & 0x3FFFFFFF)


class _Client(MQTTClient):
    """umqtt.simple with our own connect(): the socket is created, connected
    and (optionally) TLS-wrapped here, with a timeout on every step."""

    net = None  # the board's hal/net.py, set by the Link

    def connect(self, clean_session=True, timeout=None, ssl_ctx=None):
        timeout_s = timeout if timeout is not None else IO_TIMEOUT_MAX_MS / 1000
        raw = self.net.tcp_connect(self.server, self.port, timeout_s)
        self.sock = raw
        self.raw_sock = raw
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


class Link:
    def __init__(self, cfg, clock, net):
        """clock: ticks_ms/ticks_diff in wall time (a board's `net` will do);
        net: the board's network access (hal/net.py)."""
        self._clock = clock
        self._net = net
        self._cfg = cfg
        dev_id = cfg["id"]
        base = "%s/%s/" % (cfg.get("mqtt_prefix") or "evse", dev_id)
        self.topic_base = base
        self._t_status = (base + "status").encode()
        self._t_event = (base + "event").encode()
        self._t_session = (base + "session").encode()
        self._t_ack = (base + "ack").encode()
        self._t_online = (base + "online").encode()
        self._t_set = (base + "set/").encode()
        self._keepalive_s = int(cfg.get("mqtt_keepalive_s") or 60)
        ka_ms = self._keepalive_s * 1000
        self._io_timeout_ms = max(IO_TIMEOUT_MIN_MS, min(IO_TIMEOUT_MAX_MS, ka_ms // 2))
        self.backoff = Backoff(seed_for(dev_id, int.from_bytes(os.urandom(4), "little")))

        self._lock = _thread.allocate_lock()
        # --- shared with the loop: only under _lock --------------------------
        self._out = _Ring(OUT_MAX)  # event payloads, QoS 1
        self._acks = _Ring(ACKS_MAX)  # (cmd, ok, error), QoS 1
        self._sessions = []  # [session_id, payload] until PUBACK, in order
        self._acked = _Ring(ACKED_MAX)
        self._commands = _Ring(COMMANDS_MAX)
        self._status = None
        self._stop_req = False
        # Set by the control loop while the contactor is closed: a TLS link does
        # not (re)connect then (the handshake holds the GIL for 1-2 s on an
        # ESP32, extmod/modtls_mbedtls.c); a plain one does.
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
            "last_error": None,
            "last_backoff_ms": 0,
            "last_connect_ms": 0,  # how long the last successful connect took
        }
        # --- thread-only state -------------------------------------------------
        self._client = None
        self._poller = None
        self._status_sent = None
        self._status_t = 0
        self._last_rx = 0
        self._last_ping = 0

    # ---- the loop's side: all non-blocking ---------------------------------------
    def start(self):
        if self.running:
            return
        self.running = True
        try:
            old = _thread.stack_size(THREAD_STACK_BYTES)
        except Exception:
            old = None
        _thread.start_new_thread(self._run, ())
        if old is not None:
            _thread.stack_size(old)

    def post_status(self, payload):
        with self._lock:
            self._status = payload

    def post_event(self, payload):
        with self._lock:
            if self._out.push(payload):
                self.stats["dropped"] += 1

    def post_ack(self, cmd, ok, error):
        with self._lock:
            if self._acks.push((cmd, bool(ok), error)):
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

    def poll_command(self):
        if not self._commands.n:
            return None
        with self._lock:
            return self._commands.pop()

    def pending_sessions(self):
        with self._lock:
            return len(self._sessions)

    def stop(self, timeout_ms=2000):
        """Ask the thread to publish online 0, disconnect and end; wait up to
        timeout_ms. True when the thread has ended."""
        with self._lock:
            self._stop_req = True
        t0 = self._clock.ticks_ms()
        while self.running and self._clock.ticks_diff(self._clock.ticks_ms(), t0) < timeout_ms:
            self._net.sleep_ms(5)
        return not self.running

    # ---- the thread ---------------------------------------------------------------------
    def _run(self):
        wait_ms = 0
        try:
            while not self._stop_req:
                if self._client is None:
                    if wait_ms and not self._sleep(wait_ms):
                        break
                    if self.hold_tls and self._cfg.get("mqtt_tls"):  # see hold_tls
                        if not self._sleep(100):
                            break
                        continue
                    try:
                        self._connect()
                        self.backoff.reset()
                        wait_ms = 0
                    except Exception as e:  # noqa: BLE001 - any failure means: try later
                        self._drop(e)
                        wait_ms = self._next_backoff()
                    continue
                try:
                    self._service()
                except Exception as e:  # noqa: BLE001
                    self._drop(e)
                    wait_ms = self._next_backoff()
            self._goodbye()
        finally:
            self.connected = False
            self.running = False

    def _next_backoff(self):
        ms = self.backoff.next_ms()
        self.stats["last_backoff_ms"] = ms
        return ms

    def _sleep(self, ms):
        """Sleep in short steps; False when stop() was called meanwhile."""
        t0 = self._clock.ticks_ms()
        while self._clock.ticks_diff(self._clock.ticks_ms(), t0) < ms:
            if self._stop_req:
                return False
            self._net.sleep_ms(min(50, ms))
        return not self._stop_req

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
        c.set_callback(self._on_message)
        c.set_last_will(self._t_online, b"0", retain=True, qos=1)
        self._client = c
        ctx = self._net.tls_context(cfg.get("mqtt_ca")) if cfg.get("mqtt_tls") else None
        c.connect(timeout=self._io_timeout_ms / 1000, ssl_ctx=ctx)
        c.publish(self._t_online, b"1", retain=True)
        c.subscribe(self._t_set + b"+")
        for topic, payload in discovery.configs(cfg, self.topic_base):
            c.publish(topic, payload, retain=True)
        self._restore_timeout()
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

    def _restore_timeout(self):
        # umqtt's check_msg() leaves the socket fully blocking: put the timeout back.
        self._client.raw_sock.settimeout(self._io_timeout_ms / 1000)

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
            op = c.check_msg()
            self._restore_timeout()
            if op is not None:  # a packet umqtt does not consume outside publish()
                raise OSError(-4)
        if backlog:
            self._net.sleep_ms(IDLE_POLL_MS)
        now = self._clock.ticks_ms()
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
            c.publish(self._t_session, entry[1], qos=1)  # returns after PUBACK
            self._restore_timeout()
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
                    cmd, ok, error = item
                    # bytes: umqtt sizes a str payload by characters, and a command
                    # name with non-ASCII characters would corrupt the packet
                    payload = json.dumps({"cmd": cmd, "ok": ok, "error": error}).encode()
                c.publish(topic, payload, qos=1)
                self._restore_timeout()
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

    def _on_message(self, topic, msg):
        """umqtt callback (link thread): queue set/<name> commands for the loop."""
        n = len(self._t_set)
        if topic[:n] != self._t_set:
            return
        try:
            name = bytes(topic[n : n + COMMAND_NAME_MAX + 1]).decode()
        except Exception:  # noqa: BLE001 - not UTF-8: commands.parse refuses "?"
            name = "?"
        with self._lock:
            if self._commands.n + self._acks.n < COMMANDS_MAX:
                self._commands.push((name, bytes(msg)))
                return
            # Full (a burst arrived while a publish waited for its PUBACK):
            # answer instead of dropping silently; the sender may retry.
            self.stats["commands_dropped"] += 1
            if self._acks.push((name, False, "busy: too many commands, try again")):
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
