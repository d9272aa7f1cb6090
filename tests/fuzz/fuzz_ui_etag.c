/*
 * libFuzzer target for ui_etag_matches() (pkg/ui.c), the parser of the
 * If-None-Match header the page's files are revalidated with. The input is
 * the header value, any bytes. Invariants: no read outside it (ASan); the
 * answer is 0 or 1; "*" alone and a list holding the tag, with or without W/,
 * match; a value with neither a '*' nor the tag's bytes never matches.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ui.h"

#define TAG "\"0123456789abcdef-gz\""

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *v = (const char *)data;
    char *copy = malloc(size + 1); /* exactly size bytes readable, then a guard */
    if (copy == NULL)
        return 0;
    memcpy(copy, data, size);
    int m = ui_etag_matches(copy, size, TAG);
    if (m != 0 && m != 1)
        abort();
    if (m && memchr(v, '*', size) == NULL && memmem(v, size, TAG, strlen(TAG)) == NULL)
        abort();

    /* The input followed by the tag, as the last element of a list: always a match. */
    size_t n = size + 3 + strlen(TAG);
    char *list = malloc(n);
    if (list != NULL) {
        memcpy(list, data, size);
        memcpy(list + size, ",W/" TAG, n - size);
        if (ui_etag_matches(list, n, TAG) != 1)
            abort();
        free(list);
    }
    free(copy);
    return 0;
}
