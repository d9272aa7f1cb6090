/*
 * pkg/notify: READY=1 reaches a datagram socket named by $NOTIFY_SOCKET, as a
 * path or in the abstract namespace; without the variable nothing is sent;
 * a malformed name is an error, never a crash.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "notify.h"

/* Binds a datagram socket at name ("/path" or "@abstract"). */
static int listener(const char *name)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(name);
    memcpy(sa.sun_path, name, len);
    if (name[0] == '@')
        sa.sun_path[0] = '\0';
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, salen), 0, "bind %s: %s", name, strerror(errno));
    return fd;
}

static void expect_message(int fd, const char *want)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 2000), 1, "no datagram");
    char buf[128];
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
    cr_assert_gt(n, 0);
    buf[n] = '\0';
    cr_expect_str_eq(buf, want);
}

Test(notify, ready_reaches_a_path_socket)
{
    char dir[] = "/tmp/notify-test-XXXXXX", path[64];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/notify", dir);
    int fd = listener(path);
    setenv("NOTIFY_SOCKET", path, 1);
    cr_expect_eq(notify_systemd("READY=1"), 1);
    expect_message(fd, "READY=1");
    cr_expect_eq(notify_systemd("STOPPING=1"), 1);
    expect_message(fd, "STOPPING=1");
    close(fd);
    unlink(path);
    rmdir(dir);
}

Test(notify, ready_reaches_an_abstract_socket)
{
    char name[64];
    snprintf(name, sizeof(name), "@notify-test-%d", (int)getpid());
    int fd = listener(name);
    setenv("NOTIFY_SOCKET", name, 1);
    cr_expect_eq(notify_systemd("READY=1"), 1);
    expect_message(fd, "READY=1");
    close(fd);
}

Test(notify, nothing_without_notify_socket)
{
    unsetenv("NOTIFY_SOCKET");
    cr_expect_eq(notify_systemd("READY=1"), 0);
    setenv("NOTIFY_SOCKET", "", 1);
    cr_expect_eq(notify_systemd("READY=1"), 0);
}

Test(notify, malformed_or_missing_sockets_are_errors)
{
    const char *bad[] = {"relative/path", "@", "x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        setenv("NOTIFY_SOCKET", bad[i], 1);
        cr_expect_eq(notify_systemd("READY=1"), -EINVAL, "NOTIFY_SOCKET=%s", bad[i]);
    }
    char longname[200];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[0] = '/';
    longname[sizeof(longname) - 1] = '\0';
    setenv("NOTIFY_SOCKET", longname, 1);
    cr_expect_eq(notify_systemd("READY=1"), -EINVAL);
    setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock", 1);
    cr_expect_eq(notify_systemd("READY=1"), -ENOENT);
}
