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
 *             put_many, delete, open, restore: proposed by the leader,
 *             those read from the VM at once in one entry (group commit);
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
 * The entries of the log (a request, a tick, a member's retirement) and
 * the snapshots (the program's image, image.h, behind the group's clock and
 * its request ids) are laid out in raft_log.h.
 *
 * Removing a member proposes its retirement first: the member applies it,
 * leaves a RETIRED file in its directory and serves nothing more; once
 * the entry is committed, and a few heartbeats have carried that to the
 * member, it is removed from the configuration. A program refuses to start
 * on a directory holding RETIRED (removed_member) until it is reset. A
 * directory's BORN file says when it was first used: a retirement proposed
 * before (by the proposer's clock) names an earlier member of the same id,
 * and a member that joins again after a reset skips it as it catches up.
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
 * long work. NULL when it cannot start: *kind is "removed_member" (the
 * directory's group removed this member; err: the directory) or
 * "raft_failed" (err says why). */
gn_raft *gn_raft_start(uv_loop_t *loop, gn_port *p, const gn_raft_config *c, void (*after)(void),
                       const char **kind, char *err, size_t errlen);

/* Proposes the writes read since the last call, in one entry: call it
 * after each read from the VM (a write waits for it). */
void gn_raft_flush(gn_raft *r);

/* The TTL sweep's turn: the leader proposes a tick. */
void gn_raft_sweep(gn_raft *r);

/* Closes the member; its handles are closed once uv_run returns. */
void gn_raft_close(gn_raft *r);

#endif
