/*
 * DNS over TCP as the agent reassembles it (cmd/agent/dns_agent.c), hostile:
 * any sequence of segments, on a few sockets, in both directions, with any
 * bytes, cut anywhere, some only partly copied by the capture (the packet
 * longer than its record), never reads outside a segment's copied bytes nor
 * holds more than its bounds, and every event it makes is well formed.
 *
 * The input is a list of segments: a control byte (bit 0: an answer; bits 1-2:
 * which of four sockets; bit 3: the packet carried more than was copied; bits
 * 4-6: where the kernel found it in its stream: next, next, next, past a gap,
 * a copy of old bytes, unchecked, past the window, a retransmission carrying
 * new bytes), a length byte, then that many payload bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The reassembly lives in the agent; compiled in rather than linking the agent (whose
 * other objects need the BPF skeletons). */
#include "agent/dns_agent.c"

static void on_event(void *ctx, struct event *e, uint32_t ttl_s)
{
    (void)ctx;
    (void)ttl_s;
    if (e->type != EVENT_DNS || !memchr(e->command, '\0', sizeof(e->command)) ||
        (e->u.dns.query && strlen(e->u.dns.query) > 1003))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* One agent for every input (making one is most of an input's cost); each input ends
     * with everything it left pending expired, on a clock that only goes forward. */
    static struct dns_agent *d;
    static uint64_t t = 1000000000ull;
    static uint32_t stream_next[4][2]; /* each socket's next byte, per direction */

    if (!d) {
        struct dns_agent_config cfg = {
            .timeout_ns = 1000000000ull, .pending_max = 16, .max_series = 4};
        if (!(d = dns_agent_new(&cfg, on_event, NULL)))
            abort();
    }
    while (size >= 2) {
        uint8_t ctl = data[0];
        size_t len = data[1];
        data += 2;
        size -= 2;
        if (len > size)
            len = size;
        /* A copy of its own, so a read past the segment is one past an allocation. */
        uint8_t *seg = malloc(len ? len : 1);
        if (!seg)
            abort();
        memcpy(seg, data, len);
        struct records_dns r = {.timestamp_ns = 1796000000000000000ull + t,
                                .boot_ns = t,
                                .cookie = 1 + ((ctl >> 1) & 3),
                                .answer = ctl & 1,
                                .family = EVENT_FAMILY_IPV4,
                                .protocol = IPPROTO_TCP,
                                .sport = ctl & 1 ? 53 : 40000,
                                .dport = ctl & 1 ? 40000 : 53,
                                .payload = seg,
                                .payload_len = len,
                                .wire_len = len + (ctl & 8 ? 300 : 0),
                                .truncated = (ctl & 8) != 0};
        uint32_t *next = &stream_next[(ctl >> 1) & 3][ctl & 1], wire = (uint32_t)r.wire_len;
        r.tcp_next = *next;
        r.tcp_seq = *next;
        r.tcp_order = DNS_TCP_NEXT;
        switch ((ctl >> 4) & 7) {
        case 3: /* past a gap of 7 bytes */
            r.tcp_seq = *next + 7;
            r.tcp_order = DNS_TCP_AHEAD;
            break;
        case 4: /* the bytes just before the next */
            r.tcp_seq = *next - wire;
            r.tcp_order = DNS_TCP_OLD;
            break;
        case 5:
            r.tcp_order = DNS_TCP_UNVERIFIED;
            *next += wire;
            break;
        case 6:
            r.tcp_seq = *next + 100000;
            r.tcp_order = DNS_TCP_OUT_OF_WINDOW;
            break;
        case 7: /* 3 old bytes, then new ones */
            r.tcp_seq = *next - 3;
            *next = r.tcp_seq + wire;
            break;
        default:
            *next += wire;
            break;
        }
        dns_agent_message(d, &r);
        free(seg);
        data += len;
        size -= len;
        t += 1000000;
    }
    t += 60000000000ull;
    if (size) /* an odd byte left: the kernel's rings of lost answers could not be read */
        dns_agent_answers_lost(d, NULL, -1, t);
    dns_agent_expire(d, t);
    return 0;
}
