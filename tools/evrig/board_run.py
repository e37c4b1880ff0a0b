"""A scenario on a board over its serial line (`rig.py run SCENARIO --port PORT`):
a real board on a pilot-signal rig, or the emulated one (tools/simboard.py).

docs/rig.md. The board runs the real firmware with `bench_trace` on and prints
firmware/rigtrace.py's `TRACE {...}` lines; this side backs up and changes the
board's files (config.json, and for --sim-ev sim.json and the scenario the
emulated EV follows), restarts it, announces each step at its time on the
board's clock (estimated from the trace), sends `set` steps over MQTT with
--broker, collects the records, and restores the files at the end.
"""

import json
import os
import threading
import time

from board_session import BoardError, BoardSession

from evrig import RigError
from evrig.report import LivePrinter
from evrig.scenario import ACTIONS, is_number
from firmware.facts import TRACE_PREFIX
from sim.steps import StepClock, payload

BOARD_DATA = "/data"  # the board's data directory (config.json, sim.json on the emulated board)
RIG_SCENARIO = "rig_scenario.json"  # --sim-ev: the steps the emulated EV follows (sim/follower.py)
RIG_BACKUP = "rig_backup.json"  # the files the rig changed, as they were before
BACKED_UP = ("config.json", "sim.json")
FIRST_RECORD_S = 30.0  # after the reset, the first trace record must come within this
SILENCE_S = 5.0  # longer without a record while running: the board stopped

EV_TEXT = {
    "A": "set EV to state A (unplug: open the CP line)",
    "B": "set EV to state B (plugged in, S2 open)",
    "C": "set EV to state C (close S2)",
    "D": "set EV to state D (close S2 on the ventilation resistor)",
}
FAULT_TEXT = {
    "none": "clear every fault (undo shorts, reconnect PE, release the RCD test)",
    "cp_short": "short CP to PE (state E)",
    "diode_short": "short the diode",
    "pe_open": "open PE",
    "rcd_trip": "trip the RCD (inject a residual current)",
    "weld": "weld the contactor (bridge its feedback contact)",
    "rcd_dead": "make the RCD ignore its test input",
    "stuck_adc": "freeze a current sensor (disconnect a CT)",
}
PP_TEXT = {1500: "13 A", 680: "20 A", 220: "32 A", 100: "63 A"}


def _t_text(t):
    s = ("%.3f" % t).rstrip("0")
    return s + "0" if s.endswith(".") else s


def describe_expect(exp):
    parts = []
    for field, want in exp.items():
        if field == "contactor":
            parts.append("contactor " + ("closed" if want else "open"))
        elif field == "session" and isinstance(want, bool):
            parts.append("a session open" if want else "no session")
        elif isinstance(want, str):
            parts.append("%s %s" % (field, want))
        elif want is None:
            parts.append("%s null" % field)
        elif isinstance(want, list) and field != "current_a":
            parts.append("%s in %s..%s" % (field, want[0], want[1]))
        else:
            parts.append("%s %s" % (field, json.dumps(want)))
    return "expect " + ", ".join(parts)


def describe_step(step, commands="operator"):
    """What a step asks for, in the words of a bench operator: one text per
    action. commands: who sends `set` steps: "operator", "mqtt" (the rig) or
    "board" (the emulated board itself, sim/follower.py)."""
    out = []
    for key, v in step.items():
        if key == "ev":
            out.append(EV_TEXT[v])
        elif key == "draw_a":
            out.append("EV load %g A per phase" % v)
        elif key == "ev_obeys":
            out.append("EV load follows the offer" if v else "EV load ignores the offer")
        elif key == "ev_phases":
            out.append("EV load on %d phase%s" % (v, "" if v == 1 else "s"))
        elif key == "pp_ohm":
            if v is None:
                out.append("disconnect PP (no cable)")
            else:
                cable = PP_TEXT.get(v)
                out.append("set PP to %g ohm%s" % (v, " (%s cable)" % cable if cable else ""))
        elif key == "fault":
            out.append(FAULT_TEXT[v])
        elif key == "temp_c":
            out.append("board temperature %g C" % v)
        elif key in ("house_a", "pv_a"):
            out.append("%s %s A" % ("house load" if key == "house_a" else "solar production", v))
        elif key == "mains_meter":
            out.append("house meter %s" % ("publishes" if v else "silent"))
        elif key == "clock":
            out.append("set the board's clock to %d (UTC seconds)" % v)
        elif key == "set":
            for name, value in v.items():
                who = {"operator": "send", "mqtt": "rig sends", "board": "the board applies"}[commands]
                out.append("%s remote command %s=%s" % (who, name, payload(value) or '""'))
    if "expect" in step:
        out.append(describe_expect(step["expect"]))
    return out


def needs_operator(step, mqtt=False):
    """Whether a step has an action only a person at the rig can do."""
    return any(k in ACTIONS for k in step) or ("set" in step and not mqtt)


class BoardTrace:
    """The rig's view of a board running the firmware in bench mode: a board
    session (tools/board_session.py) for files and resets, and a thread that
    reads the console: trace records, command answers, other output, and
    the firmware's time estimated from the records."""

    def __init__(self, port, baud=115200):
        try:
            self.session = BoardSession(port, baud)
        except BoardError as e:
            raise RigError(str(e)) from None
        self.port = port
        self.lock = threading.Lock()
        self.records, self.commands, self.output = [], [], []
        self.offset = None  # host monotonic s minus firmware t: min over records
        self.last_rx = None  # host monotonic s of the latest record
        self.crash_at = None  # index in output of a traceback / failure line
        self.lost = None  # the serial line failed
        self.on_record = None
        self.on_output = None
        self._stop = threading.Event()
        self._thread = None

    # --- the console ------------------------------------------------------------------------------
    def start_reader(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def stop_reader(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None

    def _read(self):
        while not self._stop.is_set():
            try:
                lines = self.session.read_lines()
            except BoardError as e:
                self.lost = str(e)
                return
            now = time.monotonic()
            for line in lines:
                self._line(line, now)

    def _line(self, line, now):
        obj = None
        if line.startswith(TRACE_PREFIX):
            try:
                obj = json.loads(line[len(TRACE_PREFIX):])
            except ValueError:
                obj = None
        with self.lock:
            if isinstance(obj, dict) and "state" in obj and is_number(obj.get("t")):
                self.records.append(obj)
                lag = now - obj["t"]
                self.offset = lag if self.offset is None else min(self.offset, lag)
                self.last_rx = now
                cb = self.on_record
            elif isinstance(obj, dict) and "command" in obj:
                self.commands.append(obj)
                cb = self.on_output
                line = "set %s=%s -> %s" % (obj["command"], obj.get("payload") or '""',
                                            "ok" if obj.get("ok") else "rejected: %s" % obj.get("error"))
                obj = None
            else:
                if self.crash_at is None and (
                    line.startswith("Traceback (most recent call last)") or line.startswith("main: firmware failed")
                ):
                    self.crash_at = len(self.output)
                self.output.append(line)
                cb = self.on_output
        if cb is not None:
            cb(obj if obj is not None else line)

    def board_time(self):
        """The firmware's t now (s), estimated from the records; None before the first."""
        with self.lock:
            return None if self.offset is None else time.monotonic() - self.offset

    def close(self):
        self.stop_reader()
        self.session.close()


def _json_obj(text):
    """A dict from a board file's text (None / not an object: {})."""
    if text is None:
        return {}
    try:
        v = json.loads(text)
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def _read_text(session, path):
    data = session.read_file(path)
    return None if data is None else data.decode("utf-8", "replace")


def _write_text(session, path, text):
    session.replace_file(path, text.encode("utf-8"))


def prepare_board(session, sc, sim_ev=False, seed=None, strip_sets=False, log=print):
    """Put the board in bench mode: back up the files the rig changes (once: a
    backup left by an aborted run holds the true originals), write config.json
    with the scenario's config and bench_trace true, and for --sim-ev sim.json
    (the scenario's sim options and seed) and rig_scenario.json. Returns the
    originals {name: text or None}."""
    session.mkdir(BOARD_DATA)
    backup_path = BOARD_DATA + "/" + RIG_BACKUP
    old = _read_text(session, backup_path)
    originals = _json_obj(old) if old is not None else None
    if originals is not None and all(k in originals for k in BACKED_UP):
        log("rig: %s/%s holds the files of an aborted run; they are restored at the end" % (BOARD_DATA, RIG_BACKUP))
    else:
        originals = {name: _read_text(session, BOARD_DATA + "/" + name) for name in BACKED_UP}
        _write_text(session, backup_path, json.dumps(originals))
    cfg = _json_obj(originals["config.json"])
    cfg.update(sc.get("config") or {})
    cfg["bench_trace"] = True
    _write_text(session, BOARD_DATA + "/config.json", json.dumps(cfg))
    scenario_path = BOARD_DATA + "/" + RIG_SCENARIO
    if sim_ev:
        sim = _json_obj(originals["sim.json"])
        sim.pop("ev", None)  # the scenario starts unplugged, as in a simulated run
        sim.update(sc.get("sim") or {})
        sim["seed"] = seed if seed is not None else sc.get("seed", 1)
        _write_text(session, BOARD_DATA + "/sim.json", json.dumps(sim))
        uploaded = dict(sc)
        if strip_sets:  # the rig sends them over MQTT itself
            uploaded["steps"] = [{k: v for k, v in s.items() if k != "set"} for s in sc["steps"]]
        _write_text(session, scenario_path, json.dumps(uploaded))
    else:
        session.remove(scenario_path)
    return originals


def restore_board(session, originals=None):
    """Undo prepare_board (with no originals given: from the backup file on the
    board; nothing to do without one). The board must be in the raw REPL."""
    backup_path = BOARD_DATA + "/" + RIG_BACKUP
    if originals is None:
        text = _read_text(session, backup_path)
        if text is None:
            return False
        originals = _json_obj(text)
    for name in BACKED_UP:
        path = BOARD_DATA + "/" + name
        if name not in originals:
            continue
        if originals[name] is None:
            session.remove(path)
        else:
            _write_text(session, path, originals[name])
    session.remove(BOARD_DATA + "/" + RIG_SCENARIO)
    session.remove(backup_path)
    return True


class _Mqtt:
    """Sends `set` steps to the charger as remote commands and prints the acks."""

    def __init__(self, broker, prefix, dev_id, log):
        import paho.mqtt.client as mqtt

        host, _, port = broker.rpartition(":")
        self.base = "%s/%s/" % (prefix, dev_id)
        self.log = log
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="evse-rig-%d" % os.getpid())
        self.c.on_message = lambda _c, _u, m: log(
            "          ack %s" % m.payload.decode("utf-8", "replace"))
        try:
            self.c.connect(host, int(port), 30)
        except OSError as e:
            raise RigError("cannot reach the MQTT broker %s: %s" % (broker, e)) from None
        self.c.subscribe(self.base + "ack", 1)
        self.c.loop_start()

    def send(self, name, value):
        info = self.c.publish(self.base + "set/" + name, payload(value), qos=1, retain=False)
        info.wait_for_publish(5)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def _wait_board_time(board, t):
    """Block until the firmware's t (estimated) reaches t; RigError if the board
    crashed, went silent or the line was lost."""
    while True:
        _check_board(board)
        now = board.board_time()
        if now is not None and now >= t:
            return
        wait = 0.01 if now is None else min(0.05, max(0.001, t - now))
        time.sleep(wait)


def _check_board(board):
    if board.lost:
        raise RigError("lost the serial line: %s" % board.lost)
    if board.crash_at is not None:
        time.sleep(0.5)  # let the traceback arrive whole
        with board.lock:
            tail = "\n".join(board.output[board.crash_at:])
        raise RigError("the firmware failed on the board:\n%s" % tail)
    with board.lock:
        last = board.last_rx
    if last is not None and time.monotonic() - last > SILENCE_S:
        raise RigError("no trace record for %.0f s: the board stopped" % SILENCE_S)


def run_on_board(args, sc, log=print, ask=input):
    """The scenario on the board at args.port; returns (records, aligned scenario). Raises RigError."""
    print_lock = threading.Lock()  # the console reader prints too
    plain_log = log

    def log(text):
        with print_lock:
            plain_log(text)

    mqtt_sets = bool(args.broker)
    board = BoardTrace(args.port, args.baud)
    originals = None
    mq = None
    try:
        log("rig: connecting to %s, stopping the firmware (Ctrl-C: it leaves the outputs safe)" % args.port)
        board.session.interrupt()
        originals = prepare_board(board.session, sc, args.sim_ev, args.seed, strip_sets=mqtt_sets, log=log)
        if mqtt_sets:
            cfg = _json_obj(originals["config.json"])
            mq = _Mqtt(args.broker, cfg.get("mqtt_prefix", "evse"), args.id or cfg.get("id", "evse"), log)
        live = LivePrinter({"steps": []}) if args.live else None
        if live:
            def show(r):
                with print_lock:
                    live("record", r)

            board.on_record = show
        board.on_output = lambda line: log("          board| %s" % line)
        board.start_reader()
        log("rig: bench_trace on, restarting the firmware (t = 0 is its start)")
        board.session.soft_reset()
        end = time.monotonic() + FIRST_RECORD_S
        while board.board_time() is None:
            _check_board(board)
            if time.monotonic() > end:
                raise RigError("no trace record within %.0f s of the reset: does the board run this "
                               "firmware (firmware/rigtrace.py)?" % FIRST_RECORD_S)
            time.sleep(0.02)
        shift = 0.0  # --step: how much later than planned the board's clock runs the scenario
        steps = []
        clock = StepClock(sc)  # the steps' times, as the simulation hands them out
        while not clock.done():
            due = clock.next_ms / 1000 + shift
            _wait_board_time(board, due)
            step = clock.take()
            texts = describe_step(step, "mqtt" if mqtt_sets else "board" if args.sim_ev else "operator")
            note = ("  -- " + step["note"]) if "note" in step else ""
            if args.sim_ev and any(k in ACTIONS for k in step):
                note += "  [the emulated EV does it]"
            log("t=%s s: %s%s" % (_t_text(step["t"]), "; ".join(texts), note))
            if args.step and needs_operator(step, mqtt_sets):
                ask("          do it, then press Enter ")
                now = board.board_time()
                if now > due:
                    shift = now - step["t"]
                    due = now
                    log("          (board t=%s s: later steps move by %+.2f s)" % (_t_text(round(now, 3)), shift))
            if mq is not None and "set" in step:
                for name, value in step["set"].items():
                    mq.send(name, value)
            steps.append(dict(step, t=round(due, 3)))
        stop_t = sc["until"] + shift
        _wait_board_time(board, stop_t)
        end = time.monotonic() + SILENCE_S
        while True:  # the record that covers `until`
            _check_board(board)
            with board.lock:
                done = board.records and board.records[-1]["t"] >= stop_t
            if done or time.monotonic() > end:
                break
            time.sleep(0.02)
        with board.lock:
            records = list(board.records)
        if live:
            live.finish()
        return records, dict(sc, steps=steps)
    except BoardError as e:
        raise RigError(str(e)) from None
    finally:
        board.stop_reader()
        if mq is not None:
            mq.close()
        try:
            board.session.interrupt()
            if originals is not None:
                restore_board(board.session, originals)
            log("rig: board files restored, restarting the firmware")
            board.session.soft_reset()
        except BoardError as e:
            log("rig: could not restore the board (%s); run `rig.py restore --port %s`" % (e, args.port))
        board.close()


