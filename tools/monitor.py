#!/usr/bin/env python3
"""Watch chargers on an MQTT broker: one readable line per status, session,
event, command ack and online change.

Examples:
  monitor.py --broker 192.168.1.10:1883                 # every charger, until Ctrl-C
  monitor.py --broker localhost:1883 --id garage-1      # one charger
  monitor.py --broker localhost:1883 --once             # print what is retained, exit

Exit codes: 0 done (Ctrl-C or --once), 2 bad arguments, 3 cannot connect.
"""

import argparse
import json
import sys
import threading
import time

KINDS = ("status", "session", "event", "ack", "online")


def parse_broker(text):
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, "1883"
    if not host:
        raise argparse.ArgumentTypeError("broker must be HOST or HOST:PORT, got %r" % text)
    try:
        port_n = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError("port must be a number, got %r" % port) from None
    if not 0 < port_n < 65536:
        raise argparse.ArgumentTypeError("port must be 1..65535, got %d" % port_n)
    return host, port_n


def _amps(ma):
    return "%.1fA" % (ma / 1000) if isinstance(ma, (int, float)) else "-"


def format_message(topic, payload, retained=False):
    """One line for one message, or None for topics this tool does not show."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[2] not in KINDS:
        return None
    _prefix, dev, kind = parts
    text = payload.decode("utf-8", "replace")
    mark = " (retained)" if retained else ""
    if kind == "online":
        return "%-12s %-8s %s%s" % (dev, "online", "yes" if text == "1" else "NO", mark)
    try:
        data = json.loads(text)
    except ValueError:
        return "%-12s %-8s (not JSON) %r%s" % (dev, kind, text[:80], mark)
    if kind == "status" and isinstance(data, dict):
        fields = [
            "state=%s" % data.get("state", "?"),
            "current=%s" % _amps(data.get("current_ma")),
            "limit=%s" % _amps(data.get("limit_ma")),
            "power=%sW" % data.get("power_w", "-"),
            "session=%sWh" % data.get("session_wh", "-"),
            "total=%sWh" % data.get("lifetime_wh", "-"),
            "fault=%s" % (data.get("fault") or "-"),
        ]
        if data.get("enabled") is False:
            fields.append("DISABLED")
        if data.get("rssi_dbm") is not None:
            fields.append("wifi=%sdBm" % data["rssi_dbm"])
        if data.get("clock_set") is False:
            fields.append("clock=unset")  # session times are boot/mono stamps until NTP answers
        return "%-12s %-8s %s%s" % (dev, kind, " ".join(fields), mark)
    if kind == "session" and isinstance(data, dict):
        fields = [
            "id=%s" % data.get("id", "?"),
            "energy=%sWh" % data.get("energy_wh", "-"),
            "reason=%s" % data.get("reason", "-"),
            "peak=%sA" % data.get("peak_a", "-"),
            "tag=%s" % (data.get("tag") or "-"),
        ]
        return "%-12s %-8s %s%s" % (dev, kind, " ".join(fields), mark)
    if kind == "ack" and isinstance(data, dict):
        answer = "ok" if data.get("ok") else "REFUSED: %s" % data.get("error")
        return "%-12s %-8s %s -> %s%s" % (dev, kind, data.get("cmd"), answer, mark)
    if isinstance(data, dict):
        body = " ".join("%s=%s" % (k, json.dumps(v)) for k, v in data.items())
    else:
        body = json.dumps(data)
    return "%-12s %-8s %s%s" % (dev, kind, body, mark)


def build_parser():
    p = argparse.ArgumentParser(
        description="Show status, sessions, events, acks and online state of chargers, one line each.",
        epilog="Exit codes: 0 done, 2 bad arguments, 3 cannot connect to the broker.",
    )
    p.add_argument("--broker", required=True, type=parse_broker, metavar="HOST:PORT", help="MQTT broker")
    p.add_argument("--id", default="all", help="charger id, or 'all' (default)")
    p.add_argument("--prefix", default="evse", help="topic prefix (default: evse)")
    p.add_argument("--user", help="MQTT user name")
    p.add_argument("--password", help="MQTT password")
    p.add_argument(
        "--once", action="store_true", help="print the retained messages (last status, online) and exit"
    )
    p.add_argument(
        "--quiet-ms", type=int, default=500, help="with --once: exit after this long without a message (default 500)"
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the connection (default 5)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        print("monitor.py: paho-mqtt is missing (run make deps, then use .venv/bin/python)", file=sys.stderr)
        return 3
    dev = "+" if args.id == "all" else args.id
    if not dev or "/" in dev or "#" in dev:
        print("monitor.py: --id must be a charger id or 'all'", file=sys.stderr)
        return 2
    host, port = args.broker
    subscribed = threading.Event()
    failed = []
    last_msg = [time.monotonic()]

    def on_connect(client, userdata, flags, rc, props=None):
        if rc != 0:
            failed.append(str(rc))
            subscribed.set()
            return
        client.subscribe([("%s/%s/%s" % (args.prefix, dev, k), 1) for k in KINDS])

    def on_subscribe(client, userdata, mid, rcs, props=None):
        last_msg[0] = time.monotonic()
        subscribed.set()

    def on_message(client, userdata, msg):
        last_msg[0] = time.monotonic()
        line = format_message(msg.topic, msg.payload, msg.retain)
        if line is not None:
            print(time.strftime("%H:%M:%S"), line, flush=True)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if args.user:
        client.username_pw_set(args.user, args.password)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ValueError) as e:
        print("monitor.py: cannot connect to %s:%d: %s" % (host, port, e), file=sys.stderr)
        return 3
    client.loop_start()
    try:
        if not subscribed.wait(args.timeout) or failed:
            why = "refused (%s)" % failed[0] if failed else "no answer within %.0f s" % args.timeout
            print("monitor.py: broker %s:%d %s" % (host, port, why), file=sys.stderr)
            return 3
        while True:
            time.sleep(0.05)
            if args.once and time.monotonic() - last_msg[0] > args.quiet_ms / 1000:
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        client.loop_stop()
        client.disconnect()


if __name__ == "__main__":
    sys.exit(main())
