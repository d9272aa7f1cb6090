/*
 * Tests for pkg/bus: subject names, URL redaction, and connecting to a real
 * nats-server (credentials, refusal, starting before the server is up).
 */
#include "bus.h"
#include "testutil.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define WAIT_MS 5000

static void config_for(struct config *c, int port)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->nats_url, sizeof(c->nats_url), "nats://127.0.0.1:%d", port);
    snprintf(c->subject_prefix, sizeof(c->subject_prefix), "ebpf.events");
}

/* A nats-server on port that wants user "agent", password "s3cret". */
static pid_t nats_with_password(int port)
{
    const char *auth[] = {"--user", "agent", "--pass", "s3cret", NULL};
    pid_t ns = tu_nats_start(port, auth, "/tmp/test_bus_nats.log");
    cr_assert_gt(ns, 0, "nats-server did not start");
    return ns;
}

/* Polls the bus until connected == want or timeout; returns the last status. */
static bool wait_connected(struct bus *b, bool want, int timeout_ms, struct bus_status *st)
{
    uint64_t deadline = tu_mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        bus_get_status(b, st);
        if (st->connected == want)
            return true;
        if (tu_mono_ms() >= deadline)
            return false;
        usleep(5000);
    }
}

/* A bus named name on the server at port, connected. */
static struct bus *bus_up(int port, const char *name)
{
    struct config c;
    char err[256];
    config_for(&c, port);
    struct bus *b = bus_open(&c, name, err, sizeof(err));
    cr_assert_not_null(b, "%s", err);
    struct bus_status st;
    cr_assert(wait_connected(b, true, WAIT_MS, &st), "not connected: %s", st.last_error);
    return b;
}

/* Publishes on one connection and reads it back on a subscription of the same one. */
static natsStatus round_trip(natsConnection *nc, const char *subject, natsMsg **out)
{
    natsSubscription *sub = NULL;
    natsStatus s = natsConnection_SubscribeSync(&sub, nc, subject);
    if (s == NATS_OK)
        s = natsConnection_PublishString(nc, subject, "ping");
    if (s == NATS_OK)
        s = natsSubscription_NextMsg(out, sub, 500);
    natsSubscription_Destroy(sub);
    return s;
}

Test(bus, node_subject_sanitises_dots_wildcards_and_spaces)
{
    char s[128];
    bus_node_subject("ebpf.events", "ip-10-0-1-5.ec2.internal", s, sizeof(s));
    cr_assert_str_eq(s, "ebpf.events.ip-10-0-1-5_ec2_internal");
    bus_node_subject("ebpf.events", "a*b>c d\te\nf", s, sizeof(s));
    cr_assert_str_eq(s, "ebpf.events.a_b_c_d_e_f");
    bus_node_subject("p", "worker-1", s, sizeof(s));
    cr_assert_str_eq(s, "p.worker-1");
    /* Never overflows, always terminated. */
    bus_node_subject("ebpf.events", "very-long-node-name", s, 16);
    cr_assert_str_eq(s, "ebpf.events.ver");
}

Test(bus, redacted_urls_hide_credentials)
{
    char s[256];
    bus_redact_urls("nats://user:secret@10.0.0.1:4222, tls://tok@nats.example:4443,nats://h:1", s,
                    sizeof(s));
    cr_assert_str_eq(s, "nats://10.0.0.1:4222, tls://nats.example:4443,nats://h:1");
    bus_redact_urls("127.0.0.1:4222", s, sizeof(s));
    cr_assert_str_eq(s, "127.0.0.1:4222");
    cr_assert_null(strstr(s, "secret"));
    /* A password may hold an '@': the credentials end at the last one, as nats.c reads them. */
    bus_redact_urls("nats://user:p@ss@word@10.0.0.1:4222,tok@en@h:1", s, sizeof(s));
    cr_assert_str_eq(s, "nats://10.0.0.1:4222,h:1");
}

Test(bus, connects_with_user_and_password)
{
    int port = tu_free_port();
    pid_t ns = nats_with_password(port);

    struct config c;
    char err[256];
    config_for(&c, port);
    snprintf(c.nats_user, sizeof(c.nats_user), "agent");
    snprintf(c.nats_password, sizeof(c.nats_password), "s3cret");
    struct bus *b = bus_open(&c, "test-bus", err, sizeof(err));
    cr_assert_not_null(b, "%s", err);
    struct bus_status st;
    cr_assert(wait_connected(b, true, WAIT_MS, &st), "not connected: %s", st.last_error);
    cr_assert_str_eq(st.last_error, "");
    char want[64];
    snprintf(want, sizeof(want), "nats://127.0.0.1:%d", port);
    cr_assert_str_eq(st.server, want);

    natsMsg *m = NULL;
    cr_assert_eq(round_trip(bus_conn(b), "bus.test", &m), NATS_OK);
    cr_assert_eq(natsMsg_GetDataLength(m), 4);
    natsMsg_Destroy(m);
    /* A live connection is not closed: the wait times out. */
    cr_assert_not(bus_wait_closed(b, 50));

    bus_close(b);
    tu_stop(ns, 2000);
}

/* The client name goes into the CONNECT JSON: a node name's bytes must not break it. */
Test(bus, any_client_name_connects)
{
    int port = tu_free_port();
    pid_t ns = tu_nats_start(port, NULL, "/tmp/test_bus_nats.log");
    cr_assert_gt(ns, 0, "nats-server did not start");

    struct bus *b = bus_up(port, "ebpf-agent we\"ird\\\xff\x01 n*de\x7f\xc3\xa9");
    natsMsg *m = NULL;
    cr_assert_eq(round_trip(bus_conn(b), "bus.test", &m), NATS_OK);
    natsMsg_Destroy(m);

    bus_close(b);
    tu_stop(ns, 2000);
}

/* Connects to a nats-server started with auth, as user/password, with token, or with url_cred
 * ("user:password" or "token") in NATS_URL: true if it did. */
static bool connects_with(const char *const auth[], const char *user, const char *password,
                          const char *token, const char *url_cred)
{
    int port = tu_free_port();
    pid_t ns = tu_nats_start(port, auth, "/tmp/test_bus_nats.log");
    cr_assert_gt(ns, 0, "nats-server did not start");
    struct config c;
    char err[256];
    config_for(&c, port);
    if (url_cred) /* after a server without credentials that refuses the connection */
        snprintf(c.nats_url, sizeof(c.nats_url), "nats://127.0.0.1:1,nats://%s@127.0.0.1:%d",
                 url_cred, port);
    snprintf(c.nats_user, sizeof(c.nats_user), "%s", user);
    snprintf(c.nats_password, sizeof(c.nats_password), "%s", password);
    snprintf(c.nats_token, sizeof(c.nats_token), "%s", token);
    struct bus *b = bus_open(&c, "test-bus", err, sizeof(err));
    cr_assert_not_null(b, "%s", err);
    struct bus_status st;
    bool up = wait_connected(b, true, WAIT_MS * 2, &st);
    cr_expect(up, "not connected: %s", st.last_error);
    bus_close(b);
    tu_stop(ns, 2000);
    return up;
}

/* nats.c sends credentials inside its CONNECT JSON: a quote or a backslash in one is still
 * the credential the server was given, not a JSON error that refuses every connection. */
Test(bus, credentials_with_quotes_backslashes_and_control_bytes_connect)
{
    static const char user[] = "a\"g\\ent", password[] = "p\"w\\d\x01\t\xc3\xa9";
    const char *userpass[] = {"--user", user, "--pass", password, NULL};
    connects_with(userpass, user, password, "", NULL);
    static const char token[] = "t\"o\\k\x1f";
    const char *token_auth[] = {"--auth", token, NULL};
    connects_with(token_auth, "", "", token, NULL);
}

/* The same credentials in NATS_URL, as nats://user:password@host and nats://token@host. */
Test(bus, url_credentials_with_quotes_and_backslashes_connect)
{
    const char *userpass[] = {"--user", "a\"g\\ent", "--pass", "p\"w@\\d", NULL};
    connects_with(userpass, "", "", "", "a\"g\\ent:p\"w@\\d");
    const char *token_auth[] = {"--auth", "t\"o\\k", NULL};
    connects_with(token_auth, "", "", "", "t\"o\\k");
}

Test(bus, wrong_password_is_not_connected_and_says_why)
{
    int port = tu_free_port();
    pid_t ns = nats_with_password(port);

    struct config c;
    char err[256];
    config_for(&c, port);
    snprintf(c.nats_user, sizeof(c.nats_user), "agent");
    snprintf(c.nats_password, sizeof(c.nats_password), "wrong");
    struct bus *b = bus_open(&c, "test-bus", err, sizeof(err));
    cr_assert_not_null(b, "the process keeps running and retrying: %s", err);

    /*
     * The refusal is recorded (nats.c stops retrying a server that refused
     * the credentials twice); the connection never comes up.
     */
    cr_assert(bus_wait_closed(b, WAIT_MS), "nats.c never gave up on the refusing server");
    struct bus_status st;
    bus_get_status(b, &st);
    cr_assert(st.closed);
    cr_assert_not(st.connected);
    cr_assert(strstr(st.last_error, "Authorization") || strstr(st.last_error, "NATS_PASSWORD"),
              "last error: %s", st.last_error);
    cr_assert_not(bus_connected(b));

    bus_close(b);
    tu_stop(ns, 2000);
}

/*
 * A TLS server whose certificate another CA signed: nats.c gives up on the
 * handshake, and the reason says what to check on this side (the server's
 * log has nothing to say about it). The right CA connects.
 */
Test(bus, a_server_certificate_of_another_ca_is_a_tls_failure)
{
    char dir[] = "/tmp/test_bus_tls_XXXXXX", cmd[2048], *out = NULL;
    cr_assert_not_null(mkdtemp(dir));
    snprintf(cmd, sizeof(cmd),
             "cd %s && for ca in ca ca2; do openssl req -x509 -newkey ec -pkeyopt "
             "ec_paramgen_curve:prime256v1 -nodes -keyout $ca.key -out $ca.pem -days 2 -subj "
             "/CN=$ca || exit 1; done && openssl req -newkey ec -pkeyopt "
             "ec_paramgen_curve:prime256v1 -nodes -keyout srv.key -out srv.csr -subj "
             "/CN=127.0.0.1 && printf 'subjectAltName=IP:127.0.0.1\\n' > ext && openssl x509 "
             "-req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 "
             "-extfile ext",
             dir);
    int rc = tu_run(cmd, &out);
    cr_assert_eq(rc, 0, "openssl failed (exit %d):\n%s", rc, out ? out : "");
    free(out);

    int port = tu_free_port();
    char cert[96], key[96];
    snprintf(cert, sizeof(cert), "%s/srv.pem", dir);
    snprintf(key, sizeof(key), "%s/srv.key", dir);
    const char *tls[] = {"--tls", "--tlscert", cert, "--tlskey", key, NULL};
    pid_t ns = tu_nats_start(port, tls, "/tmp/test_bus_nats.log");
    cr_assert_gt(ns, 0, "nats-server did not start");

    struct config c;
    char err[256];
    config_for(&c, port);
    snprintf(c.nats_url, sizeof(c.nats_url), "tls://127.0.0.1:%d", port);
    snprintf(c.nats_tls_ca, sizeof(c.nats_tls_ca), "%s/ca2.pem", dir);
    struct bus *b = bus_open(&c, "test-bus", err, sizeof(err));
    cr_assert_not_null(b, "%s", err);
    cr_assert(bus_wait_closed(b, WAIT_MS), "nats.c never gave up on the handshake");
    struct bus_status st;
    bus_get_status(b, &st);
    cr_assert_not(st.connected);
    cr_assert(strstr(st.last_error, "this side may refuse itself") &&
                  strstr(st.last_error, "signed by NATS_TLS_CA"),
              "last error: %s", st.last_error);
    bus_close(b);

    snprintf(c.nats_tls_ca, sizeof(c.nats_tls_ca), "%s/ca.pem", dir);
    b = bus_open(&c, "test-bus", err, sizeof(err));
    cr_assert_not_null(b, "%s", err);
    cr_assert(wait_connected(b, true, WAIT_MS, &st), "the right CA did not connect: %s",
              st.last_error);
    bus_close(b);
    tu_stop(ns, 2000);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    cr_assert_eq(tu_run(cmd, NULL), 0);
}

static int state_changes;
static void count_state(void *ctx, bool connected)
{
    __atomic_fetch_add(&state_changes, 1, __ATOMIC_RELAXED);
}

Test(bus, starts_without_a_server_and_connects_when_it_appears)
{
    int port = tu_free_port();
    struct config c;
    char err[256];
    config_for(&c, port);
    struct bus *b = bus_open(&c, "test-bus", err, sizeof(err));
    cr_assert_not_null(b, "%s", err);
    bus_set_listener(b, count_state, NULL);
    struct bus_status st;
    bus_get_status(b, &st);
    cr_assert_not(st.connected);
    cr_assert(strstr(st.last_error, "no NATS server reachable"), "%s", st.last_error);

    pid_t ns = tu_nats_start(port, NULL, "/tmp/test_bus_nats.log");
    cr_assert_gt(ns, 0, "nats-server did not start");
    cr_assert(wait_connected(b, true, WAIT_MS, &st), "never connected: %s", st.last_error);
    cr_assert_geq(__atomic_load_n(&state_changes, __ATOMIC_RELAXED), 1);

    /* And after the server goes away and comes back, it reconnects by itself. */
    tu_stop(ns, 2000);
    cr_assert(wait_connected(b, false, WAIT_MS, &st));
    ns = tu_nats_start(port, NULL, "/tmp/test_bus_nats.log");
    cr_assert_gt(ns, 0);
    cr_assert(wait_connected(b, true, WAIT_MS, &st), "never reconnected: %s", st.last_error);
    cr_assert_geq(st.disconnects, 1);
    cr_assert_geq(st.reconnects, 1);

    bus_close(b);
    tu_stop(ns, 2000);
}

static int renewals;
static void count_renewal(void *ctx)
{
    struct bus *b = ctx;
    /* Called with the new connection in place: a subscription on it reaches the server. */
    cr_assert_eq(bus_generation(b), (uint64_t)__atomic_load_n(&renewals, __ATOMIC_RELAXED) + 1);
    __atomic_fetch_add(&renewals, 1, __ATOMIC_RELAXED);
}

/*
 * nats.c closes a connection for good once the servers refused its
 * credentials twice (an operator turned on authorization by mistake, or
 * rotated a password before the clients' secret): the bus opens a new one,
 * so the process is back once the servers accept it again, with no restart.
 */
Test(bus, a_connection_closed_for_good_is_opened_again)
{
    int port = tu_free_port();
    pid_t ns = tu_nats_start(port, NULL, "/tmp/test_bus_nats.log");
    cr_assert_gt(ns, 0, "nats-server did not start");
    struct bus *b = bus_up(port, "test-bus");
    bus_set_renew(b, count_renewal, b);
    struct bus_status st;
    natsConnection *first = bus_conn(b);

    /* The same port now wants a password this client does not have. */
    tu_stop(ns, 2000);
    ns = nats_with_password(port);
    cr_assert(bus_wait_closed(b, WAIT_MS), "nats.c never gave up on the refusing server");
    bus_get_status(b, &st);
    cr_assert(st.closed);
    cr_assert(strstr(st.last_error, "Authorization") || strstr(st.last_error, "NATS_PASSWORD"),
              "last error: %s", st.last_error);
    uint64_t reconnects = st.reconnects;

    /* Fixed: a new connection comes up by itself, and carries messages. */
    tu_stop(ns, 2000);
    ns = tu_nats_start(port, NULL, "/tmp/test_bus_nats.log");
    cr_assert_gt(ns, 0, "nats-server did not start");
    cr_assert(wait_connected(b, true, 3 * WAIT_MS, &st), "never opened again: %s", st.last_error);
    cr_assert_not(st.closed);
    cr_assert_str_eq(st.last_error, "");
    cr_assert_eq(st.reconnects, reconnects + 1);
    cr_assert_eq(bus_generation(b), 1);
    cr_assert_eq(__atomic_load_n(&renewals, __ATOMIC_RELAXED), 1);
    cr_assert_neq(bus_conn(b), first);
    natsMsg *m = NULL;
    cr_assert_eq(round_trip(bus_conn(b), "bus.test", &m), NATS_OK);
    natsMsg_Destroy(m);
    /* The replaced connection is closed, not freed: a caller that fetched it just fails. */
    cr_assert_eq(natsConnection_Status(first), NATS_CONN_STATUS_CLOSED);
    cr_assert_eq(natsConnection_PublishString(first, "bus.test", "late"), NATS_CONNECTION_CLOSED);

    bus_close(b);
    tu_stop(ns, 2000);
}

/* A loopback TCP listener that never answers (the handshake completes, no INFO comes). */
static int silent_listener(int *port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(listen(fd, 8), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

/*
 * Shutting down while the bus is opening a new connection does not wait for
 * the servers that do not answer (2 s each): bus_close() returns while the
 * attempt on one is still open.
 */
Test(bus, closing_does_not_wait_for_a_reopening_attempt)
{
    int port = tu_free_port(), silent_port = 0;
    int silent = silent_listener(&silent_port);
    pid_t ns = nats_with_password(port);
    struct config c;
    char err[256];
    config_for(&c, port);
    snprintf(c.nats_url, sizeof(c.nats_url), "nats://127.0.0.1:%d,nats://127.0.0.1:%d", port,
             silent_port);
    struct bus *b = bus_open(&c, "test-bus", err, sizeof(err));
    cr_assert_not_null(b, "%s", err);
    cr_assert(bus_wait_closed(b, 3 * WAIT_MS), "nats.c never gave up on the refusing server");

    /* Attempts of the closed connection are over: drop them, then wait for the reopening's
     * (each tries the refusing server, then the silent one). */
    int attempt;
    while ((attempt = accept(silent, NULL, NULL)) >= 0)
        close(attempt);
    for (uint64_t deadline = tu_mono_ms() + 2 * WAIT_MS;
         (attempt = accept(silent, NULL, NULL)) < 0;) {
        cr_assert_lt(tu_mono_ms(), deadline, "no reopening attempt reached the silent server");
        usleep(5000);
    }
    bus_close(b);
    /* Still open: bus_close() did not wait for that attempt's timeout, which closes it. */
    char byte;
    ssize_t n = recv(attempt, &byte, 1, MSG_DONTWAIT);
    cr_assert(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK),
              "the attempt ended before bus_close() returned (recv %zd)", n);
    close(attempt);
    close(silent);
    tu_stop(ns, 2000);
}

Test(bus, no_echo_hides_own_messages)
{
    int port = tu_free_port();
    pid_t ns = tu_nats_start(port, NULL, "/tmp/test_bus_nats.log");
    cr_assert_gt(ns, 0, "nats-server did not start");
    struct config c;
    char err[256];
    config_for(&c, port);

    struct bus_options o = {.name = "replica", .no_echo = true};
    struct bus *quiet = bus_open_opts(&c, &o, err, sizeof(err));
    struct bus *echo = bus_open(&c, "plain", err, sizeof(err));
    cr_assert_not_null(quiet, "%s", err);
    cr_assert_not_null(echo, "%s", err);
    struct bus_status st;
    cr_assert(wait_connected(quiet, true, WAIT_MS, &st));
    cr_assert(wait_connected(echo, true, WAIT_MS, &st));

    natsMsg *m = NULL;
    cr_assert_eq(round_trip(bus_conn(echo), "echo.test", &m), NATS_OK);
    natsMsg_Destroy(m);
    m = NULL;
    cr_assert_eq(round_trip(bus_conn(quiet), "echo.test", &m), NATS_TIMEOUT);

    bus_close(quiet);
    bus_close(echo);
    tu_stop(ns, 2000);
}

struct flood {
    natsConnection *nc;
    atomic_bool stop;
};

static void *flood_loop(void *arg)
{
    struct flood *f = arg;
    while (!atomic_load(&f->stop))
        if (natsConnection_PublishString(f->nc, "flood.x", "flood") != NATS_OK)
            usleep(1000);
    return NULL;
}

/*
 * Subscriptions ended while a flood of messages comes in for them: the
 * connection's reader is nearly always handling one of theirs. Freed with a
 * plain natsSubscription_Destroy(), nats.c 3.4 uses one after it is freed
 * within a few rounds (a crash, or a report under ASan: nats.c #637);
 * bus_sub_end() frees each once the reader is past it.
 */
Test(bus, subscriptions_ended_under_a_flood_are_not_used_after_free)
{
    int port = tu_free_port();
    pid_t ns = tu_nats_start(port, NULL, "/tmp/test_bus_nats.log");
    cr_assert_gt(ns, 0, "nats-server did not start");
    struct bus *flooder = bus_up(port, "flooder"), *ender = bus_up(port, "ender");
    struct flood f = {.nc = bus_conn(flooder)};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, flood_loop, &f), 0);

    int ended = 0;
    for (int i = 0; i < 200; i++) {
        natsSubscription *sub = NULL;
        natsMsg *m = NULL;
        cr_assert_eq(natsConnection_SubscribeSync(&sub, bus_conn(ender), "flood.x"), NATS_OK);
        /* The flood reaches it: its messages are coming in as it ends. */
        cr_assert_eq(natsSubscription_NextMsg(&m, sub, WAIT_MS), NATS_OK, "round %d", i);
        natsMsg_Destroy(m);
        ended += bus_sub_end(bus_conn(ender), sub, WAIT_MS);
    }
    atomic_store(&f.stop, true);
    pthread_join(t, NULL);
    cr_expect_eq(ended, 200, "every subscription freed (a flush failed %d times)", 200 - ended);
    bus_close(flooder);
    bus_close(ender);
    tu_stop(ns, 2000);
}

Test(bus, unreadable_credential_files_are_one_line_errors)
{
    struct config c;
    char err[256];
    config_for(&c, 4222);

    snprintf(c.nats_creds, sizeof(c.nats_creds), "/nonexistent/agent.creds");
    cr_assert_null(bus_open(&c, "x", err, sizeof(err)));
    cr_assert(strstr(err, "NATS_CREDS") && strstr(err, "/nonexistent/agent.creds"), "%s", err);
    cr_assert_null(strchr(err, '\n'));

    c.nats_creds[0] = '\0';
    snprintf(c.nats_tls_ca, sizeof(c.nats_tls_ca), "/nonexistent/ca.pem");
    cr_assert_null(bus_open(&c, "x", err, sizeof(err)));
    cr_assert(strstr(err, "NATS_TLS_CA") && strstr(err, "/nonexistent/ca.pem"), "%s", err);

    c.nats_tls_ca[0] = '\0';
    snprintf(c.nats_tls_cert, sizeof(c.nats_tls_cert), "/nonexistent/cert.pem");
    snprintf(c.nats_tls_key, sizeof(c.nats_tls_key), "/nonexistent/key.pem");
    cr_assert_null(bus_open(&c, "x", err, sizeof(err)));
    cr_assert(strstr(err, "NATS_TLS_CERT"), "%s", err);

    /* A CA file that exists but holds no certificate. */
    c.nats_tls_cert[0] = c.nats_tls_key[0] = '\0';
    char junk[] = "/tmp/test_bus_ca_XXXXXX";
    int fd = mkstemp(junk);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "not a certificate\n", 18), 18);
    close(fd);
    snprintf(c.nats_tls_ca, sizeof(c.nats_tls_ca), "%s", junk);
    cr_assert_null(bus_open(&c, "x", err, sizeof(err)));
    cr_assert(strstr(err, "NATS_TLS_CA"), "%s", err);
    unlink(junk);

    c.nats_tls_ca[0] = '\0';
    snprintf(c.nats_url, sizeof(c.nats_url), " , ");
    cr_assert_null(bus_open(&c, "x", err, sizeof(err)));
    cr_assert(strstr(err, "NATS_URL"), "%s", err);
}
