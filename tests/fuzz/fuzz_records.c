/*
 * Ring buffer records, hostile: any bytes decode into a well-formed event or
 * are refused and counted, never read past their length. A decoded event
 * keeps the bounds the rest of the agent relies on (terminated strings, argv
 * within its limits) and survives event_copy() unchanged. The same bytes go
 * through the dns record decoder, whose payload must lie inside them.
 */
#include <bpf/btf.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The decoder and its tables live in the agent; the target compiles them in rather than
 * linking the agent (whose other objects need the BPF skeletons). */
#include "agent/drop_reasons.c"
#include "agent/ksyms.c"
#include "agent/records.c"

#define KALLSYMS                                                                                   \
    "ffffffff81000000 T kfree_skb_reason\n"                                                        \
    "ffffffff81000400 t udp_queue_rcv_one_skb\n"                                                   \
    "ffffffffc0000000 t nft_do_chain\t[nf_tables]\n"

static struct records_decoder dec;

/* Names and symbols like the kernel's, built once: the lookups run on every input. */
static void init_tables(void)
{
    struct btf *btf = btf__new_empty();
    FILE *f = fmemopen((void *)KALLSYMS, strlen(KALLSYMS), "r");

    if (!btf || !f || btf__add_enum(btf, "skb_drop_reason", 4) < 0 ||
        btf__add_enum_value(btf, "SKB_NOT_DROPPED_YET", 0) ||
        btf__add_enum_value(btf, "SKB_DROP_REASON_NOT_SPECIFIED", 2) ||
        btf__add_enum_value(btf, "SKB_DROP_REASON_NO_SOCKET", 3) ||
        btf__add_enum_value(btf, "SKB_DROP_REASON_MAX", 4))
        abort();
    dec.reasons = drop_reasons_from_btf(btf);
    dec.ksyms = ksyms_load_stream(f);
    btf__free(btf);
    fclose(f);
    if (!dec.reasons || !dec.ksyms)
        abort();
    dec.boot_to_real_ns = 1795698261123456789ll;
}

static void check_event(const struct event *e)
{
    struct event copy;

    if (e->type == EVENT_TYPE_NONE || e->type >= EVENT_TYPE_COUNT ||
        e->family > EVENT_FAMILY_IPV6 || e->status > EVENT_STATUS_ATTEMPTED ||
        !memchr(e->command, '\0', sizeof(e->command)))
        abort();
    if (e->type == EVENT_EXEC) {
        const char *a = e->u.exec.args;
        uint32_t n = e->u.exec.args_len, strings = 0;

        if (!e->u.exec.filename || strlen(e->u.exec.filename) > EVENT_FILENAME_MAX)
            abort();
        if (n > EVENT_ARGS_MAX + 1 || (n == 0) != (a == NULL))
            abort();
        if (n && (a[n - 1] != '\0' || a[n] != '\0'))
            abort();
        for (uint32_t i = 0; i < n; i++)
            strings += a[i] == '\0';
        if (strings > EVENT_ARGC_MAX)
            abort();
    }
    if (event_copy(&copy, e) != 0)
        return;
    if (!event_equal(&copy, e))
        abort();
    event_clear(&copy);
}

/* The same bytes as a dns record: the payload lies inside the input, the rest within bounds. */
static void check_dns(const uint8_t *data, size_t size)
{
    static const struct records_dns zero;
    uint64_t before = dec.malformed;
    struct records_dns m;
    char err[128] = "";
    int rc = records_decode_dns(&dec, data, size, &m, err, sizeof(err));

    if (rc != 0) {
        if (rc != -EINVAL || !err[0] || dec.malformed != before + 1 ||
            memcmp(&m, &zero, sizeof(m)) != 0)
            abort();
        return;
    }
    if (m.payload < data || m.payload_len > DNS_RECORD_PAYLOAD_MAX ||
        m.payload + m.payload_len > data + size || !memchr(m.command, '\0', sizeof(m.command)) ||
        (m.family != EVENT_FAMILY_IPV4 && m.family != EVENT_FAMILY_IPV6) ||
        (m.protocol != IPPROTO_UDP && m.protocol != IPPROTO_TCP))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct event zero;
    uint64_t before = dec.malformed + dec.no_memory;
    struct event e;
    char err[128] = "";
    int rc;

    if (!dec.reasons)
        init_tables();
    check_dns(data, size);
    before = dec.malformed + dec.no_memory;
    rc = records_decode(&dec, data, size, &e, err, sizeof(err));
    if (rc == 0) {
        check_event(&e);
        event_clear(&e);
        return 0;
    }
    /* Refused: said why, counted once, nothing left in the event. */
    if ((rc != -EINVAL && rc != -ENOMEM) || !err[0] ||
        dec.malformed + dec.no_memory != before + 1 || memcmp(&e, &zero, sizeof(e)) != 0)
        abort();
    return 0;
}
