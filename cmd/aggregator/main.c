/*
 * ebpf-aggregator: collects event batches from NATS and serves the
 * cluster-wide HTTP API. This build validates its configuration; the NATS
 * pipeline lands with the aggregator milestone.
 */
#include <stdio.h>
#include <string.h>

#include "config.h"

int main(int argc, char **argv)
{
    struct config cfg;
    char err[512];

    if (argc > 1 && (strcmp(argv[1], "tail") == 0 || strcmp(argv[1], "decode") == 0)) {
        fprintf(stderr, "ebpf-aggregator: '%s' is not available in this version\n", argv[1]);
        return 2;
    }
    switch (config_load(&cfg, CONFIG_AGGREGATOR, argc, argv, err, sizeof(err))) {
    case CONFIG_OK:
        break;
    case CONFIG_EXIT:
        return 0;
    default:
        fprintf(stderr, "ebpf-aggregator: %s\n", err);
        return 2;
    }
    if (cfg.check_only) {
        printf("ebpf-aggregator: configuration OK\n");
        return 0;
    }
    fprintf(stderr, "ebpf-aggregator: the NATS pipeline is not available in this version\n");
    return 1;
}
