#!/usr/bin/env python3
"""Renders a `make bench` results file into docs/performance.md.

    scripts/bench-render.py RESULTS.json PAGE.md
        replaces what lies between <!-- bench:begin ... --> and <!-- bench:end -->
        in PAGE.md with the tables of RESULTS.json (scripts/bench.sh writes it)
    scripts/bench-render.py --splice NAME BLOCK PAGE.md
        replaces the lines from <!-- NAME:begin ... --> to <!-- NAME:end --> in
        PAGE.md with the file BLOCK, which holds both markers (scripts/soak.sh)

Every figure of the block comes from the results file; a measurement marked
invalid there is shown with its reason. The layout depends only on which
measurements exist, so a second run changes figures, not structure.
"""
import json
import re
import sys

TRACERS = ["agent", "bpftrace", "libbpf-tools"]
# The loops whose cost of each hook is shown, in the order the page lists
# them; the first loop of a hook is its own (scripts/bench-agent.sh HOOK_LOAD).
HOOKS = [
    ("sys_exit_connect", "udp-connect"),
    ("sys_exit_connect", "tcp-connect"),
    ("inet_sock_set_state", "tcp-connect"),
    ("sys_exit_accept", "tcp-connect"),
    ("tcp_destroy_sock", "tcp-connect"),
    ("tcp_send_reset", "tcp-connect"),
    ("tcp_receive_reset", "tcp-connect"),
    ("kfree_skb", "drop"),
    ("sched_process_exec", "exec"),
    ("sched_process_exit", "exec"),
    ("sys_enter_execve", "exec"),
    ("sys_exit_execve", "exec"),
    ("io_uring_complete", "io-uring"),
]
WORKLOADS = ["udp-connect", "tcp-connect", "exec", "drop"]


def kernel_id(tracer, hook, loop):
    """The measurement id of a hook's cost: its own loop's has no loop in it."""
    own = next(w for h, w in HOOKS if h == hook)
    return f"kernel.{tracer}.{hook}.ns_per_run" if loop == own else \
        f"kernel.{tracer}.{hook}.{loop}.ns_per_run"


def num(v):
    """A figure as the page prints it: thousands separated, 3-4 significant digits."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    a = abs(v)
    if a >= 1000 or float(v).is_integer():
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


class Results:
    def __init__(self, path):
        with open(path) as f:
            doc = json.load(f)
        self.run = doc.get("run", {})
        self.ms = doc.get("measurements", [])
        self.by_id = {m["id"]: m for m in self.ms}
        self.shown = set()

    def get(self, mid):
        m = self.by_id.get(mid)
        if m is not None:
            self.shown.add(mid)
        return m

    def matches(self, pattern):
        """The groups of every measurement id matching pattern, first seen first, once each."""
        seen = []
        for m in self.ms:
            g = re.fullmatch(pattern, m["id"])
            if g and g.groups() not in seen:
                seen.append(g.groups())
        return seen

    def cell(self, mid, suffix=""):
        """The figure of one measurement, with its validity; '–' when absent."""
        m = self.get(mid)
        if m is None:
            return "–"
        text = num(m["value"]) + suffix
        if m.get("valid") is False:
            text += f" (**invalid**: {m.get('invalid_reason')})"
        return text


def row(cells):
    return "| " + " | ".join(cells) + " |"


def run_line(r):
    run = r.run
    lines = [
        f"{run.get('date', '?')}, {run.get('cpus', '?')} CPUs ({run.get('cpu_model', '?')}), "
        f"kernel {run.get('kernel', '?')}, commit `{run.get('commit', '?')}`; "
        f"`{run.get('command', 'make bench')}` took {run.get('elapsed_seconds', '?')} s; "
        f"load average before {run.get('loadavg_before', '?')}, after {run.get('loadavg_after', '?')} "
        "(other work shares the machine).",
        "",
    ]
    if run.get("quick"):
        lines += ["**Quick run** (tiny sizes): the figures are not meaningful.", ""]
    if run.get("valid"):
        lines.append("Validity: **valid** (no agent drops in the overhead runs, every expected "
                     "program attached, every comparison tool present, every queue flushed).")
    else:
        bad = [m for m in r.ms if m.get("valid") is False]
        lines.append(f"Validity: **invalid**: {len(bad)} of {len(r.ms)} measurements "
                     "(each marked where it is shown):")
        lines.append("")
        lines += [f"- {m['name']}: {m.get('invalid_reason')}" for m in bad]
        if not bad:
            lines += [f"- {why}" for why in run.get("invalid_reasons", [])]
    return lines + [""]


def targets(r):
    out = ["### Targets", "", "| measurement | measured | target | met |", "|---|---:|---|---|"]
    for m in r.ms:
        if m.get("target") is None:
            continue
        met = "yes" if m.get("met") else "**no**"
        if m.get("valid") is False:
            met += f" (**invalid**: {m.get('invalid_reason')})"
        out.append(row([m["name"], r.cell(m["id"], " " + m["unit"]), m["target"], met]))
    return out + [""]


def overhead(r):
    out = [
        "### Overhead: each loop's speed under a tracer ÷ without one (same run)",
        "",
        "| loop | no tracer, ops/s | " + " | ".join(TRACERS) + " |",
        "|---|---:|" + "---:|" * len(TRACERS),
    ]
    for w in WORKLOADS:
        if f"workload.{w}.ops_per_sec" not in r.by_id:
            continue
        cells = [w, r.cell(f"workload.{w}.ops_per_sec")]
        cells += [r.cell(f"speed.{w}.{t}", "x") for t in TRACERS]
        out.append(row(cells))
    out += ["", "| loop | " + " | ".join(f"agent ÷ {t}" for t in TRACERS[1:]) + " |",
            "|---|" + "---:|" * (len(TRACERS) - 1)]
    for w in WORKLOADS:
        cells = [r.cell(f"speed.{w}.agent_over_{t}", "x") for t in TRACERS[1:]]
        if any(c != "–" for c in cells):
            out.append(row([w] + cells))
    variants = [("agent", "every type (the default)"),
                ("agent-no-dns-hooks", "without `dns`, empty programs on its hooks"),
                ("agent-no-dns", "without `dns`"),
                ("agent-no-dns-close", "without `dns` and `close`")]
    rows = []
    for w in WORKLOADS:
        cells = [r.cell(f"speed.{w}.{v}", "x") for v, _ in variants]
        if any(c != "–" for c in cells[1:]):
            rows.append(row([w] + cells))
    if rows:
        out += ["", "What each kind of event costs a loop: its speed under the agent with "
                "`EVENT_TYPES` narrowed ÷ without a tracer, in the same alternated rounds. "
                "The `dns` programs run on every packet of the node (`cgroup_skb`); in the "
                "second column an empty program (`return 1`) takes their place on each of "
                "their two hooks, so the kernel's dispatch into the hooks is paid without "
                "their work; `close` follows each TCP connection to its end:", "",
                "| loop | " + " | ".join(label for _, label in variants) + " |",
                "|---|" + "---:|" * len(variants)] + rows
    out += ["", "In-kernel cost, ns per program run (`kernel.bpf_stats_enabled=1`, which adds "
            "two clock reads to every run of every program); the last two columns are an empty "
            "program on the same hook, attached after the agent's in the same run, and the "
            "agent's own cost over it (the figure the targets are for):", "",
            "| hook | loop | " + " | ".join(TRACERS) + " | empty program | agent's own |",
            "|---|---|" + "---:|" * (len(TRACERS) + 2)]
    for hook, w in HOOKS:
        cells = [r.cell(kernel_id(t, hook, w)) for t in TRACERS]
        agent = kernel_id("agent", hook, w).removesuffix(".ns_per_run")
        cells += [r.cell(f"{agent}.empty_ns_per_run"), r.cell(f"{agent}.own_ns_per_run")]
        if any(c != "–" for c in cells):
            out.append(row([f"`{hook}`", w] + cells))
    out += ["", "The agent's `sys_exit_connect` and `sys_exit_accept` are one program on "
            "`tp_btf/sys_exit` (UDP connects and accepts), so under the same loop they show "
            "the same figure: its average over every syscall of that loop. `io_uring_complete` "
            "runs for every io_uring completion of the node (it reports accepts and UDP "
            "connects done through io_uring); the io-uring loop submits no-op requests, the "
            "path of every completion that is no accept or connect, and is run under the agent "
            "alone.", ""]
    return out


def rate_cell(label):
    """A target rate as bench-*.sh label it: events/s, or max (as fast as possible)."""
    return label if label == "max" else num(int(label))


def loss_curve(r):
    steps = r.matches(r"pipeline\.step\.([^.]+)\.([^.]+)\.offered_per_sec")
    if not steps:
        return []
    fields = ["offered_per_sec", "delivered_per_sec", "lost", "kernel_drops", "agent_drops",
              "cpu_us_per_event"]
    out = ["### Agent end to end (kernel → NATS → an independent subscriber)", "",
           "| workload | target events/s | offered | delivered | lost | kernel drops | agent drops "
           "| agent CPU-µs/event |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, rate in steps:
        out.append(row([mode, rate_cell(rate)] + [r.cell(f"pipeline.step.{mode}.{rate}.{f}") for f in fields]))
    return out + [""]


def ingest_curve(r):
    labels = r.matches(r"aggregator\.nats\.rate_([^.]+)\.publish_rate")
    if not labels:
        return []
    fields = ["publish_rate", "ingest_wall_rate", "sent", "lost", "ingest_rate_per_core"]
    out = ["### Aggregator ingest from NATS (batches of 100, the agent's format)", "",
           "| target events/s | published/s | stored/s | sent | lost | stored per aggregator CPU-s |",
           "|---|---:|---:|---:|---:|---:|"]
    for (label,) in labels:
        cells = [r.cell(f"aggregator.nats.rate_{label}.{f}") for f in fields]
        out.append(row([rate_cell(label)] + cells))
    return out + [""]


def codec(r):
    pairs = r.matches(r"codec\.([^.]+)\.([^.]+)\.events_per_s")
    cases = list(dict.fromkeys(case for case, _ in pairs))
    codecs = list(dict.fromkeys(c for _, c in pairs))
    if not cases:
        return []
    out = ["### Codec A/B (`build/bench/bench_codec`: the fast codec against protobuf-c)", "",
           "| case | " + " | ".join(f"{c} events/s | {c} ns/event" for c in codecs) + " | speedup |",
           "|---|" + "---:|---:|" * len(codecs) + "---:|"]
    for case in cases:
        cells = []
        for c in codecs:
            cells += [r.cell(f"codec.{case}.{c}.events_per_s"), r.cell(f"codec.{case}.{c}.ns_per_event")]
        out.append(row([case] + cells + [r.cell(f"codec.{case}.speedup", "x")]))
    return out + [""]


DNS_KERNEL_LOADS = [
    ("udp", "non-DNS UDP datagram (64 bytes)"),
    ("tcp", "non-DNS TCP segment (bulk stream)"),
    ("dns", "DNS query (egress) or answer (ingress), recorded"),
]
DNS_SPEED_LOADS = [("udp", "UDP datagrams/s"), ("udp-inline", "UDP datagrams/s, one thread"),
                   ("tcp", "TCP MB/s"), ("dns", "DNS queries/s")]


def dns(r):
    """scripts/bench-dns.sh: the dns capture's cost per packet and its effect on throughput."""
    if not r.matches(r"dns\.kernel\.(.+)"):
        return []
    out = ["### DNS capture (`scripts/bench-dns.sh`)", "",
           "In-kernel cost, ns per program run, median of the rounds (`BPF_ENABLE_STATS`); the "
           "empty program (`return 1`) on the same hook after the agent's shows what the "
           "statistics' clock reads and the dispatch cost by themselves; the program's own "
           "cost is the difference:", "",
           "| packet | program | ns/run | empty program | program's own |",
           "|---|---|---:|---:|---:|"]
    for load, label in DNS_KERNEL_LOADS:
        for d in ("egress", "ingress"):
            if f"dns.kernel.{load}.{d}.ns_per_run" not in r.by_id:
                continue
            out.append(row([label, d, r.cell(f"dns.kernel.{load}.{d}.ns_per_run"),
                            r.cell(f"dns.kernel.{load}.empty_{d}.ns_per_run"),
                            r.cell(f"dns.kernel.{load}.{d}.ns_per_packet")]))
    out += ["", "Speed with nothing, under the agent (dns programs on the cgroup v2 root, every "
            "query recorded), under an empty `cgroup_skb` program (`return 1`) on each of the "
            "same two hooks of the root (the kernel's dispatch into the hooks alone) and under "
            "`tcpdump -w /dev/null port <server>`, the captures alternated round by round; "
            "slowdown = median of the rounds' ratios; CPU per op = the load's own CPU time per "
            "op under the capture ÷ without (median of the rounds), which the rest of a shared "
            "machine moves less than the rate; the last column is the agent's CPU per op ÷ the "
            "empty programs' in the same rounds, what the capture adds over the hooks. The "
            "UDP load's datagrams go to a receiving thread, whose sleeps and wakeups take part "
            "in its rate; in the one-thread load the same thread sends a burst and reads it "
            "back, so nothing sleeps and its CPU per op is each datagram's own cost, the "
            "hooks' dispatch included:", "",
            "| load | nothing | agent | slowdown | CPU per op | empty programs | slowdown "
            "| CPU per op | tcpdump | slowdown | CPU per op | agent ÷ empty programs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for load, label in DNS_SPEED_LOADS:
        if f"dns.speed.{load}.none" not in r.by_id:
            continue
        cells = [label, r.cell(f"dns.speed.{load}.none")]
        for c in ("agent", "hooks", "tcpdump"):
            cells += [r.cell(f"dns.speed.{load}.{c}"), r.cell(f"dns.speed.{load}.slowdown.{c}", "x"),
                      r.cell(f"dns.cpu.{load}.{c}", "x")]
        cells.append(r.cell(f"dns.cpu.{load}.agent_over_hooks", "x"))
        out.append(row(cells))
    return out + [""]


def the_rest(r):
    rest = [m for m in r.ms if m["id"] not in r.shown and m.get("target") is None]
    if not rest:
        return []
    out = ["### Every other measurement", "", "| section | measurement | value | unit |",
           "|---|---|---:|---|"]
    for m in rest:
        out.append(row([m.get("section", ""), m["name"], r.cell(m["id"]), m["unit"]]))
    return out + [""]


def render(results_path):
    r = Results(results_path)
    lines = ["<!-- bench:begin (written by make bench: scripts/bench-render.py; do not edit) -->", ""]
    lines += run_line(r)
    lines += overhead(r) + loss_curve(r) + ingest_curve(r) + codec(r) + dns(r) + targets(r)
    lines += the_rest(r)
    lines += ["Every measurement with the command that produced it: "
              "[docs/bench/results.json](bench/results.json).", "", "<!-- bench:end -->"]
    return "\n".join(lines) + "\n"


def splice(name, block, page):
    """Replaces the NAME block of page (markers included) with block."""
    with open(page) as f:
        text = f.read()
    pattern = re.compile(rf"^<!-- {re.escape(name)}:begin.*?^<!-- {re.escape(name)}:end -->\n",
                         re.S | re.M)
    if not pattern.search(text):
        sys.exit(f"bench-render: {page} has no <!-- {name}:begin --> ... <!-- {name}:end --> "
                 "markers; add them where the block belongs")
    text = pattern.sub(lambda _: block if block.endswith("\n") else block + "\n", text, count=1)
    with open(page, "w") as f:
        f.write(text)


def main(argv):
    if len(argv) == 5 and argv[1] == "--splice":
        with open(argv[3]) as f:
            splice(argv[2], f.read(), argv[4])
    elif len(argv) == 3:
        splice("bench", render(argv[1]), argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
