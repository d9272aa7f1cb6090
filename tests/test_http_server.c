/*
 * Tests for pkg/http_server: a real server on a loopback ephemeral port, driven
 * by a small raw-socket HTTP/1.1 client (and curl for TLS).
 */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "http_server.h"
#include "query.h"
#include "testutil.h"

#define TEST_TOKEN "s3cret-token"

/* ---- a tiny HTTP/1.1 client ---- */

struct reply {
    int status;
    char head[4096]; /* status line and headers */
    char body[65536];
    size_t body_len;
};

static int connect_port(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    struct timeval tv = {.tv_sec = 5};
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    cr_assert(fd >= 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "connect: %s",
                 strerror(errno));
    return fd;
}

static void send_all(int fd, const char *s)
{
    size_t len = strlen(s);

    while (len > 0) {
        ssize_t n = write(fd, s, len);
        cr_assert(n > 0, "write: %s", strerror(errno));
        s += n;
        len -= (size_t)n;
    }
}

static void send_request(int fd, const char *method, const char *target, const char *extra,
                         bool close_conn)
{
    char req[8192];

    snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: test\r\n%s%s\r\n", method, target,
             close_conn ? "Connection: close\r\n" : "", extra != NULL ? extra : "");
    send_all(fd, req);
}

/* Value of header name in r->head, or NULL. */
static const char *header(const struct reply *r, const char *name, char *out, size_t outlen)
{
    size_t nlen = strlen(name);
    const char *p = strstr(r->head, "\r\n");

    while (p != NULL && p[2] != '\0') {
        const char *line = p + 2;
        const char *eol = strstr(line, "\r\n");

        if (eol == NULL)
            eol = line + strlen(line);
        if ((size_t)(eol - line) > nlen && strncasecmp(line, name, nlen) == 0 &&
            line[nlen] == ':') {
            const char *v = line + nlen + 1;
            size_t vlen;

            while (*v == ' ')
                v++;
            vlen = (size_t)(eol - v);
            if (vlen >= outlen)
                vlen = outlen - 1;
            memcpy(out, v, vlen);
            out[vlen] = '\0';
            return out;
        }
        p = *eol != '\0' ? eol : NULL;
    }
    return NULL;
}

/* Sends one request with Connection: close and reads the whole reply. */
static void request(int port, const char *method, const char *target, const char *extra,
                    struct reply *r)
{
    static char raw[sizeof(r->head) + sizeof(r->body)];
    size_t len = 0;
    char *eoh;
    int fd = connect_port(port);

    send_request(fd, method, target, extra, true);
    for (;;) {
        ssize_t n = read(fd, raw + len, sizeof(raw) - 1 - len);
        cr_assert(n >= 0, "read: %s", strerror(errno));
        if (n == 0)
            break;
        len += (size_t)n;
        cr_assert(len < sizeof(raw) - 1, "reply too large");
    }
    close(fd);
    raw[len] = '\0';
    eoh = strstr(raw, "\r\n\r\n");
    cr_assert_not_null(eoh, "no end of headers in: %s", raw);
    memset(r, 0, sizeof(*r));
    cr_assert((size_t)(eoh - raw) < sizeof(r->head));
    memcpy(r->head, raw, (size_t)(eoh - raw) + 2);
    cr_assert_eq(sscanf(raw, "HTTP/1.1 %d", &r->status), 1, "bad status line: %s", raw);
    r->body_len = len - (size_t)(eoh + 4 - raw);
    memcpy(r->body, eoh + 4, r->body_len);
}

static void get(int port, const char *target, const char *extra, struct reply *r)
{
    request(port, "GET", target, extra, r);
}

/* ---- server fixture ---- */

static void handle_echo(void *ctx, const struct http_request *req, struct http_response *res)
{
    buf_puts(&res->body, "{\"path\":");
    buf_json_string(&res->body, req->path, req->path_len);
    buf_puts(&res->body, ",\"query\":");
    buf_json_string(&res->body, req->query, req->query_len);
    buf_puts(&res->body, "}");
}

static void handle_health(void *ctx, const struct http_request *req, struct http_response *res)
{
    buf_puts(&res->body, "{\"status\":\"ok\"}");
}

static void handle_metrics(void *ctx, const struct http_request *req, struct http_response *res)
{
    res->content_type = "text/plain; version=0.0.4";
    buf_puts(&res->body, "requests_total 1\n");
}

static void handle_fail(void *ctx, const struct http_request *req, struct http_response *res)
{
    http_response_error(res, 400, "invalid 'x': \"quoted\"");
}

static struct http_server *start_server(const char *token, size_t client_buffer)
{
    char err[256] = "";
    struct http_server_config cfg = {
        .listen_addr = "127.0.0.1:0",
        .api_token = token,
        .stream_client_buffer = client_buffer,
    };
    struct http_server *s = http_server_new(&cfg, err, sizeof(err));

    cr_assert_not_null(s, "http_server_new: %s", err);
    cr_assert_gt(http_server_port(s), 0);
    /* The stream is registered first: exact routes must not be prefix matches. */
    cr_assert_eq(http_server_stream(s, "/api/events/stream"), 0);
    cr_assert_eq(http_server_route(s, "/api/events", handle_echo, NULL), 0);
    cr_assert_eq(http_server_route(s, "/api/fail", handle_fail, NULL), 0);
    cr_assert_eq(http_server_route(s, "/health", handle_health, NULL), 0);
    cr_assert_eq(http_server_route(s, "/metrics", handle_metrics, NULL), 0);
    cr_assert_eq(http_server_route(s, "/health", handle_health, NULL), -EEXIST);
    cr_assert_eq(http_server_start(s), 0);
    return s;
}

/* ---- SSE client ---- */

struct sse {
    int fd;
    /* De-chunked body: room for everything a test publishes (the slow-client test sends ~20 MB,
     * and how much of it the kernel's socket buffers pass on before the drops start depends
     * on the machine). Every struct sse is static. */
    char data[24 << 20];
    size_t len;
    char raw[65536]; /* bytes read but not yet de-chunked */
    size_t raw_len;
    bool ended; /* the last (empty) chunk came */
};

/* Moves complete chunks from raw to data. */
static void sse_dechunk(struct sse *c)
{
    for (;;) {
        char *eol;
        unsigned long size;
        size_t hdr;

        c->raw[c->raw_len] = '\0';
        eol = strstr(c->raw, "\r\n");
        if (eol == NULL)
            return;
        size = strtoul(c->raw, NULL, 16);
        hdr = (size_t)(eol + 2 - c->raw);
        if (c->raw_len < hdr + size + 2)
            return;
        if (size == 0)
            c->ended = true;
        cr_assert_lt(c->len + size, sizeof(c->data) - 1);
        memcpy(c->data + c->len, c->raw + hdr, size);
        c->len += size;
        c->data[c->len] = '\0';
        memmove(c->raw, c->raw + hdr + size + 2, c->raw_len - hdr - size - 2);
        c->raw_len -= hdr + size + 2;
    }
}

/* Reads until the de-chunked body contains needle; false on timeout or EOF. */
static bool sse_wait_for(struct sse *c, const char *needle)
{
    uint64_t deadline = tu_mono_ms() + 5000;
    size_t from = 0, nlen = strlen(needle);

    /* Each pass looks only at what arrived since the last (data can grow to megabytes). */
    while (strstr(c->data + from, needle) == NULL) {
        from = c->len > nlen ? c->len - nlen : 0;
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int64_t left = (int64_t)(deadline - tu_mono_ms());
        ssize_t n;

        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            return false;
        n = read(c->fd, c->raw + c->raw_len, sizeof(c->raw) - 1 - c->raw_len);
        if (n <= 0)
            return false;
        c->raw_len += (size_t)n;
        sse_dechunk(c);
    }
    return true;
}

/* Reads until the stream's last chunk; false on timeout or EOF before it. */
static bool sse_wait_end(struct sse *c, int timeout_ms)
{
    uint64_t deadline = tu_mono_ms() + (uint64_t)timeout_ms;

    while (!c->ended) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int64_t left = (int64_t)(deadline - tu_mono_ms());
        ssize_t n;

        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            return false;
        n = read(c->fd, c->raw + c->raw_len, sizeof(c->raw) - 1 - c->raw_len);
        if (n <= 0)
            return false;
        c->raw_len += (size_t)n;
        sse_dechunk(c);
    }
    return true;
}

static void sse_open(struct sse *c, int port, const char *target, const char *extra, char *head,
                     size_t headlen)
{
    char *eoh;

    memset(c, 0, sizeof(*c));
    c->fd = connect_port(port);
    send_request(c->fd, "GET", target, extra, false);
    /* Read the head byte by byte so no body bytes are consumed here. */
    while ((eoh = strstr(c->raw, "\r\n\r\n")) == NULL) {
        ssize_t n = read(c->fd, c->raw + c->raw_len, 1);
        cr_assert_eq(n, 1, "stream closed before headers");
        c->raw_len++;
        cr_assert_lt(c->raw_len, headlen);
    }
    memcpy(head, c->raw, c->raw_len);
    head[c->raw_len] = '\0';
    c->raw_len = 0;
    c->raw[0] = '\0';
}

static void make_event(struct event *e, enum event_type type, uint32_t pid)
{
    memset(e, 0, sizeof(*e));
    e->id = 0x1000 + pid;
    e->timestamp_ns = 1700000000000000000ull + pid;
    e->type = type;
    e->pid = pid;
    strcpy(e->command, "curl");
    if (type == EVENT_EXEC) {
        e->u.exec.filename = "/usr/bin/curl";
    } else if (type == EVENT_CONNECTION) {
        e->family = EVENT_FAMILY_IPV4;
        e->protocol = IPPROTO_TCP;
        e->status = EVENT_STATUS_ESTABLISHED;
        e->saddr[0] = 127, e->saddr[3] = 1;
        e->daddr[0] = 127, e->daddr[3] = 1;
        e->dport = 80;
    }
}

/* Waits until the loop thread has registered n stream clients. */
static void wait_stream_clients(struct http_server *s, uint64_t n)
{
    uint64_t deadline = tu_mono_ms() + 5000;
    struct http_server_stats st;

    for (;;) {
        http_server_get_stats(s, &st);
        if (st.stream_clients == n)
            return;
        cr_assert_lt(tu_mono_ms(), deadline, "stream clients %llu, want %llu",
                     (unsigned long long)st.stream_clients, (unsigned long long)n);
        usleep(1000);
    }
}

/* ---- tests ---- */

Test(http_server, get_returns_json_with_length)
{
    struct http_server *s = start_server(NULL, 0);
    struct reply r;
    char v[256];

    get(http_server_port(s), "/health", NULL, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, "{\"status\":\"ok\"}");
    cr_assert_str_eq(header(&r, "content-type", v, sizeof(v)), "application/json");
    cr_assert_str_eq(header(&r, "content-length", v, sizeof(v)), "15");
    cr_assert_str_eq(header(&r, "cache-control", v, sizeof(v)), "no-store");
    cr_assert_str_eq(header(&r, "x-content-type-options", v, sizeof(v)), "nosniff");
    cr_assert_null(header(&r, "content-security-policy", v, sizeof(v)), "a page's only");
    cr_assert_null(header(&r, "transfer-encoding", v, sizeof(v)));

    get(http_server_port(s), "/metrics", NULL, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(header(&r, "content-type", v, sizeof(v)), "text/plain; version=0.0.4");
    cr_assert_str_eq(r.body, "requests_total 1\n");

    /* HEAD: same headers, no body. */
    request(http_server_port(s), "HEAD", "/health", NULL, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.body_len, 0);
    http_server_free(s);
}

Test(http_server, handler_error_is_escaped_json)
{
    struct http_server *s = start_server(NULL, 0);
    struct reply r;

    get(http_server_port(s), "/api/fail", NULL, &r);
    cr_assert_eq(r.status, 400);
    cr_assert_str_eq(r.body, "{\"error\":\"invalid 'x': \\\"quoted\\\"\"}");
    http_server_free(s);
}

/* A route without parameters names the first one it was given, as the others name theirs. */
Test(http_server, a_route_without_parameters_names_the_one_given)
{
    struct http_request req = {.path = "/api/stats", .path_len = 10, .query = "", .query_len = 0};
    struct http_response res = {0};
    buf_init(&res.body);
    cr_assert_not(http_refuse_params(&req, &res));
    req.query = "foo=1&bar=2";
    req.query_len = strlen(req.query);
    cr_assert(http_refuse_params(&req, &res));
    cr_assert_eq(res.status, 400);
    buf_putc(&res.body, '\0');
    cr_assert_str_eq(
        res.body.data,
        "{\"error\":\"unknown query parameter 'foo' (/api/stats takes no parameters)\"}");
    /* A long name is cut where the message says so. */
    req.query = "a234567890123456789012345678901234567890123456789012345678901234567890=1";
    req.query_len = strlen(req.query);
    cr_assert(http_refuse_params(&req, &res));
    buf_putc(&res.body, '\0');
    cr_assert_not_null(strstr(res.body.data, "'a23456789012345678901234567890123456789"
                                             "0123456789012345678901234...' (/api/stats"),
                       "%s", res.body.data);
    req.query = "\"x";
    req.query_len = 2;
    cr_assert(http_refuse_params(&req, &res));
    buf_putc(&res.body, '\0');
    cr_assert_not_null(strstr(res.body.data, "'\\\"x'"), "%s", res.body.data);
    /* Empty segments are no parameters (as on the query routes); the first real one is named. */
    req.query = "&&";
    req.query_len = 2;
    cr_assert_not(http_refuse_params(&req, &res));
    req.query = "&&y=2&z";
    req.query_len = strlen(req.query);
    cr_assert(http_refuse_params(&req, &res));
    buf_putc(&res.body, '\0');
    cr_assert_not_null(strstr(res.body.data, "parameter 'y' ("), "%s", res.body.data);
    buf_free(&res.body);
}

Test(http_server, unknown_path_is_404)
{
    struct http_server *s = start_server(NULL, 0);
    struct reply r;
    char v[256];

    get(http_server_port(s), "/nope", NULL, &r);
    cr_assert_eq(r.status, 404);
    cr_assert_str_eq(r.body, "{\"error\":\"not found\"}");
    cr_assert_str_eq(header(&r, "content-type", v, sizeof(v)), "application/json");
    cr_assert_str_eq(header(&r, "x-content-type-options", v, sizeof(v)), "nosniff");
    /* Exact paths: neither a prefix nor an extension of a route matches. */
    get(http_server_port(s), "/api/events/x", NULL, &r);
    cr_assert_eq(r.status, 404);
    get(http_server_port(s), "/api", NULL, &r);
    cr_assert_eq(r.status, 404);
    get(http_server_port(s), "/", NULL, &r);
    cr_assert_eq(r.status, 404);
    http_server_free(s);
}

Test(http_server, post_is_405_with_allow)
{
    struct http_server *s = start_server(NULL, 0);
    struct reply r;
    char v[256];

    request(http_server_port(s), "POST", "/api/events", "Content-Length: 0\r\n", &r);
    cr_assert_eq(r.status, 405);
    cr_assert_str_eq(r.body, "{\"error\":\"method not allowed\"}");
    cr_assert_str_eq(header(&r, "allow", v, sizeof(v)), "GET, HEAD");
    request(http_server_port(s), "DELETE", "/health", NULL, &r);
    cr_assert_eq(r.status, 405);
    http_server_free(s);
}

Test(http_server, bearer_token_guards_api_only)
{
    struct http_server *s = start_server(TEST_TOKEN, 0);
    int port = http_server_port(s);
    struct reply r;
    char v[256];

    get(port, "/api/events", NULL, &r);
    cr_assert_eq(r.status, 401);
    cr_assert_str_eq(r.body, "{\"error\":\"missing or invalid bearer token\"}");
    cr_assert_str_eq(header(&r, "www-authenticate", v, sizeof(v)), "Bearer");

    get(port, "/api/events", "Authorization: Bearer wrong-token\r\n", &r);
    cr_assert_eq(r.status, 401);
    get(port, "/api/events", "Authorization: Bearer " TEST_TOKEN "x\r\n", &r);
    cr_assert_eq(r.status, 401);
    get(port, "/api/events", "Authorization: Basic " TEST_TOKEN "\r\n", &r);
    cr_assert_eq(r.status, 401);
    /* Unknown /api/ paths do not reveal whether they exist. */
    get(port, "/api/unknown", NULL, &r);
    cr_assert_eq(r.status, 401);
    /* The stream is under /api/ too, and its resume point is not looked at before the token
     * (an EventSource, which cannot send one, is refused the same). */
    get(port, "/api/events/stream", NULL, &r);
    cr_assert_eq(r.status, 401);
    get(port, "/api/events/stream?last_event_id=nope", "Last-Event-ID: nope\r\n", &r);
    cr_assert_eq(r.status, 401, "%s", r.body);

    get(port, "/api/events", "Authorization: Bearer " TEST_TOKEN "\r\n", &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, "{\"path\":\"/api/events\",\"query\":\"\"}");
    /* The scheme is case-insensitive and may be followed by several spaces. */
    get(port, "/api/events", "Authorization: bearer   " TEST_TOKEN "\r\n", &r);
    cr_assert_eq(r.status, 200);

    get(port, "/health", NULL, &r);
    cr_assert_eq(r.status, 200);
    get(port, "/metrics", NULL, &r);
    cr_assert_eq(r.status, 200);
    http_server_free(s);
}

Test(http_server, query_string_is_raw)
{
    struct http_server *s = start_server(NULL, 0);
    struct reply r;

    get(http_server_port(s), "/api/events?type=exec,exit&pod=a%20b&x=%2F", NULL, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body,
                     "{\"path\":\"/api/events\",\"query\":\"type=exec,exit&pod=a%20b&x=%2F\"}");
    get(http_server_port(s), "/api/events?", NULL, &r);
    cr_assert_str_eq(r.body, "{\"path\":\"/api/events\",\"query\":\"\"}");
    http_server_free(s);
}

/* "GET http://host/path" (absolute form, which servers must accept) is the same request. */
Test(http_server, absolute_form_targets_route_by_their_path)
{
    struct http_server *s = start_server(TEST_TOKEN, 0);
    int port = http_server_port(s);
    struct reply r;

    get(port, "http://example.test:8080/api/events?type=exec",
        "Authorization: Bearer " TEST_TOKEN "\r\n", &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, "{\"path\":\"/api/events\",\"query\":\"type=exec\"}");
    /* The token guards the API whatever form names it. */
    get(port, "HTTP://example.test/api/events", NULL, &r);
    cr_assert_eq(r.status, 401);
    get(port, "http://example.test/health", NULL, &r);
    cr_assert_eq(r.status, 200);
    get(port, "http://example.test/nope", NULL, &r);
    cr_assert_eq(r.status, 404);
    /* A path that merely looks like one is a path. */
    get(port, "/http://example.test/health", NULL, &r);
    cr_assert_eq(r.status, 404);
    http_server_free(s);
}

/* The body of a gzip stream, inflated into out (NUL-terminated); its length. */
static size_t gunzip(const char *in, size_t len, char *out, size_t cap)
{
    z_stream z = {0};
    cr_assert_eq(inflateInit2(&z, 15 + 16), Z_OK);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)len;
    z.next_out = (Bytef *)out;
    z.avail_out = (uInt)(cap - 1);
    cr_assert_eq(inflate(&z, Z_FINISH), Z_STREAM_END, "not a whole gzip stream");
    size_t n = cap - 1 - z.avail_out;
    inflateEnd(&z);
    out[n] = '\0';
    return n;
}

/* A client that takes gzip gets a larger body gzipped; the same bytes once inflated. */
Test(http_server, large_bodies_are_gzipped_for_clients_that_take_it)
{
    struct http_server *s = start_server(NULL, 0);
    int port = http_server_port(s);
    static char target[4096], plain[65536], inflated[65536];
    static struct reply r;
    char v[256];

    strcpy(target, "/api/events?x=");
    memset(target + strlen(target), 'a', 3000);
    get(port, target, NULL, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_null(header(&r, "content-encoding", v, sizeof(v)));
    cr_assert_str_eq(header(&r, "vary", v, sizeof(v)), "Accept-Encoding");
    cr_assert_gt(r.body_len, 3000);
    memcpy(plain, r.body, r.body_len);
    size_t plain_len = r.body_len;

    get(port, target, "Accept-Encoding: gzip, deflate\r\n", &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(header(&r, "content-encoding", v, sizeof(v)), "gzip");
    cr_assert_str_eq(header(&r, "vary", v, sizeof(v)), "Accept-Encoding");
    cr_assert_lt(r.body_len, plain_len / 4, "3000 repeated bytes compress");
    cr_assert_eq(gunzip(r.body, r.body_len, inflated, sizeof(inflated)), plain_len);
    cr_assert_eq(memcmp(inflated, plain, plain_len), 0);

    /* Small bodies go as they are. */
    get(port, "/api/events?x=1", "Accept-Encoding: gzip\r\n", &r);
    cr_assert_null(header(&r, "content-encoding", v, sizeof(v)));
    cr_assert_str_eq(r.body, "{\"path\":\"/api/events\",\"query\":\"x=1\"}");
    http_server_free(s);
}

/*
 * Accept-Encoding as RFC 9110 reads it: an element with parameters still names gzip
 * ("gzip;q=1.0,deflate;q=0.6", Ruby's Net::HTTP), and q=0 refuses it. A parameter's
 * quoted-string value is one value: its commas split no element, and one left open refuses.
 */
Test(http_server, accept_encoding_weights_are_read)
{
    static const struct {
        const char *accept;
        bool gzipped;
    } cases[] = {
        {"gzip;q=1.0,deflate;q=0.6,identity;q=0.3", true},
        {"gzip;q=1", true},
        {"gzip; q=0.5", true},
        {"deflate, GZIP ;Q=0.001", true},
        {"x-gzip", true},
        {"gzip;level=1", true},
        {"identity;q=1, gzip;q=1.000", true},
        {"gzip;q=0", false},
        {"gzip;q=0.000", false},
        {"gzip; q=0, deflate", false},
        {"deflate, gzip;q=0", false},
        {"gzip;q=2", false},
        {"gzip;q=", false},
        {"gzipx, xgzip, deflate", false},
        {"*", false},
        {"gzip;x=\"a,b\";q=0", false},
        {"deflate;x=\", gzip;a=b\"", false},
        {"gzip;x=\"open, deflate", false},
        {"gzip;level=\"a b\"", true},
        {"gzip;x=\"\\\",gzip;q=0\"", true},
    };
    struct http_server *s = start_server(NULL, 0);
    int port = http_server_port(s);
    static char target[4096], extra[256];
    static struct reply r;
    char v[256];

    strcpy(target, "/api/events?x=");
    memset(target + strlen(target), 'a', 3000);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(extra, sizeof(extra), "Accept-Encoding: %s\r\n", cases[i].accept);
        get(port, target, extra, &r);
        cr_assert_eq(r.status, 200);
        if (cases[i].gzipped)
            cr_assert_not_null(header(&r, "content-encoding", v, sizeof(v)), "%s: not gzipped",
                               cases[i].accept);
        else
            cr_assert_null(header(&r, "content-encoding", v, sizeof(v)), "%s: gzipped",
                           cases[i].accept);
    }
    http_server_free(s);
}

Test(http_server, stream_delivers_matching_events)
{
    struct http_server *s = start_server(NULL, 0);
    struct http_server_stats st;
    static struct sse c;
    char head[4096];
    struct event e;
    char *first, *second;

    sse_open(&c, http_server_port(s), "/api/events/stream?type=exec", NULL, head, sizeof(head));
    cr_assert(strncmp(head, "HTTP/1.1 200", 12) == 0, "%s", head);
    cr_assert_not_null(strcasestr(head, "content-type: text/event-stream\r\n"), "%s", head);
    cr_assert_not_null(strcasestr(head, "cache-control: no-store\r\n"), "%s", head);
    cr_assert_not_null(strcasestr(head, "x-content-type-options: nosniff\r\n"), "%s", head);
    cr_assert(sse_wait_for(&c, ": connected\n\n"));
    wait_stream_clients(s, 1);

    make_event(&e, EVENT_EXEC, 101);
    http_server_publish(s, &e);
    make_event(&e, EVENT_CONNECTION, 102);
    http_server_publish(s, &e);
    make_event(&e, EVENT_EXEC, 103); /* a marker: once it is here, 102 had its chance */
    http_server_publish(s, &e);
    cr_assert(sse_wait_for(&c, "\"pid\":103"), "got: %s", c.data);

    first = strstr(c.data, "data: {");
    cr_assert_not_null(first, "got: %s", c.data);
    cr_assert_not_null(strstr(first, "\"type\":\"exec\""));
    cr_assert_not_null(strstr(first, "\"pid\":101"));
    second = strstr(first + 1, "data: {");
    cr_assert_not_null(second);
    cr_assert_not_null(strstr(second, "\"pid\":103"));
    cr_assert_null(strstr(second + 1, "data: "), "extra event in: %s", c.data);
    cr_assert_null(strstr(c.data, "\"pid\":102"));
    cr_assert_null(strstr(c.data, "\"type\":\"connection\""));
    /* One JSON object per data line, each frame ending in a blank line. */
    cr_assert_not_null(strstr(first, "}\n\nid: 17979cfe362a0067-0000000000001067\ndata: {"),
                       "got: %s", c.data);
    cr_assert_eq(c.data[c.len - 1], '\n');
    cr_assert_eq(c.data[c.len - 2], '\n');

    /* Sent once the loop thread sees the write done, which may be after the client read it. */
    uint64_t deadline = tu_mono_ms() + 5000;
    do {
        http_server_get_stats(s, &st);
        if (st.stream_sent == 2)
            break;
        usleep(1000);
    } while (tu_mono_ms() < deadline);
    cr_assert_eq(st.stream_clients, 1);
    cr_assert_eq(st.stream_sent, 2);
    cr_assert_eq(st.stream_queued, 0);
    cr_assert_eq(st.stream_dropped, 0);
    cr_assert_eq(st.publish_dropped, 0);

    /* A client that leaves is noticed (on the next write) and forgotten. */
    close(c.fd);
    for (uint32_t pid = 200; pid < 100000; pid++) {
        make_event(&e, EVENT_EXEC, pid);
        http_server_publish(s, &e);
        http_server_get_stats(s, &st);
        if (st.stream_clients == 0)
            break;
        usleep(1000);
    }
    cr_assert_eq(st.stream_clients, 0);
    http_server_free(s);
}

Test(http_server, stream_rejects_bad_params)
{
    struct http_server *s = start_server(NULL, 0);
    struct http_server_stats st;
    struct reply r;

    get(http_server_port(s), "/api/events/stream?limit=5", NULL, &r);
    cr_assert_eq(r.status, 400);
    cr_assert_not_null(strstr(r.body, "{\"error\":"), "%s", r.body);
    cr_assert_not_null(strstr(r.body, "limit"), "%s", r.body);

    get(http_server_port(s), "/api/events/stream?type=bogus", NULL, &r);
    cr_assert_eq(r.status, 400);
    cr_assert_not_null(strstr(r.body, "type"), "%s", r.body);

    get(http_server_port(s), "/api/events/stream?bogus=1", NULL, &r);
    cr_assert_eq(r.status, 400);
    cr_assert_not_null(strstr(r.body, "bogus"), "%s", r.body);

    http_server_get_stats(s, &st);
    cr_assert_eq(st.stream_clients, 0);
    http_server_free(s);
}

/* A stream with an `until` ends after it (and a grace for late events); one in the past is refused.
 */
Test(http_server, stream_ends_after_its_until)
{
    struct http_server *s = start_server(NULL, 0);
    int port = http_server_port(s);
    static struct sse c;
    char head[4096], target[128];
    struct reply r;
    struct event e;

    snprintf(target, sizeof(target), "/api/events/stream?until=%" PRIu64,
             (uint64_t)(tu_now_ns() - 1000000000ull));
    get(port, target, NULL, &r);
    cr_assert_eq(r.status, 400);
    cr_assert_not_null(strstr(r.body, "'until'"), "%s", r.body);

    /* Three seconds ahead: a request that took longer (a loaded machine, a sanitizer build:
     * one second was seen to be too short) would find its until past and be refused. */
    snprintf(target, sizeof(target), "/api/events/stream?until=%" PRIu64,
             (uint64_t)(tu_now_ns() + 3000000000ull));
    sse_open(&c, port, target, NULL, head, sizeof(head));
    cr_assert(strncmp(head, "HTTP/1.1 200", 12) == 0, "%s", head);
    cr_assert(sse_wait_for(&c, ": connected\n\n"));
    make_event(&e, EVENT_EXEC, 7);
    http_server_publish(s, &e);
    cr_assert(sse_wait_for(&c, "\"pid\":7"), "got: %s", c.data);
    cr_assert(sse_wait_end(&c, 10000), "the stream did not end; got: %s", c.data);
    wait_stream_clients(s, 0);
    close(c.fd);
    http_server_free(s);
}

Test(http_server, stream_client_limit_is_503)
{
    char err[256];
    struct http_server_config cfg = {.listen_addr = "127.0.0.1:0", .max_stream_clients = 1};
    struct http_server *s = http_server_new(&cfg, err, sizeof(err));
    static struct sse c;
    char head[4096];
    struct reply r;

    cr_assert_not_null(s, "%s", err);
    cr_assert_eq(http_server_stream(s, "/stream"), 0);
    cr_assert_eq(http_server_start(s), 0);
    sse_open(&c, http_server_port(s), "/stream", NULL, head, sizeof(head));
    cr_assert(sse_wait_for(&c, ": connected\n\n"));
    get(http_server_port(s), "/stream", NULL, &r);
    cr_assert_eq(r.status, 503);
    cr_assert_not_null(strstr(r.body, "{\"error\":"));
    /* The client leaves: its slot is the next client's at once, not at the next keepalive. */
    close(c.fd);
    static struct sse next;
    uint64_t deadline = tu_mono_ms() + 5000; /* the keepalive that used to free it: 15 s */
    for (;;) {
        sse_open(&next, http_server_port(s), "/stream", NULL, head, sizeof(head));
        if (strncmp(head, "HTTP/1.1 200", 12) == 0 || tu_mono_ms() > deadline)
            break;
        close(next.fd); /* the FIN not seen yet: a moment */
        usleep(20000);
    }
    cr_assert(strncmp(head, "HTTP/1.1 200", 12) == 0, "%s", head);
    cr_assert(sse_wait_for(&next, ": connected\n\n"));
    close(next.fd);
    http_server_free(s);
}

/*
 * A client that closes its connection stops counting at once (stream.clients,
 * and the callback that lets an aggregator stop feeding the stream), not at
 * the write after the next keepalive, up to 30 s later.
 */
Test(http_server, a_stream_client_that_left_stops_counting)
{
    struct http_server *s = start_server(NULL, 0);
    static struct sse c;
    char head[4096];

    sse_open(&c, http_server_port(s), "/api/events/stream?type=exec", NULL, head, sizeof(head));
    cr_assert(sse_wait_for(&c, ": connected\n\n"));
    wait_stream_clients(s, 1);
    close(c.fd);
    wait_stream_clients(s, 0);
    http_server_free(s);
}

/* Publishes n exec events of about 1 KB each (pids 1..n) to a client that reads nothing, and
 * waits until each is accounted for: sent, queued, dropped. */
static void publish_unread(struct http_server *s, uint32_t n, struct http_server_stats *st)
{
    static char args[1000];
    struct event e;

    memset(args, 'a', sizeof(args) - 1);
    for (uint32_t pid = 1; pid <= n; pid++) {
        make_event(&e, EVENT_EXEC, pid);
        e.u.exec.args = args;
        e.u.exec.args_len = sizeof(args);
        http_server_publish(s, &e);
    }
    uint64_t deadline = tu_mono_ms() + 5000;
    do {
        http_server_get_stats(s, st);
        if (st->stream_sent + st->stream_queued + st->stream_dropped + st->publish_dropped == n)
            break;
        usleep(1000);
    } while (tu_mono_ms() < deadline);
    cr_assert_eq(st->stream_sent + st->stream_queued + st->stream_dropped + st->publish_dropped, n);
}

Test(http_server, slow_stream_client_drops_and_is_told)
{
    /* Room for a few events only; the client does not read while they pile up. */
    struct http_server *s = start_server(NULL, 4096);
    struct http_server_stats st;
    static struct sse c;
    char head[4096];
    struct event e;

    sse_open(&c, http_server_port(s), "/api/events/stream", NULL, head, sizeof(head));
    cr_assert(sse_wait_for(&c, ": connected\n\n"));
    wait_stream_clients(s, 1);

    /* ~20 MB: more than both kernel socket buffers and ours can hold. */
    publish_unread(s, 20000, &st);
    cr_assert_gt(st.stream_dropped, 0);

    /* Catching up: the client learns how many it missed, then events flow again. */
    make_event(&e, EVENT_EXEC, 99999);
    http_server_publish(s, &e);
    cr_assert(sse_wait_for(&c, "\"pid\":99999"), "tail: %s",
              c.len > 200 ? c.data + c.len - 200 : c.data);
    cr_assert_not_null(strstr(c.data, ": dropped "));
    http_server_free(s);
    close(c.fd);
}

/*
 * A client that goes away with events still waiting for it: those count as dropped, not as
 * sent. Only what was written to its connection is sent.
 */
Test(http_server, events_left_by_a_client_that_went_away_are_dropped_not_sent)
{
    struct http_server *s = start_server(NULL, 64 << 20);
    struct http_server_stats st;
    static struct sse c;
    char head[4096];

    sse_open(&c, http_server_port(s), "/api/events/stream", NULL, head, sizeof(head));
    cr_assert(sse_wait_for(&c, ": connected\n\n"));
    wait_stream_clients(s, 1);
    /* ~20 MB: more than the kernel's socket buffers hold, less than ours: some wait for the
     * client, none is missed. */
    enum { N = 20000 };
    publish_unread(s, N, &st);
    cr_assert_eq(st.stream_dropped, 0);
    cr_assert_gt(st.stream_queued, 0);

    close(c.fd);
    wait_stream_clients(s, 0);
    http_server_get_stats(s, &st);
    cr_assert_eq(st.stream_queued, 0);
    cr_assert_eq(st.stream_sent + st.stream_dropped + st.publish_dropped, N);
    cr_assert_gt(st.stream_dropped, 0, "what waited for the client is dropped");
    cr_assert_lt(st.stream_sent, N - st.publish_dropped, "not everything was written");
    http_server_free(s);
}

Test(http_server, free_is_prompt_with_stream_client)
{
    struct http_server *s = start_server(NULL, 0);
    static struct sse c;
    char head[4096];
    uint64_t t0;
    char b[64];

    sse_open(&c, http_server_port(s), "/api/events/stream", NULL, head, sizeof(head));
    cr_assert(sse_wait_for(&c, ": connected\n\n"));
    t0 = tu_mono_ms();
    http_server_free(s);
    cr_assert_lt(tu_mono_ms() - t0, 1000, "free took %llu ms",
                 (unsigned long long)(tu_mono_ms() - t0));
    /* The client sees the stream end. */
    while (read(c.fd, b, sizeof(b)) > 0)
        ;
    close(c.fd);
}

Test(http_server, listen_errors_are_clear)
{
    char err[256];
    struct http_server_config cfg = {.listen_addr = "127.0.0.1:0"};
    struct http_server *a = http_server_new(&cfg, err, sizeof(err));
    struct http_server *b;
    char addr[64];

    cr_assert_not_null(a, "%s", err);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", http_server_port(a));
    cfg.listen_addr = addr;
    b = http_server_new(&cfg, err, sizeof(err));
    cr_assert_null(b);
    char want[128];
    snprintf(want, sizeof(want), "listen on %s (LISTEN_ADDR): Address already in use", addr);
    cr_assert_str_eq(err, want);

    cfg.listen_addr = "127.0.0.1:99999";
    cr_assert_null(http_server_new(&cfg, err, sizeof(err)));
    cr_assert_not_null(strstr(err, "listen on 127.0.0.1:99999"), "%s", err);
    cfg.listen_addr = "::1:80";
    cr_assert_null(http_server_new(&cfg, err, sizeof(err)));
    http_server_free(a);
}

Test(http_server, listen_address_forms)
{
    const char *addrs[] = {":0", "[::1]:0", "127.0.0.1:0", "localhost:0"};
    char err[256];

    for (size_t i = 0; i < sizeof(addrs) / sizeof(addrs[0]); i++) {
        struct http_server_config cfg = {.listen_addr = addrs[i]};
        struct http_server *s = http_server_new(&cfg, err, sizeof(err));
        struct reply r;

        if (s == NULL && strncmp(addrs[i], "[::1]", 5) == 0)
            continue; /* no IPv6 loopback here */
        cr_assert_not_null(s, "%s: %s", addrs[i], err);
        cr_assert_gt(http_server_port(s), 0);
        cr_assert_eq(http_server_route(s, "/health", handle_health, NULL), 0);
        cr_assert_eq(http_server_start(s), 0);
        if (addrs[i][0] != '[') { /* reachable over IPv4 loopback */
            get(http_server_port(s), "/health", NULL, &r);
            cr_assert_eq(r.status, 200, "%s", addrs[i]);
        }
        http_server_free(s);
    }
}

Test(http_server, free_without_start)
{
    char err[256];
    struct http_server_config cfg = {.listen_addr = "127.0.0.1:0"};
    struct http_server *s = http_server_new(&cfg, err, sizeof(err));

    cr_assert_not_null(s, "%s", err);
    cr_assert_eq(http_server_route(s, "/health", handle_health, NULL), 0);
    http_server_free(s);
}

/* ---- TLS ---- */

static bool have_cmd(const char *cmd)
{
    char sh[256];

    snprintf(sh, sizeof(sh), "command -v %s >/dev/null 2>&1", cmd);
    return system(sh) == 0;
}

Test(http_server, tls_serves_https)
{
    char dir[] = "/tmp/test_http_server.XXXXXX";
    char cert[128], key[128], cmd[1024], out[4096], err[512];
    struct http_server_config cfg = {.listen_addr = "127.0.0.1:0", .api_token = TEST_TOKEN};
    struct http_server *s;
    FILE *p;
    size_t n;

    if (!have_cmd("openssl") || !have_cmd("curl"))
        cr_skip_test("needs the openssl and curl commands");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout %s -out %s -days 1 -subj /CN=localhost >/dev/null 2>&1",
             key, cert);
    cr_assert_eq(system(cmd), 0, "openssl req failed");

    cfg.tls_cert = cert;
    cfg.tls_key = key;
    s = http_server_new(&cfg, err, sizeof(err));
    cr_assert_not_null(s, "%s", err);
    cr_assert_eq(http_server_route(s, "/api/events", handle_echo, NULL), 0);
    cr_assert_eq(http_server_start(s), 0);

    snprintf(cmd, sizeof(cmd),
             "curl -sk --max-time 5 -H 'Authorization: Bearer " TEST_TOKEN
             "' -w ' %%{http_code} %%{scheme}' 'https://127.0.0.1:%d/api/events?a=1'",
             http_server_port(s));
    p = popen(cmd, "r");
    cr_assert_not_null(p);
    n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    pclose(p);
    cr_assert_str_eq(out, "{\"path\":\"/api/events\",\"query\":\"a=1\"} 200 HTTPS");

    /* Plain HTTP to the TLS port gets no HTTP answer. */
    snprintf(cmd, sizeof(cmd),
             "curl -s --max-time 5 -o /dev/null -w '%%{http_code}' "
             "'http://127.0.0.1:%d/api/events'",
             http_server_port(s));
    p = popen(cmd, "r");
    n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    pclose(p);
    cr_assert_str_eq(out, "000");
    http_server_free(s);

    /* Bad files: NULL, and the message names the file. */
    cfg.tls_cert = "/nonexistent/cert.pem";
    cr_assert_null(http_server_new(&cfg, err, sizeof(err)));
    cr_assert_not_null(strstr(err, "/nonexistent/cert.pem"), "%s", err);
    cfg.tls_cert = cert;
    cfg.tls_key = cert; /* a certificate is not a key */
    cr_assert_null(http_server_new(&cfg, err, sizeof(err)));
    cr_assert_not_null(strstr(err, cert), "%s", err);
    cfg.tls_key = NULL;
    cr_assert_null(http_server_new(&cfg, err, sizeof(err)));

    unlink(cert);
    unlink(key);
    rmdir(dir);
}

/* ---- deferred responses ---- */

/* The handler parks its deferred here for the test to complete. */
static struct http_deferred *parked;

static void handle_slow(void *ctx, const struct http_request *req, struct http_response *res)
{
    struct http_deferred *d = http_response_defer(res);

    cr_assert_not_null(d);
    /* Ignored once deferred. */
    buf_puts(&res->body, "not this");
    __atomic_store_n(&parked, d, __ATOMIC_RELEASE);
}

static struct http_server *start_deferring_server(void)
{
    char err[256] = "";
    struct http_server_config cfg = {.listen_addr = "127.0.0.1:0"};
    struct http_server *s = http_server_new(&cfg, err, sizeof(err));

    cr_assert_not_null(s, "http_server_new: %s", err);
    cr_assert_eq(http_server_route(s, "/api/slow", handle_slow, NULL), 0);
    cr_assert_eq(http_server_route(s, "/health", handle_health, NULL), 0);
    cr_assert_eq(http_server_start(s), 0);
    return s;
}

static struct http_deferred *wait_parked(void)
{
    uint64_t deadline = tu_mono_ms() + 5000;
    struct http_deferred *d;

    while ((d = __atomic_exchange_n(&parked, NULL, __ATOMIC_ACQ_REL)) == NULL) {
        cr_assert_lt(tu_mono_ms(), deadline, "the handler never deferred");
        usleep(1000);
    }
    return d;
}

static void wait_deferred_pending(struct http_server *s, uint64_t n)
{
    uint64_t deadline = tu_mono_ms() + 5000;
    struct http_server_stats st;

    for (;;) {
        http_server_get_stats(s, &st);
        if (st.deferred_pending == n)
            return;
        cr_assert_lt(tu_mono_ms(), deadline, "deferred pending %llu, want %llu",
                     (unsigned long long)st.deferred_pending, (unsigned long long)n);
        usleep(1000);
    }
}

static void *complete_later(void *arg)
{
    struct buf body;

    buf_init(&body);
    buf_puts(&body, "{\"late\":true}");
    http_deferred_complete(arg, 503, NULL, &body);
    /* The bytes were taken. */
    cr_assert_eq(body.len, 0);
    buf_free(&body);
    return NULL;
}

/* Reads one whole Connection: close reply from fd. */
static void read_reply(int fd, struct reply *r)
{
    static char raw[sizeof(r->head) + sizeof(r->body)];
    size_t len = 0;
    char *eoh;

    for (;;) {
        ssize_t n = read(fd, raw + len, sizeof(raw) - 1 - len);
        cr_assert(n >= 0, "read: %s", strerror(errno));
        if (n == 0)
            break;
        len += (size_t)n;
    }
    raw[len] = '\0';
    eoh = strstr(raw, "\r\n\r\n");
    cr_assert_not_null(eoh, "no end of headers in: %s", raw);
    memset(r, 0, sizeof(*r));
    memcpy(r->head, raw, (size_t)(eoh - raw) + 2);
    cr_assert_eq(sscanf(raw, "HTTP/1.1 %d", &r->status), 1);
    r->body_len = len - (size_t)(eoh + 4 - raw);
    memcpy(r->body, eoh + 4, r->body_len);
}

Test(http_server, deferred_response_completed_from_another_thread)
{
    struct http_server *s = start_deferring_server();
    int port = http_server_port(s), fd = connect_port(port);
    static struct reply r;
    struct http_server_stats st;
    pthread_t t;
    char v[64];

    send_request(fd, "GET", "/api/slow", NULL, true);
    struct http_deferred *d = wait_parked();
    wait_deferred_pending(s, 1);
    /* The loop thread is free while the response waits. */
    uint64_t t0 = tu_mono_ms();
    get(port, "/health", NULL, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_lt(tu_mono_ms() - t0, 1000);

    cr_assert_eq(pthread_create(&t, NULL, complete_later, d), 0);
    pthread_join(t, NULL);
    read_reply(fd, &r);
    close(fd);
    cr_assert_eq(r.status, 503);
    cr_assert_eq(r.body_len, strlen("{\"late\":true}"));
    cr_assert_eq(memcmp(r.body, "{\"late\":true}", r.body_len), 0);
    cr_assert_str_eq(header(&r, "content-type", v, sizeof(v)), "application/json");
    cr_assert_str_eq(header(&r, "content-length", v, sizeof(v)), "13");
    wait_deferred_pending(s, 0);
    http_server_get_stats(s, &st);
    cr_assert_eq(st.deferred_dropped, 0);
    http_server_free(s);
}

Test(http_server, deferred_completion_after_the_client_left_is_dropped)
{
    struct http_server *s = start_deferring_server();
    int port = http_server_port(s), fd = connect_port(port);
    static struct reply r;
    struct http_server_stats st;
    pthread_t t;

    send_request(fd, "GET", "/api/slow", NULL, true);
    struct http_deferred *d = wait_parked();
    /* Reset, not a polite close: the connection is gone at once. */
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
    cr_assert_eq(pthread_create(&t, NULL, complete_later, d), 0);
    pthread_join(t, NULL);
    wait_deferred_pending(s, 0);
    http_server_get_stats(s, &st);
    cr_log_info("dropped %llu", (unsigned long long)st.deferred_dropped);
    cr_assert_eq(st.deferred_dropped, 1);
    /* Still serving. */
    get(port, "/health", NULL, &r);
    cr_assert_eq(r.status, 200);
    http_server_free(s);
}

/* ---- resuming ---- */

static char replay_qs[512];
static bool replay_more; /* answer with has_next, 10 matches in all */

/* The history of a resumed client: the events of pids 4 to 7, newest first. */
static int replay_stub(void *ctx, const char *qs, size_t qslen, const struct query *q,
                       struct http_replay *out)
{
    snprintf(replay_qs, sizeof(replay_qs), "%.*s", (int)qslen, qs);
    out->events = calloc(4, sizeof(*out->events));
    for (uint32_t i = 0; i < 4; i++) {
        struct event e;
        make_event(&e, EVENT_EXEC, 7 - i);
        cr_assert_eq(event_copy(&out->events[i], &e), 0); /* the server frees its strings */
    }
    out->count = 4;
    out->total_count = replay_more ? 10 : 4;
    out->has_next = replay_more;
    return 0;
}

static struct http_server *start_replay_server(void)
{
    char err[256] = "";
    struct http_server_config cfg = {.listen_addr = "127.0.0.1:0"};
    struct http_server *s = http_server_new(&cfg, err, sizeof(err));

    cr_assert_not_null(s, "http_server_new: %s", err);
    cr_assert_eq(http_server_stream(s, "/api/events/stream"), 0);
    http_server_on_stream_replay(s, replay_stub, NULL);
    cr_assert_eq(http_server_start(s), 0);
    return s;
}

/*
 * Resumed after pid 4's event: the history's 5, 6, 7, then the live 8; 7, also published live
 * while the replay was asked, comes once; each with its id.
 */
Test(http_server, a_resumed_stream_replays_then_goes_live_without_duplicates)
{
    struct http_server *s = start_replay_server();
    static struct sse c;
    char head[4096];
    struct event e;

    replay_more = false;
    sse_open(&c, http_server_port(s), "/api/events/stream?type=exec",
             "Last-Event-ID: 17979cfe362a0004-0000000000001004\r\n", head, sizeof(head));
    cr_assert(strncmp(head, "HTTP/1.1 200", 12) == 0, "%s", head);
    cr_assert(sse_wait_for(&c, ": connected\n\n"));
    wait_stream_clients(s, 1);
    make_event(&e, EVENT_EXEC, 7);
    http_server_publish(s, &e);
    make_event(&e, EVENT_EXEC, 8);
    http_server_publish(s, &e);
    cr_assert(sse_wait_for(&c, "\"pid\":8"), "got: %s", c.data);
    make_event(&e, EVENT_EXEC, 9);
    http_server_publish(s, &e);
    cr_assert(sse_wait_for(&c, "\"pid\":9"), "got: %s", c.data);

    const char *p5 = strstr(c.data, "id: 17979cfe362a0005-0000000000001005\ndata: {");
    const char *p6 = strstr(c.data, "\"pid\":6,"), *p7 = strstr(c.data, "\"pid\":7,");
    const char *p8 = strstr(c.data, "\"pid\":8,");
    cr_assert(p5 && p6 && p7 && p8 && p5 < p6 && p6 < p7 && p7 < p8, "got: %s", c.data);
    cr_assert_null(strstr(p7 + 1, "\"pid\":7,"), "7 twice: %s", c.data);
    cr_assert_null(strstr(c.data, "\"pid\":4,"), "4 was the client's: %s", c.data);
    cr_assert_null(strstr(c.data, ": missing"), "got: %s", c.data);
    cr_assert_not_null(strstr(replay_qs, "type=exec&since=1700000000000000004&limit=1000"), "%s",
                       replay_qs);
    close(c.fd);
    http_server_free(s);
}

/* More than a replay holds, or a position the history lost: said before the events. */
Test(http_server, a_resumed_stream_says_what_it_cannot_replay)
{
    struct http_server *s = start_replay_server();
    static struct sse c;
    char head[4096];

    replay_more = true;
    sse_open(&c, http_server_port(s),
             "/api/events/stream?last_event_id=17979cfe362a0004-0000000000001004", NULL, head,
             sizeof(head));
    cr_assert(sse_wait_for(&c, "\"pid\":7,"), "got: %s", c.data);
    cr_assert_not_null(strstr(c.data, ": missing 6 events after 17979cfe362a0004-0000000000001004"),
                       "got: %s", c.data);
    close(c.fd);

    replay_more = false;
    sse_open(&c, http_server_port(s), "/api/events/stream",
             "Last-Event-ID: 17979cfe362a0001-0000000000001001\r\n", head, sizeof(head));
    cr_assert(sse_wait_for(&c, "\"pid\":7,"), "got: %s", c.data);
    cr_assert_not_null(strstr(c.data, ": missing: the history no longer holds "
                                      "17979cfe362a0001-0000000000001001"),
                       "got: %s", c.data);
    cr_assert_not_null(strstr(c.data, "\"pid\":4,"), "after the position: %s", c.data);
    close(c.fd);

    sse_open(&c, http_server_port(s), "/api/events/stream", "Last-Event-ID: 12\r\n", head,
             sizeof(head));
    cr_assert(strncmp(head, "HTTP/1.1 400", 12) == 0, "%s", head);
    close(c.fd);
    http_server_free(s);
}

/* The stream tells EventSource how soon to reconnect, before any event. */
Test(http_server, a_stream_sets_eventsources_reconnect_delay_first)
{
    struct http_server *s = start_server(NULL, 0);
    static struct sse c;
    char head[4096];

    sse_open(&c, http_server_port(s), "/api/events/stream", NULL, head, sizeof(head));
    cr_assert(sse_wait_for(&c, "retry: 1000\n\n"), "got: %s", c.data);
    cr_assert(strncmp(c.data, ": connected\n\nretry: 1000\n\n", 26) == 0, "got: %s", c.data);
    close(c.fd);
    http_server_free(s);
}

/* What no stream sent is refused, naming where it came from: an id more than an hour ahead of
 * the clock (no event is stamped so: kept, it would withhold every later id), a header sent
 * twice. White space around the header's value is not part of it (RFC 9110). */
/*
 * A client resuming after a position later than its stream's until (an event stamped ahead by a
 * node whose clock runs fast): nothing stored after it is for this stream, so the history is not
 * asked and nothing is said missing; live events come as usual.
 */
Test(http_server, a_resume_point_past_the_streams_until_replays_nothing)
{
    struct http_server *s = start_replay_server();
    static struct sse c;
    char head[4096], hdr[128], id[QUERY_CURSOR_LEN], target[128];
    uint64_t now = tu_now_ns();
    struct query_cursor ahead = {.timestamp_ns = now + 30 * 60 * 1000000000ull, .id = 1};
    struct event e;

    query_cursor_format(&ahead, id);
    snprintf(hdr, sizeof(hdr), "Last-Event-ID: %s\r\n", id);
    snprintf(target, sizeof(target), "/api/events/stream?until=%llu",
             (unsigned long long)(now + 10 * 60 * 1000000000ull));
    replay_qs[0] = '\0';
    replay_more = false;
    sse_open(&c, http_server_port(s), target, hdr, head, sizeof(head));
    cr_assert(strncmp(head, "HTTP/1.1 200", 12) == 0, "%s", head);
    wait_stream_clients(s, 1);
    make_event(&e, EVENT_EXEC, 8);
    http_server_publish(s, &e);
    cr_assert(sse_wait_for(&c, "\"pid\":8,"), "got: %s", c.data);
    cr_assert_null(strstr(c.data, ": missing"), "got: %s", c.data);
    cr_assert_eq(replay_qs[0], '\0', "the history was asked: %s", replay_qs);
    close(c.fd);
    http_server_free(s);
}

Test(http_server, a_resume_point_no_stream_sent_is_refused)
{
    struct http_server *s = start_replay_server();
    static struct sse c;
    char head[4096], hdr[128], id[QUERY_CURSOR_LEN];
    struct reply r;
    struct query_cursor ahead = {.timestamp_ns = tu_now_ns() + 2 * EVENT_MAX_AHEAD_NS, .id = 1};

    query_cursor_format(&ahead, id);
    snprintf(hdr, sizeof(hdr), "Last-Event-ID: %s\r\n", id);
    get(http_server_port(s), "/api/events/stream", hdr, &r);
    cr_assert_eq(r.status, 400, "%s", r.body);
    cr_assert_not_null(strstr(r.body, "'Last-Event-ID' header"), "%s", r.body);
    cr_assert_not_null(strstr(r.body, "ahead of this server's clock"), "%s", r.body);

    char target[128];
    snprintf(target, sizeof(target), "/api/events/stream?last_event_id=%s", id);
    get(http_server_port(s), target, NULL, &r);
    cr_assert_eq(r.status, 400, "%s", r.body);
    cr_assert_not_null(strstr(r.body, "'last_event_id'"), "%s", r.body);

    get(http_server_port(s), "/api/events/stream",
        "Last-Event-ID: 17979cfe362a0004-0000000000001004\r\nLast-Event-ID: nope\r\n", &r);
    cr_assert_eq(r.status, 400, "%s", r.body);
    cr_assert_not_null(strstr(r.body, "'Last-Event-ID' header: given more than once"), "%s",
                       r.body);

    replay_more = false;
    sse_open(&c, http_server_port(s), "/api/events/stream",
             "Last-Event-ID: \t17979cfe362a0006-0000000000001006  \r\n", head, sizeof(head));
    cr_assert(strncmp(head, "HTTP/1.1 200", 12) == 0, "%s", head);
    cr_assert(sse_wait_for(&c, "\"pid\":7,"), "got: %s", c.data);
    cr_assert_null(strstr(c.data, "\"pid\":6,"), "6 was the client's: %s", c.data);
    close(c.fd);
    http_server_free(s);
}
