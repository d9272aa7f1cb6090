/* Drop reason names from the kernel BTF, sorted by value for lookup. */
#include "drop_reasons.h"

#include <bpf/btf.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "intern.h"

struct drop_reason {
    uint32_t code;
    const char *name; /* interned */
};

struct drop_reasons {
    struct drop_reason *v;
    size_t count;
};

static int reason_cmp(const void *a, const void *b)
{
    const struct drop_reason *x = a, *y = b;
    return x->code < y->code ? -1 : x->code > y->code;
}

static const char *strip_prefix(const char *name)
{
    static const char *const prefixes[] = {"SKB_DROP_REASON_", "SKB_"};

    for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
        size_t n = strlen(prefixes[i]);
        if (strncmp(name, prefixes[i], n) == 0 && name[n])
            return name + n;
    }
    return name;
}

struct drop_reasons *drop_reasons_from_btf(const struct btf *btf)
{
    int id = btf__find_by_name_kind(btf, "skb_drop_reason", BTF_KIND_ENUM);
    const struct btf_type *t;
    const struct btf_enum *e;
    struct drop_reasons *dr;

    if (id < 0) {
        errno = ENOENT;
        return NULL;
    }
    t = btf__type_by_id(btf, id);
    e = btf_enum(t);
    dr = calloc(1, sizeof(*dr));
    if (!dr || !(dr->v = calloc(btf_vlen(t) ? btf_vlen(t) : 1, sizeof(*dr->v)))) {
        drop_reasons_free(dr);
        errno = ENOMEM;
        return NULL;
    }
    for (int i = 0; i < btf_vlen(t); i++, e++) {
        const char *name = btf__name_by_offset(btf, e->name_off);
        /* Markers, not reasons. */
        if (!name || strcmp(name, "SKB_DROP_REASON_MAX") == 0 ||
            strncmp(name, "SKB_DROP_REASON_SUBSYS_", 23) == 0)
            continue;
        dr->v[dr->count].code = (uint32_t)e->val;
        dr->v[dr->count].name = intern(strip_prefix(name));
        dr->count++;
    }
    qsort(dr->v, dr->count, sizeof(*dr->v), reason_cmp);
    return dr;
}

void drop_reasons_free(struct drop_reasons *dr)
{
    if (!dr)
        return;
    free(dr->v);
    free(dr);
}

size_t drop_reasons_count(const struct drop_reasons *dr)
{
    return dr ? dr->count : 0;
}

const char *drop_reasons_name(const struct drop_reasons *dr, uint32_t code)
{
    struct drop_reason key = {.code = code}, *r;

    if (!dr)
        return NULL;
    r = bsearch(&key, dr->v, dr->count, sizeof(*dr->v), reason_cmp);
    return r ? r->name : NULL;
}
