/*
 * Replication: the program as one member of a Raft group (libraft, its
 * libuv I/O and TCP transport, on the program's own loop). The group's
 * state machine is the program's stores: every write request is an entry
 * of the Raft log, applied by every member in log order, and answered by
 * the leader that proposed it once the entry is committed (on a majority's
 * disks) and applied. See PROTOCOL.md ("Replication") for the requests and
 * replies, and guides/replication.md for what it promises.
 *
 *   writes    put, put_new, delete_key, take, update_counter, clear,
 *             put_many, delete, open, restore: proposed by the leader;
 *             a follower answers {error, {not_leader, Leader}}
 *   reads     every other store op: with linearizable reads (the default)
 *             the leader proposes an empty entry (a tick) and serves the
 *             reads that came before it once it is applied (reads share
 *             ticks); with local reads, any member serves them at once
 *             from what it has applied
 *   time      an entry carries its proposer's clock; applying it sets the
 *             group's clock (gn_now_ms, never backwards), so that every
 *             member expires entries alike; the leader proposes a tick
 *             every sweep interval, which also purges what has expired
 *
 * An entry is "GNR1" | kind (1: 'Q' a request, 'T' a tick) | clock ms (8)
 * | proposer (8: a number drawn at the program's start) | sequence (8) |
 * frame length (4) | the request frame ('Q' only) | zeros to a multiple of
 * 8 bytes. libraft snapshots are the program's image
 * (image.h) behind "GNI1" | the group's clock (8).
 *
 * Everything runs on the loop thread; libraft calls back on it.
 */
#ifndef GN_PORT_RAFT_H
#define GN_PORT_RAFT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "port.h"

typedef struct gn_raft_config {
    uint64_t id;         /* this member's id, > 0 */
    const char *address; /* host:port this member listens on and is known by */
    const char *members; /* "Id=host:port,..." to bootstrap a new group, or NULL */
    const char *dir;     /* libraft's directory (its log, metadata, snapshots) */
    int local_reads;     /* reads from this member's applied state */
    unsigned election_ms, heartbeat_ms;
    unsigned snapshot_every; /* log entries between snapshots; 0: libraft's 1024 */
} gn_raft_config;

typedef struct gn_raft gn_raft;

/* Starts the member on `loop`; requests from the VM now go through it.
 * `after` is called whenever it has appended replies to the program's
 * output outside a request (an entry applied, a tick through), or queued
 * long work. NULL when it cannot start, the reason in err. */
gn_raft *gn_raft_start(uv_loop_t *loop, gn_port *p, const gn_raft_config *c, void (*after)(void),
                       char *err, size_t errlen);

/* The TTL sweep's turn: the leader proposes a tick. */
void gn_raft_sweep(gn_raft *r);

/* Closes the member; its handles are closed once uv_run returns. */
void gn_raft_close(gn_raft *r);

#endif
