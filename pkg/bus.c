/*
 * The NATS connection shared by the agent and the aggregator.
 *
 * The connection is made with retry-on-failed-connect and unlimited
 * reconnects, so a process starts (and keeps running) while NATS is down;
 * nats.c's callbacks keep struct bus_status current and tell one listener
 * (the agent's publisher) when the state changes.
 *
 * nats.c closes a connection for good when every server refused the
 * credentials twice in a row (or answered another -ERR), and has no option
 * against it. The bus's own thread then opens a new connection with the same
 * options, after a wait that doubles up to BUS_REOPEN_MAX_MS, so the process
 * recovers by itself once the servers accept it again. The closed one is
 * kept for BUS_RETIRED_GRACE_MS before it is destroyed: a caller may still
 * hold it from bus_conn() for the length of one call.
 */
#include "bus.h"
#include "clock.h"
#include "errmsg.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BUS_MAX_SERVERS     32
#define BUS_CONNECT_TIMEOUT 2000 /* ms per connection attempt */
#define BUS_CLOSE_WAIT_S    5    /* for nats.c's closed callback */
#define BUS_REOPEN_MIN_MS   1000 /* first wait before a new connection; doubles each time */
/* At most this long after the servers accept it again is a process back: every process of a
 * fleet retries that often while refused (each retry is one refused login at the server). */
#define BUS_REOPEN_MAX_MS 10000
/* Connections closed for good and replaced, not yet destroyed (one per reopening). */
#define BUS_MAX_RETIRED      8
#define BUS_RETIRED_GRACE_MS 60000

struct retired_conn {
    natsConnection *nc;
    uint64_t since_ms; /* monotonic */
};

struct bus {
    natsConnection *nc; /* atomic: replaced when reopened */
    natsOptions *opts;
    bool reopen;   /* open a new connection when nats.c closes one for good */
    char what[96]; /* "<program>: NATS" or "<program>: NATS (label)", for the log */

    /* Written from nats.c's callback threads; read anywhere (atomics). */
    bool connected;
    bool closed;
    bool closing; /* bus_close() started: a close is ours, not a refusal */
    uint64_t disconnects;
    uint64_t reconnects;
    uint64_t closed_for_good; /* on_closed() of a connection not closed by bus_close() */
    uint64_t async_errors;
    uint64_t publish_denied; /* "Permissions Violation for Publish to ...": one per refused PUB */
    int logged_error;        /* atomic: the natsStatus on_error() logged last (NATS_OK: none) */

    uint64_t generation; /* atomic: connections replaced so far */

    pthread_mutex_t lock;       /* guards last_error, the listener, closed_nc and closed_cond */
    pthread_cond_t closed_cond; /* on_closed() has run, or bus_close() started */
    natsConnection *closed_nc;  /* the last connection nats.c closed */
    natsConnection *reason_nc;  /* the last one on_closed() gave a reason for (just before) */
    char last_error[512];
    bool connected_since_reopen; /* the reopening thread's wait starts over */
    bus_state_fn listener;
    void *listener_ctx;

    /* The reopening thread (started only when reopen is set); only it and bus_close() touch
     * retired[]. */
    pthread_t reopen_thread;
    bool reopen_started;
    struct retired_conn retired[BUS_MAX_RETIRED];
    size_t nretired;
    bool in_connect;            /* the thread is in natsConnection_Connect() (lock) */
    pthread_mutex_t renew_lock; /* held while renew runs: bus_set_renew() waits for it */
    bus_renew_fn renew;
    void *renew_ctx;
};

/* Keeps msg as the reason bus_last_error() reports, under the lock its readers take. */
static void set_error(struct bus *b, const char *msg)
{
    pthread_mutex_lock(&b->lock);
    snprintf(b->last_error, sizeof(b->last_error), "%s", msg);
    pthread_mutex_unlock(&b->lock);
}

static void notify(struct bus *b, bool connected)
{
    __atomic_store_n(&b->connected, connected, __ATOMIC_RELEASE);
    /* Called under the lock so that bus_set_listener(NULL) is a barrier for its owner. */
    pthread_mutex_lock(&b->lock);
    if (connected) {
        b->last_error[0] = '\0';
        b->connected_since_reopen = true;
    }
    if (b->listener)
        b->listener(b->listener_ctx, connected);
    pthread_mutex_unlock(&b->lock);
}

/* A connection that replaced one closed for good is up. */
static void reopened_up(struct bus *b)
{
    __atomic_fetch_add(&b->reconnects, 1, __ATOMIC_RELAXED);
    fprintf(stderr, "%s: connected again, with a new connection\n", b->what);
    notify(b, true);
}

static void on_connected(natsConnection *nc, void *closure)
{
    struct bus *b = closure;
    /* A connection opened after one was closed for good: its first is a reconnection. */
    if (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) > 0)
        reopened_up(b);
    else
        notify(b, true);
}

/*
 * The connection's last error as its status's text, or NULL. nats.c's own
 * words for it (natsConnection_GetLastError()'s string) live in the
 * connection, where its threads write them with no lock a reader can take: they
 * are not read. The server's words for an error it reports on a live
 * connection (authorization, permissions) reach on_error() intact.
 */
static const char *conn_error(natsConnection *nc)
{
    const char *unread = NULL;
    natsStatus s = nc ? natsConnection_GetLastError(nc, &unread) : NATS_OK;

    if (s == NATS_CONNECTION_AUTH_FAILED) /* in the server's words, as on_error() has them */
        return "Authorization Violation";
    return s == NATS_OK ? NULL : natsStatus_GetText(s);
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    struct bus *b = closure;
    __atomic_fetch_add(&b->disconnects, 1, __ATOMIC_RELAXED);
    const char *last = conn_error(nc);
    if (last)
        set_error(b, last);
    notify(b, false);
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    struct bus *b = closure;
    __atomic_fetch_add(&b->reconnects, 1, __ATOMIC_RELAXED);
    notify(b, true);
}

/* True for a reason worth keeping over the generic ones that follow each failed round. */
static bool specific_error(const char *t)
{
    return t && *t && !strstr(t, "No server available") && !strstr(t, "Not Yet Connected");
}

/* A reason is kept unless there is none yet or only a generic one. */
static void keep_last_error(struct bus *b, natsConnection *nc)
{
    const char *last = conn_error(nc);

    if (!specific_error(last))
        return;
    pthread_mutex_lock(&b->lock);
    if (!specific_error(b->last_error) || strstr(b->last_error, "no NATS server"))
        snprintf(b->last_error, sizeof(b->last_error), "%s", last);
    pthread_mutex_unlock(&b->lock);
}

static natsConnection *current(struct bus *b)
{
    return __atomic_load_n(&b->nc, __ATOMIC_ACQUIRE);
}

static bool is_closing(struct bus *b)
{
    return __atomic_load_n(&b->closing, __ATOMIC_ACQUIRE);
}

static void on_closed(natsConnection *nc, void *closure)
{
    struct bus *b = closure;
    bool ours = is_closing(b);

    /*
     * nats.c gives up on servers that refuse our credentials twice; the
     * server's words for it came to on_error() first (callbacks run in order).
     */
    const char *last = conn_error(nc); /* a refused login, in the server's words */
    bool refused_login = last != NULL && strcmp(last, "Authorization Violation") == 0;
    if (!ours)
        __atomic_fetch_add(&b->closed_for_good, 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&b->lock);
    if (!ours && (!specific_error(b->last_error) || strstr(b->last_error, "no NATS server")))
        snprintf(b->last_error, sizeof(b->last_error),
                 "the NATS servers refused the connection%s (credentials: NATS_USER/"
                 "NATS_PASSWORD, NATS_TOKEN or NATS_CREDS; or a server limit such as "
                 "max_connections: the server's log says which; or TLS, which this side may "
                 "refuse itself: their certificate must be signed by NATS_TLS_CA (or a CA of "
                 "the system), be valid now and name the host of NATS_URL, and they must accept "
                 "NATS_TLS_CERT)",
                 refused_login ? ": Authorization Violation" : "");
    b->reason_nc = nc; /* bus_open() keeps this reason over its own */
    if (!ours && !b->reopen)
        fprintf(stderr, "%s: the connection is closed for good: %s\n", b->what, b->last_error);
    pthread_mutex_unlock(&b->lock);
    notify(b, false);
    /*
     * The last touch of b: bus_close() may free it as soon as the lock is released. A
     * connection not yet installed (its Connect has not returned) is marked closed when it is.
     */
    pthread_mutex_lock(&b->lock);
    b->closed_nc = nc;
    if (nc == current(b))
        __atomic_store_n(&b->closed, true, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&b->closed_cond);
    pthread_mutex_unlock(&b->lock);
}

/* Makes nc the bus's connection; closed if nats.c already gave up on it. */
static void install(struct bus *b, natsConnection *nc)
{
    pthread_mutex_lock(&b->lock);
    __atomic_store_n(&b->nc, nc, __ATOMIC_RELEASE);
    bool closed = nc == b->closed_nc;
    __atomic_store_n(&b->closed, closed, __ATOMIC_RELEASE);
    if (closed)
        pthread_cond_broadcast(&b->closed_cond);
    pthread_mutex_unlock(&b->lock);
}

/*
 * An error the server reported on a live connection (a subject the user may
 * not use: "Permissions Violation for Publish to ...") or a slow consumer:
 * kept with the server's own words when nats.c has them, and logged the first
 * time and then every 1000th, so a publisher refused on every batch is seen
 * without flooding the log.
 */
static void on_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    struct bus *b = closure;
    uint64_t n = __atomic_add_fetch(&b->async_errors, 1, __ATOMIC_RELAXED);
    /* nats.c sets its words, when it has some, as this thread's last error before the call. */
    natsStatus st = NATS_OK;
    const char *text = nats_GetLastError(&st);

    if (st != err || !text || !*text)
        text = natsStatus_GetText(err);
    set_error(b, text);
    if (err == NATS_NOT_PERMITTED && strstr(text, BUS_PUBLISH_DENIED))
        __atomic_fetch_add(&b->publish_denied, 1, __ATOMIC_RELEASE);
    /* A kind of error not the last one logged (a refusal, then a permission) is logged too. */
    int last = __atomic_exchange_n(&b->logged_error, (int)err, __ATOMIC_RELAXED);
    if (last != (int)err || n % 1000 == 0)
        fprintf(stderr, "%s: %s (%" PRIu64 " asynchronous errors so far)\n", b->what, text, n);
}

/* nats.c's own message for the last failure on this thread, or its status text. */
static const char *nats_reason(natsStatus s)
{
    const char *t = nats_GetLastError(NULL);
    return t && *t ? t : natsStatus_GetText(s);
}

/*
 * The client name goes unescaped into the CONNECT JSON (nats.c does not
 * escape it): only printable ASCII other than '"' and '\\' is kept, every
 * other byte becomes '_', so no name can make the server refuse the CONNECT.
 */
static void client_name(const char *name, char *out, size_t len)
{
    size_t i = 0;
    for (; name[i] && i + 1 < len; i++) {
        unsigned char c = (unsigned char)name[i];
        out[i] = c < 0x20 || c > 0x7e || c == '"' || c == '\\' ? '_' : (char)c;
    }
    out[i] = '\0';
}

/*
 * nats.c pastes the user, password and token into the CONNECT JSON as they are, like the
 * client name: a '"' or '\\' in a password made the server refuse every connection with a
 * JSON error. They go in escaped for JSON, so the server reads back exactly what was set.
 * -1 when the escaped text does not fit out.
 */
static int credential_json(const char *in, char *out, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        char esc[7] = {*p, 0};
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
        } else if (*p < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[*p >> 4];
            esc[5] = hex[*p & 15];
        }
        size_t n = strlen(esc);
        if (o + n >= len)
            return -1;
        memcpy(out + o, esc, n);
        o += n;
    }
    out[o] = '\0';
    return 0;
}

/* Splits the comma list in place into servers[]; returns the count. */
static int split_servers(char *list, const char *servers[], int max, bool *tls)
{
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok && n < max;
         tok = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*tok))
            tok++;
        char *end = tok + strlen(tok);
        while (end > tok && isspace((unsigned char)end[-1]))
            *--end = '\0';
        if (!*tok)
            continue;
        if (strncmp(tok, "tls://", 6) == 0)
            *tls = true;
        servers[n++] = tok;
    }
    return n;
}

/*
 * The credentials of a server URL (nats://user:password@host, nats://token@host) reach the
 * CONNECT JSON as nats.c reads them, up to the last '@' and unescaped like NATS_USER's: each
 * server with credentials is rewritten into buf with them escaped (credential_json()).
 * -1 when buf is too small.
 */
static int servers_escape_credentials(const char *servers[], int n, char *buf, size_t len)
{
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        const char *url = servers[i], *scheme = strstr(url, "://");
        const char *cred = scheme ? scheme + 3 : url, *at = strrchr(cred, '@');
        if (!at)
            continue;
        char plain[CONFIG_URL], escaped[CONFIG_URL * 6];
        snprintf(plain, sizeof(plain), "%.*s", (int)(at - cred), cred);
        if (credential_json(plain, escaped, sizeof(escaped)) < 0)
            return -1;
        int w = snprintf(buf + o, len - o, "%.*s%s%s", (int)(cred - url), url, escaped, at);
        if (w < 0 || (size_t)w >= len - o)
            return -1;
        servers[i] = buf + o;
        o += (size_t)w + 1;
    }
    return 0;
}

static int build_options(struct bus *b, const struct config *cfg, const struct bus_options *o,
                         char *err, size_t errlen)
{
    char list[CONFIG_URL];
    const char *servers[BUS_MAX_SERVERS];
    bool tls = cfg->nats_tls_ca[0] || cfg->nats_tls_cert[0];
    natsStatus s;

    snprintf(list, sizeof(list), "%s", cfg->nats_url);
    int n = split_servers(list, servers, BUS_MAX_SERVERS, &tls);
    if (n == 0)
        return errmsg_set(err, errlen, "NATS_URL=\"%s\" names no server", cfg->nats_url);
    char escaped[CONFIG_URL * 6];
    if (servers_escape_credentials(servers, n, escaped, sizeof(escaped)) < 0)
        return errmsg_set(err, errlen, "NATS_URL: its credentials are too long once escaped");
    if (cfg->nats_creds[0] && config_check_file("NATS_CREDS", cfg->nats_creds, err, errlen))
        return -EINVAL;
    if (cfg->nats_tls_ca[0] && config_check_file("NATS_TLS_CA", cfg->nats_tls_ca, err, errlen))
        return -EINVAL;
    if (cfg->nats_tls_cert[0] &&
        (config_check_file("NATS_TLS_CERT", cfg->nats_tls_cert, err, errlen) ||
         config_check_file("NATS_TLS_KEY", cfg->nats_tls_key, err, errlen)))
        return -EINVAL;

    if ((s = natsOptions_Create(&b->opts)) != NATS_OK)
        return errmsg_set(err, errlen, "NATS options: %s", nats_reason(s));
    natsOptions *opts = b->opts;
    if ((s = natsOptions_SetServers(opts, servers, n)) != NATS_OK)
        return errmsg_set(err, errlen, "invalid NATS_URL=\"%s\": %s", cfg->nats_url,
                          nats_reason(s));
    /* Keep the configured order: the first server is usually the local one. */
    s = natsOptions_SetNoRandomize(opts, true);
    if (s == NATS_OK && o && o->name) {
        char name[CONFIG_STR * 2];
        client_name(o->name, name, sizeof(name));
        s = natsOptions_SetName(opts, name);
    }
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(opts, BUS_CONNECT_TIMEOUT);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(opts, BUS_RECONNECT_WAIT);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectJitter(opts, BUS_RECONNECT_JITTER, BUS_TLS_JITTER);
    if (s == NATS_OK)
        s = natsOptions_SetRetryOnFailedConnect(opts, true, on_connected, b);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(opts, on_disconnected, b);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(opts, on_reconnected, b);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(opts, on_closed, b);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(opts, on_error, b);
    if (s == NATS_OK && o && o->no_echo)
        s = natsOptions_SetNoEcho(opts, true);
    if (s == NATS_OK && o && o->send_asap)
        s = natsOptions_SetSendAsap(opts, true);
    if (s != NATS_OK)
        return errmsg_set(err, errlen, "NATS options: %s", nats_reason(s));

    char user[sizeof(cfg->nats_user) * 6], password[sizeof(cfg->nats_password) * 6];
    if (cfg->nats_user[0] && (credential_json(cfg->nats_user, user, sizeof(user)) < 0 ||
                              credential_json(cfg->nats_password, password, sizeof(password)) < 0))
        return errmsg_set(err, errlen, "NATS_USER/NATS_PASSWORD: too long once escaped");
    if (cfg->nats_user[0] && (s = natsOptions_SetUserInfo(opts, user, password)) != NATS_OK)
        return errmsg_set(err, errlen, "NATS_USER: %s", nats_reason(s));
    char token[sizeof(cfg->nats_token) * 6];
    if (cfg->nats_token[0] && credential_json(cfg->nats_token, token, sizeof(token)) < 0)
        return errmsg_set(err, errlen, "NATS_TOKEN: too long once escaped");
    if (cfg->nats_token[0] && (s = natsOptions_SetToken(opts, token)) != NATS_OK)
        return errmsg_set(err, errlen, "NATS_TOKEN: %s", nats_reason(s));
    if (cfg->nats_creds[0] &&
        (s = natsOptions_SetUserCredentialsFromFiles(opts, cfg->nats_creds, NULL)) != NATS_OK)
        return errmsg_set(err, errlen, "NATS_CREDS file \"%s\": %s", cfg->nats_creds,
                          nats_reason(s));
    if (tls && (s = natsOptions_SetSecure(opts, true)) != NATS_OK)
        return errmsg_set(err, errlen, "NATS TLS: %s", nats_reason(s));
    if (cfg->nats_tls_ca[0] &&
        (s = natsOptions_LoadCATrustedCertificates(opts, cfg->nats_tls_ca)) != NATS_OK)
        return errmsg_set(err, errlen, "NATS_TLS_CA file \"%s\": %s", cfg->nats_tls_ca,
                          nats_reason(s));
    if (cfg->nats_tls_cert[0] && (s = natsOptions_LoadCertificatesChain(
                                      opts, cfg->nats_tls_cert, cfg->nats_tls_key)) != NATS_OK)
        return errmsg_set(err, errlen, "NATS_TLS_CERT/NATS_TLS_KEY \"%s\"/\"%s\": %s",
                          cfg->nats_tls_cert, cfg->nats_tls_key, nats_reason(s));
    return 0;
}

/* Destroys the retired connections older than the grace period, or all of them. */
static void retired_destroy(struct bus *b, bool all)
{
    uint64_t now = clock_monotonic_ns() / 1000000;
    size_t kept = 0;
    for (size_t i = 0; i < b->nretired; i++) {
        if (all || now - b->retired[i].since_ms >= BUS_RETIRED_GRACE_MS)
            natsConnection_Destroy(b->retired[i].nc);
        else
            b->retired[kept++] = b->retired[i];
    }
    b->nretired = kept;
}

static void retire(struct bus *b, natsConnection *nc)
{
    if (!nc)
        return;
    if (b->nretired == BUS_MAX_RETIRED) { /* the oldest has been closed for many waits */
        natsConnection_Destroy(b->retired[0].nc);
        memmove(b->retired, b->retired + 1, (b->nretired - 1) * sizeof(b->retired[0]));
        b->nretired--;
    }
    b->retired[b->nretired].nc = nc;
    b->retired[b->nretired].since_ms = clock_monotonic_ns() / 1000000;
    b->nretired++;
}

/* Opens a new connection in place of the closed one (none when nats.c refuses at once). */
static void reopen_once(struct bus *b)
{
    natsConnection *nc = NULL;
    pthread_mutex_lock(&b->lock);
    b->in_connect = true;
    pthread_mutex_unlock(&b->lock);
    /* Up to BUS_CONNECT_TIMEOUT for each server that does not answer. */
    natsStatus s = natsConnection_Connect(&nc, b->opts);
    pthread_mutex_lock(&b->lock);
    b->in_connect = false;
    bool closing = is_closing(b);
    pthread_mutex_unlock(&b->lock);
    if (closing) { /* bus_close() has gone on without this thread: touch nothing but nc */
        if (nc) {
            natsConnection_Close(nc);
            natsConnection_Destroy(nc);
        }
        return;
    }
    if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED) {
        set_error(b, nats_reason(s));
        return;
    }
    natsConnection *old = current(b);
    pthread_mutex_lock(&b->lock);
    /* old's address may be reused */
    b->closed_nc = b->closed_nc == old ? NULL : b->closed_nc;
    b->reason_nc = b->reason_nc == old ? NULL : b->reason_nc;
    pthread_mutex_unlock(&b->lock);
    /* Before it is installed: its connected callback may run as soon as it is. */
    __atomic_fetch_add(&b->generation, 1, __ATOMIC_ACQ_REL);
    install(b, nc);
    retire(b, old);
    pthread_mutex_lock(&b->renew_lock);
    if (b->renew)
        b->renew(b->renew_ctx);
    pthread_mutex_unlock(&b->renew_lock);
    if (s == NATS_OK) /* connected within Connect: nats.c calls no connected callback */
        reopened_up(b);
}

/*
 * The bus's own thread: each time nats.c closes the connection for good, waits
 * (BUS_REOPEN_MIN_MS, doubling up to BUS_REOPEN_MAX_MS while no connection
 * comes up, plus up to a quarter of it at random to spread a fleet) and opens
 * a new one.
 */
static void *reopen_main(void *arg)
{
    struct bus *b = arg;
    uint64_t wait_ms = BUS_REOPEN_MIN_MS;
    unsigned attempts = 0, seed = (unsigned)(clock_monotonic_ns() ^ (uint64_t)getpid());

    pthread_setname_np(pthread_self(), "nats-reopen");
    pthread_mutex_lock(&b->lock);
    for (;;) {
        while (!is_closing(b) && !__atomic_load_n(&b->closed, __ATOMIC_ACQUIRE))
            pthread_cond_wait(&b->closed_cond, &b->lock);
        if (is_closing(b))
            break;
        if (b->connected_since_reopen) {
            wait_ms = BUS_REOPEN_MIN_MS;
            attempts = 0;
            b->connected_since_reopen = false;
        }
        uint64_t delay = wait_ms + (uint64_t)rand_r(&seed) % (wait_ms / 4 + 1);
        /* Each wait while it grows, then every tenth, so a long refusal cannot fill the log. */
        if (wait_ms < BUS_REOPEN_MAX_MS || attempts % 10 == 0)
            fprintf(stderr,
                    "%s: the connection is closed for good: %s; opening a new one in "
                    "%.1f s\n",
                    b->what, b->last_error, (double)delay / 1000);
        struct timespec until = clock_deadline_ms(delay);
        while (!is_closing(b) &&
               pthread_cond_timedwait(&b->closed_cond, &b->lock, &until) != ETIMEDOUT)
            ;
        if (is_closing(b))
            break;
        pthread_mutex_unlock(&b->lock);
        retired_destroy(b, false);
        reopen_once(b);
        attempts++;
        if (wait_ms < BUS_REOPEN_MAX_MS)
            wait_ms = wait_ms * 2 < BUS_REOPEN_MAX_MS ? wait_ms * 2 : BUS_REOPEN_MAX_MS;
        pthread_mutex_lock(&b->lock);
    }
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

struct bus *bus_open_opts(const struct config *cfg, const struct bus_options *o, char *err,
                          size_t errlen)
{
    struct bus *b = calloc(1, sizeof(*b));
    if (!b) {
        errmsg_set(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&b->lock, NULL);
    pthread_mutex_init(&b->renew_lock, NULL);
    clock_cond_init(&b->closed_cond);
    b->reopen = !(o && o->no_reopen);
    const char *prog = o && o->log_name ? o->log_name : program_invocation_short_name;
    if (o && o->label)
        snprintf(b->what, sizeof(b->what), "%.60s: NATS (%.20s)", prog, o->label);
    else
        snprintf(b->what, sizeof(b->what), "%.60s: NATS", prog);
    if (build_options(b, cfg, o, err, errlen) < 0) {
        bus_close(b);
        return NULL;
    }

    natsConnection *nc = NULL;
    natsStatus s = natsConnection_Connect(&nc, b->opts);
    if (s == NATS_OK || s == NATS_NOT_YET_CONNECTED)
        install(b, nc);
    if (s == NATS_OK) {
        __atomic_store_n(&b->connected, true, __ATOMIC_RELEASE);
    } else if (s == NATS_NOT_YET_CONNECTED) {
        /* Retrying in the background; on_connected fires when a server answers. */
        char urls[CONFIG_URL];
        bus_redact_urls(cfg->nats_url, urls, sizeof(urls));
        /* A server that refused our credentials may already have made nats.c give up
         * (on_closed() has given the reason): keep that reason. */
        pthread_mutex_lock(&b->lock);
        bool closed = b->reason_nc == nc;
        if (!closed)
            errmsg_set(b->last_error, sizeof(b->last_error), "no NATS server reachable at %s",
                       urls);
        pthread_mutex_unlock(&b->lock);
        if (!closed)
            keep_last_error(b, nc);
    } else {
        /*
         * A server answered and refused us (authorization, TLS mismatch): a
         * configuration problem the operator must see, not a transient one.
         */
        errmsg_set(err, errlen, "NATS %s: %s", cfg->nats_url, nats_reason(s));
        bus_close(b);
        return NULL;
    }
    if (b->reopen) {
        if (pthread_create(&b->reopen_thread, NULL, reopen_main, b) != 0) {
            errmsg_set(err, errlen, "cannot start the NATS reopening thread");
            bus_close(b);
            return NULL;
        }
        b->reopen_started = true;
    }
    return b;
}

struct bus *bus_open(const struct config *cfg, const char *name, char *err, size_t errlen)
{
    struct bus_options o = {.name = name};
    return bus_open_opts(cfg, &o, err, errlen);
}

bool bus_wait_closed(struct bus *b, unsigned timeout_ms)
{
    struct timespec until = clock_deadline_ms(timeout_ms);
    pthread_mutex_lock(&b->lock);
    int rc = 0;
    while (!__atomic_load_n(&b->closed, __ATOMIC_ACQUIRE) && rc == 0)
        rc = pthread_cond_timedwait(&b->closed_cond, &b->lock, &until);
    bool closed = __atomic_load_n(&b->closed, __ATOMIC_ACQUIRE);
    pthread_mutex_unlock(&b->lock);
    return closed;
}

bool bus_sub_end(natsConnection *nc, natsSubscription *sub, int timeout_ms)
{
    if (sub == NULL)
        return true;
    natsSubscription_Unsubscribe(sub);
    if (nc != NULL && !natsConnection_IsClosed(nc) &&
        natsConnection_FlushTimeout(nc, timeout_ms) != NATS_OK && !natsConnection_IsClosed(nc))
        return false;
    natsSubscription_Destroy(sub);
    return true;
}

void bus_close(struct bus *b)
{
    if (!b)
        return;
    bus_set_listener(b, NULL, NULL);
    bus_set_renew(b, NULL, NULL);
    pthread_mutex_lock(&b->lock);
    __atomic_store_n(&b->closing, true, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&b->closed_cond); /* wakes the reopening thread */
    /*
     * A reopening thread trying servers that do not answer may take seconds for
     * each: shutting down does not wait for it. It closes its own connection when
     * Connect returns and touches nothing else; b stays allocated for it.
     */
    bool abandon = b->reopen_started && b->in_connect;
    pthread_mutex_unlock(&b->lock);
    if (abandon)
        pthread_detach(b->reopen_thread);
    else if (b->reopen_started)
        pthread_join(b->reopen_thread, NULL);
    natsConnection *nc = current(b);
    if (nc) {
        natsConnection_Close(nc);
        /* nats.c runs the closed callback on its own thread, after Close returns. */
        bool closed = bus_wait_closed(b, BUS_CLOSE_WAIT_S * 1000);
        natsConnection_Destroy(nc);
        if (!closed) /* never seen; leaking beats a use-after-free in a late callback */
            return;
    }
    retired_destroy(b, true);
    if (abandon)
        return;
    natsOptions_Destroy(b->opts);
    pthread_cond_destroy(&b->closed_cond);
    pthread_mutex_destroy(&b->renew_lock);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

natsConnection *bus_conn(struct bus *b)
{
    return current(b);
}

uint64_t bus_generation(struct bus *b)
{
    return __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
}

void bus_set_renew(struct bus *b, bus_renew_fn fn, void *ctx)
{
    pthread_mutex_lock(&b->renew_lock);
    b->renew = fn;
    b->renew_ctx = ctx;
    pthread_mutex_unlock(&b->renew_lock);
}

bool bus_connected(struct bus *b)
{
    return __atomic_load_n(&b->connected, __ATOMIC_ACQUIRE);
}

uint64_t bus_publish_denied(struct bus *b)
{
    return __atomic_load_n(&b->publish_denied, __ATOMIC_ACQUIRE);
}

bool bus_publish_denied_last(struct bus *b)
{
    const char *text = NULL;
    natsConnection *nc = current(b);
    return nc && natsConnection_GetLastError(nc, &text) == NATS_NOT_PERMITTED && text &&
           strstr(text, BUS_PUBLISH_DENIED);
}

void bus_set_listener(struct bus *b, bus_state_fn fn, void *ctx)
{
    pthread_mutex_lock(&b->lock);
    b->listener = fn;
    b->listener_ctx = ctx;
    pthread_mutex_unlock(&b->lock);
}

void bus_get_status(struct bus *b, struct bus_status *out)
{
    memset(out, 0, sizeof(*out));
    out->connected = __atomic_load_n(&b->connected, __ATOMIC_ACQUIRE);
    out->closed = __atomic_load_n(&b->closed, __ATOMIC_ACQUIRE);
    out->disconnects = __atomic_load_n(&b->disconnects, __ATOMIC_RELAXED);
    out->reconnects = __atomic_load_n(&b->reconnects, __ATOMIC_RELAXED);
    out->closed_for_good = __atomic_load_n(&b->closed_for_good, __ATOMIC_RELAXED);
    out->async_errors = __atomic_load_n(&b->async_errors, __ATOMIC_RELAXED);
    natsConnection *nc = current(b);
    if (out->connected && nc)
        natsConnection_GetConnectedUrl(nc, out->server, sizeof(out->server));
    /*
     * While retrying, the connection's own last error says why; a specific
     * reason (authorization...) is kept over the generic "no server" that
     * follows each failed round.
     */
    if (!out->connected)
        keep_last_error(b, nc);
    pthread_mutex_lock(&b->lock);
    snprintf(out->last_error, sizeof(out->last_error), "%s", b->last_error);
    pthread_mutex_unlock(&b->lock);
    if (out->server[0])
        bus_redact_urls(out->server, out->server, sizeof(out->server));
}

void bus_node_subject(const char *prefix, const char *node, char *out, size_t len)
{
    if (!len)
        return;
    int n = snprintf(out, len, "%s.", prefix);
    if (n < 0 || (size_t)n >= len)
        return;
    size_t i = (size_t)n;
    for (const char *p = node; *p && i + 1 < len; p++) {
        unsigned char c = (unsigned char)*p;
        out[i++] = (c == '.' || c == '*' || c == '>' || isspace(c)) ? '_' : (char)c;
    }
    out[i] = '\0';
}

void bus_redact_urls(const char *urls, char *out, size_t len)
{
    config_redact_urls(urls, out, len);
}
