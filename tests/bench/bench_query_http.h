/*
 * A minimal blocking HTTP/1.1 client for the benchmarks: one keep-alive
 * connection, sending GET only (the server also answers HEAD), reading
 * Content-Length or chunked bodies. Enough to time API requests without a
 * client library's own overhead in the way.
 */
#ifndef EBPF_MONITOR_BENCH_QUERY_HTTP_H
#define EBPF_MONITOR_BENCH_QUERY_HTTP_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"

struct bench_http {
    int fd;
    struct sockaddr_in addr;
    char *in; /* bytes read past the previous response */
    size_t in_len, in_cap;
};

/* addr is "host:port" (IPv4). 0 or -errno. */
static __attribute__((unused)) int bench_http_open(struct bench_http *h, const char *addr)
{
    char host[64];
    const char *colon = strrchr(addr, ':');
    memset(h, 0, sizeof(*h));
    h->fd = -1;
    if (!colon || (size_t)(colon - addr) >= sizeof(host))
        return -EINVAL;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    h->addr.sin_family = AF_INET;
    h->addr.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host[0] ? host : "127.0.0.1", &h->addr.sin_addr) != 1)
        return -EINVAL;
    h->in_cap = 1 << 16;
    h->in = malloc(h->in_cap);
    return h->in ? 0 : -ENOMEM;
}

static int bench_http_connect(struct bench_http *h)
{
    int one = 1;
    h->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (h->fd < 0)
        return -errno;
    setsockopt(h->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(h->fd, (struct sockaddr *)&h->addr, sizeof(h->addr)) < 0) {
        int rc = -errno;
        close(h->fd);
        h->fd = -1;
        return rc;
    }
    h->in_len = 0;
    return 0;
}

static __attribute__((unused)) void bench_http_close(struct bench_http *h)
{
    if (h->fd >= 0)
        close(h->fd);
    free(h->in);
    h->fd = -1;
    h->in = NULL;
}

/* Reads until at least want bytes are buffered. 0 or -1 on EOF/error. */
static int bench_http_fill(struct bench_http *h, size_t want)
{
    while (h->in_len < want) {
        if (h->in_cap - h->in_len < 4096) {
            size_t cap = h->in_cap * 2;
            while (cap < want + 4096)
                cap *= 2;
            char *p = realloc(h->in, cap);
            if (!p)
                return -1;
            h->in = p;
            h->in_cap = cap;
        }
        ssize_t r = read(h->fd, h->in + h->in_len, h->in_cap - h->in_len - 1);
        if (r <= 0)
            return -1;
        h->in_len += (size_t)r;
    }
    return 0;
}

static void bench_http_consume(struct bench_http *h, size_t n)
{
    memmove(h->in, h->in + n, h->in_len - n);
    h->in_len -= n;
}

/* Position just past "\r\n\r\n", reading as needed; 0 on error. */
static size_t bench_http_head_end(struct bench_http *h)
{
    for (;;) {
        h->in[h->in_len] = '\0';
        char *p = strstr(h->in, "\r\n\r\n");
        if (p)
            return (size_t)(p - h->in) + 4;
        if (bench_http_fill(h, h->in_len + 1) < 0)
            return 0;
    }
}

/*
 * GET path; the body goes to body (reset first). Returns the status code, or
 * -1 on a connection error (after one reconnect attempt).
 */
static __attribute__((unused)) int bench_http_get(struct bench_http *h, const char *path,
                                                  struct buf *body)
{
    char req[4096];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: bench\r\n\r\n", path);
    for (int attempt = 0; attempt < 2; attempt++) {
        if (h->fd < 0 && bench_http_connect(h) < 0)
            return -1;
        if (write(h->fd, req, (size_t)n) != n) {
            close(h->fd);
            h->fd = -1;
            continue;
        }
        size_t head = bench_http_head_end(h);
        if (!head) {
            close(h->fd);
            h->fd = -1;
            continue;
        }
        int status = atoi(h->in + 9);
        buf_reset(body);
        h->in[head - 1] = '\0';
        const char *cl = strcasestr(h->in, "\r\ncontent-length:");
        bool chunked = strcasestr(h->in, "\r\ntransfer-encoding: chunked") != NULL;
        size_t clen = cl ? strtoull(cl + 17, NULL, 10) : 0;
        bench_http_consume(h, head);
        if (cl && !chunked) {
            size_t len = clen;
            if (bench_http_fill(h, len) < 0)
                return -1;
            buf_append(body, h->in, len);
            bench_http_consume(h, len);
        } else if (chunked) {
            for (;;) {
                h->in[h->in_len] = '\0';
                char *eol;
                while (!(eol = strstr(h->in, "\r\n"))) {
                    if (bench_http_fill(h, h->in_len + 1) < 0)
                        return -1;
                    h->in[h->in_len] = '\0';
                }
                size_t len = strtoull(h->in, NULL, 16), hl = (size_t)(eol - h->in) + 2;
                if (bench_http_fill(h, hl + len + 2) < 0)
                    return -1;
                buf_append(body, h->in + hl, len);
                bench_http_consume(h, hl + len + 2);
                if (len == 0)
                    break;
            }
        }
        return status;
    }
    return -1;
}

/* The number after "key": in a JSON body (first occurrence); -1 when absent. */
static __attribute__((unused)) double bench_json_number(const char *body, const char *key)
{
    char pat[96];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = strstr(body, pat);
    return p ? strtod(p + strlen(pat), NULL) : -1;
}

#endif
