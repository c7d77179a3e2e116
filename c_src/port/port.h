/*
 * The port program's core, without I/O: the frame decoder, the requests and
 * the stores. main.c wires it to libuv (stdin, stdout, timers, the thread
 * pool); fuzz.c drives it directly.
 */
#ifndef GN_PORT_H
#define GN_PORT_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define GN_PORT_MAX_FRAME (64u << 20) /* bytes in one request frame */

typedef struct gn_port gn_port;

/* Whether diagnostics (bad requests, logged events) also go to stderr
 * (default 1; the fuzz target turns it off). */
extern int gn_port_stderr;

enum { GN_SYNC_ALWAYS = 0, GN_SYNC_NEVER = -1 }; /* > 0: every that many ms */

/* A program state; `dir` NULL keeps the stores in memory only. */
gn_port *gn_port_new(const char *dir, int sync);
void gn_port_free(gn_port *p);

/* Loads the data directory (snapshot, then journal) and queues the `ready`
 * event, or the fatal `error` event. Returns 0, or -1 (the program must then
 * exit with status 2). */
int gn_port_load(gn_port *p);

/* Where request frames go: to dispatch.c (the default), or to `route` (a
 * replicated program's, raft.c), which dispatches them in its turn. */
typedef void (*gn_route_fn)(void *ctx, const unsigned char *frame, size_t len);
void gn_port_set_router(gn_port *p, gn_route_fn route, void *ctx);

/* Feeds bytes of the frame stream from the VM; each complete frame is
 * handled. Returns 0, or -1 when the stream is broken (the reason is on
 * stderr). */
int gn_port_feed(gn_port *p, const unsigned char *data, size_t len);

/* Whether a `stop` request came: the program ends as at a clean end of
 * input (journal flushed and fsynced, exit 0). */
int gn_port_stopping(const gn_port *p);

/* Whether the stream ends between frames (a clean end of input). */
int gn_port_at_frame_boundary(const gn_port *p);

/* Request frames handled so far (the event loop sizes its group commits
 * with it). */
uint64_t gn_port_frames(const gn_port *p);

/* Whether journal records wait for gn_port_commit. */
int gn_port_journal_pending(const gn_port *p);

/* Runs one slice (a few milliseconds at most) of pending long work
 * (streamed replies, TTL sweeps, snapshots). Returns 1 while work remains. */
int gn_port_step(gn_port *p);

/* Whether long work waits (gn_port_step has something to do). */
int gn_port_busy(const gn_port *p);

/* The frames to write to stdout; the caller empties it (len = 0). */
gn_buf *gn_port_output(gn_port *p);

/* Writes the journal's new records (fsyncing with sync always): call it
 * before writing the output, so nothing is acknowledged before it is
 * journaled. 0, or -1 on an I/O error (the program must exit). */
int gn_port_commit(gn_port *p);

/* For sync {interval, ms}: the descriptor to fdatasync off the loop thread,
 * or -1 if nothing waits; then gn_port_sync_done on the loop thread with
 * its result (0 or -errno), which answers the syncs that waited for it.
 * -1: the journal failed, the program must stop (gn_port_fail). */
int gn_port_sync_begin(gn_port *p);
int gn_port_sync_done(gn_port *p, int result);

/* After gn_port_commit or gn_port_sync_done returned -1: drops the output
 * not yet written (nothing more is acknowledged) and queues the fatal
 * event {error, {fsync_failed | journal_write_failed, Text}}. The program
 * must write it and exit (status 5) without touching the journal again. */
void gn_port_fail(gn_port *p);

/* Queues the purge of expired entries (the TTL sweep, once a second). */
void gn_port_sweep(gn_port *p);

/* How slow work (a snapshot's fsync and rename) leaves the loop thread:
 * `work(arg)` runs on another thread, then `after(p, arg)` on the loop's.
 * Without one, both run at once, inline. */
typedef void (*gn_offload_fn)(gn_port *p, void (*work)(void *), void (*after)(gn_port *, void *),
                              void *arg);
void gn_port_set_offload(gn_port *p, gn_offload_fn fn);

#endif
