/* Kernel symbol table from /proc/kallsyms, sorted by address for binary search. */
#include "ksyms.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KSYMS_MAX_OFFSET (1u << 20)

struct ksym {
    uint64_t addr;
    uint32_t name; /* offset into names */
};

struct ksyms {
    struct ksym *syms;
    size_t count, cap;
    char *names;
    size_t names_len, names_cap;
};

static int ksym_cmp(const void *a, const void *b)
{
    const struct ksym *x = a, *y = b;
    return x->addr < y->addr ? -1 : x->addr > y->addr;
}

static int ksyms_add(struct ksyms *ks, uint64_t addr, const char *name, const char *module)
{
    size_t need = strlen(name) + (module ? strlen(module) + 3 : 0) + 1;

    if (ks->count == ks->cap) {
        size_t cap = ks->cap ? ks->cap * 2 : 1024;
        struct ksym *s = realloc(ks->syms, cap * sizeof(*s));
        if (!s)
            return -ENOMEM;
        ks->syms = s;
        ks->cap = cap;
    }
    if (ks->names_len + need > ks->names_cap) {
        size_t cap = ks->names_cap ? ks->names_cap * 2 : 1 << 15;
        char *n;
        while (cap < ks->names_len + need)
            cap *= 2;
        n = realloc(ks->names, cap);
        if (!n)
            return -ENOMEM;
        ks->names = n;
        ks->names_cap = cap;
    }
    ks->syms[ks->count].addr = addr;
    ks->syms[ks->count].name = (uint32_t)ks->names_len;
    ks->count++;
    if (module)
        snprintf(ks->names + ks->names_len, need, "%s [%s]", name, module);
    else
        memcpy(ks->names + ks->names_len, name, need);
    ks->names_len += need;
    return 0;
}

struct ksyms *ksyms_load(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    struct ksyms *ks = ksyms_load_stream(f);
    int err = errno;
    fclose(f);
    errno = err;
    return ks;
}

struct ksyms *ksyms_load_stream(FILE *f)
{
    struct ksyms *ks = calloc(1, sizeof(*ks));
    char line[512], name[256], module[128];
    int nonzero = 0, err = 0;

    if (!ks)
        return NULL;
    while (fgets(line, sizeof(line), f)) {
        unsigned long long addr;
        char type;
        int n;

        module[0] = '\0';
        n = sscanf(line, "%llx %c %255s [%127[^]]]", &addr, &type, name, module);
        if (n < 3)
            continue;
        /* Only text symbols: a drop location is always code. */
        if (type != 't' && type != 'T' && type != 'w' && type != 'W')
            continue;
        if (addr)
            nonzero = 1;
        if (ksyms_add(ks, addr, name, n == 4 ? module : NULL)) {
            err = ENOMEM;
            goto fail;
        }
    }
    if (!nonzero) {
        err = ks->count ? EPERM : ENOENT; /* kptr_restrict hides addresses */
        goto fail;
    }
    qsort(ks->syms, ks->count, sizeof(*ks->syms), ksym_cmp);
    return ks;
fail:
    ksyms_free(ks);
    errno = err;
    return NULL;
}

void ksyms_free(struct ksyms *ks)
{
    if (!ks)
        return;
    free(ks->syms);
    free(ks->names);
    free(ks);
}

size_t ksyms_count(const struct ksyms *ks)
{
    return ks ? ks->count : 0;
}

const char *ksyms_format(const struct ksyms *ks, uint64_t addr, char *buf, size_t len)
{
    size_t lo = 0, hi;
    const struct ksym *s;

    if (!ks || ks->count == 0 || addr < ks->syms[0].addr)
        return NULL;
    /* Last symbol at or below addr. */
    hi = ks->count;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (ks->syms[mid].addr <= addr)
            lo = mid;
        else
            hi = mid;
    }
    s = &ks->syms[lo];
    /* Past the last known symbol (a module loaded after us): no function is this long. */
    if (addr - s->addr > KSYMS_MAX_OFFSET)
        return NULL;
    snprintf(buf, len, "%s+0x%llx", ks->names + s->name, (unsigned long long)(addr - s->addr));
    return buf;
}
