/*
 * Secrets in argv: the agent rewrites the argument values that REDACT_ARGS
 * names to "***" before an exec event is stored, served or published, so a
 * password typed on a command line never leaves the node. Pure logic (bytes
 * in, bytes out), so it is testable and fuzzable without privileges.
 *
 * REDACT_ARGS is a comma-separated list of patterns (spaces around each are
 * ignored); README.md "Secrets in arguments" is the user's copy of this:
 *
 *   --NAME        "--NAME=VALUE" becomes "--NAME=***", and an argument that is
 *                 exactly "--NAME" makes the next argument "***", whatever it
 *                 is. NAME is letters, digits, '_', '.', '-'; case matters.
 *   -X            (one dash, one letter or digit) "-XVALUE" becomes "-X***";
 *                 the next argument is never touched ("mysql -p db" prompts,
 *                 and db is the database).
 *   -X+           the same, for an option that always takes a value: an
 *                 argument that is exactly "-X" makes the next one "***"
 *                 ("curl -u user:password").
 *   PROG:OPTION   OPTION (either form above) only in the arguments after one
 *                 whose basename is PROG: argv[0], or a later one as in
 *                 "sudo mysql -p..." ("mysql:-p": "-p" is a port for ssh...).
 *                 PROG is letters, digits, '_', '.', '-'.
 *   NAME=         a VALUE after "KEY=" in any argument, where KEY (the run of
 *                 letters, digits, '_', '.', '-' before the '=') contains NAME,
 *                 ignoring ASCII case. The value runs to the end of the
 *                 argument when KEY starts it ("DB_PASSWORD=x",
 *                 "--db-password=x"), else to the next '&', ';' or white
 *                 space ("https://h/?access_token=x&a=1", "sh -c 'a token=x'").
 *                 Also JSON's "KEY": "VALUE" (curl -d '{"password":"x"}'):
 *                 the string's contents, to its closing quote.
 *   NAME:         a header: the VALUE of "NAME: VALUE" (NAME any case, at the
 *                 start of an argument or after a character no header name
 *                 holds, as in "--header=Authorization: ..."), to a quote or
 *                 the end of the argument; an authorization scheme, a first
 *                 word followed by a space, stays: "Authorization: Bearer ***".
 *   url           URL credentials: "SCHEME://USER:PASSWORD@" becomes
 *                 "SCHEME://USER:***@" anywhere in an argument.
 *   default       the default list, REDACT_DEFAULT_PATTERNS.
 *   none          (alone) no redaction.
 *
 * An empty value ("--password=", "-p") is left as it is. Option patterns do
 * not apply to argv[0]; NAME= and url apply to every argument.
 */
#ifndef EBPF_MONITOR_REDACT_H
#define EBPF_MONITOR_REDACT_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"
#include "event.h"

#define REDACT_MASK "***"

#define REDACT_DEFAULT_PATTERNS                                                                    \
    "--password,--passwd,--token,--secret,--api-key,--apikey,--access-token,--auth-token,"         \
    "--client-secret,--nats-password,--nats-token,--api-token,mysql:-p,mariadb:-p,mysqldump:-p,"   \
    "mysqladmin:-p,curl:-u+,curl:--user,curl:-U+,curl:--proxy-user,sshpass:-p+,password=,"         \
    "passwd=,secret=,token=,apikey=,api_key=,authorization:,proxy-authorization:,x-api-key:,"      \
    "x-auth-token:,cookie:,url"

#define REDACT_MAX_PATTERNS 64

struct redact;

/*
 * Compiles a REDACT_ARGS value. Returns 0 with *out set (NULL for "none"), or
 * -EINVAL with err naming the bad pattern, or -ENOMEM. Free with redact_free().
 */
int redact_new(const char *spec, struct redact **out, char *err, size_t errlen);
void redact_free(struct redact *r);

/*
 * Writes args (len bytes of NUL-terminated strings; the last NUL may be
 * missing) into out, reset first, with every matching value replaced by
 * REDACT_MASK; every string in out ends with a NUL. out never grows past
 * max bytes: whole trailing arguments are dropped to fit and *truncated is
 * set. *truncated set on entry says args were cut at their bound, so the last
 * argument may be incomplete: a URL authority running to its end without an
 * '@' has what follows its ':' hidden too. Returns the number of values
 * replaced; out->oom says it failed.
 */
size_t redact_args(const struct redact *r, const char *args, size_t len, size_t max,
                   struct buf *out, bool *truncated);

/*
 * Redacts an exec event's args in place (bounded by EVENT_ARGS_MAX, and the
 * NUL an agent added to an argument the kernel cut there). Returns
 * the number of values replaced, or -ENOMEM with the event's args dropped
 * rather than kept unredacted. Other events and a NULL r are left alone.
 */
int redact_event(const struct redact *r, struct event *e);

#endif
