/*
 * The program's state (struct gn_port), shared by the files of the core:
 * port.c (frames in, lifecycle), dispatch.c, the ops, the jobs, replay.c.
 */
#ifndef GN_PORT_STATE_H
#define GN_PORT_STATE_H

#include <stdint.h>
#include <string.h>

#include "buf.h"
#include "clock.h"
#include "durable.h"
#include "jobs.h"
#include "port.h"
#include "stores.h"

#define GN_PURGE_INLINE 1000  /* expired entries a request purges itself */
#define GN_CHUNK_ENTRIES 4096 /* entries in one streamed reply frame or snapshot record */
#define GN_SLICE_NS 2000000   /* the time gn_port_step takes, at most about */

struct gn_port {
    char *dir;
    int sync;
    gn_durable *d;
    gn_buf out;
    /* the frame being read (port.c) */
    unsigned char hdr[4];
    size_t hdr_len;
    size_t want; /* the frame's length */
    gn_buf in;
    size_t skip_left; /* an oversized frame, being thrown away */
    gn_buf skip_head;
    gn_stores stores;
    gn_jobs jobs;
    gn_buf compact_waiters; /* tags waiting for the compaction */
    gn_buf sync_waiters;    /* tags waiting for the fdatasync in flight */
    int compact_pending;    /* to start once an fsync is through */
    gn_buf *frame_owner;    /* the buffer the frame being handled is in, if its own */
    int replaying;
    int stopping;    /* a stop request came */
    uint64_t drops;  /* stores dropped so far */
    uint64_t frames; /* request frames handled so far */
    gn_offload_fn offload;
    gn_route_fn route; /* or NULL: frames go to gn_dispatch */
    void *route_ctx;
    /* scratch buffers, reused by every request (the loop is single-threaded) */
    gn_buf key, val, part, recs;
};

/* Applies a record of the journal, a snapshot file or a Raft snapshot to
 * the stores (replay.c), expiring entries by gn_now_ms(). */
struct gn_record;
void gn_replay_record(gn_port *p, const struct gn_record *r);

/* The journal's buffer, or NULL when nothing is journaled (no data
 * directory, or the journal is being replayed). */
static inline gn_buf *gn_port_journal(gn_port *p)
{
    return p->d && !p->replaying ? gn_durable_journal(p->d) : NULL;
}

/* Takes over the buffer that `frame` (the request being handled) is in,
 * when it is one of its own (not the read buffer of many frames): 1 then,
 * and `into` holds the frame's bytes; else 0 and `into` is untouched. A
 * big put_many or restore is megabytes: this saves a copy. */
static inline int gn_port_take_frame(gn_port *p, const unsigned char *frame, gn_buf *into)
{
    if (!p->frame_owner || p->frame_owner->data != frame)
        return 0;
    *into = *p->frame_owner;
    memset(p->frame_owner, 0, sizeof *p->frame_owner);
    return 1;
}

#endif
