"""The rig's command line: `run`, `measure`, `restore`, `calibrate`.

    .venv/bin/python tools/rig.py run SCENARIO.json [--live] [--plot P.png] [--port PORT ...]

Exit codes (scripts may rely on them):
    0  every expectation held / every reaction time within its target
    1  an expectation failed / a reaction-time target was missed
    2  bad command line or bad scenario file (the message names the step)
    3  the MicroPython process died, printed a traceback or timed out
"""

import argparse
import glob
import json
import os
import sys

from board_session import BoardError, BoardSession

from evrig import EXIT_BAD_INPUT, EXIT_CRASH, EXIT_FAILED, EXIT_OK, SCENARIO_DIR, BadScenario, RigError, load_scenario
from evrig.board_run import BOARD_DATA, RIG_BACKUP, restore_board, run_on_board
from evrig.calibrate import CAL_LIMIT_PCT, cmd_calibrate
from evrig.pilotrates import measure_pilot, print_pilot
from evrig.report import LivePrinter, plot
from evrig.scenario import check_expects
from evrig.unixport import run_scenario

# Reaction-time targets for `measure` (ms of simulated time).
OPEN_TARGET_MS = 20  # the firmware's share: event -> open command
CLOSE_TARGET_MS = 200
# --- timing (issue 12): sim/timing.py's profiles; `measure` uses the ESP32 one ---
PROFILES = ("ideal", "esp32", "esp32_worst")
MEASURE_PROFILE = "esp32"
IEC_OPEN_MS = 100  # IEC 61851-1: the supply is disconnected within 100 ms (physical)
# --- end timing ---


def _print_bad(path, errors):
    print("%s: invalid scenario:" % path, file=sys.stderr)
    for e in errors:
        print("  " + e, file=sys.stderr)


def _broker_ok(args):
    """Whether --broker (if given) is HOST:PORT; says so on stderr when not."""
    if args.broker:
        host, _, port = args.broker.rpartition(":")
        if not host or not port.isdigit():
            print("rig: --broker wants HOST:PORT, got %r" % args.broker, file=sys.stderr)
            return False
    return True


def _judge(args, sc, records, title):
    """Write --trace and --plot, print one FAIL line per failed expectation.
    Returns (failures, number of expectations)."""
    if args.trace:
        with open(args.trace, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    if args.plot and records:
        plot(records, args.plot, title)
    failures = check_expects(sc, records)
    for msg in failures:
        print("FAIL " + msg)
    return failures, sum(len(s.get("expect", {})) for s in sc["steps"])


def cmd_run(args):
    if args.port:
        return cmd_board_run(args)
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
            if not _broker_ok(args):
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
            args.scenario, sc, args.seed, args.realtime, live, extra, args.profile
        )
    except RigError as e:
        print("rig: %s" % e, file=sys.stderr)
        return EXIT_CRASH
    if live:
        live.finish()
    failures, n_exp = _judge(args, sc, records, sc.get("name", os.path.basename(args.scenario)))
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


def measure_verdict(summary):
    """(notes, failed) for one scenario's summary in `measure`. An opening
    still required when the run ended (`unfinished`: the EV opened S2 a few ms
    before the end, the contacts still releasing) fails only once it has
    waited longer than the IEC bound; before that it is under way, noted."""
    o_max, c_max, _unfinished, _n_o, _n_c = reaction_row(summary)
    d_max = reaction_figures([summary])["open_decide_ms_max"]
    notes = []
    ends = [o for o in summary.get("opens", []) if o.get("unfinished")]
    late = [o for o in ends if o["ms"] is None or o["ms"] > IEC_OPEN_MS]
    if late:
        notes.append("%d opening(s) required but never done" % len(late))
    # control (issue 15): a close the world forbade (sim/scenario.py "unsafe")
    unsafe = [c for c in summary.get("closes", []) if c.get("cause") == "unsafe"]
    if unsafe:
        notes.append("%d unsafe close(s): %s" % (len(unsafe), ", ".join(
            "%s at %.2f s" % (c.get("why"), c["t"]) for c in unsafe[:3])))  # fmt: skip
    if o_max is not None and o_max > IEC_OPEN_MS:
        notes.append("open > %d ms (IEC)" % IEC_OPEN_MS)
    if d_max is not None and d_max > OPEN_TARGET_MS:
        notes.append("open command > %d ms" % OPEN_TARGET_MS)
    if c_max is not None and c_max > CLOSE_TARGET_MS:
        notes.append("close > %d ms" % CLOSE_TARGET_MS)
    failed = bool(notes)
    if len(ends) > len(late):
        notes.append("%d opening(s) under way at the end (%s ms so far)" % (
            len(ends) - len(late), ", ".join(str(o["ms"]) for o in ends if o not in late)))  # fmt: skip
    return notes, failed


# --- timing (issue 12): reaction figures from physical truth -------------------------------
def percentile(values, q):
    """The q-th percentile (0..100) of values, nearest rank; None when empty."""
    if not values:
        return None
    v = sorted(values)
    k = max(1, -(-len(v) * q // 100))  # ceil(n * q / 100), at least the first
    return v[min(len(v), int(k)) - 1]


def reaction_figures(summaries):
    """p50/p99/max of every timed opening (physical: event -> contacts open),
    the firmware's share of it (event -> open command) and every closing
    (S2 closed -> contacts closed), over the summaries of several runs."""
    o = [x["ms"] for s in summaries for x in s.get("opens", []) if x.get("ms") is not None]
    d = [x["decide_ms"] for s in summaries for x in s.get("opens", []) if x.get("decide_ms") is not None]
    c = [x["ms"] for s in summaries for x in s.get("closes", []) if x.get("ms") is not None]
    out = {}
    for name, vals in (("open", o), ("open_decide", d), ("close", c)):
        out[name + "_n"] = len(vals)
        for q in (50, 99, 100):
            out["%s_ms_%s" % (name, "max" if q == 100 else "p%d" % q)] = percentile(vals, q)
    return out


def cmd_measure(args):
    paths = args.scenarios or sorted(glob.glob(os.path.join(SCENARIO_DIR, "*.json")))
    if not paths:
        print("rig: no scenarios found in %s" % SCENARIO_DIR, file=sys.stderr)
        return EXIT_BAD_INPUT
    worst = EXIT_OK
    summaries = []
    print("timing profile: %s" % args.profile)
    print(
        "%-32s %6s %10s %10s %7s %10s  %s"
        % ("scenario", "opens", "open max", "decide max", "closes", "close max", "note")
    )
    for path in paths:
        name = os.path.basename(path)
        try:
            sc = load_scenario(path)
            _records, _commands, summary = run_scenario(path, sc, args.seed, profile=args.profile)
        except BadScenario as e:
            _print_bad(path, e.args[0])
            worst = max(worst, EXIT_BAD_INPUT)
            continue
        except RigError as e:
            print("rig: %s: %s" % (name, e), file=sys.stderr)
            worst = max(worst, EXIT_CRASH)
            continue
        summaries.append(summary)
        o_max, c_max, _unfinished, n_o, n_c = reaction_row(summary)
        d_max = reaction_figures([summary])["open_decide_ms_max"]
        notes, failed = measure_verdict(summary)
        if failed:
            worst = max(worst, EXIT_FAILED)
        stalls = summary.get("stall_count")
        if stalls:
            notes.append("%d stall(s): %s" % (stalls, ", ".join(sorted({s["kind"] for s in summary.get("stalls", [])}))))
        print(
            "%-32s %6d %10s %10s %7d %10s  %s"
            % (name, n_o, _ms_text(o_max), _ms_text(d_max), n_c, _ms_text(c_max), "; ".join(notes))
        )
    f = reaction_figures(summaries)
    print("over %d scenario(s), %s profile:" % (len(paths), args.profile))
    for name, what, target in (
        ("open", "event -> contacts open", "IEC <= %d ms" % IEC_OPEN_MS),
        ("open_decide", "event -> open command", "target <= %d ms" % OPEN_TARGET_MS),
        ("close", "S2 closed -> contacts closed", "target <= %d ms" % CLOSE_TARGET_MS),
    ):
        print(
            "  %-12s %-30s n %3d  p50 %7s  p99 %7s  max %7s  (%s)"
            % (name, what, f[name + "_n"], _ms_text(f[name + "_ms_p50"]), _ms_text(f[name + "_ms_p99"]),
               _ms_text(f[name + "_ms_max"]), target)
        )  # fmt: skip
    if args.pilot_reads:
        try:
            print_pilot(measure_pilot(args.pilot_reads))
        except RigError as e:
            print("rig: %s" % e, file=sys.stderr)
            worst = max(worst, EXIT_CRASH)
    return worst
# --- end timing ---


def _ms_text(v):
    return "-" if v is None else "%d ms" % v


def cmd_board_run(args):
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
    if not _broker_ok(args):
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
        records, aligned = run_on_board(args, sc, log)
    except RigError as e:
        print("rig: %s" % e, file=sys.stderr)
        return EXIT_CRASH
    failures, n_exp = _judge(args, aligned, records, name + " (bench)")
    last_t = records[-1]["t"] if records else 0
    print("%s: %d of %d expectations held; %.1f s on the board, %d records"
          % (os.path.basename(args.scenario), n_exp - len(failures), n_exp, last_t, len(records)))
    return EXIT_FAILED if failures else EXIT_OK


def cmd_restore(args):
    """Undo what an aborted bench run left on the board (rig_backup.json)."""
    board = None
    try:
        board = BoardSession(args.port, args.baud)
        board.interrupt()
        done = restore_board(board)
        print("rig: %s" % ("board files restored" if done else "nothing to restore (no %s/%s)"
                           % (BOARD_DATA, RIG_BACKUP)))
        board.soft_reset()
    except BoardError as e:
        print("rig: %s" % e, file=sys.stderr)
        return EXIT_CRASH
    finally:
        if board is not None:
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
    r.add_argument("--profile", choices=PROFILES,
                   help="the simulated board's timing profile (default: the scenario's, else ideal)")
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
        "a board (a real one on a pilot-signal rig, or the emulated one; docs/rig.md)",
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
        description="Run each scenario on the ESP32 timing profile and print its worst contactor "
        "opening delay (from the moment the world required it: S2 opened, EV unplugged, or a "
        "cp_short / diode_short / pe_open / rcd_trip fault, to the contacts physically open), "
        "the firmware's share of it (to the open command) and its closing delay (from S2 closing "
        "to the contacts closed), in simulated ms, then p50/p99/max over all of them. Exit 1 if "
        "an opening exceeds %d ms (IEC 61851-1), an open command %d ms, a closing %d ms, a "
        "required opening never happened or a close was unsafe."
        % (IEC_OPEN_MS, OPEN_TARGET_MS, CLOSE_TARGET_MS),
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
    m.add_argument("--profile", choices=PROFILES, default=MEASURE_PROFILE,
                   help="the simulated board's timing profile (default %s)" % MEASURE_PROFILE)
    m.add_argument("--pilot-reads", type=int, default=500, metavar="N",
                   help="then print the pilot misread rates over N readings per EV state and duty (10, 50, 96 %%) "
                   "on the simulated ESP32 front end, phase-classified and unsynchronised (0: skip; default 500)")
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
