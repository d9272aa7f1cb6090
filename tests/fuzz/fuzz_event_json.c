/*
 * libFuzzer target for pkg/event_json's parser and writer: any input
 * event_json_parse() accepts is written back as one line of strictly valid
 * UTF-8 JSON (RFC 3629, checked here independently of pkg/buf.c) with no
 * raw control bytes, which parses again to an event that writes the same
 * line: what the JSON bus, tail and decode rely on.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "event_json.h"
#include "utf8_ref.h"

static void check_line(const struct buf *b)
{
    if (b->oom || !b->len || strlen(b->data) != b->len)
        abort();
    for (size_t i = 0, k; i < b->len; i += k) {
        if ((unsigned char)b->data[i] < 0x20)
            abort(); /* a raw control byte would split an SSE or JSON-lines frame */
        if (!(k = utf8_ref_char((const unsigned char *)b->data + i, b->len - i)))
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct event e, back;
    char err[256];
    if (event_json_parse((const char *)data, size, &e, err, sizeof(err)) != 0)
        return 0;

    struct buf first, second;
    buf_init(&first);
    buf_init(&second);
    event_json_write(&first, &e);
    check_line(&first);
    if (event_json_parse(first.data, first.len, &back, err, sizeof(err)) != 0)
        abort(); /* the writer's own output must parse */
    event_json_write(&second, &back);
    if (second.len != first.len || memcmp(second.data, first.data, first.len) != 0)
        abort();
    if (strcmp(back.command, e.command) != 0)
        abort(); /* the exact bytes survive a round trip */
    if (e.type == EVENT_EXEC &&
        (back.u.exec.args_len != e.u.exec.args_len ||
         (e.u.exec.args_len && memcmp(back.u.exec.args, e.u.exec.args, e.u.exec.args_len)) ||
         !back.u.exec.filename != !e.u.exec.filename ||
         (e.u.exec.filename && strcmp(back.u.exec.filename, e.u.exec.filename)) ||
         back.u.exec.has_euid != e.u.exec.has_euid || back.u.exec.euid != e.u.exec.euid))
        abort();
    event_clear(&back);
    event_clear(&e);
    buf_free(&first);
    buf_free(&second);
    return 0;
}
