/*
 * Comma-separated lists in configuration values ("a, b,c"): each item in
 * turn, spaces around it trimmed. Empty items are returned too, so callers
 * can refuse them.
 */
#ifndef EBPF_MONITOR_STRLIST_H
#define EBPF_MONITOR_STRLIST_H

#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

struct strlist {
    const char *next; /* NULL after the last item */
};

static inline struct strlist strlist_start(const char *s)
{
    return (struct strlist){.next = s};
}

/* The next item (its start and length); false when there is none left. */
static inline bool strlist_next(struct strlist *l, const char **item, size_t *len)
{
    const char *p = l->next;
    if (!p)
        return false;
    const char *comma = strchr(p, ',');
    size_t n = comma ? (size_t)(comma - p) : strlen(p);
    while (n && isspace((unsigned char)*p))
        p++, n--;
    while (n && isspace((unsigned char)p[n - 1]))
        n--;
    l->next = comma ? comma + 1 : NULL;
    *item = p;
    *len = n;
    return true;
}

#endif
