/* Host and port of configured addresses (see netaddr.h). */
#include "netaddr.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static bool host_char_ok(char c, bool bracketed)
{
    return c > ' ' && c != 0x7f && c != '/' && c != '@' && c != '[' && c != ']' &&
           (c != ':' || bracketed);
}

int netaddr_split(const char *s, size_t len, char *host, size_t hostlen, long *port)
{
    const char *hs = s, *he, *rest;
    bool bracketed = len > 0 && s[0] == '[';

    if (bracketed) {
        const char *rb = memchr(s, ']', len);
        if (rb == NULL || rb == s + 1)
            return -EINVAL;
        hs = s + 1;
        he = rb;
        rest = rb + 1;
    } else {
        const char *colon = memchr(s, ':', len);
        he = colon ? colon : s + len;
        rest = he;
    }
    for (const char *p = hs; p < he; p++)
        if (!host_char_ok(*p, bracketed))
            return -EINVAL;
    if ((size_t)(he - hs) >= hostlen)
        return -EINVAL;
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';

    const char *end = s + len;
    *port = -1;
    if (rest == end)
        return 0;
    if (*rest != ':' || rest + 1 == end || end - (rest + 1) > 5)
        return -EINVAL;
    long v = 0;
    for (const char *p = rest + 1; p < end; p++) {
        if (*p < '0' || *p > '9')
            return -EINVAL;
        v = v * 10 + (*p - '0');
    }
    if (v > 65535)
        return -EINVAL;
    *port = v;
    return 0;
}

void netaddr_with_port(const char *addr, int port, char *out, size_t len)
{
    char host[256];
    long given;

    if (netaddr_split(addr, strlen(addr), host, sizeof(host), &given) != 0)
        snprintf(out, len, "%s", addr);
    else
        snprintf(out, len, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
}
