#!/usr/bin/env python3
"""Empty cgroup_skb programs on a cgroup's two hooks, for the benchmarks.

    scripts/bench-hooks.py CGROUP READY [--stats]

Loads a program that does nothing but let the packet through (r0 = 1; exit)
and links one to the egress and one to the ingress hook of CGROUP (a cgroup
v2 directory) with multi-attach links, as the agent links its dns programs;
writes "id empty_egress" and "id empty_ingress" to READY (whole, then renamed
into place) and holds them until killed. Their cost is what the kernel's
dispatch into the hooks costs every packet, whatever the program does. With
--stats it also holds BPF_ENABLE_STATS (run-time statistics on for every
program while it lives). Uses bpf(2) directly: no library beyond Python's.
"""
import ctypes
import os
import platform
import struct
import sys
import time

SYS_BPF = {"x86_64": 321, "aarch64": 280}[platform.machine()]
BPF_PROG_LOAD, BPF_OBJ_GET_INFO_BY_FD, BPF_LINK_CREATE, BPF_ENABLE_STATS = 5, 15, 28, 32
BPF_PROG_TYPE_CGROUP_SKB = 8
BPF_CGROUP_INET_INGRESS, BPF_CGROUP_INET_EGRESS = 0, 1

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(SYS_BPF, cmd, buf, 128)
    if fd < 0:
        sys.exit(f"bench-hooks: bpf({cmd}): {os.strerror(ctypes.get_errno())}")
    return fd


def main(argv):
    if len(argv) not in (3, 4) or argv[3:] not in ([], ["--stats"]):
        sys.exit("usage: bench-hooks.py CGROUP READY [--stats]")
    insns = ctypes.create_string_buffer(bytes.fromhex("b700000001000000" "9500000000000000"))
    lic = ctypes.create_string_buffer(b"GPL")
    cg = os.open(argv[1], os.O_RDONLY | os.O_DIRECTORY)
    keep, lines = [], []
    if argv[3:] == ["--stats"]:
        keep.append(bpf(BPF_ENABLE_STATS, struct.pack("<I", 0)))  # BPF_STATS_RUN_TIME
    for name, attach in (("empty_egress", BPF_CGROUP_INET_EGRESS),
                         ("empty_ingress", BPF_CGROUP_INET_INGRESS)):
        attr = struct.pack("<IIQQIIQII16sII", BPF_PROG_TYPE_CGROUP_SKB, 2, ctypes.addressof(insns),
                           ctypes.addressof(lic), 0, 0, 0, 0, 0, name.encode()[:15], 0, attach)
        prog = bpf(BPF_PROG_LOAD, attr)
        info = ctypes.create_string_buffer(256)
        bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", prog, 256, ctypes.addressof(info)))
        keep += [prog, bpf(BPF_LINK_CREATE, struct.pack("<IIII", prog, cg, attach, 0))]
        lines.append(f"{struct.unpack_from('<I', info, 4)[0]} {name}")
    with open(argv[2] + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.rename(argv[2] + ".tmp", argv[2])
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv)
