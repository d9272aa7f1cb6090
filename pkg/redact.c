/*
 * Argument redaction (redact.h has the pattern syntax). Each argument is
 * rewritten on its own, left to right: an option pattern replaces its value
 * and ends the work on that argument; otherwise NAME= patterns (as KEY=VALUE
 * and as JSON's "KEY":"VALUE"), header patterns and then URL credentials are
 * replaced wherever they occur in it. "***" contains none of '=', '"', ':'
 * or "://", so a replacement never creates a new match.
 */
#include "redact.h"
#include "errmsg.h"
#include "strlist.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define REDACT_NAME_MAX 64

enum pattern_kind {
    PAT_LONG,   /* --NAME */
    PAT_SHORT,  /* -X, or -X+ (next_value) */
    PAT_KEY,    /* NAME= */
    PAT_HEADER, /* NAME: */
};

struct pattern {
    enum pattern_kind kind;
    bool next_value; /* -X+: an argument that is exactly -X makes the next one the value */
    char name[REDACT_NAME_MAX]; /* "--password", "-p", or the lowercased NAME of NAME= */
    size_t len;
    char prog[REDACT_NAME_MAX]; /* program it is limited to (redact.h); "" = any */
};

struct redact {
    struct pattern pats[REDACT_MAX_PATTERNS];
    size_t n;
    bool url;
};

static bool is_name_char(unsigned char c)
{
    return isalnum(c) || c == '_' || c == '.' || c == '-';
}

static bool all_name_chars(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!is_name_char((unsigned char)s[i]))
            return false;
    return true;
}

/* One pattern of len bytes at s into r; -EINVAL when it is none of the forms. */
static int add_pattern(struct redact *r, const char *s, size_t len)
{
    struct pattern p = {0};
    const char *colon = memchr(s, ':', len);

    if (len == 3 && memcmp(s, "url", 3) == 0) {
        r->url = true;
        return 0;
    }
    if (colon && s[0] != '-' && colon != s + len - 1) {
        size_t plen = (size_t)(colon - s);
        if (plen == 0 || plen >= sizeof(p.prog) || !all_name_chars(s, plen))
            return -EINVAL;
        memcpy(p.prog, s, plen);
        s = colon + 1;
        len -= plen + 1;
        if (len == 0 || s[0] != '-')
            return -EINVAL; /* a program limits options only */
    }
    if (len >= sizeof(p.name))
        return -EINVAL;
    if (len > 2 && s[0] == '-' && s[1] == '-' && all_name_chars(s + 2, len - 2)) {
        p.kind = PAT_LONG;
        memcpy(p.name, s, len);
    } else if ((len == 2 || (len == 3 && s[2] == '+')) && s[0] == '-' &&
               isalnum((unsigned char)s[1])) {
        p.kind = PAT_SHORT;
        p.next_value = len == 3;
        len = 2;
        memcpy(p.name, s, len);
    } else if (len > 1 && s[len - 1] == ':' && all_name_chars(s, len - 1)) {
        p.kind = PAT_HEADER;
        len--;
        for (size_t i = 0; i < len; i++)
            p.name[i] = (char)tolower((unsigned char)s[i]);
    } else if (!p.prog[0] && len > 1 && s[len - 1] == '=' && all_name_chars(s, len - 1)) {
        p.kind = PAT_KEY;
        len--;
        for (size_t i = 0; i < len; i++)
            p.name[i] = (char)tolower((unsigned char)s[i]);
    } else {
        return -EINVAL;
    }
    p.len = len;
    if (r->n == REDACT_MAX_PATTERNS)
        return -E2BIG;
    r->pats[r->n++] = p;
    return 0;
}

/* Adds every pattern of a comma list; "default" expands once, "none" is refused here. */
static int add_list(struct redact *r, const char *spec, bool in_default, char *err, size_t errlen)
{
    struct strlist items = strlist_start(spec);
    const char *p;
    size_t len;
    while (strlist_next(&items, &p, &len)) {
        int rc = 0;
        if (len == 0) {
            errmsg_set(err, errlen, "an empty pattern");
            return -EINVAL;
        }
        if (len == 7 && memcmp(p, "default", 7) == 0 && !in_default)
            rc = add_list(r, REDACT_DEFAULT_PATTERNS, true, err, errlen);
        else if (len == 4 && memcmp(p, "none", 4) == 0)
            rc = -EINVAL;
        else
            rc = add_pattern(r, p, len);
        if (rc == -E2BIG) {
            errmsg_set(err, errlen, "more than %d patterns", REDACT_MAX_PATTERNS);
            return -EINVAL;
        }
        if (rc < 0) {
            if (len == 4 && memcmp(p, "none", 4) == 0)
                errmsg_set(err, errlen, "\"none\" must be the only pattern");
            else
                errmsg_set(err, errlen, "bad pattern \"%.*s\"", (int)len, p);
            return -EINVAL;
        }
    }
    return 0;
}

int redact_new(const char *spec, struct redact **out, char *err, size_t errlen)
{
    *out = NULL;
    const char *s = spec;
    size_t len = strlen(s);
    while (len && isspace((unsigned char)*s))
        s++, len--;
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    if (len == 4 && memcmp(s, "none", 4) == 0)
        return 0;
    struct redact *r = calloc(1, sizeof(*r));
    if (!r) {
        errmsg_set(err, errlen, "out of memory");
        return -ENOMEM;
    }
    if (add_list(r, spec, false, err, errlen) < 0) {
        free(r);
        return -EINVAL;
    }
    *out = r;
    return 0;
}

void redact_free(struct redact *r)
{
    free(r);
}

/* ---- rewriting ---- */

/* Nothing to hide: an empty value, or one already replaced (redacting twice changes nothing). */
static bool nothing_to_hide(const char *v, size_t len)
{
    return len == 0 || (len == sizeof(REDACT_MASK) - 1 && memcmp(v, REDACT_MASK, len) == 0);
}

/*
 * Marks the patterns limited to the program named by argument a (its
 * basename): they apply to the arguments after it.
 */
static void note_program(const struct redact *r, const char *a, size_t len, bool *active)
{
    const char *slash = memrchr(a, '/', len);
    if (slash) {
        len -= (size_t)(slash + 1 - a);
        a = slash + 1;
    }
    for (size_t i = 0; i < r->n; i++)
        if (r->pats[i].prog[0] && strlen(r->pats[i].prog) == len &&
            memcmp(r->pats[i].prog, a, len) == 0)
            active[i] = true;
}

/* Whether KEY (len bytes) contains the lowercased name, ignoring ASCII case. */
static bool key_contains(const char *key, size_t len, const char *name, size_t nlen)
{
    for (size_t i = 0; i + nlen <= len; i++) {
        size_t j = 0;
        while (j < nlen && tolower((unsigned char)key[i + j]) == name[j])
            j++;
        if (j == nlen)
            return true;
    }
    return false;
}

static bool key_matches(const struct redact *r, const char *key, size_t len)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->pats[i].kind == PAT_KEY && key_contains(key, len, r->pats[i].name, r->pats[i].len))
            return true;
    return false;
}

/* Appends s[*copied..from) and the mask in place of s[from..to); true (a value replaced). */
static bool mask(const char *s, size_t *copied, size_t from, size_t to, struct buf *out)
{
    buf_append(out, s + *copied, from - *copied);
    buf_puts(out, REDACT_MASK);
    *copied = to;
    return true;
}

/*
 * NAME= patterns over JSON's "KEY": "VALUE" in s (a request body on a command
 * line, curl -d '{"password":"x"}'): the string's contents are replaced, up to
 * its closing quote (an escaped one is part of it) or the end of s. Appends
 * the rewritten text to out; returns values replaced.
 */
static size_t redact_json_keys(const struct redact *r, const char *s, size_t len, struct buf *out)
{
    size_t count = 0, copied = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != ':')
            continue;
        size_t q = i; /* the key's closing quote, before any white space */
        while (q > copied && (s[q - 1] == ' ' || s[q - 1] == '\t'))
            q--;
        if (q == copied || s[--q] != '"')
            continue;
        const char *open = q > copied ? memrchr(s + copied, '"', q - copied) : NULL;
        size_t v = i + 1;
        while (v < len && (s[v] == ' ' || s[v] == '\t'))
            v++;
        if (!open || v == len || s[v] != '"' ||
            !key_matches(r, open + 1, (size_t)(s + q - open - 1)))
            continue;
        size_t end = ++v;
        while (end < len && s[end] != '"')
            end += s[end] == '\\' && end + 1 < len ? 2 : 1;
        if (end > len)
            end = len;
        if (!nothing_to_hide(s + v, end - v))
            count += mask(s, &copied, v, end, out);
        i = end;
    }
    buf_append(out, s + copied, len - copied);
    return count;
}

/*
 * Header patterns over s: "NAME: VALUE" where NAME starts s or follows a
 * character that cannot be part of a header name (curl -H 'Authorization:
 * Bearer x', wget --header='Authorization: ...'), any case. An authorization
 * scheme, a first word of name characters followed by a space, stays
 * ("Bearer ***"); the rest
 * is replaced up to a quote or the end of s. Appends the rewritten text to
 * out; returns values replaced.
 */
static size_t redact_headers(const struct redact *r, const char *s, size_t len, struct buf *out)
{
    size_t count = 0, copied = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != ':')
            continue;
        size_t k = i;
        while (k > copied && (isalnum((unsigned char)s[k - 1]) || s[k - 1] == '-' ||
                              s[k - 1] == '_' || s[k - 1] == '.'))
            k--;
        bool named = false;
        for (size_t j = 0; j < r->n && !named; j++)
            named = r->pats[j].kind == PAT_HEADER && r->pats[j].len == i - k &&
                    strncasecmp(s + k, r->pats[j].name, i - k) == 0;
        if (!named)
            continue;
        size_t v = i + 1, end;
        while (v < len && s[v] == ' ')
            v++;
        for (end = v; end < len && s[end] != '\'' && s[end] != '"';)
            end++;
        const char *space = memchr(s + v, ' ', end - v);
        if (space && all_name_chars(s + v, (size_t)(space - s) - v)) {
            /* the scheme, and the spaces after it */
            v = (size_t)(space - s);
            while (v < end && s[v] == ' ')
                v++;
        }
        if (!nothing_to_hide(s + v, end - v))
            count += mask(s, &copied, v, end, out);
        i = end > i ? end - 1 : i;
    }
    buf_append(out, s + copied, len - copied);
    return count;
}

/* NAME= patterns over s: appends the rewritten text to out; returns values replaced. */
static size_t redact_keys(const struct redact *r, const char *s, size_t len, struct buf *out)
{
    size_t count = 0, copied = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '=')
            continue;
        size_t k = i;
        while (k > copied && is_name_char((unsigned char)s[k - 1]))
            k--;
        if (k == i || !key_matches(r, s + k, i - k))
            continue;
        size_t end = i + 1;
        if (k == 0)
            end = len;
        else
            while (end < len && !strchr("&; \t\n\r\f\v", s[end]))
                end++;
        if (nothing_to_hide(s + i + 1, end - i - 1))
            continue;
        count += mask(s, &copied, i + 1, end, out);
        i = end - 1;
    }
    buf_append(out, s + copied, len - copied);
    return count;
}

static bool is_scheme_char(unsigned char c)
{
    return isalnum(c) || c == '+' || c == '.' || c == '-';
}

/*
 * "SCHEME://USER:PASSWORD@" anywhere in s: appends the rewritten text; returns values replaced.
 * The authority ends at '/', '?', '#', white space or a quote (a URL inside a quoted header or
 * JSON string ends with it). cut says s may have lost its end to the argv bound: an authority
 * running to that end without its '@' may be "USER:PASSWO", so what follows its ':' is hidden too.
 */
static size_t redact_urls(const char *s, size_t len, bool cut, struct buf *out)
{
    size_t count = 0, copied = 0;
    for (size_t i = 1; i + 3 <= len; i++) {
        if (memcmp(s + i, "://", 3) != 0 || !is_scheme_char((unsigned char)s[i - 1]))
            continue;
        size_t auth = i + 3, end = auth, at = 0;
        while (end < len && !strchr("/?#'\" \t\n\r\f\v", s[end])) {
            if (s[end] == '@')
                at = end;
            end++;
        }
        if (!at && cut && end == len)
            at = len; /* "USER:PASSWO" cut before its '@' */
        const char *colon = at ? memchr(s + auth, ':', at - auth) : NULL;
        if (colon && !nothing_to_hide(colon + 1, (size_t)(s + at - colon - 1)))
            count += mask(s, &copied, (size_t)(colon + 1 - s), at, out);
        i = end > i ? end - 1 : i;
    }
    buf_append(out, s + copied, len - copied);
    return count;
}

/*
 * An option pattern on argument a: returns 1 and appends the rewritten
 * argument when it carried the value, 2 when it is "--NAME" alone (the value
 * is the next argument), 0 when no option pattern applies.
 */
static int redact_option(const struct redact *r, const bool *active, const char *a, size_t len,
                         struct buf *out)
{
    for (size_t i = 0; i < r->n; i++) {
        const struct pattern *p = &r->pats[i];
        if (p->kind == PAT_KEY || p->kind == PAT_HEADER || (p->prog[0] && !active[i]) ||
            len < p->len || memcmp(a, p->name, p->len) != 0)
            continue;
        if ((p->kind == PAT_LONG || p->next_value) && len == p->len)
            return 2;
        size_t vstart = p->kind == PAT_LONG ? p->len + 1 : p->len;
        if (p->kind == PAT_LONG && a[p->len] != '=')
            continue;
        if (nothing_to_hide(a + vstart, len - vstart))
            return 0;
        buf_append(out, a, vstart);
        buf_puts(out, REDACT_MASK);
        return 1;
    }
    return 0;
}

/* Length of the argument at p: up to its NUL, or to end for a last one without. */
static size_t arg_len(const char *p, const char *end)
{
    const char *nul = memchr(p, '\0', (size_t)(end - p));
    return nul ? (size_t)(nul - p) : (size_t)(end - p);
}

size_t redact_args(const struct redact *r, const char *args, size_t len, size_t max,
                   struct buf *out, bool *truncated)
{
    const char *end = args + len;
    size_t count = 0;
    bool next_is_value = false, active[REDACT_MAX_PATTERNS] = {false};
    struct buf tmp, tmp2;

    buf_reset(out);
    buf_init(&tmp);
    buf_init(&tmp2);
    for (const char *a = args; a < end;) {
        size_t n = arg_len(a, end), start = out->len, before = count;
        int opt = 0;
        if (!r) {
            buf_append(out, a, n);
        } else if (next_is_value && !nothing_to_hide(a, n)) {
            buf_puts(out, REDACT_MASK);
            count++;
        } else if (a != args && (opt = redact_option(r, active, a, n, out)) == 1) {
            count++;
        } else {
            buf_reset(&tmp);
            buf_append(&tmp, "", 0); /* data is never NULL below */
            count += redact_keys(r, a, n, &tmp);
            buf_reset(&tmp2);
            buf_append(&tmp2, "", 0);
            count += redact_json_keys(r, tmp.data, tmp.len, &tmp2);
            buf_reset(&tmp);
            buf_append(&tmp, "", 0);
            count += redact_headers(r, tmp2.data, tmp2.len, &tmp);
            out->oom |= tmp2.oom;
            /* the last argument of a truncated argv may have been cut at the bound */
            bool cut = *truncated && a + n + 1 >= end;
            if (r->url)
                count += redact_urls(tmp.data, tmp.len, cut, out);
            else
                buf_append(out, tmp.data, tmp.len);
            out->oom |= tmp.oom;
        }
        next_is_value = opt == 2;
        if (r)
            note_program(r, a, n, active);
        buf_putc(out, '\0');
        if (out->len > max) {
            out->len = start;
            if (out->data)
                out->data[start] = '\0';
            count = before; /* what was dropped was not shown either way */
            *truncated = true;
            break;
        }
        a += n + 1;
    }
    buf_free(&tmp);
    buf_free(&tmp2);
    return count;
}

/*
 * Before the arguments are freed: a filename that shares their allocation
 * (event_pack_strings(), and events decoded from the bus) gets its own, or
 * is dropped when out of memory.
 */
static void unshare_filename(struct event *e)
{
    if (e->u.exec.filename && e->u.exec.filename == e->u.exec.args + e->u.exec.args_len)
        e->u.exec.filename = strdup(e->u.exec.filename);
}

int redact_event(const struct redact *r, struct event *e)
{
    if (!r || e->type != EVENT_EXEC || !e->u.exec.args || !e->u.exec.args_len)
        return 0;
    struct buf out;
    bool truncated = e->u.exec.args_truncated;
    /* A last argument the kernel cut at the bound ends with the NUL the agent added, one byte
     * past it (event_check_bounds()): its replacement may take that byte too. */
    size_t max = e->u.exec.args_len > EVENT_ARGS_MAX ? EVENT_ARGS_MAX + 1 : EVENT_ARGS_MAX;
    buf_init(&out);
    size_t count = redact_args(r, e->u.exec.args, e->u.exec.args_len, max, &out, &truncated);
    if (out.oom) {
        buf_free(&out);
        unshare_filename(e);
        free(e->u.exec.args);
        e->u.exec.args = NULL;
        e->u.exec.args_len = 0;
        e->u.exec.args_truncated = 1;
        return -ENOMEM;
    }
    /* Nothing replaced and nothing dropped: the arguments stay. A shorter out dropped a
     * replaced argument that no longer fit, which is not counted, also in an argv cut before. */
    if (count == 0 && out.len >= e->u.exec.args_len) {
        buf_free(&out);
        return 0;
    }
    unshare_filename(e);
    free(e->u.exec.args);
    /* buf keeps a NUL one past len, as event_copy() does; NULL when nothing fit */
    e->u.exec.args = out.data;
    e->u.exec.args_len = out.data ? (uint32_t)out.len : 0;
    e->u.exec.args_truncated = truncated;
    return (int)count;
}
