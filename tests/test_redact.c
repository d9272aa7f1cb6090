/* Tests for pkg/redact: every default pattern, the pattern syntax, and the edges of argv. */
#include "redact.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* argv written with '|' between arguments (none of the cases needs a literal '|'). */
static size_t to_args(const char *spaced, char *out)
{
    size_t n = strlen(spaced);
    for (size_t i = 0; i < n; i++)
        out[i] = spaced[i] == '|' ? '\0' : spaced[i];
    out[n] = '\0';
    return n + 1;
}

static void from_args(const struct buf *b, char *out)
{
    size_t n = b->len;
    for (size_t i = 0; i < n; i++)
        out[i] = b->data[i] ? b->data[i] : '|';
    if (n && out[n - 1] == '|')
        n--; /* the last argument's NUL */
    out[n] = '\0';
}

/*
 * Redacts argv (given with '|' separators) with spec; checks the result and
 * count. cut: argv was cut at its bound (*truncated set on entry, and kept).
 */
static void check_args(const char *spec, const char *argv, bool cut, const char *want,
                       size_t want_count)
{
    struct redact *r;
    char err[256] = "", in[2048], got[2048];
    cr_assert_eq(redact_new(spec, &r, err, sizeof(err)), 0, "%s: %s", spec, err);
    size_t len = to_args(argv, in);
    struct buf out;
    bool truncated = cut;
    buf_init(&out);
    size_t count = redact_args(r, in, len, EVENT_ARGS_MAX, &out, &truncated);
    cr_assert_not(out.oom);
    from_args(&out, got);
    cr_assert_str_eq(got, want, "argv %s", argv);
    cr_assert_eq(count, want_count, "argv %s: %zu values replaced", argv, count);
    cr_assert_eq(truncated, cut);
    buf_free(&out);
    redact_free(r);
}

static void check(const char *spec, const char *argv, const char *want, size_t want_count)
{
    check_args(spec, argv, false, want, want_count);
}

#define DEF(argv, want, n) check("default", argv, want, n)

Test(redact, long_options_with_equals_and_next_argument)
{
    DEF("/bin/sh|-c|exit 0|--password=hunter2", "/bin/sh|-c|exit 0|--password=***", 1);
    DEF("app|--password|hunter2|-v", "app|--password|***|-v", 1);
    DEF("app|--passwd=x", "app|--passwd=***", 1);
    DEF("kubectl|--token|abc.def|get|pods", "kubectl|--token|***|get|pods", 1);
    DEF("kubectl|--token=abc.def", "kubectl|--token=***", 1);
    DEF("app|--secret|s|--api-key|k|--apikey=k", "app|--secret|***|--api-key|***|--apikey=***", 3);
    DEF("app|--access-token=a|--auth-token|b|--client-secret=c",
        "app|--access-token=***|--auth-token|***|--client-secret=***", 3);
    /* The next argument is the value whatever it looks like. */
    DEF("app|--password|--verbose", "app|--password|***", 1);
    /* Options are exact: a longer name or another case is not the option. */
    DEF("app|--passwords|x", "app|--passwords|x", 0);
    DEF("app|--PASSWORD|x", "app|--PASSWORD|x", 0);
}

/* The secrets this project's own programs take as flags (--help lists them) are hidden when an
 * agent sees them started. */
Test(redact, own_secret_flags)
{
    DEF("ebpf-aggregator|--nats-password|pw|--nats-token|nt|--api-token|at",
        "ebpf-aggregator|--nats-password|***|--nats-token|***|--api-token|***", 3);
    DEF("/usr/bin/ebpf-agent|--nats-password=pw|--api-token=at",
        "/usr/bin/ebpf-agent|--nats-password=***|--api-token=***", 2);
}

Test(redact, mysql_family_short_p_attached_only)
{
    DEF("mysql|-uroot|-psecret|shop", "mysql|-uroot|-p***|shop", 1);
    DEF("/usr/bin/mysqldump|-psecret|shop", "/usr/bin/mysqldump|-p***|shop", 1);
    DEF("mariadb|-ps", "mariadb|-p***", 1);
    DEF("mysqladmin|-pX|status", "mysqladmin|-p***|status", 1);
    /* "-p" alone prompts; the next argument is the database, not a password. */
    DEF("mysql|-p|shop", "mysql|-p|shop", 0);
    /* Behind a wrapper, the program is a later argument. */
    DEF("sudo|-u|db|mysql|-psecret", "sudo|-u|db|mysql|-p***", 1);
    DEF("env|A=1|/usr/bin/mysql|-psecret", "env|A=1|/usr/bin/mysql|-p***", 1);
    DEF("ssh|-p2222|host|mysql|-psecret", "ssh|-p2222|host|mysql|-p***", 1);
    /* Other programs' -p is a port, a path, a pid... */
    DEF("ssh|-p2222|host", "ssh|-p2222|host", 0);
    DEF("/usr/bin/mysql-workbench|-psecret", "/usr/bin/mysql-workbench|-psecret", 0);
    /* argv[0] is never an option. */
    DEF("-psecret", "-psecret", 0);
}

/* Options that always take a value: attached, or the next argument. */
Test(redact, curl_and_sshpass_credentials_attached_or_next)
{
    DEF("curl|-u|admin:s3cret|https://h/", "curl|-u|***|https://h/", 1);
    DEF("curl|-uadmin:s3cret|https://h/", "curl|-u***|https://h/", 1);
    DEF("curl|--user|admin:s3cret|-U|p:q|https://h/", "curl|--user|***|-U|***|https://h/", 2);
    DEF("/usr/bin/curl|--user=admin:s3cret|--proxy-user|p:q",
        "/usr/bin/curl|--user=***|--proxy-user|***", 2);
    DEF("sshpass|-p|pw|ssh|host", "sshpass|-p|***|ssh|host", 1);
    DEF("sshpass|-ppw|ssh|-p|22|host", "sshpass|-p***|ssh|-p|***|host", 2);
    /* Only for those programs: -u is a user elsewhere. */
    DEF("sudo|-u|postgres|psql", "sudo|-u|postgres|psql", 0);
    /* A user pattern of the same form. */
    check("prog:-k+", "prog|-k|key|-kkey|-k", "prog|-k|***|-k***|-k", 2);
}

/* HTTP headers on a command line: the value, after an authorization scheme. */
Test(redact, header_values)
{
    DEF("curl|-H|Authorization: Bearer eyJhbGciOi|https://h/",
        "curl|-H|Authorization: Bearer ***|https://h/", 1);
    DEF("curl|-H|authorization:Basic YWRtaW46cw==", "curl|-H|authorization:Basic ***", 1);
    DEF("curl|-H|Authorization: abc123", "curl|-H|Authorization: ***", 1);
    DEF("wget|--header=Proxy-Authorization: Basic eA==|--header=X-Api-Key:k1",
        "wget|--header=Proxy-Authorization: Basic ***|--header=X-Api-Key:***", 2);
    DEF("curl|-H|X-Auth-Token: t|-H|Cookie: session=abc; theme=dark",
        "curl|-H|X-Auth-Token: ***|-H|Cookie: ***", 2);
    /* In a script: up to the quote that ends it. */
    DEF("sh|-c|curl -H 'Authorization: Bearer t0k' https://h/",
        "sh|-c|curl -H 'Authorization: Bearer ***' https://h/", 1);
    /* Another header, or the name inside a longer one, is left alone. */
    DEF("curl|-H|Accept: text/html|-H|X-Authorization-Hint: a",
        "curl|-H|Accept: text/html|-H|X-Authorization-Hint: a", 0);
    DEF("curl|-H|Authorization:|-H|Authorization: Bearer",
        "curl|-H|Authorization:|-H|Authorization: ***", 1);
}

/* JSON bodies: a string value whose key holds a NAME= pattern's name. */
Test(redact, json_string_values)
{
    DEF("curl|-d|{\"user\":\"bob\",\"password\":\"hunter2\",\"n\":1}",
        "curl|-d|{\"user\":\"bob\",\"password\":\"***\",\"n\":1}", 1);
    DEF("curl|--data|{ \"Access_Token\" :  \"a\\\"b\", \"client_secret\": \"c\" }",
        "curl|--data|{ \"Access_Token\" :  \"***\", \"client_secret\": \"***\" }", 2);
    DEF("curl|-d|{\"api_key\": \"k\", \"token\":\"t\"}",
        "curl|-d|{\"api_key\": \"***\", \"token\":\"***\"}", 2);
    /* Cut at the bound: to the end of the argument. */
    DEF("curl|-d|{\"password\":\"hunt", "curl|-d|{\"password\":\"***", 1);
    /* Not a string, empty, or another key: left alone. */
    DEF("curl|-d|{\"password\":null,\"secret\":\"\",\"name\":\"x\"}",
        "curl|-d|{\"password\":null,\"secret\":\"\",\"name\":\"x\"}", 0);
}

Test(redact, key_value_names_ignore_case)
{
    DEF("env|DB_PASSWORD=s3cr=t|app", "env|DB_PASSWORD=***|app", 1);
    DEF("env|Api_Key=k|APIKEY=k|MY_SECRET=x|GITHUB_TOKEN=t|passwd=p",
        "env|Api_Key=***|APIKEY=***|MY_SECRET=***|GITHUB_TOKEN=***|passwd=***", 5);
    DEF("java|-Djavax.net.ssl.keyStorePassword=changeit|-jar|a.jar",
        "java|-Djavax.net.ssl.keyStorePassword=***|-jar|a.jar", 1);
    DEF("app|--db-password=x y", "app|--db-password=***", 1);
    /* Query strings and shell scripts: the value stops at '&', ';' or white space. */
    DEF("curl|https://h/x?a=1&access_token=abc&b=2", "curl|https://h/x?a=1&access_token=***&b=2",
        1);
    DEF("sh|-c|run --password=x --v; token=y", "sh|-c|run --password=*** --v; token=***", 2);
    DEF("env|USER=bob|HOME=/root", "env|USER=bob|HOME=/root", 0);
    /* Nothing to hide. */
    DEF("env|PASSWORD=|--password=", "env|PASSWORD=|--password=", 0);
}

Test(redact, url_credentials)
{
    DEF("psql|postgres://app:pw@db:5432/shop", "psql|postgres://app:***@db:5432/shop", 1);
    DEF("app|--db=mysql://u:p@ss@h/x", "app|--db=mysql://u:***@h/x", 1);
    DEF("git|clone|https://x:ghp_abc@github.com/o/r", "git|clone|https://x:***@github.com/o/r", 1);
    DEF("sh|-c|curl http://a:b@h/ && curl ftp://c:d@i/",
        "sh|-c|curl http://a:***@h/ && curl ftp://c:***@i/", 2);
    /* No password, no credentials, not a URL. */
    DEF("git|clone|https://bob@github.com/o/r", "git|clone|https://bob@github.com/o/r", 0);
    DEF("curl|https://h:8443/a@b", "curl|https://h:8443/a@b", 0);
    DEF("app|://u:p@h|x://|u:p@h", "app|://u:p@h|x://|u:p@h", 0);
    DEF("app|http://u:@h/", "app|http://u:@h/", 0);
}

/* Redacts argv (with '|' separators) that was cut at the argv bound, with the defaults. */
static void check_cut(const char *argv, const char *want, size_t want_count)
{
    check_args("default", argv, true, want, want_count);
}

/* A URL whose '@' fell past the argv bound still hides the start of its password. */
Test(redact, url_password_cut_by_the_bound)
{
    check_cut("psql|postgres://app:supersecr", "psql|postgres://app:***", 1);
    check_cut("git|clone|https://x:ghp_a", "git|clone|https://x:***", 1);
    /* Only the last argument can have been cut; complete URLs are as always. */
    check_cut("curl|https://h:8443/a|https://u:p@h/|x", "curl|https://h:8443/a|https://u:***@h/|x",
              1);
    check_cut("curl|https://bob", "curl|https://bob", 0);
    /* Not cut: an authority without '@' is a host and port. */
    DEF("curl|https://h:8443", "curl|https://h:8443", 0);
}

Test(redact, edges_of_argv)
{
    struct redact *r;
    struct buf out;
    bool truncated = false;
    cr_assert_eq(redact_new("default", &r, NULL, 0), 0);
    buf_init(&out);

    /* No arguments at all, and empty ones. */
    cr_assert_eq(redact_args(r, "", 0, EVENT_ARGS_MAX, &out, &truncated), 0);
    cr_assert_eq(out.len, 0);
    DEF("||", "||", 0);
    /* --password as the last argument: its value was not kept (or never given). */
    DEF("app|--password", "app|--password", 0);
    DEF("app|--password|", "app|--password|", 0);

    /* The last argument without its NUL (cut at the bound) still gets redacted and ended. */
    static const char cut[] = "app\0--password=hunt";
    cr_assert_eq(redact_args(r, cut, sizeof(cut) - 1, EVENT_ARGS_MAX, &out, &truncated), 1);
    cr_assert_eq(out.len, sizeof("app\0--password=***"));
    cr_assert_eq(memcmp(out.data, "app\0--password=***", out.len), 0);
    cr_assert_not(truncated);

    /* Invalid UTF-8 is bytes like any other: keys still match, values are replaced whole. */
    static const char bad[] = "app\0--password=\xff\xfe\0\xffTOKEN=\x80\x80\0\xc0\xaf";
    cr_assert_eq(redact_args(r, bad, sizeof(bad), EVENT_ARGS_MAX, &out, &truncated), 2);
    static const char bad_want[] = "app\0--password=***\0\xffTOKEN=***\0\xc0\xaf";
    cr_assert_eq(out.len, sizeof(bad_want));
    cr_assert_eq(memcmp(out.data, bad_want, out.len), 0);

    /* Growing past the bound drops whole trailing arguments and says so. */
    char big[EVENT_ARGS_MAX];
    size_t n = 0;
    memcpy(big, "app", 4);
    n = 4;
    while (n + 12 <= sizeof(big)) {
        memcpy(big + n, "--token=a\0", 10);
        n += 10;
    }
    memset(big + n, 'x', sizeof(big) - n - 1);
    big[sizeof(big) - 1] = '\0';
    truncated = false;
    size_t count = redact_args(r, big, sizeof(big), EVENT_ARGS_MAX, &out, &truncated);
    cr_assert(truncated);
    cr_assert_leq(out.len, EVENT_ARGS_MAX);
    cr_assert_eq(out.data[out.len - 1], '\0', "ends on a whole argument");
    cr_assert_eq(count, 85, "the dropped argument is not counted");
    cr_assert_null(memmem(out.data, out.len, "=a", 3), "no value survives");

    buf_free(&out);
    redact_free(r);
}

Test(redact, user_patterns_and_none)
{
    check("--my-secret", "app|--my-secret|x|--password=y", "app|--my-secret|***|--password=y", 1);
    check("default, --my-secret ", "app|--my-secret=x|--password=y",
          "app|--my-secret=***|--password=***", 2);
    check("ssh:-i", "ssh|-i/home/u/.ssh/key|h", "ssh|-i***|h", 1);
    check("pgpass=", "env|PGPASS=x", "env|PGPASS=***", 1);
    check("url", "app|--password=x|http://u:p@h", "app|--password=x|http://u:***@h", 1);

    struct redact *r = (struct redact *)1;
    cr_assert_eq(redact_new("none", &r, NULL, 0), 0);
    cr_assert_null(r, "none compiles to nothing");
    cr_assert_eq(redact_new(" none ", &r, NULL, 0), 0);
    cr_assert_null(r);
    check("none", "app|--password=x", "app|--password=x", 0);
}

Test(redact, bad_patterns_are_named)
{
    static const struct {
        const char *spec, *msg;
    } bad[] = {
        {"", "empty"},
        {"default,", "empty"},
        {"--", "\"--\""},
        {"-pp", "\"-pp\""},
        {"password", "\"password\""},
        {"=", "\"=\""},
        {"pass word=", "\"pass word=\""},
        {"mysql:x", "\"mysql:x\""},
        {"a b:", "\"a b:\""},
        {"-p++", "\"-p++\""},
        {"--pass+", "\"--pass+\""},
        {":-p", "\":-p\""},
        {"mysql:password=", "\"mysql:password=\""},
        {"a/b:-p", "\"a/b:-p\""},
        {"my*sql:-p", "\"my*sql:-p\""},
        {"--pass/word", "\"--pass/word\""},
        {"none,--x", "none"},
        {"--x,none", "none"},
        {"URL", "\"URL\""},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct redact *r = (struct redact *)1;
        char err[256] = "";
        cr_assert_eq(redact_new(bad[i].spec, &r, err, sizeof(err)), -EINVAL, "%s", bad[i].spec);
        cr_assert_null(r);
        cr_assert(strstr(err, bad[i].msg), "%s: %s", bad[i].spec, err);
    }
    char many[64 * 8 + 1] = "";
    for (int i = 0; i < 65; i++)
        strcat(many, i ? ",-a" : "-a");
    struct redact *r;
    char err[256] = "";
    cr_assert_eq(redact_new(many, &r, err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "more than 64"), "%s", err);
}

Test(redact, event_in_place)
{
    struct redact *r;
    cr_assert_eq(redact_new("default", &r, NULL, 0), 0);

    struct event e = {.type = EVENT_EXEC};
    static const char args[] = "mysql\0-psecret\0shop";
    e.u.exec.args = malloc(sizeof(args));
    memcpy(e.u.exec.args, args, sizeof(args));
    e.u.exec.args_len = sizeof(args);
    cr_assert_eq(redact_event(r, &e), 1);
    static const char want[] = "mysql\0-p***\0shop";
    cr_assert_eq(e.u.exec.args_len, sizeof(want));
    cr_assert_eq(memcmp(e.u.exec.args, want, sizeof(want)), 0);
    cr_assert_eq(e.u.exec.args[e.u.exec.args_len], '\0', "terminated one past, as event_copy");
    cr_assert_not(e.u.exec.args_truncated);

    /* Nothing to redact: the same buffer stays. */
    char *before = e.u.exec.args;
    cr_assert_eq(redact_event(r, &e), 0);
    cr_assert_eq(e.u.exec.args, before);
    event_clear(&e);

    /* A filename packed after the arguments in their allocation (as the store and the bus
     * decoder leave it) outlives them. */
    static const char packed[] = "mysql\0-psecret\0shop\0/usr/bin/mysql";
    e.type = EVENT_EXEC;
    e.u.exec.args = malloc(sizeof(packed));
    memcpy(e.u.exec.args, packed, sizeof(packed));
    e.u.exec.args_len = sizeof(args);
    e.u.exec.filename = e.u.exec.args + e.u.exec.args_len;
    cr_assert_eq(redact_event(r, &e), 1);
    cr_assert_eq(memcmp(e.u.exec.args, want, sizeof(want)), 0);
    cr_assert_str_eq(e.u.exec.filename, "/usr/bin/mysql");
    event_clear(&e);

    /* Other types and no redactor: untouched. */
    struct event x = {.type = EVENT_EXIT};
    cr_assert_eq(redact_event(r, &x), 0);
    struct event none = {.type = EVENT_EXEC};
    cr_assert_eq(redact_event(r, &none), 0);
    cr_assert_eq(redact_event(NULL, &none), 0);
    redact_free(r);
}

/* An exec event whose argv the kernel cut at its bound: "mysql", filler, then tail, cut, with the
 * NUL the agent adds (args_len EVENT_ARGS_MAX + 1, as records.c leaves it). */
static void cut_event(struct event *e, const char *tail)
{
    size_t tlen = strlen(tail), len = EVENT_ARGS_MAX + 1;
    char *a = malloc(len + 1);
    memcpy(a, "mysql", 6);
    memset(a + 6, 'f', len - 6 - tlen - 2);
    a[len - tlen - 2] = '\0';
    memcpy(a + len - tlen - 1, tail, tlen + 1);
    a[len] = '\0';
    *e = (struct event){.type = EVENT_EXEC};
    e->u.exec.args = a;
    e->u.exec.args_len = (uint32_t)len;
    e->u.exec.args_truncated = 1;
}

/* The argument cut at the bound is redacted like any other: replaced in the byte the agent
 * added, or dropped when "***" is longer than what the cut left of its value, never kept. */
Test(redact, value_cut_by_the_bound_never_shown)
{
    struct redact *r;
    struct event e;
    cr_assert_eq(redact_new("default", &r, NULL, 0), 0);

    cut_event(&e, "--password=hun");
    cr_assert_eq(redact_event(r, &e), 1);
    cr_assert_eq(e.u.exec.args_len, EVENT_ARGS_MAX + 1);
    cr_assert_str_eq(e.u.exec.args + e.u.exec.args_len - sizeof("--password=***"),
                     "--password=***");
    cr_assert(e.u.exec.args_truncated);
    event_clear(&e);

    static const char *const shown[] = {"--password=hu", "--token=h", "-phu", "DB_PASSWORD=h"};
    for (size_t i = 0; i < sizeof(shown) / sizeof(shown[0]); i++) {
        cut_event(&e, shown[i]);
        cr_assert_eq(redact_event(r, &e), 0, "%s: the dropped value is not counted", shown[i]);
        cr_assert_lt(e.u.exec.args_len, EVENT_ARGS_MAX, "%s", shown[i]);
        cr_assert_null(memmem(e.u.exec.args, e.u.exec.args_len, shown[i], strlen(shown[i])),
                       "%s is shown", shown[i]);
        cr_assert(e.u.exec.args_truncated);
        event_clear(&e);
    }

    /* The value after "--password" cut to two bytes: the same. */
    cut_event(&e, "hu");
    memcpy(e.u.exec.args + e.u.exec.args_len - sizeof("\0--password\0hu"), "\0--password", 11);
    cr_assert_eq(redact_event(r, &e), 0);
    cr_assert_null(memmem(e.u.exec.args, e.u.exec.args_len, "\0hu", 4));
    event_clear(&e);

    /* Nothing to hide: the cut argument stays as the kernel left it. */
    cut_event(&e, "--verbose");
    char *before = e.u.exec.args;
    cr_assert_eq(redact_event(r, &e), 0);
    cr_assert_eq(e.u.exec.args, before);
    cr_assert_eq(e.u.exec.args_len, EVENT_ARGS_MAX + 1);
    event_clear(&e);
    redact_free(r);
}
