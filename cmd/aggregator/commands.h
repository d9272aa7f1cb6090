/*
 * The aggregator's subcommands besides serving: `tail` (follow the bus as
 * JSON lines) and `decode` (one message body on stdin to JSON lines, for
 * `nats sub --translate`). argv[0] is the subcommand's name; each returns
 * the process exit status.
 */
#ifndef EBPF_MONITOR_AGGREGATOR_COMMANDS_H
#define EBPF_MONITOR_AGGREGATOR_COMMANDS_H

int aggregator_tail(int argc, char **argv);
int aggregator_decode(int argc, char **argv);

#endif
