/*
 * Host and port in the forms the configuration takes: a listen address
 * (LISTEN_ADDR: ":PORT", "HOST:PORT", "[IPV6]:PORT") and a server of a
 * NATS_URL ("HOST", "HOST:PORT", "[IPV6]:PORT"). Checked the same way where
 * the configuration is read (so --check-config refuses what the server
 * would) and where the address is used.
 */
#ifndef EBPF_MONITOR_NETADDR_H
#define EBPF_MONITOR_NETADDR_H

#include <stddef.h>

/*
 * Splits the len bytes at s into a host (copied to host, NUL-terminated:
 * the name, IPv4 address or IPv6 address without its brackets; "" when s
 * starts with ':') and a port (1 to 5 digits, 0-65535; -1 when there is
 * none). A host holds no space, '/', '@', '[' or ']', and a ':' only inside
 * brackets. 0, or -EINVAL when s is none of the forms or the host does not
 * fit in hostlen.
 */
int netaddr_split(const char *s, size_t len, char *host, size_t hostlen, long *port);

/*
 * addr (a listen address) with its port replaced by port, as logs show
 * where a server listens: "127.0.0.1:0" bound to 41234 is "127.0.0.1:41234".
 * Writes addr as it is when it does not split.
 */
void netaddr_with_port(const char *addr, int port, char *out, size_t len);

#endif
