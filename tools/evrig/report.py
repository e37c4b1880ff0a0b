"""Reporting a run: the live timeline as the trace comes, and the plot after.

The timeline prints the notes of the steps as their time comes, one line per
change of a discrete field (or of the current by 1 A or more) and each remote
command's answer; the plot stacks pilot, duty/offer, state, contactor and
currents over one time axis (PNG, matplotlib). Reads records, never runs anything.
"""

import sys

from evrig.scenario import STATES, is_number


def _fmt_num(v, spec):
    return format(v, spec) if is_number(v) else "-"


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

