/*
 * libFuzzer target for http_accept_encoding_gzip() (pkg/http_server.c), the
 * Accept-Encoding parser that decides whether a response is gzipped.
 *
 * The input is read twice. As a header value, any bytes: the answer is -1, 0
 * or 1 and the same each time; 0 or 1 only when "gzip" is in it (any case);
 * the case of letters and a tab for a space change nothing; an "identity"
 * element before or after changes nothing; and, in a value without quotes,
 * a "gzip;q=0" element after refuses, a "gzip" one takes unless refused, and
 * the answer is that of the halves either side of a comma, combined.
 *
 * And as a program writing a header of the restricted grammar "coding *(
 * OWS ; OWS name [= value] )" with token and quoted-string values (commas,
 * semicolons and escapes inside quotes), whose answer is worked out from
 * what was written, not parsed back: an element takes gzip when its coding
 * is gzip or x-gzip (any case) and no q parameter (any case) lacks a value
 * from "0.001" to "1" written as a qvalue (RFC 9110 12.4.2), and refuses it
 * when one does. "*" does not name gzip: the plain body always works.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_server.h"

#define FUZZ_TARGET "fuzz_accept_encoding"
#include "fuzz_check.h"

#define MAX_HEADER 8192

/* What one list says when another is appended to it. */
static int combine(int a, int b)
{
    if (a == 0 || b == 0)
        return 0;
    return a == 1 || b == 1 ? 1 : -1;
}

static bool has_gzip(const char *v, size_t len)
{
    for (size_t i = 0; i + 4 <= len; i++)
        if ((v[i] | 0x20) == 'g' && (v[i + 1] | 0x20) == 'z' && (v[i + 2] | 0x20) == 'i' &&
            (v[i + 3] | 0x20) == 'p')
            return true;
    return false;
}

/* Calls the parser on an exact-size copy, so ASan sees any read past the value. */
static int parse(const char *v, size_t len)
{
    char *copy = malloc(len ? len : 1);
    CHECK(copy != NULL, "out of memory");
    memcpy(copy, v, len);
    int r = http_accept_encoding_gzip(copy, len);
    free(copy);
    CHECK(r == -1 || r == 0 || r == 1, "answer %d", r);
    return r;
}

static int parse_joined(const char *a, size_t alen, const char *b, size_t blen)
{
    char *j = malloc(alen + blen + 1);
    CHECK(j != NULL, "out of memory");
    memcpy(j, a, alen);
    memcpy(j + alen, b, blen);
    int r = parse(j, alen + blen);
    free(j);
    return r;
}

static int parse_mapped(const char *v, size_t len, char (*map)(char))
{
    char *m = malloc(len ? len : 1);
    CHECK(m != NULL, "out of memory");
    for (size_t i = 0; i < len; i++)
        m[i] = map(v[i]);
    int r = parse(m, len);
    free(m);
    return r;
}

static char upper(char c)
{
    return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static char space_to_tab(char c)
{
    return c == ' ' ? '\t' : c;
}

static void check_raw(const char *v, size_t len)
{
    int r = parse(v, len);

    CHECK(parse(v, len) == r, "not deterministic");
    CHECK(r == -1 || has_gzip(v, len), "%d without gzip named", r);
    CHECK(parse_mapped(v, len, upper) == r, "upper case changes the answer");
    CHECK(parse_mapped(v, len, lower) == r, "lower case changes the answer");
    CHECK(parse_mapped(v, len, space_to_tab) == r, "tabs for spaces change the answer");
    CHECK(parse_joined("identity, ", 10, v, len) == r, "a leading identity changes the answer");
    CHECK(parse_joined(v, len, ",identity", 9) == r, "a trailing identity changes the answer");
    if (memchr(v, '"', len) != NULL)
        return;
    CHECK(parse_joined(v, len, ", gzip;q=0", 10) == 0, "gzip;q=0 appended does not refuse");
    CHECK(parse_joined(v, len, ",gzip", 5) == combine(r, 1), "gzip appended: %d after %d",
          parse_joined(v, len, ",gzip", 5), r);
    const char *comma = memchr(v, ',', len);
    if (comma != NULL) {
        size_t k = (size_t)(comma - v);
        int halves = combine(parse(v, k), parse(comma + 1, len - k - 1));
        CHECK(halves == r, "%d for the whole, %d for the halves", r, halves);
    }
}

/* The program: bytes read one at a time, 0 once they run out. */
struct reader {
    const uint8_t *p, *end;
};

static unsigned pick(struct reader *rd, unsigned n)
{
    return rd->p < rd->end ? *rd->p++ % n : 0;
}

struct header {
    char s[MAX_HEADER];
    size_t len;
};

static void put(struct header *h, const char *s)
{
    size_t n = strlen(s);

    CHECK(h->len + n <= sizeof(h->s), "header too long for the buffer");
    memcpy(h->s + h->len, s, n);
    h->len += n;
}

static void put_ows(struct header *h, struct reader *rd)
{
    static const char *const ows[] = {"", "", " ", "\t", " \t "};
    put(h, ows[pick(rd, sizeof(ows) / sizeof(ows[0]))]);
}

/* Whether a bare value is a qvalue other than 0, counted in thousandths. */
static bool ref_q_takes(const char *v)
{
    size_t len = strlen(v);
    unsigned milli, scale = 100;

    if (len == 0 || (v[0] != '0' && v[0] != '1'))
        return false;
    milli = (unsigned)(v[0] - '0') * 1000;
    if (len > 1 && (v[1] != '.' || len > 5))
        return false;
    for (size_t i = 2; i < len; i++, scale /= 10) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        milli += (unsigned)(v[i] - '0') * scale;
    }
    return milli > 0 && milli <= 1000;
}

static void gen_value(struct header *h, struct reader *rd, char *bare, size_t bare_size)
{
    static const char *const qvalues[] = {
        "0",     "0.",  "0.0",   "0.000",  "0.001", "0.5", "0.9999", "1",    "1.",  "1.0",
        "1.000", "1.1", "1.001", "1.0001", "2",     "-1",  "00",     "01",   ".5",  "1e0",
        "0.5x",  "",    "0.01",  "0.999",  "true",  "0x1", "+1",     "1.00", "0.10"};
    static const char *const quoted[] = {
        "\"1\"",   "\"0\"",          "\"a,b\"",   "\",gzip\"",       "\"gzip;q=0\"",
        "\"a b\"", "\"a;q=0\"",      "\"\\\"\"",  "\"\\\",gzip\"",   "\"x\\\\\"",
        "\"\"",    "\", gzip;a=b\"", "\"\t,\t\"", "\"q=0, x-gzip\"", "\"\\,\""};
    unsigned form = pick(rd, 4);

    bare[0] = '\0';
    if (form == 0) {
        snprintf(bare, bare_size, "%s", qvalues[pick(rd, sizeof(qvalues) / sizeof(qvalues[0]))]);
    } else if (form == 1) {
        /* A generated one: 0 or 1 (or 2), a dot, up to five digits, zeros more often. */
        size_t n = 0;
        bare[n++] = (char)('0' + pick(rd, 3));
        unsigned frac = pick(rd, 7);
        if (frac > 0) {
            bare[n++] = '.';
            for (unsigned i = 1; i < frac && n + 1 < bare_size; i++) {
                unsigned d = pick(rd, 14);
                bare[n++] = (char)('0' + (d >= 10 ? 0 : d));
            }
        }
        bare[n] = '\0';
    } else if (form == 2) {
        put(h, quoted[pick(rd, sizeof(quoted) / sizeof(quoted[0]))]);
        return;
    } else {
        static const char *const tokens[] = {"1", "9", "gzip", "br", "x-y", "!#$%&'*+-.^_`|~"};
        snprintf(bare, bare_size, "%s", tokens[pick(rd, sizeof(tokens) / sizeof(tokens[0]))]);
    }
    put(h, bare);
}

/* Writes one element; its answer (-1, 0, 1) by the rule in the file's comment. */
static int gen_element(struct header *h, struct reader *rd)
{
    static const char *const codings[] = {
        "gzip",     "GZIP",  "Gzip",  "x-gzip",  "X-GZip", "deflate", "br",     "*",
        "identity", "gzipx", "xgzip", "x-gzipx", "zstd",   "",        "gzip-x", "compress"};
    static const char *const names[] = {"q", "Q", "level", "qq", "x", "charset"};
    unsigned c = pick(rd, sizeof(codings) / sizeof(codings[0]));
    bool gzip = c < 5;
    bool refused = false;

    put_ows(h, rd);
    put(h, codings[c]);
    for (unsigned n = pick(rd, 4); n > 0; n--) {
        unsigned name = pick(rd, sizeof(names) / sizeof(names[0]));
        char bare[16];

        put_ows(h, rd);
        put(h, ";");
        put_ows(h, rd);
        put(h, names[name]);
        bare[0] = '\0';
        if (pick(rd, 5) != 0) {
            put(h, "=");
            gen_value(h, rd, bare, sizeof(bare));
        }
        if (name < 2 && !ref_q_takes(bare))
            refused = true;
    }
    put_ows(h, rd);
    if (!gzip)
        return -1;
    return refused ? 0 : 1;
}

static void check_grammar(const uint8_t *data, size_t size)
{
    static struct header h;
    struct reader rd = {data, data + size};
    int want = -1;

    h.len = 0;
    for (unsigned i = 0; rd.p < rd.end && i < 32; i++) {
        if (i > 0)
            put(&h, pick(&rd, 6) == 0 ? ", ," : ",");
        want = combine(want, gen_element(&h, &rd));
    }
    int got = parse(h.s, h.len);
    CHECK(got == want, "%d where %d is right for [%.*s]", got, want, (int)h.len, h.s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_raw((const char *)data, size);
    check_grammar(data, size);
    return 0;
}
