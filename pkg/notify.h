/*
 * systemd's service notification protocol, without libsystemd: a Type=notify
 * unit (images/systemd/) learns that the service is ready when it sends
 * "READY=1" as one datagram to the AF_UNIX socket named by $NOTIFY_SOCKET
 * (a path, or "@name" for an abstract socket). Outside systemd the variable
 * is unset and these calls do nothing.
 */
#ifndef EBPF_MONITOR_NOTIFY_H
#define EBPF_MONITOR_NOTIFY_H

/*
 * Sends state ("READY=1", "STOPPING=1", newline-separated assignments) to
 * $NOTIFY_SOCKET. Returns 1 when sent, 0 when NOTIFY_SOCKET is unset, or a
 * negative errno (-EINVAL for a malformed socket name).
 */
int notify_systemd(const char *state);

#endif
