/* Process-wide string intern table: open addressing, grows by doubling. */
#include "intern.h"

#include <malloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static pthread_mutex_t intern_lock = PTHREAD_MUTEX_INITIALIZER;
static char **intern_slots;
static size_t intern_cap; /* power of two */
static struct intern_stats intern_st;
/* What names interned with intern_process_n() took: their allocations and two slots each. */
static uint64_t intern_process_bytes;

static uint64_t intern_hash(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

/*
 * The bound counts what the table costs, not its names' lengths: a short name's allocation
 * is several times its bytes (glibc: its size plus a header, rounded to 16, 32 at least) and
 * it takes two slots, so 15-byte names counted by length held four times the bound.
 */
static size_t intern_cost(const char *copy)
{
    return malloc_usable_size((void *)copy) + sizeof(size_t);
}

static bool intern_grow(void)
{
    size_t cap = intern_cap ? intern_cap * 2 : 1024;
    if (intern_st.bytes + (cap - intern_cap) * sizeof(char *) > INTERN_MAX_BYTES)
        return false;
    char **slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return false;
    for (size_t i = 0; i < intern_cap; i++) {
        char *s = intern_slots[i];
        if (!s)
            continue;
        size_t j = intern_hash(s, strlen(s)) & (cap - 1);
        while (slots[j])
            j = (j + 1) & (cap - 1);
        slots[j] = s;
    }
    free(intern_slots);
    intern_st.bytes += (cap - intern_cap) * sizeof(char *);
    intern_slots = slots;
    intern_cap = cap;
    return true;
}

/* The slot of the len bytes at s, or the empty one where they would go; needs intern_cap. */
static size_t intern_slot(const char *s, size_t len)
{
    size_t j = intern_hash(s, len) & (intern_cap - 1);
    for (; intern_slots[j]; j = (j + 1) & (intern_cap - 1))
        if (strncmp(intern_slots[j], s, len) == 0 && intern_slots[j][len] == '\0')
            break;
    return j;
}

static const char *intern_add(const char *s, size_t len, bool process)
{
    if (!s)
        return NULL;
    const char *out = NULL;
    pthread_mutex_lock(&intern_lock);
    /* Without room for one more (at most half the slots used), a string held is still found. */
    bool room = (intern_st.strings + 1) * 2 <= intern_cap || intern_grow();
    if (!intern_cap)
        goto refuse;
    size_t j = intern_slot(s, len);
    if (intern_slots[j]) {
        out = intern_slots[j];
        goto done;
    }
    if (!room || intern_st.bytes + len + 1 > INTERN_MAX_BYTES)
        goto refuse;
    char *copy = malloc(len + 1);
    if (!copy)
        goto refuse;
    size_t cost = intern_cost(copy);
    if (intern_st.bytes + cost > INTERN_MAX_BYTES ||
        (process && intern_process_bytes + cost + 2 * sizeof(char *) > INTERN_PROCESS_MAX_BYTES)) {
        free(copy);
        goto refuse;
    }
    memcpy(copy, s, len);
    copy[len] = '\0';
    intern_slots[j] = copy;
    intern_st.strings++;
    intern_st.bytes += cost;
    if (process)
        intern_process_bytes += cost + 2 * sizeof(char *);
    out = copy;
    goto done;
refuse:
    intern_st.refused++;
done:
    pthread_mutex_unlock(&intern_lock);
    return out;
}

const char *intern_n(const char *s, size_t len)
{
    return intern_add(s, len, false);
}

const char *intern_process_n(const char *s, size_t len)
{
    return intern_add(s, len, true);
}

const char *intern_process(const char *s)
{
    return s ? intern_process_n(s, strlen(s)) : NULL;
}

const char *intern_find_n(const char *s, size_t len)
{
    const char *out = NULL;

    if (!s)
        return NULL;
    pthread_mutex_lock(&intern_lock);
    if (intern_cap)
        out = intern_slots[intern_slot(s, len)];
    pthread_mutex_unlock(&intern_lock);
    return out;
}

const char *intern(const char *s)
{
    return s ? intern_n(s, strlen(s)) : NULL;
}

void intern_get_stats(struct intern_stats *out)
{
    pthread_mutex_lock(&intern_lock);
    *out = intern_st;
    pthread_mutex_unlock(&intern_lock);
}
