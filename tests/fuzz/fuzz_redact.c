/*
 * libFuzzer target for pkg/redact. The input is a REDACT_ARGS value, a
 * newline, then NUL-separated arguments; an input without a newline, or
 * with a value redact_new() refuses, runs the default patterns. Invariants:
 * the output is whole NUL-terminated arguments within the bound, one per
 * input argument unless truncated, each unchanged or carrying "***";
 * redacting the output again changes nothing; and with the default
 * patterns no value of a --password-like option, PASSWORD-like KEY=, JSON
 * "password" string or Authorization header is left in clear.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "redact.h"

#define FUZZ_MAX_SPEC 512

static size_t count_args(const char *p, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (p[i] == '\0')
            n++;
    return n + (len && p[len - 1] != '\0');
}

/* The i-th argument of a NUL-separated list (len bytes) and its length. */
static const char *nth_arg(const char *p, size_t len, size_t i, size_t *n)
{
    const char *end = p + len;
    for (; p < end; i--) {
        const char *nul = memchr(p, '\0', (size_t)(end - p));
        size_t l = nul ? (size_t)(nul - p) : (size_t)(end - p);
        if (i == 0) {
            *n = l;
            return p;
        }
        p += l + 1;
    }
    return NULL;
}

static bool is_mask_or_empty(const char *v, size_t n)
{
    return n == 0 || (n == 3 && memcmp(v, "***", 3) == 0);
}

/* An "Authorization:" header argument's credentials (after its scheme) in clear. */
static bool header_in_clear(const char *a, size_t n)
{
    size_t h = sizeof("authorization:") - 1, v = h, end;
    if (n < h || strncasecmp(a, "authorization:", h) != 0)
        return false;
    while (v < n && a[v] == ' ')
        v++;
    for (end = v; end < n && a[end] != '\'' && a[end] != '"';)
        end++;
    const char *space = memchr(a + v, ' ', end - v);
    bool scheme = space != NULL;
    for (const char *c = a + v; scheme && c < space; c++)
        scheme = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                 *c == '_' || *c == '.' || *c == '-';
    if (scheme)
        for (v = (size_t)(space - a); v < end && a[v] == ' ';)
            v++;
    return !is_mask_or_empty(a + v, end - v);
}

/* JSON's "password":"VALUE" in the argument with VALUE in clear (to its closing quote). */
static bool json_in_clear(const char *a, size_t n)
{
    static const char key[] = "\"password\"";
    for (const char *k = memmem(a, n, key, sizeof(key) - 1); k;
         k = memmem(k + 1, n - (size_t)(k + 1 - a), key, sizeof(key) - 1)) {
        size_t v = (size_t)(k - a) + sizeof(key) - 1;
        while (v < n && (a[v] == ' ' || a[v] == '\t'))
            v++;
        if (v == n || a[v] != ':')
            continue;
        for (v++; v < n && (a[v] == ' ' || a[v] == '\t');)
            v++;
        if (v == n || a[v] != '"')
            continue;
        size_t end = ++v;
        while (end < n && a[end] != '"')
            end += a[end] == '\\' && end + 1 < n ? 2 : 1;
        if (!is_mask_or_empty(a + v, (end < n ? end : n) - v))
            return true;
    }
    return false;
}

/* With the default patterns: what must never survive in clear. */
static void check_default_leaks(const struct buf *out)
{
    static const char *const opts[] = {"--password", "--passwd", "--token",       "--secret",
                                       "--api-key",  "--apikey", "--access-token"};
    static const char *const keys[] = {"password", "passwd", "secret",
                                       "token",    "apikey", "api_key"};
    size_t argc = count_args(out->data, out->len), n, m;
    for (size_t i = 0; i < argc; i++) {
        const char *a = nth_arg(out->data, out->len, i, &n);
        for (size_t k = 0; i > 0 && k < sizeof(opts) / sizeof(opts[0]); k++) {
            size_t ol = strlen(opts[k]);
            if (n > ol && memcmp(a, opts[k], ol) == 0 && a[ol] == '=' &&
                !is_mask_or_empty(a + ol + 1, n - ol - 1))
                abort(); /* --password=VALUE in clear */
            const char *next = nth_arg(out->data, out->len, i + 1, &m);
            if (n == ol && memcmp(a, opts[k], ol) == 0 && next && !is_mask_or_empty(next, m))
                abort(); /* --password VALUE in clear */
        }
        if (header_in_clear(a, n) || json_in_clear(a, n))
            abort();
        /* KEY=VALUE where KEY (name characters from the start) names a secret. */
        const char *eq = memchr(a, '=', n);
        if (!eq || eq == a)
            continue;
        char key[64];
        size_t kl = (size_t)(eq - a);
        bool name = kl < sizeof(key);
        for (size_t j = 0; name && j < kl; j++)
            name = (a[j] >= 'a' && a[j] <= 'z') || (a[j] >= 'A' && a[j] <= 'Z') ||
                   (a[j] >= '0' && a[j] <= '9') || a[j] == '_' || a[j] == '.' || a[j] == '-';
        if (!name)
            continue;
        memcpy(key, a, kl);
        key[kl] = '\0';
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
            if (strcasestr(key, keys[k]) && !is_mask_or_empty(eq + 1, n - kl - 1))
                abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct redact *def;
    if (!def && redact_new("default", &def, NULL, 0) < 0)
        abort();

    const char *in = (const char *)data;
    const uint8_t *nl = memchr(data, '\n', size < FUZZ_MAX_SPEC ? size : FUZZ_MAX_SPEC);
    struct redact *r = def, *own = NULL;
    bool is_default = true;
    if (nl) {
        char spec[FUZZ_MAX_SPEC + 1];
        size_t sl = (size_t)(nl - data);
        memcpy(spec, data, sl);
        spec[sl] = '\0';
        if (!memchr(spec, '\0', sl) && redact_new(spec, &own, NULL, 0) == 0) {
            r = own;
            is_default = false;
        }
        in = (const char *)nl + 1;
        size -= sl + 1;
    }

    struct buf out, again;
    bool truncated = false, truncated2 = false;
    buf_init(&out);
    buf_init(&again);
    size_t count = redact_args(r, in, size, EVENT_ARGS_MAX, &out, &truncated);
    if (out.oom)
        abort();
    if (out.len > EVENT_ARGS_MAX || (out.len && out.data[out.len - 1] != '\0'))
        abort();
    size_t in_argc = count_args(in, size), out_argc = count_args(out.data, out.len);
    if (out_argc > in_argc || (!truncated && out_argc != in_argc))
        abort();
    for (size_t i = 0; i < out_argc; i++) {
        size_t a, b;
        const char *x = nth_arg(in, size, i, &a), *y = nth_arg(out.data, out.len, i, &b);
        if ((a != b || memcmp(x, y, a) != 0) && !memmem(y, b, REDACT_MASK, 3))
            abort(); /* changed, but not by a replacement */
    }
    if (count == 0 && !truncated && size && size <= EVENT_ARGS_MAX &&
        (out.len < size || memcmp(out.data, in, size) != 0))
        abort(); /* nothing replaced, yet something changed */

    /* Idempotent: the output is already redacted. */
    if (redact_args(r, out.data ? out.data : "", out.len, EVENT_ARGS_MAX, &again, &truncated2) !=
            0 ||
        truncated2 || again.len != out.len || (out.len && memcmp(again.data, out.data, out.len)))
        abort();
    if (is_default)
        check_default_leaks(&out);

    buf_free(&out);
    buf_free(&again);
    redact_free(own);
    return 0;
}
