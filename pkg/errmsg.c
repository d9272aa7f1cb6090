/* The one error-message formatter (see errmsg.h). */
#include "errmsg.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int errmsg_set(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

const char *errmsg_printable(const char *s, char *out, size_t outlen)
{
    size_t n = 0;

    if (!out || !outlen)
        return "";
    if (!s)
        s = "";
    for (; s[n] && n + 1 < outlen; n++) {
        unsigned char c = (unsigned char)s[n];
        out[n] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (s[n] && outlen >= 4) { /* cut: at most outlen - 1 bytes, the last three "..." */
        memcpy(out + outlen - 4, "...", 3);
        n = outlen - 1;
    }
    out[n] = '\0';
    return out;
}
