#!/usr/bin/env python3
"""Writes the web page's measurements into docs/performance.md.

tests/test_e2e_ui.c (tests/js/ui_check.mjs) writes build/ui/first-load.json
(the first load, five runs in a fresh browser context each) and
build/ui/live-load.json (Live under about 2,000 events/s). This script renders
them as a table between the <!-- ui:begin --> and <!-- ui:end --> markers of
docs/performance.md, so no figure there is typed by hand.

    scripts/ui-render.py [--dir build/ui] [--doc docs/performance.md]
"""
import argparse
import json
import pathlib
import re
import sys

BEGIN = "<!-- ui:begin (written by scripts/ui-render.py from build/ui/*.json; do not edit) -->"
END = "<!-- ui:end -->"


def render(first, load):
    fl, p, g = first, load["page"], load["generator"]
    kb = lambda b: "%.1f KB" % (b / 1024)
    out = [
        "First load of the page from the agent (`/#live`), %d runs, each in a fresh browser context "
        "(empty cache); Chromium %s; measured %s, load average %s on %s CPUs." % (
            fl["runs"], fl["chromium"], fl["when"], fl.get("load_average", "?"), fl.get("cpus", "?")),
        "",
        "| measure | value | target |",
        "|---|---:|---|",
        "| files | %d | |" % fl["files"],
        "| transferred (headers + gzip bodies), median | %s (%d B) | ≤ 300 KB: %s |"
        % (kb(fl["transferred_bytes"]), fl["transferred_bytes"], "met" if fl["transferred_bytes"] <= 300 * 1024 else "missed"),
        "| bodies compressed / uncompressed | %s / %s | |" % (kb(fl["encoded_body_bytes"]), kb(fl["decoded_body_bytes"])),
        "| DOMContentLoaded, median | %d ms | |" % fl["dom_content_loaded_ms_median"],
        "| live stream open, median | %d ms | |" % fl["live_open_ms_median"],
        "| interactive (first view loaded, history drawn, stream open), median | %d ms | ≤ 1 s: %s |"
        % (fl["interactive_ms_median"], "met" if fl["interactive_ms_median"] <= 1000 else "missed"),
        "| interactive, slowest of the runs | %d ms | |" % fl["interactive_ms_max"],
        "",
        "Live under load: `bench_load %s` offered %d ops/s for %.1f s (one connection event each) while the "
        "page showed `#live?type=connection` from the agent (other processes' connections count too); "
        "measured %s, load average %s." % (g["mode"], g["ops_per_sec"], g["seconds"], load["when"], load.get("load_average", "?")),
        "",
        "| measure | value |",
        "|---|---:|",
        "| events the page read from the stream | %d (%d/s) |" % (p["events_received"], p["events_per_sec"]),
        "| animation frames | %d in %.1f s |" % (p["frames"], p["seconds"]),
        "| frame interval p50 / p95 / p99 / max | %s / %s / %s / %s ms |"
        % (p["frame_ms_p50"], p["frame_ms_p95"], p["frame_ms_p99"], p["frame_ms_max"]),
        "| long tasks (> 50 ms): count, total, longest | %d, %d ms, %d ms |"
        % (p["long_tasks"], p["long_task_ms_total"], p["long_task_ms_max"]),
        "| events held in the table / dropped from it (counted, shown) | %d / %d |" % (p["rows_held"], p["rows_dropped"]),
        "| rows in the DOM (virtualised) | %d |" % p["rows_in_dom"],
        "| events the agent's stream dropped meanwhile (slow clients, all of them) | %d |" % load["agent_stream_dropped"],
    ]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="build/ui")
    ap.add_argument("--doc", default="docs/performance.md")
    a = ap.parse_args()
    d = pathlib.Path(a.dir)
    try:
        first = json.loads((d / "first-load.json").read_text())
        load = json.loads((d / "live-load.json").read_text())
    except (OSError, ValueError) as e:
        sys.exit("ui-render: %s (run build/tests/test_e2e_ui first)" % e)
    doc = pathlib.Path(a.doc)
    text = doc.read_text()
    block = BEGIN + "\n\n" + render(first, load) + "\n\n" + END
    pat = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pat.search(text):
        sys.exit("ui-render: no %s ... %s markers in %s" % (BEGIN, END, doc))
    doc.write_text(pat.sub(lambda m: block, text))


if __name__ == "__main__":
    main()
