/*
 * The h2o internals the HTTP server touches, in one place.
 *
 * h2o has no public call for three things http_server.c needs at teardown:
 * answering messages still queued for a receiver, asking HTTP/1 connections
 * to close without arming HTTP/2's shutdown timer, and freeing the socket
 * buffers h2o keeps for reuse in a thread-local cache. Each reaches into a
 * field h2o may rename or re-lock in another release, so they live here
 * behind a version check: an upgrade fails to build here, not at run time.
 */
#ifndef EBPF_MONITOR_H2O_SHIM_H
#define EBPF_MONITOR_H2O_SHIM_H

#include <stdlib.h>

#include <h2o.h>

#if !defined(H2O_LIBRARY_VERSION_MAJOR) || H2O_LIBRARY_VERSION_MAJOR != 0 ||                       \
    H2O_LIBRARY_VERSION_MINOR != 13
#error "pkg/h2o_shim.h was verified against libh2o 0.13 (h2o 2.2.x). On another version re-check \
h2o_multithread_receiver_t._messages (and that its owner thread may read it unlocked once no \
sender is left), h2o_context_t.shutdown_requested (HTTP/1 closes after the current response), \
and h2o_socket_buffer_prototype.allocator (h2o_mem_recycle_t.cnt, h2o_mem_alloc_recycle), \
then update this check."
#endif

/* Hands the messages already queued for r to its callback now, on the thread that owns r. */
static inline void h2o_shim_receiver_flush(h2o_multithread_receiver_t *r)
{
    r->cb(r, &r->_messages);
}

/* Makes HTTP/1 responses close their connection. (h2o_context_request_shutdown()
 * would also arm an HTTP/2 timer that cannot be disposed with the loop.) */
static inline void h2o_shim_request_http1_shutdown(h2o_context_t *ctx)
{
    ctx->shutdown_requested = 1;
}

/* Frees the socket buffers h2o recycles in the calling thread's cache. */
static inline void h2o_shim_free_socket_buffers(void)
{
    while (h2o_socket_buffer_prototype.allocator.cnt > 0)
        free(h2o_mem_alloc_recycle(&h2o_socket_buffer_prototype.allocator, 1));
}

#endif
