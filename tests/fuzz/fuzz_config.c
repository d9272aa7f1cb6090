/*
 * Fuzz target: the configuration file parser (pkg/config.c): the input is a
 * YAML config file given with --config, loaded for both roles, and the
 * duration and size parsers the file's values go through.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* Only the file counts: no CONFIG_FILE, no settings from the environment. */
    clearenv();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* config_load() reads a path: an in-memory file behind /proc/self/fd. */
    int fd = memfd_create("fuzz-config", MFD_CLOEXEC);
    if (fd < 0)
        return 0;
    if (size > 0 && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);

    char *argv[] = {"ebpf-fuzz", "--config", path, NULL};
    char err[512];
    static struct config c; /* large: not on the stack */
    config_load(&c, CONFIG_AGENT, 3, argv, err, sizeof(err));
    config_load(&c, CONFIG_AGGREGATOR, 3, argv, err, sizeof(err));
    close(fd);

    char *s = malloc(size + 1);
    if (s) {
        memcpy(s, data, size);
        s[size] = '\0';
        uint64_t v;
        config_parse_duration(s, &v);
        config_parse_bytes(s, &v);
        free(s);
    }
    return 0;
}
