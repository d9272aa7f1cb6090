/*
 * Merging the replicas' answers (see cluster_merge.h). Pure: every function
 * works on what it is given.
 */
#include "cluster_merge.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_reply.h"

bool cluster_replica_id_valid(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n >= CLUSTER_REPLICA_ID_LEN)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
            return false;
    }
    return true;
}

uint64_t cluster_count_add(uint64_t a, uint64_t b)
{
    if (a > INT64_MAX)
        a = INT64_MAX;
    if (b > INT64_MAX)
        b = INT64_MAX;
    return a > INT64_MAX - b ? INT64_MAX : a + b;
}

json_int_t cluster_counter_sum(json_int_t a, json_int_t b)
{
    return (json_int_t)cluster_count_add(a > 0 ? (uint64_t)a : 0, b > 0 ? (uint64_t)b : 0);
}

/* ---- answers ---- */

const char *cluster_answer_admit(const struct cluster_answers *seen, const char *id)
{
    if (id == NULL || !cluster_replica_id_valid(id))
        return "no valid replica id";
    if (seen->self != NULL && strcmp(id, seen->self) == 0)
        return "sent in this replica's name";
    for (size_t i = 0; i < seen->n; i++)
        if (strcmp(seen->ids[i], id) == 0)
            return "a second answer from one replica";
    if (seen->is_peer != NULL && !seen->is_peer(seen->ctx, id))
        return "not from a live peer";
    return NULL;
}

void cluster_answer_record(struct cluster_answers *seen, const char *id)
{
    if (seen->n < CLUSTER_MAX_PEERS)
        snprintf(seen->ids[seen->n++], sizeof(seen->ids[0]), "%s", id);
}

/* ---- stats ---- */

const char *cluster_stats_take(struct cluster_answers *seen, struct nodes *nodes, json_t *root,
                               struct cluster_stats *out)
{
    const char *id = json_string_value(json_object_get(root, "replica"));
    const char *why;
    json_t **p;

    if (!json_is_object(root))
        return "not a JSON object";
    if ((why = cluster_answer_admit(seen, id)) != NULL ||
        (why = cluster_reply_stats_check(root)) != NULL)
        return why;
    if (json_object_get(root, "error") == NULL) {
        /* All or nothing: a malformed table changes nothing. */
        int rc = nodes_merge_value(nodes, json_object_get(root, "nodes"));
        if (rc == -EINVAL)
            return "a malformed node table";
        if (rc < 0)
            json_object_set_new(root, "error", json_string("could not merge its node table"));
    }
    cluster_answer_record(seen, id);
    json_object_del(root, "nodes"); /* merged */
    p = realloc(out->replies, (out->count + 1) * sizeof(*p));
    if (p == NULL)
        return NULL; /* it answered; its counters are lost */
    out->replies = p;
    p[out->count++] = json_incref(root);
    return NULL;
}

void cluster_counters_add(json_t *totals, json_t *counters)
{
    const char *key;
    json_t *v;

    json_object_foreach(counters, key, v)
    {
        json_t *d = json_object_get(totals, key);
        if (d == NULL) {
            continue;
        } else if (json_is_integer(d) && json_is_integer(v)) {
            json_integer_set(d, cluster_counter_sum(json_integer_value(d), json_integer_value(v)));
        } else if (json_is_real(d) && json_is_real(v)) {
            if (json_real_value(v) > json_real_value(d))
                json_real_set(d, json_real_value(v));
        } else if (json_is_object(d) && json_is_object(v)) {
            cluster_counters_add(d, v);
        }
    }
}

void cluster_stats_free(struct cluster_stats *s)
{
    for (size_t i = 0; i < s->count; i++)
        json_decref(s->replies[i]);
    free(s->replies);
    s->replies = NULL;
    s->count = 0;
}

/* ---- events ---- */

/* Clears the n events of *events and frees the array. */
static void events_free(struct event **events, size_t *n)
{
    for (size_t i = 0; i < *n; i++)
        event_clear(&(*events)[i]);
    free(*events);
    *events = NULL;
    *n = 0;
}

void cluster_source_free(struct cluster_source *s)
{
    events_free(&s->events, &s->count);
}

static int cmp_events(const void *pa, const void *pb)
{
    const struct event *a = pa, *b = pb;
    return query_cmp_newest_first(a->timestamp_ns, a->id, b->timestamp_ns, b->id);
}

int cluster_merge(struct cluster_source *src, size_t nsrc, uint32_t limit,
                  struct cluster_events *out)
{
    size_t total = 0, k = 0, i;
    uint64_t total_count = 0;
    bool any_more = false, has_bound = false;
    struct query_cursor bound = {0};
    struct event *all = NULL;

    out->events = NULL;
    out->count = 0;
    out->has_next = false;
    if (limit == 0)
        limit = QUERY_LIMIT_DEFAULT;
    for (size_t s = 0; s < nsrc; s++) {
        total += src[s].count;
        /* Saturating: a peer may claim any count. */
        total_count = cluster_count_add(total_count, src[s].total_count);
        if (!src[s].has_more)
            continue;
        any_more = true;
        if (src[s].count == 0)
            continue;
        /* The newest "last event" of the sources that hold more bounds the page. */
        const struct event *last = &src[s].events[src[s].count - 1];
        if (!has_bound || query_cmp_newest_first(last->timestamp_ns, last->id, bound.timestamp_ns,
                                                 bound.id) < 0) {
            bound.timestamp_ns = last->timestamp_ns;
            bound.id = last->id;
            has_bound = true;
        }
    }
    out->total_count = total_count;
    if (total == 0)
        return 0;

    all = malloc(total * sizeof(*all));
    out->events = malloc((total < limit ? total : limit) * sizeof(*out->events));
    if (all == NULL || out->events == NULL) {
        free(all);
        free(out->events);
        out->events = NULL;
        return -ENOMEM;
    }
    size_t n = 0;
    for (size_t s = 0; s < nsrc; s++)
        for (size_t j = 0; j < src[s].count; j++)
            event_move(&all[n++], &src[s].events[j]);
    qsort(all, total, sizeof(*all), cmp_events);

    for (i = 0; i < total && k < limit; i++) {
        const struct event *e = &all[i];
        if (k > 0 && e->timestamp_ns == out->events[k - 1].timestamp_ns &&
            e->id == out->events[k - 1].id)
            continue;
        if (has_bound &&
            query_cmp_newest_first(e->timestamp_ns, e->id, bound.timestamp_ns, bound.id) > 0)
            break;
        event_move(&out->events[k++], &all[i]);
    }
    out->count = k;
    if (k > 0 && (i < total || any_more)) {
        out->has_next = true;
        out->next_cursor.timestamp_ns = out->events[k - 1].timestamp_ns;
        out->next_cursor.id = out->events[k - 1].id;
    }
    for (size_t j = 0; j < total; j++)
        event_clear(&all[j]);
    free(all);
    return 0;
}

void cluster_events_free(struct cluster_events *e)
{
    events_free(&e->events, &e->count);
}
