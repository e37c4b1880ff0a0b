#!/usr/bin/env python3
"""The bench rig: run a scenario against the real firmware on the simulated
board, check its expectations, show and plot what happened, and measure the
contactor's reaction times.

The firmware runs unmodified in the MicroPython unix port (.venv/bin/micropython,
or $MICROPYTHON) through sim/scenario.py, which streams trace records as JSON
lines; this tool validates the scenario first and reads the stream.
docs/scenarios.md describes the scenario format, the expect rules and the
trace fields.

Exit codes (scripts may rely on them):
    0  every expectation held / every reaction time within its target
    1  an expectation failed / a reaction-time target was missed
    2  bad command line or bad scenario file (the message names the step)
    3  the MicroPython process died, printed a traceback or timed out
"""

import argparse
import bisect
import glob
import json
import math
import os
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIO_DIR = os.path.join(REPO, "tests", "scenarios")

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CRASH = 0, 1, 2, 3

# Reaction-time targets for `measure` (ms of simulated time).
OPEN_TARGET_MS = 20
CLOSE_TARGET_MS = 200

TICK_MS = 10  # the firmware's tick: step times are whole ticks
MAX_UNTIL_S = 24 * 3600
STATES = ("A1", "A2", "B1", "B2", "C1", "C2", "D1", "D2", "E", "F")
EV_STATES = ("A", "B", "C", "D")
# sim/board.py FAULTS, plus "none" (clears them all).
SIM_FAULTS = (
    "none",
    "cp_short",
    "diode_short",
    "pe_open",
    "rcd_trip",
    "weld",
    "rcd_dead",
    "stuck_adc",
)
TRACE_FIELDS = (
    "t", "state", "pilot_v", "duty", "offer_a", "contactor", "current_a",
    "energy_wh", "truth_energy_wh", "fault", "session",
)  # fmt: skip


class BadScenario(Exception):
    """The scenario file is unusable; args[0] is a list of messages."""


class RigError(Exception):
    """The MicroPython side failed; the message holds its output."""


# --- validation --------------------------------------------------------------------------
def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(lo, hi, nullable=False):
    def check(v):
        if v is None and nullable:
            return None
        if not _is_num(v):
            return "must be a number" + (" or null" if nullable else "")
        if not lo <= v <= hi:
            return "%s is out of range %s..%s" % (v, lo, hi)
        return None

    return check


def _int(lo, hi):
    def check(v):
        if not _is_num(v) or int(v) != v:
            return "must be a whole number"
        if not lo <= v <= hi:
            return "%s is out of range %s..%s" % (v, lo, hi)
        return None

    return check


def _bool(v):
    return None if isinstance(v, bool) else "must be true or false"


def _one_of(choices):
    def check(v):
        return (
            None
            if v in choices
            else "must be one of %s, not %s" % (", ".join(choices), json.dumps(v))
        )

    return check


def _text(v):
    return None if isinstance(v, str) and v else "must be a non-empty string"


def _flag(v):
    return None if v is None or v is True else "takes null (or true)"


def _set_number(v):
    return None if _is_num(v) else "must be a number"


def _per_phase(lo, hi):
    """One number for every phase, or a list of 1..3 numbers (per phase)."""
    one = _num(lo, hi)

    def check(v):
        if isinstance(v, list):
            if not 1 <= len(v) <= 3:
                return "must be a number or a list of 1..3 numbers (A per phase)"
            for x in v:
                err = one(x)
                if err:
                    return err
            return None
        return one(v)

    return check


def _mains_meter(v):
    if not isinstance(v, dict) or set(v) - {"every_s"}:
        return 'must be an object {"every_s": N}'
    return _num(0.1, 60)(v.get("every_s", 1))


# A step's actions (applied to the simulated world / sent as remote commands).
ACTIONS = {
    "ev": _one_of(EV_STATES),
    "draw_a": _num(0, 80),
    "ev_obeys": _bool,
    "ev_phases": _int(1, 3),
    "pp_ohm": _num(0, 100000, nullable=True),
    "fault": _one_of(SIM_FAULTS),
    "temp_c": _num(-40, 150),
    "house_a": _per_phase(0, 200),
    "pv_a": _per_phase(0, 200),
    "mains_meter": _bool,
}
# `set` entries: the remote command name -> the check of its value. The value
# is sent as the plain MQTT payload text; the firmware judges its range.
COMMANDS = {
    "current_a": _set_number,
    "enable": _bool,
    "authorize": _text,
    "stop": _flag,
    "clear_fault": _flag,
    "mode": _text,
}
# Top-level keys of a scenario, and the simulator options under "sim".
TOP_KEYS = ("name", "description", "seed", "until", "config", "sim", "steps", "mains_meter")
SIM_KEYS = {
    "phases": _int(1, 3),
    "mains_hz": _one_of((50, 60)),
    "voltage_v": _int(100, 480),
    "pilot_noise_mv": _int(0, 5000),
    "contactor_close_ms": _int(0, 1000),
    "contactor_open_ms": _int(0, 1000),
    "has_feedback": _bool,
    "has_pe": _bool,
    "adc_noise_counts": _int(0, 200),
    "start_ticks": _int(0, 2**30 - 1),
    "phase_relay": _bool,
    "mains_ct": _bool,
    # control (issue 15): the PP resistor at start (ohm), null: none seen,
    # false: a tethered cable without PP coding (the board has no PP input)
    "pp": lambda v: None if v is False else _num(0, 100000, nullable=True)(v),
}


def _range_or_num(v):
    if _is_num(v):
        return None
    if isinstance(v, list) and len(v) == 2 and all(_is_num(x) for x in v):
        return None if v[0] <= v[1] else "range [%s, %s] has lo > hi" % (v[0], v[1])
    return "must be a number or a [lo, hi] range"


def _expect_current(v):
    if not isinstance(v, list) or not 1 <= len(v) <= 3:
        return "must be a list with one number or [lo, hi] range per phase"
    for i, x in enumerate(v):
        err = _range_or_num(x)
        if err:
            return "phase %d %s" % (i + 1, err)
    return None


def _expect_nullable_text(v):
    return None if v is None or isinstance(v, str) else "must be a string or null"


def _expect_session(v):
    return (
        None
        if v is None or isinstance(v, (str, bool))
        else "must be a string, true, false or null"
    )


def _expect_duty(v):
    return None if v is None else _range_or_num(v)


EXPECTS = {
    "state": _one_of(STATES),
    "pilot_v": _range_or_num,
    "duty": _expect_duty,
    "offer_a": _range_or_num,
    "contactor": _bool,
    "current_a": _expect_current,
    "energy_wh": _range_or_num,
    "truth_energy_wh": _range_or_num,
    "fault": _expect_nullable_text,
    "session": _expect_session,
    "grid_a": _expect_current,
    "phases": _int(1, 3),
}


def _config_errors(cfg):
    """Messages for bad firmware config overrides, judged by firmware/config.py itself."""
    if not isinstance(cfg, dict):
        return ["config: must be an object"]
    sys.path.insert(0, REPO)
    try:
        from firmware import config as fw_config  # plain Python: runs on CPython too
    except ImportError:
        return []
    finally:
        sys.path.remove(REPO)
    return ["config: " + e for e in fw_config.validate(cfg)[1]]


def validate(sc):
    """All the problems of a parsed scenario, as messages (empty: valid)."""
    if not isinstance(sc, dict):
        return ["the scenario must be a JSON object"]
    errors = []
    for key in sc:
        if key not in TOP_KEYS:
            errors.append(
                "unknown top-level key '%s' (known: %s)" % (key, ", ".join(TOP_KEYS))
            )
    for key in ("name", "description"):
        if key in sc and not isinstance(sc[key], str):
            errors.append("%s: must be a string" % key)
    if "mains_meter" in sc:
        err = _mains_meter(sc["mains_meter"])
        if err:
            errors.append("mains_meter: " + err)
    if "seed" in sc:
        err = _int(0, 2**30 - 1)(sc["seed"])
        if err:
            errors.append("seed: " + err)
    until = sc.get("until")
    if "until" not in sc:
        errors.append("until: missing (the simulated seconds to run)")
        until = None
    else:
        err = _num(0.01, MAX_UNTIL_S)(until)
        if err:
            errors.append("until: " + err)
            until = None
    if "config" in sc:
        errors += _config_errors(sc["config"])
    sim = sc.get("sim", {})
    if not isinstance(sim, dict):
        errors.append("sim: must be an object")
    else:
        for key, v in sim.items():
            if key not in SIM_KEYS:
                errors.append(
                    "sim: unknown key '%s' (known: %s)" % (key, ", ".join(SIM_KEYS))
                )
            else:
                err = SIM_KEYS[key](v)
                if err:
                    errors.append("sim.%s: %s" % (key, err))
    steps = sc.get("steps")
    if not isinstance(steps, list):
        errors.append("steps: missing or not a list")
        return errors
    prev_t = None
    for i, step in enumerate(steps):
        errors += ["step %d: %s" % (i, e) for e in _step_errors(step, prev_t, until)]
        if isinstance(step, dict) and _is_num(step.get("t")):
            prev_t = step["t"]
    return errors


def _step_errors(step, prev_t, until):
    if not isinstance(step, dict):
        return ["must be an object"]
    errors = []
    t = step.get("t")
    if "t" not in step:
        errors.append("t: missing")
    elif not _is_num(t) or t < 0:
        errors.append("t: must be a number of seconds >= 0")
    else:
        ticks = t * 1000 / TICK_MS
        if abs(ticks - round(ticks)) > 1e-6:
            errors.append(
                "t: %s is not a multiple of %s s (the firmware tick)"
                % (t, TICK_MS / 1000)
            )
        if prev_t is not None and t <= prev_t:
            errors.append(
                "t: %s is not after the previous step's t %s (times must increase)"
                % (t, prev_t)
            )
        if until is not None and t > until:
            errors.append("t: %s is after until %s" % (t, until))
    acts = 0
    for key, v in step.items():
        if key in ("t", "note"):
            if key == "note" and not isinstance(v, str):
                errors.append("note: must be a string")
            continue
        if key in ACTIONS:
            acts += 1
            err = ACTIONS[key](v)
            if err:
                errors.append("%s: %s" % (key, err))
        elif key in ("set", "expect"):
            acts += 1
            errors += _table_errors(key, v, COMMANDS if key == "set" else EXPECTS)
        else:
            known = ", ".join(["t", "note", "set", "expect"] + list(ACTIONS))
            errors.append("unknown key '%s' (known: %s)" % (key, known))
    if acts == 0 and not errors:
        errors.append("does nothing (no action, set or expect)")
    return errors


def _table_errors(key, v, table):
    """Problems of a `set` {command: value} or `expect` {field: value} object."""
    what = "command" if key == "set" else "field"
    if not isinstance(v, dict) or not v:
        return ["%s: must be an object {%s: value}" % (key, what)]
    errors = []
    for name, value in v.items():
        if name not in table:
            errors.append(
                "%s: unknown %s '%s' (known: %s)" % (key, what, name, ", ".join(table))
            )
        else:
            err = table[name](value)
            if err:
                errors.append("%s.%s: %s" % (key, name, err))
    return errors


def load_scenario(path):
    """The parsed, validated scenario; raises BadScenario with the messages."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise BadScenario(["cannot read %s: %s" % (path, e.strerror)]) from None
    try:
        sc = json.loads(text)
    except ValueError as e:
        raise BadScenario(["not valid JSON: %s" % e]) from None
    errors = validate(sc)
    if errors:
        raise BadScenario(errors)
    return sc


# --- expectations ---------------------------------------------------------------------------
def tolerance(expected):
    """How far a measured number may be from an expected plain number."""
    return max(0.05, 0.01 * abs(expected))


def _match(expected, got):
    if isinstance(expected, list):  # a [lo, hi] range
        return _is_num(got) and expected[0] <= got <= expected[1]
    if _is_num(expected):
        return _is_num(got) and abs(got - expected) <= tolerance(expected)
    return expected == got and type(expected) is type(got)


def field_matches(field, expected, got):
    """Whether one trace field satisfies one expectation (docs/scenarios.md)."""
    if field in ("current_a", "grid_a"):
        return (
            isinstance(got, list)
            and len(got) == len(expected)
            and all(map(_match, expected, got))
        )
    if field == "session" and isinstance(expected, bool):
        return (got is not None) == expected
    if expected is None:
        return got is None
    return _match(expected, got)


def check_expects(sc, records):
    """One message per failed expectation: step index, field, expected, got."""
    times = [r["t"] for r in records]
    failures = []
    for i, step in enumerate(sc.get("steps", [])):
        exp = step.get("expect")
        if not exp:
            continue
        k = bisect.bisect_right(times, step["t"] + 1e-9)
        if k == 0:
            failures.append(
                "step %d (t=%.3f): no trace record at or before this time"
                % (i, step["t"])
            )
            continue
        rec = records[k - 1]
        for field, want in exp.items():
            got = rec.get(field)
            if not field_matches(field, want, got):
                failures.append(
                    "step %d (t=%.3f): %s expected %s, got %s"
                    % (i, step["t"], field, json.dumps(want), json.dumps(got))
                )
    return failures


# --- running the unix port ----------------------------------------------------------------------
def micropython():
    return os.environ.get("MICROPYTHON") or os.path.join(
        REPO, ".venv", "bin", "micropython"
    )


def parse_line(line):
    """One line of sim/scenario.py's output as (kind, value): ("summary",
    dict), ("command", dict), ("record", dict) or ("output", the text)."""
    line = line.rstrip("\n")
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            if "summary" in obj:
                return "summary", obj["summary"]
            if "command" in obj:
                return "command", obj
            if "state" in obj:
                return "record", obj
    return "output", line


def run_scenario(path, sc, seed=None, realtime=False, on_line=None, extra=()):
    """Run one scenario in the unix port. Returns (records, commands, summary).
    on_line(kind, obj) is called as lines arrive: kind "record", "command" or
    "output" (any other text). Raises RigError when the process fails."""
    mp = micropython()
    if not os.path.exists(mp):
        raise RigError("no MicroPython interpreter at %s: run `make deps` first" % mp)
    cmd = [mp, "-m", "sim.scenario", os.path.abspath(path)]
    if realtime:
        cmd.append("--realtime")
    if seed is not None:
        cmd += ["--seed", str(seed)]
    cmd += list(extra)  # --data DIR, --broker HOST:PORT, --id ID, --ocpp URL
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join([REPO, os.path.join(REPO, "lib")])
    until = sc["until"]
    limit_s = until + 30 if realtime else 30 + until / 20
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, bufsize=1, errors="replace",
    )  # fmt: skip
    timed_out = []

    def kill():
        timed_out.append(True)
        proc.kill()

    timer = threading.Timer(limit_s, kill)
    timer.start()
    records, commands, other = [], [], []
    summary = None
    traceback_at = None
    try:
        for line in proc.stdout:
            kind, obj = parse_line(line)
            if kind == "summary":
                summary = obj
            elif kind == "command":
                commands.append(obj)
                if on_line:
                    on_line("command", obj)
            elif kind == "record":
                records.append(obj)
                if on_line:
                    on_line("record", obj)
            else:
                line = obj
                if (
                    line.startswith("Traceback (most recent call last)")
                    and traceback_at is None
                ):
                    traceback_at = len(other)
                other.append(line)
                if on_line and traceback_at is None:
                    on_line("output", line)
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    tail = "\n".join(other[traceback_at:] if traceback_at is not None else other[-25:])
    if timed_out:
        raise RigError(
            "MicroPython did not finish within %.0f s; its last output:\n%s"
            % (limit_s, tail)
        )
    if traceback_at is not None:
        raise RigError(
            "MicroPython raised an exception (exit code %d):\n%s" % (rc, tail)
        )
    if rc != 0:
        raise RigError(
            "MicroPython exited with code %d; its last output:\n%s" % (rc, tail)
        )
    if summary is None:
        raise RigError(
            "MicroPython ended without a summary line; its last output:\n%s" % tail
        )
    return records, commands, summary


# --- live timeline ----------------------------------------------------------------------------------
def _fmt_num(v, spec):
    return format(v, spec) if _is_num(v) else "-"


def format_record(r):
    duty = (
        "x1 (steady)"
        if r.get("duty") is None
        else "%5.1f %% = %4.1f A" % (r["duty"], r.get("offer_a", 0))
    )
    cur = " ".join(_fmt_num(c, "5.1f") for c in r.get("current_a") or [])
    return "%9.3f s  %-3s %-17s contactor %-6s  I %s A  E %s Wh%s" % (
        r["t"], r.get("state"), duty, "CLOSED" if r.get("contactor") else "open",
        cur, _fmt_num(r.get("energy_wh"), "8.3f"),
        ("  FAULT " + r["fault"]) if r.get("fault") else "",
    )  # fmt: skip


class LivePrinter:
    """Prints a readable timeline: the notes of the steps as their time comes,
    one line per change of a discrete field (or of the current by 1 A or more),
    and each remote command's answer."""

    DISCRETE = ("state", "duty", "offer_a", "contactor", "fault", "session")

    def __init__(self, sc, out=None):
        self.notes = [(s["t"], s["note"]) for s in sc.get("steps", []) if "note" in s]
        self.out = out or sys.stdout
        self.last = None

    def _notes_until(self, t):
        while self.notes and self.notes[0][0] <= t + 1e-9:
            nt, note = self.notes.pop(0)
            print("%9.3f s  -- %s" % (nt, note), file=self.out, flush=True)

    def __call__(self, kind, obj):
        if kind == "output":
            print("          | " + obj, file=self.out, flush=True)
            return
        self._notes_until(obj["t"])
        if kind == "command":
            answer = "ok" if obj.get("ok") else "rejected: %s" % obj.get("error")
            if obj.get("note"):  # control (issue 15): e.g. a current_a below 6 A pauses
                answer += " (%s)" % obj["note"]
            print("%9.3f s  set %s=%s -> %s" % (obj["t"], obj["command"], obj["payload"] or '""', answer),
                  file=self.out, flush=True)  # fmt: skip
            return
        last = self.last
        if last is not None:
            same = all(last.get(k) == obj.get(k) for k in self.DISCRETE)
            cur = obj.get("current_a") or []
            old = last.get("current_a") or []
            moved = len(cur) != len(old) or any(
                abs(a - b) >= 1 for a, b in zip(cur, old)
            )
            if same and not moved:
                return
        self.last = obj
        print(format_record(obj), file=self.out, flush=True)

    def finish(self):
        self._notes_until(float("inf"))


# --- plot ------------------------------------------------------------------------------------------------
def plot(records, path, title):
    """Oscilloscope-style PNG: stacked traces sharing the time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in records]
    fig, axes = plt.subplots(
        5, 1, sharex=True, figsize=(11, 9), height_ratios=[2, 2, 2, 1, 2]
    )
    ax_p, ax_d, ax_s, ax_c, ax_i = axes
    step = {"drawstyle": "steps-post"}
    ax_p.plot(t, [r["pilot_v"] for r in records], color="tab:blue", **step)
    ax_p.set_ylabel("pilot (V)")
    ax_p.set_ylim(-13.5, 13.5)
    ax_d.plot(
        t,
        [r["duty"] if r["duty"] is not None else 0 for r in records],
        label="duty %",
        **step,
    )
    ax_d.plot(t, [r["offer_a"] for r in records], label="offer A", **step)
    ax_d.set_ylabel("duty / offer")
    ax_d.legend(loc="upper right", fontsize="small")
    ax_s.plot(
        t,
        [STATES.index(r["state"]) if r["state"] in STATES else -1 for r in records],
        color="tab:purple",
        **step,
    )
    ax_s.set_yticks(range(len(STATES)), STATES, fontsize="small")
    ax_s.set_ylabel("state")
    ax_c.plot(t, [1 if r["contactor"] else 0 for r in records], color="tab:red", **step)
    ax_c.set_yticks([0, 1], ["open", "closed"])
    ax_c.set_ylabel("contactor")
    phases = max((len(r["current_a"]) for r in records), default=0)
    for p in range(phases):
        ax_i.plot(
            t,
            [r["current_a"][p] if p < len(r["current_a"]) else 0 for r in records],
            label="L%d" % (p + 1),
        )
    ax_i.set_ylabel("current (A)")
    ax_i.set_xlabel("time (s)")
    if phases:
        ax_i.legend(loc="upper right", fontsize="small")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)


# --- commands ----------------------------------------------------------------------------------------------
def _print_bad(path, errors):
    print("%s: invalid scenario:" % path, file=sys.stderr)
    for e in errors:
        print("  " + e, file=sys.stderr)


def cmd_run(args):
    if args.port:
        return cmd_bench(args)
    try:
        sc = load_scenario(args.scenario)
    except BadScenario as e:
        _print_bad(args.scenario, e.args[0])
        return EXIT_BAD_INPUT
    live = LivePrinter(sc) if args.live else None
    if live:
        print(
            "scenario %s: %s"
            % (
                sc.get("name", os.path.basename(args.scenario)),
                sc.get("description", ""),
            )
        )
    try:
        extra = []
        if args.data:
            extra += ["--data", os.path.abspath(args.data)]
        if args.broker:
            host, _, port = args.broker.rpartition(":")
            if not host or not port.isdigit():
                print("rig: --broker wants HOST:PORT, got %r" % args.broker, file=sys.stderr)
                return EXIT_BAD_INPUT
            extra += ["--broker", args.broker]
        if args.id:
            extra += ["--id", args.id]
        if getattr(args, "ocpp", None):  # OCPP 1.6J central system (docs/ocpp.md)
            if not args.ocpp.startswith(("ws://", "wss://")):
                print("rig: --ocpp wants ws://HOST:PORT/ID, got %r" % args.ocpp, file=sys.stderr)
                return EXIT_BAD_INPUT
            extra += ["--ocpp", args.ocpp]
        records, _commands, summary = run_scenario(
            args.scenario, sc, args.seed, args.realtime, live, extra
        )
    except RigError as e:
        print("rig: %s" % e, file=sys.stderr)
        return EXIT_CRASH
    if live:
        live.finish()
    if args.trace:
        with open(args.trace, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    if args.plot:
        plot(records, args.plot, sc.get("name", os.path.basename(args.scenario)))
    failures = check_expects(sc, records)
    for msg in failures:
        print("FAIL " + msg)
    n_exp = sum(len(s.get("expect", {})) for s in sc["steps"])
    speed = (
        summary["sim_seconds"] / summary["wall_seconds"]
        if summary.get("wall_seconds")
        else float("inf")
    )
    print(
        "%s: %d of %d expectations held; %.1f s simulated in %.2f s (%.0fx real time), %d records; "
        "contactor open max %s ms, close max %s ms"
        % (
            os.path.basename(args.scenario), n_exp - len(failures), n_exp, summary["sim_seconds"],
            summary["wall_seconds"], speed, len(records), summary.get("open_max_ms"), summary.get("close_max_ms"),
        )
    )  # fmt: skip
    return EXIT_FAILED if failures else EXIT_OK


def reaction_row(summary):
    """(open_max, close_max, unfinished count, n_opens, n_closes) from a summary."""
    opens = summary.get("opens", [])
    closes = summary.get("closes", [])
    unfinished = sum(1 for o in opens if o.get("unfinished"))
    return (
        summary.get("open_max_ms"),
        summary.get("close_max_ms"),
        unfinished,
        len(opens),
        len(closes),
    )


def cmd_measure(args):
    paths = args.scenarios or sorted(glob.glob(os.path.join(SCENARIO_DIR, "*.json")))
    if not paths:
        print("rig: no scenarios found in %s" % SCENARIO_DIR, file=sys.stderr)
        return EXIT_BAD_INPUT
    worst = EXIT_OK
    all_open, all_close = [], []
    print(
        "%-32s %6s %10s %7s %10s  %s"
        % ("scenario", "opens", "open max", "closes", "close max", "note")
    )
    for path in paths:
        name = os.path.basename(path)
        try:
            sc = load_scenario(path)
            _records, _commands, summary = run_scenario(path, sc, args.seed)
        except BadScenario as e:
            _print_bad(path, e.args[0])
            worst = max(worst, EXIT_BAD_INPUT)
            continue
        except RigError as e:
            print("rig: %s: %s" % (name, e), file=sys.stderr)
            worst = max(worst, EXIT_CRASH)
            continue
        o_max, c_max, unfinished, n_o, n_c = reaction_row(summary)
        notes = []
        if unfinished:
            notes.append("%d opening(s) required but never done" % unfinished)
        # control (issue 15): a close the world forbade (sim/scenario.py "unsafe")
        unsafe = [c for c in summary.get("closes", []) if c.get("cause") == "unsafe"]
        if unsafe:
            notes.append("%d unsafe close(s): %s" % (len(unsafe), ", ".join(
                "%s at %.2f s" % (c.get("why"), c["t"]) for c in unsafe[:3])))  # fmt: skip
        if o_max is not None and o_max > OPEN_TARGET_MS:
            notes.append("open > %d ms" % OPEN_TARGET_MS)
        if c_max is not None and c_max > CLOSE_TARGET_MS:
            notes.append("close > %d ms" % CLOSE_TARGET_MS)
        if notes:
            worst = max(worst, EXIT_FAILED)
        if o_max is not None:
            all_open.append(o_max)
        if c_max is not None:
            all_close.append(c_max)
        print(
            "%-32s %6d %10s %7d %10s  %s"
            % (name, n_o, _ms_text(o_max), n_c, _ms_text(c_max), "; ".join(notes))
        )
    o_all = max(all_open) if all_open else None
    c_all = max(all_close) if all_close else None
    print(
        "maxima over %d scenario(s): open %s (target <= %d ms), close %s (target <= %d ms)"
        % (
            len(paths),
            _ms_text(o_all),
            OPEN_TARGET_MS,
            _ms_text(c_all),
            CLOSE_TARGET_MS,
        )
    )
    return worst


CAL_LIMIT_PCT = 0.5  # a calibrated meter must read the reference within this


def cmd_calibrate(args):
    """Simulated calibration (tools/bench_mp.py calibrate): meter a known load
    through CTs that read ct_error_pm per mille high, store per-channel gains in
    DIR/cal.json (what firmware/app.py loads at boot), boot again and meter."""
    import tempfile

    data = os.path.abspath(args.data) if args.data else tempfile.mkdtemp(prefix="evse-cal-")
    os.makedirs(data, exist_ok=True)
    mp = micropython()
    if not os.path.exists(mp):
        print("rig: no MicroPython interpreter at %s: run `make deps` first" % mp, file=sys.stderr)
        return EXIT_CRASH
    cmd = [mp, os.path.join(REPO, "tools", "bench_mp.py"), "calibrate", data,
           str(args.ct_error_pm), str(args.reference_a), str(args.minutes)]  # fmt: skip
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join([REPO, os.path.join(REPO, "lib")])
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60 + 10 * args.minutes, check=False)
    except subprocess.TimeoutExpired:
        print("rig: calibration run timed out", file=sys.stderr)
        return EXIT_CRASH
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines or not lines[-1].startswith("{"):
        print("rig: calibration run failed (exit %d):\n%s" % (p.returncode, p.stdout[-2000:]), file=sys.stderr)
        return EXIT_CRASH
    r = json.loads(lines[-1])
    print("reference load %.1f A on every phase; simulated CTs read %+.1f %%" % (r["reference_a"], r["ct_error_pm"] / 10))
    print("before: gains %s ppm, session energy off by %+.3f %%" % (r["before_gain_ppm"], r["before_err_pct"]))
    print("stored: gains %s ppm in %s" % (r["stored_gain_ppm"], r["cal_file"]))
    print("after a reboot: gains %s ppm, session energy off by %+.3f %% (limit +-%.1f %%)"
          % (r["after_gain_ppm"], r["after_err_pct"], CAL_LIMIT_PCT))  # fmt: skip
    ok = r["after_gain_ppm"] == r["stored_gain_ppm"] and abs(r["after_err_pct"]) <= CAL_LIMIT_PCT
    print("calibration %s" % ("OK" if ok else "FAILED"))
    return EXIT_OK if ok else EXIT_FAILED


def _ms_text(v):
    return "-" if v is None else "%d ms" % v


# --- bench: a real board on a pilot-signal rig (--port) -------------------------------------------------
# docs/bench.md. The board runs the real firmware with `bench_trace` on and prints
# firmware/bench.py's `TRACE {...}` lines; this side announces the steps at their time
# (firmware time from the trace), collects the records and checks the expects.
BENCH_PREFIX = "TRACE "  # firmware/bench.py PREFIX
BOARD_DATA = "/data"  # the board's data directory (config.json, sim.json on the emulated board)
RIG_SCENARIO = "rig_scenario.json"  # --sim-ev: the steps the emulated EV follows (sim/follower.py)
RIG_BACKUP = "rig_backup.json"  # the files the rig changed, as they were before
BACKED_UP = ("config.json", "sim.json")
FIRST_RECORD_S = 30.0  # after the reset, the first trace record must come within this
SILENCE_S = 5.0  # longer without a record while running: the board stopped
FILE_CHUNK = 512  # characters per raw-REPL exec when writing a file

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


def payload_text(value):
    """The plain MQTT payload text of a `set` value (as sim/scenario.py sends it)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value)


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
        elif key == "set":
            for name, value in v.items():
                who = {"operator": "send", "mqtt": "rig sends", "board": "the board applies"}[commands]
                out.append("%s remote command %s=%s" % (who, name, payload_text(value) or '""'))
    if "expect" in step:
        out.append(describe_expect(step["expect"]))
    return out


def needs_operator(step, mqtt=False):
    """Whether a step has an action only a person at the rig can do."""
    return any(k in ACTIONS for k in step) or ("set" in step and not mqtt)


class BenchBoard:
    """The board on the serial line: files through the raw REPL (mpremote's
    transport), a soft reset into the firmware, then its console read by a thread."""

    def __init__(self, port, baud=115200):
        try:
            from mpremote.transport import TransportError
            from mpremote.transport_serial import SerialTransport
        except ImportError:
            raise RigError("mpremote is not installed: run `make deps`") from None
        self.TransportError = TransportError
        try:
            self.t = SerialTransport(port, baudrate=baud)
        except Exception as e:
            raise RigError("no board at %s: %s" % (port, e)) from None
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

    # --- raw REPL -----------------------------------------------------------------------------
    def interrupt(self):
        """Ctrl-C the firmware (it leaves the board safe) and enter the raw REPL."""
        for _attempt in range(3):
            try:
                self.t.enter_raw_repl(soft_reset=False, timeout_overall=5)
                self.exec("import os\nos.chdir('/')\n")
                return
            except self.TransportError:
                pass  # e.g. the Ctrl-C landed in boot.py and main.py started: again
            except OSError as e:
                raise RigError("lost the board on %s: %s" % (self.port, e)) from None
        raise RigError("no MicroPython REPL answers on %s" % self.port)

    def exec(self, code):
        try:
            out, err = self.t.exec_raw(code, timeout=10)
        except self.TransportError as e:
            raise RigError("lost the board on %s: %s" % (self.port, e)) from None
        if err:
            raise RigError("board error: %s" % err.decode("utf-8", "replace").strip())
        return out.decode("utf-8", "replace")

    def read_file(self, path):
        """Text of a board file, None when it does not exist."""
        out = self.exec(
            "try:\n with open(%r) as _f: print(repr(_f.read()))\nexcept OSError:\n print(None)\n" % path
        )
        import ast

        return ast.literal_eval(out.strip())

    def write_file(self, path, text):
        """Write a board file whole: a temp file, then one replacing rename."""
        tmp = path + ".tmp"
        self.exec("_f = open(%r, 'w')\n" % tmp)
        for i in range(0, len(text), FILE_CHUNK):
            self.exec("_f.write(%r)\n" % text[i:i + FILE_CHUNK])
        self.exec(
            "_f.close()\ntry:\n os.rename(%r, %r)\nexcept OSError:\n os.remove(%r)\n os.rename(%r, %r)\n"
            % (tmp, path, path, tmp, path)
        )

    def remove(self, path):
        self.exec("try:\n os.remove(%r)\nexcept OSError:\n pass\n" % path)

    def restart(self):
        """Soft reset from the friendly REPL: boot.py, then main.py runs the firmware."""
        self.t.exit_raw_repl()
        time.sleep(0.1)
        self.t.serial.write(b"\x04")

    # --- the console ------------------------------------------------------------------------------
    def start_reader(self):
        self.t.serial.timeout = 0.05
        self._stop.clear()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def stop_reader(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None

    def _read(self):
        ser = self.t.serial
        buf = b""
        while not self._stop.is_set():
            try:
                data = ser.read(1)
                if data:
                    n = ser.in_waiting
                    if n:
                        data += ser.read(n)
            except Exception as e:  # the port went away
                self.lost = str(e)
                return
            if not data:
                continue
            now = time.monotonic()
            buf += data
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                self._line(raw.decode("utf-8", "replace").rstrip("\r"), now)

    def _line(self, line, now):
        obj = None
        if line.startswith(BENCH_PREFIX):
            try:
                obj = json.loads(line[len(BENCH_PREFIX):])
            except ValueError:
                obj = None
        with self.lock:
            if isinstance(obj, dict) and "state" in obj and _is_num(obj.get("t")):
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
        try:
            self.t.close()
        except Exception:
            pass


def _json_obj(text):
    """A dict from a board file's text (None / not an object: {})."""
    if text is None:
        return {}
    try:
        v = json.loads(text)
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def bench_prepare(board, sc, sim_ev=False, seed=None, strip_sets=False, log=print):
    """Put the board in bench mode: back up the files the rig changes (once: a
    backup left by an aborted run holds the true originals), write config.json
    with the scenario's config and bench_trace true, and for --sim-ev sim.json
    (the scenario's sim options and seed) and rig_scenario.json. Returns the
    originals {name: text or None}."""
    board.exec("try:\n os.mkdir(%r)\nexcept OSError:\n pass\n" % BOARD_DATA)
    backup_path = BOARD_DATA + "/" + RIG_BACKUP
    old = board.read_file(backup_path)
    originals = _json_obj(old) if old is not None else None
    if originals is not None and all(k in originals for k in BACKED_UP):
        log("rig: %s/%s holds the files of an aborted run; they are restored at the end" % (BOARD_DATA, RIG_BACKUP))
    else:
        originals = {name: board.read_file(BOARD_DATA + "/" + name) for name in BACKED_UP}
        board.write_file(backup_path, json.dumps(originals))
    cfg = _json_obj(originals["config.json"])
    cfg.update(sc.get("config") or {})
    cfg["bench_trace"] = True
    board.write_file(BOARD_DATA + "/config.json", json.dumps(cfg))
    scenario_path = BOARD_DATA + "/" + RIG_SCENARIO
    if sim_ev:
        sim = _json_obj(originals["sim.json"])
        sim.pop("ev", None)  # the scenario starts unplugged, as in a simulated run
        sim.update(sc.get("sim") or {})
        sim["seed"] = seed if seed is not None else sc.get("seed", 1)
        board.write_file(BOARD_DATA + "/sim.json", json.dumps(sim))
        uploaded = dict(sc)
        if strip_sets:  # the rig sends them over MQTT itself
            uploaded["steps"] = [{k: v for k, v in s.items() if k != "set"} for s in sc["steps"]]
        board.write_file(scenario_path, json.dumps(uploaded))
    else:
        board.remove(scenario_path)
    return originals


def bench_restore(board, originals=None):
    """Undo bench_prepare (with no originals given: from the backup file on the
    board; nothing to do without one). The board must be in the raw REPL."""
    backup_path = BOARD_DATA + "/" + RIG_BACKUP
    if originals is None:
        text = board.read_file(backup_path)
        if text is None:
            return False
        originals = _json_obj(text)
    for name in BACKED_UP:
        path = BOARD_DATA + "/" + name
        if name not in originals:
            continue
        if originals[name] is None:
            board.remove(path)
        else:
            board.write_file(path, originals[name])
    board.remove(BOARD_DATA + "/" + RIG_SCENARIO)
    board.remove(backup_path)
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
        info = self.c.publish(self.base + "set/" + name, payload_text(value), qos=1, retain=False)
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


def run_bench(args, sc, log=print, ask=input):
    """The bench session; returns (records, aligned scenario). Raises RigError."""
    print_lock = threading.Lock()  # the console reader prints too
    plain_log = log

    def log(text):
        with print_lock:
            plain_log(text)

    mqtt_sets = bool(args.broker)
    board = BenchBoard(args.port, args.baud)
    originals = None
    mq = None
    try:
        log("rig: connecting to %s, stopping the firmware (Ctrl-C: it leaves the outputs safe)" % args.port)
        board.interrupt()
        originals = bench_prepare(board, sc, args.sim_ev, args.seed, strip_sets=mqtt_sets, log=log)
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
        board.restart()
        end = time.monotonic() + FIRST_RECORD_S
        while board.board_time() is None:
            _check_board(board)
            if time.monotonic() > end:
                raise RigError("no trace record within %.0f s of the reset: does the board run this "
                               "firmware (firmware/bench.py)?" % FIRST_RECORD_S)
            time.sleep(0.02)
        shift = 0.0  # --step: how much later than planned the board's clock runs the scenario
        steps = []
        for step in sc["steps"]:
            due = step["t"] + shift
            _wait_board_time(board, due)
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
    finally:
        board.stop_reader()
        if mq is not None:
            mq.close()
        try:
            board.interrupt()
            if originals is not None:
                bench_restore(board, originals)
            log("rig: board files restored, restarting the firmware")
            board.restart()
        except RigError as e:
            log("rig: could not restore the board (%s); run `rig.py restore --port %s`" % (e, args.port))
        board.close()


def cmd_bench(args):
    """`run SCENARIO --port PORT`: a real (or emulated) board on the bench."""
    bad = [o for o, v in (("--realtime", args.realtime), ("--data", args.data)) if v]
    if bad:
        print("rig: %s only apply to a simulated run (no --port)" % ", ".join(bad), file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.step and args.sim_ev:
        print("rig: --step is for an operator; with --sim-ev the emulated EV follows the scenario by itself",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.seed is not None and not args.sim_ev:
        print("rig: --seed only applies to the emulated EV (--sim-ev)", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.broker:
        host, _, port = args.broker.rpartition(":")
        if not host or not port.isdigit():
            print("rig: --broker wants HOST:PORT, got %r" % args.broker, file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        sc = load_scenario(args.scenario)
    except BadScenario as e:
        _print_bad(args.scenario, e.args[0])
        return EXIT_BAD_INPUT
    name = sc.get("name", os.path.basename(args.scenario))
    print("scenario %s: %s" % (name, sc.get("description", "")), flush=True)
    if sc.get("sim") and not args.sim_ev:
        print("rig: note: the scenario's sim options do not apply to a real board", flush=True)

    def log(text):
        print(text, flush=True)

    try:
        records, aligned = run_bench(args, sc, log)
    except RigError as e:
        print("rig: %s" % e, file=sys.stderr)
        return EXIT_CRASH
    if args.trace:
        with open(args.trace, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    if args.plot and records:
        plot(records, args.plot, name + " (bench)")
    failures = check_expects(aligned, records)
    for msg in failures:
        print("FAIL " + msg)
    n_exp = sum(len(s.get("expect", {})) for s in sc["steps"])
    last_t = records[-1]["t"] if records else 0
    print("%s: %d of %d expectations held; %.1f s on the board, %d records"
          % (os.path.basename(args.scenario), n_exp - len(failures), n_exp, last_t, len(records)))
    return EXIT_FAILED if failures else EXIT_OK


def cmd_restore(args):
    """Undo what an aborted bench run left on the board (rig_backup.json)."""
    try:
        board = BenchBoard(args.port, args.baud)
    except RigError as e:
        print("rig: %s" % e, file=sys.stderr)
        return EXIT_CRASH
    try:
        board.interrupt()
        done = bench_restore(board)
        print("rig: %s" % ("board files restored" if done else "nothing to restore (no %s/%s)"
                           % (BOARD_DATA, RIG_BACKUP)))
        board.restart()
    except RigError as e:
        print("rig: %s" % e, file=sys.stderr)
        return EXIT_CRASH
    finally:
        board.close()
    return EXIT_OK


def build_parser():
    p = argparse.ArgumentParser(
        prog="rig.py",
        description="Bench rig: run the firmware against a simulated EV and board "
        "(MicroPython unix port) from a scenario file, check its expectations, "
        "plot the signals and measure contactor reaction times. "
        "Scenario format: docs/scenarios.md.",
        epilog="exit codes: 0 all held, 1 an expectation or target failed, "
        "2 bad arguments or scenario file, 3 the MicroPython process failed",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser(
        "run",
        help="run one scenario and check its expectations",
        description="Validate and run one scenario, then check every `expect` step against "
        "the last trace record at or before the step's time. Prints one FAIL line per "
        "failed expectation (step, field, expected, got).",
    )
    r.add_argument("scenario", metavar="SCENARIO.json")
    r.add_argument(
        "--trace",
        metavar="TRACE.jsonl",
        help="write the trace records here, one JSON object a line",
    )
    r.add_argument(
        "--plot",
        metavar="PLOT.png",
        help="draw pilot, duty/offer, state, contactor and current (PNG)",
    )
    r.add_argument(
        "--realtime", action="store_true", help="let simulated time follow wall time"
    )
    r.add_argument(
        "--live", action="store_true", help="print a readable timeline as the run goes"
    )
    r.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="simulator seed (overrides the scenario's)",
    )
    r.add_argument(
        "--data",
        metavar="DIR",
        help="the simulated board's flash directory, kept between runs (journal, "
        "lifetime energy, config.json); default: a fresh one per run",
    )
    r.add_argument(
        "--broker",
        metavar="HOST:PORT",
        help="connect the firmware's MQTT link to this broker; the run ends with a clean "
        "stop that lets queued sessions reach it and publishes online 0. With --port: the "
        "broker the board's link uses; the rig sends the `set` steps there as remote commands",
    )
    r.add_argument("--ocpp", metavar="URL", help="connect the simulated charger to this OCPP 1.6J "
                   "central system, ws://HOST:PORT/PATH/ID (docs/ocpp.md); best with --realtime")
    r.add_argument("--id", metavar="ID", help="the charger's id (MQTT topics, session ids); "
                   "with --port: the board's id for the command topics (default: from its config)")
    b = r.add_argument_group(
        "bench (a real board on a pilot-signal rig, docs/bench.md)",
        "With --port the scenario drives a board running the firmware: the rig turns on "
        "bench_trace in its /data/config.json (restored at the end), restarts it, announces each "
        "step at its time on the board's clock, records the board's trace and checks the "
        "expects. `set` steps go over MQTT with --broker, else the operator sends them.")
    b.add_argument("--port", metavar="PORT",
                   help="the board's serial line: /dev/ttyUSB0, a pty, or socket://HOST:PORT")
    b.add_argument("--baud", type=int, default=115200, help="serial speed (default 115200)")
    b.add_argument("--step", action="store_true",
                   help="wait for Enter after each operator action; later steps move by the wait")
    b.add_argument("--sim-ev", action="store_true",
                   help="emulated board (tools/simboard.py): upload the scenario, its simulated EV "
                   "applies the world steps (and `set` without --broker) itself")
    r.set_defaults(func=cmd_run)
    m = sub.add_parser(
        "measure",
        help="table of contactor reaction times over scenarios",
        description="Run each scenario and print its worst contactor opening delay (from the "
        "moment the world required it: S2 opened, EV unplugged, or a cp_short / diode_short / "
        "pe_open / rcd_trip fault) and closing delay (from S2 closing), in simulated ms. "
        "Exit 1 if any exceeds its target (open <= %d ms, close <= %d ms) or a required opening "
        "never happened." % (OPEN_TARGET_MS, CLOSE_TARGET_MS),
    )
    m.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO.json",
        help="default: tests/scenarios/*.json",
    )
    m.add_argument(
        "--seed", type=int, metavar="N", help="simulator seed for every scenario"
    )
    m.set_defaults(func=cmd_measure)
    rs = sub.add_parser(
        "restore",
        help="undo the bench settings an aborted `run --port` left on a board",
        description="Restore /data/config.json (and sim.json) from /data/rig_backup.json on "
        "the board, remove rig_scenario.json, restart the firmware.",
    )
    rs.add_argument("--port", required=True, metavar="PORT")
    rs.add_argument("--baud", type=int, default=115200)
    rs.set_defaults(func=cmd_restore)
    c = sub.add_parser(
        "calibrate",
        help="calibrate the meter's per-channel gain against a known load (simulated board)",
        description="Charge a simulated EV drawing a known reference current through CTs that read "
        "--ct-error-pm per mille high, compute each channel's gain from the average of 50 bursts "
        "(firmware/meter.py calibrate()), store it in DIR/cal.json (save_cal(); the firmware loads it at "
        "boot), then boot again and meter a session. Exit 1 if the calibrated session is off by more than "
        "%.1f %%. A real rig: see docs/metering.md, 'Calibrating a real charger'." % CAL_LIMIT_PCT,
    )
    c.add_argument("--data", metavar="DIR", help="the board's flash directory (default: a new temp dir)")
    c.add_argument("--ct-error-pm", type=int, default=20, metavar="PM",
                   help="gain error of the simulated CTs, per mille (default 20: 2 %% high)")  # fmt: skip
    c.add_argument("--reference-a", type=float, default=16.0, metavar="A",
                   help="the known load per phase, A (default 16)")  # fmt: skip
    c.add_argument("--minutes", type=int, default=5, metavar="N",
                   help="simulated minutes of each metering run (default 5)")  # fmt: skip
    c.set_defaults(func=cmd_calibrate)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
