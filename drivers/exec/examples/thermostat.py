#!/usr/bin/env python3
"""A complete fieldgate external driver: simulated thermostats.

fieldgate starts this program, writes newline-delimited JSON to its stdin and reads
newline-delimited JSON from its stdout (see drivers/exec/README.md). Standard library only.

Each child reports `temperature` and `setpoint` every `interval` seconds (an option from the
device's `options` table); the command `set_setpoint` changes the setpoint; `get` answers the
current values. The command `crash` makes the program exit with status 3 (to see fieldgate
restart it). Log to stderr, never print anything but protocol lines to stdout.
"""
import json
import select
import sys
import time


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def main():
    start = json.loads(sys.stdin.readline())
    assert start["type"] == "start"
    children = {}
    for d in start["devices"]:
        opts = d.get("options") or {}
        children[d["node_id"]] = {
            "interval": float(opts.get("interval", 1.0)),
            "setpoint": float(opts.get("setpoint", 20.0)),
            "temperature": float(opts.get("start", 18.0)),
            "next": 0.0,
        }
        send({"type": "status", "child": d["node_id"], "online": True})
    print(f"thermostat driver up with {len(children)} children", file=sys.stderr, flush=True)

    while True:
        now = time.monotonic()
        for node, c in children.items():
            if now >= c["next"]:
                # Drift a tenth of a degree towards the setpoint.
                step = 0.1 if c["temperature"] < c["setpoint"] else -0.1
                c["temperature"] = round(c["temperature"] + step, 1)
                c["next"] = now + c["interval"]
                send({"type": "report", "child": node, "service": "thermostat",
                      "properties": {"temperature": c["temperature"], "setpoint": c["setpoint"]}})
        wait = max(0.0, min(c["next"] for c in children.values()) - time.monotonic()) if children else 1.0
        ready, _, _ = select.select([sys.stdin], [], [], wait)
        if not ready:
            continue
        line = sys.stdin.readline()
        if not line:          # stdin closed: fieldgate is stopping
            return 0
        msg = json.loads(line)
        kind = msg.get("type")
        if kind == "stop":
            return 0
        c = children.get(msg.get("child"))
        if c is None:
            send({"type": "result", "id": msg["id"], "ok": False, "code": "unknown_child",
                  "message": "no such child"})
        elif kind == "get":
            send({"type": "result", "id": msg["id"], "ok": True,
                  "values": {"thermostat": {"temperature": c["temperature"],
                                            "setpoint": c["setpoint"]}}})
        elif kind == "command" and msg["name"] == "set_setpoint":
            c["setpoint"] = float(msg["params"]["value"])
            send({"type": "result", "id": msg["id"], "ok": True,
                  "values": {"thermostat": {"setpoint": c["setpoint"]}}})
        elif kind == "command" and msg["name"] == "crash":
            print("crashing on request", file=sys.stderr, flush=True)
            sys.exit(3)
        else:
            send({"type": "result", "id": msg["id"], "ok": False, "code": "unsupported",
                  "message": f"unknown command {msg.get('name')}"})


if __name__ == "__main__":
    sys.exit(main())
