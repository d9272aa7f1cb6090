/*
 * `ebpf-aggregator decode`: one bus message body on stdin (a protobuf
 * EventBatch or JSON lines) to JSON lines on stdout. It is the translator for
 * `nats sub --translate 'ebpf-aggregator decode' 'ebpf.events.>'`.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aggregator/commands.h"
#include "buf.h"
#include "bus.h"
#include "bus_message.h"
#include "errmsg.h"
#include "event_json.h"

#define DECODE_PROG "ebpf-aggregator decode"

/* Reads stdin to the end, at most limit bytes; -EFBIG beyond it. */
static int decode_read_all(struct buf *in, size_t limit)
{
    for (;;) {
        if (!buf_reserve(in, 64 * 1024))
            return -ENOMEM;
        ssize_t n = read(STDIN_FILENO, in->data + in->len, in->cap - in->len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return 0;
        in->len += (size_t)n;
        in->data[in->len] = '\0';
        if (in->len > limit)
            return -EFBIG;
    }
}

int aggregator_decode(int argc, char **argv)
{
    const char *info = NULL; /* the first of --help, -h and --version */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") && strcmp(argv[i], "-h") && strcmp(argv[i], "--version")) {
            fprintf(stderr, "%s: unexpected argument \"%s\" (see --help)\n", DECODE_PROG, argv[i]);
            return 2;
        }
        info = info ? info : argv[i];
    }
    if (info) {
        if (strcmp(info, "--version") != 0) {
            printf("Usage: ebpf-aggregator decode < BODY\n"
                   "\n"
                   "Decodes one bus message body (a protobuf EventBatch, or JSON lines) from\n"
                   "stdin and prints its events as JSON lines. For example:\n"
                   "  nats sub --translate 'ebpf-aggregator decode' 'ebpf.events.>'\n");
            return 0;
        }
        printf("ebpf-aggregator %s\n", EBPF_MONITOR_VERSION); /* as tail says it */
        return 0;
    }

    struct buf in, out;
    char err[512], why[512]; /* why: err as printed (errmsg_printable: the body's text in it) */
    int rc;
    buf_init(&in);
    buf_init(&out);
    if ((rc = decode_read_all(&in, BUS_MAX_MESSAGE_BYTES)) < 0) {
        if (rc == -EFBIG)
            fprintf(stderr, "%s: input exceeds %u bytes (the largest bus message)\n", DECODE_PROG,
                    BUS_MAX_MESSAGE_BYTES);
        else
            fprintf(stderr, "%s: reading stdin: %s\n", DECODE_PROG, strerror(-rc));
        buf_free(&in);
        return 1;
    }

    struct bus_batch batch;
    enum bus_reject r = bus_body_decode(in.data, in.len, &batch, err, sizeof(err));
    buf_free(&in);
    if (r != BUS_OK) {
        fprintf(stderr, "%s: %s: %s\n", DECODE_PROG, bus_reject_name(r),
                errmsg_printable(err, why, sizeof(why)));
        return 1;
    }
    if (batch.meta.rejected_events)
        fprintf(stderr, "%s: warning: skipped %" PRIu32 " undecodable event(s): %s\n", DECODE_PROG,
                batch.meta.rejected_events, errmsg_printable(err, why, sizeof(why)));
    for (size_t i = 0; i < batch.n; i++) {
        event_json_write(&out, &batch.events[i]);
        buf_putc(&out, '\n');
    }
    bus_batch_free(&batch);
    rc = 0;
    if (out.oom) {
        fprintf(stderr, "%s: out of memory\n", DECODE_PROG);
        rc = 1;
    } else if (out.len && (fwrite(out.data, 1, out.len, stdout) != out.len || fflush(stdout))) {
        fprintf(stderr, "%s: writing stdout: %s\n", DECODE_PROG, strerror(errno));
        rc = 1;
    }
    buf_free(&out);
    return rc;
}
