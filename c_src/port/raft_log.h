/*
 * What a replicated program (raft.c) writes into its Raft log and
 * snapshots, and the replicated table of request ids: the byte formats and
 * their parsers, with no libraft in them, so that the fuzz target covers
 * them (fuzz.c).
 *
 * An entry: "GNR1" | kind (1) | clock ms (8) | proposer (8) | sequence (8)
 * | body length (4) | body | zeros to a multiple of 8 bytes (libraft lays
 * entries out 8-byte aligned in the batches it sends and stores: an entry
 * of another length comes back shifted). Kinds: 'Q' requests (the body:
 * items, each sequence (8) | client (8) | request (8) | frame length (4) |
 * the frame as the VM sent it; client and request: its request id, 0 and 0
 * for none), 'T' a tick (no body), 'R' the retirement of the member whose
 * id is the sequence (no body).
 *
 * A snapshot: "GNI1" | the group's clock (8) | the request ids (count (8),
 * then client (8) | request (8) | clock (8) | reply length (4) | reply,
 * each) | the stores' image (image.h).
 */
#ifndef GN_PORT_RAFT_LOG_H
#define GN_PORT_RAFT_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "etf.h"

#define GN_ENTRY_HEADER 33

typedef struct gn_entry {
    int kind; /* 'Q', 'T', 'R' */
    int64_t clock;
    uint64_t proposer, seq;
    const unsigned char *body;
    size_t body_len;
} gn_entry;

/* One request of a 'Q' entry. */
typedef struct gn_item {
    uint64_t seq;             /* its proposer's number for it */
    uint64_t client, request; /* its request id, or 0, 0 */
    const unsigned char *frame;
    size_t frame_len;
} gn_item;

/* The bytes of an entry with a body of `body_len` bytes. */
size_t gn_entry_size(size_t body_len);
/* Writes e's header and padding into `out` (gn_entry_size(e->body_len)
 * bytes); the body goes at out + GN_ENTRY_HEADER. */
void gn_entry_write(unsigned char *out, const gn_entry *e);
/* Parses an entry: 0, or -1 if it is not one of ours. */
int gn_entry_parse(const unsigned char *data, size_t len, gn_entry *e);
/* Appends a request to a 'Q' body. */
void gn_item_add(gn_buf *body, const gn_item *it);
/* The request at *at of a 'Q' entry's body (start at 0): 1 and *at moved
 * past it, 0 at the end, -1 if malformed. */
int gn_item_next(const gn_entry *e, size_t *at, gn_item *it);

/* {Tag, rid, {Client, Seq}, Op, Store, Args...}: writes the request {Tag,
 * Op, Store, Args...} into `inner` (emptied first) and its id into
 * *client, *seq. 0, or -1 if it is not one (Client and Seq integers,
 * Client not 0). */
int gn_unwrap_rid(const unsigned char *frame, size_t len, gn_buf *inner, uint64_t *client,
                  uint64_t *seq);
/* {Tag, read, local | linearizable, Op, Store, Args...}: the request into
 * `inner` (emptied first), the consistency asked for into *local. 0, or -1
 * if it is not one. */
int gn_unwrap_read(const unsigned char *frame, size_t len, gn_buf *inner, int *local);

/* The request ids: each client's last request and its reply (the reply
 * frame's bytes after the tag), kept GN_RID_KEEP_MS of the group's clock. */
#define GN_RID_KEEP_MS (10 * 60 * 1000)
#define GN_RID_BUCKETS 1024

typedef struct gn_rid {
    struct gn_rid *next;
    uint64_t client, seq;
    int64_t at; /* the group's clock when it was applied */
    gn_buf reply;
} gn_rid;

typedef struct gn_rids {
    gn_rid *buckets[GN_RID_BUCKETS];
} gn_rids;

gn_rid *gn_rid_find(gn_rids *t, uint64_t client);
/* Keeps `client`'s request `seq`, applied at `at`, and its reply: the
 * first frame written to `out` from `from` on. */
void gn_rid_keep(gn_rids *t, uint64_t client, uint64_t seq, int64_t at, const gn_buf *out,
                 size_t from);
/* Appends a kept reply under another tag (stale_request if none was kept). */
void gn_rid_reply(gn_buf *out, const gn_slice *tag, const gn_buf *reply);
/* Forgets the clients whose last request is older than `now` -
 * GN_RID_KEEP_MS. */
void gn_rids_expire(gn_rids *t, int64_t now);
void gn_rids_clear(gn_rids *t);

/* A snapshot's header and request ids, before the stores' image. */
void gn_snapshot_begin(gn_buf *out, int64_t clock, gn_rids *t);
/* Parses them back, replacing `t`'s ids: the offset of the image, or 0 if
 * the bytes are not one of our snapshots (then `t` is left empty). */
size_t gn_snapshot_parse(const unsigned char *data, size_t len, int64_t *clock, gn_rids *t);

#endif
