#!/usr/bin/env python3
"""Write the simulated days of the energy-management scenarios.

A day is a scenario file (docs/scenarios.md) with a step every STEP_S seconds
setting the house's own load (`house_a`) and the solar production (`pv_a`)
per phase, an EV plugged in for the whole day, a house meter publishing the
grid current every second, and a board with a 1/3 phase relay. Everything is
drawn from a seeded random generator, so the files are reproducible:

    .venv/bin/python tools/solar_day.py            # rewrite tests/scenarios/energy/*_day.json
    .venv/bin/python tools/solar_day.py --check    # exit 1 if a file differs from what it would write

The house: a base load with noise, a kettle (9 A on L1, 3 min) a few times,
a washing machine heating (9 A on L3, 15 min), an oven (10 A on L2 and L3,
40 min) at noon. The sun: a half-sine from sunrise to sunset peaking at
`peak_a` per phase (a three-phase inverter); on the cloudy day clouds pass
every few minutes, each taking 60-85 % of the production for 1-8 minutes.
"""

import argparse
import json
import math
import os
import random
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "scenarios", "energy")
STEP_S = 30
DAYS = {
    # name: (seed, start hour, hours, cloudy, peak A per phase, description)
    "sunny_day": (11, 8, 10, False, 14, "A sunny day from 08:00 to 18:00"),
    "cloudy_day": (12, 8, 10, True, 14, "A day of passing clouds from 08:00 to 18:00"),
    "cloudy_2h": (13, 11, 2, True, 14, "Two hours of passing clouds around noon"),
}
SUNRISE_H = 6.5
SUNSET_H = 20.0


def _sun(hour, peak):
    if not SUNRISE_H < hour < SUNSET_H:
        return 0.0
    return peak * math.sin(math.pi * (hour - SUNRISE_H) / (SUNSET_H - SUNRISE_H))


def _clouds(rng, seconds):
    """[(start_s, end_s, factor)] of passing clouds."""
    out = []
    t = rng.uniform(60, 600)
    while t < seconds:
        length = rng.uniform(60, 480)
        out.append((t, t + length, rng.uniform(0.15, 0.4)))
        t += length + rng.uniform(120, 900)
    return out


def _appliances(rng, start_h, seconds):
    """[(start_s, end_s, (l1, l2, l3))] of the house's big loads."""
    out = []
    for _ in range(max(1, int(seconds / 10800))):
        s = rng.uniform(0, seconds - 200)
        out.append((s, s + 180, (9.0, 0.0, 0.0)))  # kettle
    s = rng.uniform(0, seconds - 1000)
    out.append((s, s + 900, (0.0, 0.0, 9.0)))  # washing machine heating
    noon = (12 - start_h) * 3600
    if 0 <= noon < seconds:
        out.append((noon, noon + 2400, (0.0, 10.0, 10.0)))  # oven
    return out


def day(name):
    seed, start_h, hours, cloudy, peak, text = DAYS[name]
    rng = random.Random(seed)
    seconds = hours * 3600
    clouds = _clouds(rng, seconds) if cloudy else []
    loads = _appliances(rng, start_h, seconds)
    steps = []
    for t in range(0, seconds, STEP_S):
        hour = start_h + t / 3600
        pv = _sun(hour, peak)
        for a, b, f in clouds:
            if a <= t < b:
                pv *= f
        house = [0.6 + rng.uniform(-0.2, 0.3), 0.4 + rng.uniform(-0.2, 0.3), 0.5 + rng.uniform(-0.2, 0.3)]
        for a, b, add in loads:
            if a <= t < b:
                house = [h + x for h, x in zip(house, add)]
        step = {"t": t, "house_a": [round(h, 1) for h in house], "pv_a": round(pv, 1)}
        if t == 60:
            step.update({"ev": "B", "draw_a": 16, "note": "EV plugged in"})
        elif t == 120:
            step.update({"ev": "C"})
        steps.append(step)
    return {
        "name": name,
        "description": text + ": house load with spikes, solar production, an EV plugged in all day (tools/solar_day.py)",
        "seed": seed,
        "until": seconds,
        "config": {"mode": "solar", "max_current_a": 16, "mains_max_a": 25, "solar_stop_min": 10,
                   "solar_pause_min": 5, "phases": 3},
        "sim": {"phase_relay": True},
        "mains_meter": {"every_s": 1},
        "steps": steps,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = ap.parse_args(argv)
    os.makedirs(OUT, exist_ok=True)
    differ = []
    for name in DAYS:
        text = json.dumps(day(name), indent=0, separators=(",", ": ")) + "\n"
        path = os.path.join(OUT, name + ".json")
        if args.check:
            try:
                with open(path) as f:
                    if f.read() != text:
                        differ.append(path)
            except OSError:
                differ.append(path)
        else:
            with open(path, "w") as f:
                f.write(text)
            print("wrote", os.path.relpath(path, REPO))
    if differ:
        print("differs from tools/solar_day.py:", ", ".join(differ))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
