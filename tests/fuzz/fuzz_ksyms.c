/*
 * /proc/kallsyms lines, hostile: any text loads or is refused, and every
 * lookup afterwards answers with a bounded string.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The parser lives in the agent; the target compiles it in rather than linking the agent. */
#include "agent/ksyms.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FILE *f = fmemopen((void *)data, size, "r");
    if (!f)
        return 0;
    struct ksyms *ks = ksyms_load_stream(f);
    fclose(f);
    if (!ks)
        return 0;
    char buf[128];
    uint64_t probes[] = {0, 1, 0xffffffff81000000ull, 0xffffffff81000010ull, UINT64_MAX};
    for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
        const char *s = ksyms_format(ks, probes[i], buf, sizeof(buf));
        if (s && strlen(s) >= sizeof(buf))
            abort();
    }
    ksyms_free(ks);
    return 0;
}
