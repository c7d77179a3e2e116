/*
 * The formats of a replicated program's Raft log entries and snapshots, and
 * its request ids (raft_log.h).
 */
#include <stdlib.h>
#include <string.h>

#include "raft_log.h"
#include "reply.h"

#define GN_ENTRY_MAGIC "GNR1"
#define GN_AT_BODY_LEN 29
#define GN_ITEM_HEADER 28 /* sequence (8) | client (8) | request (8) | frame length (4) */
#define GN_SNAP_MAGIC_R "GNI1"

/* ------------------------------------------------------------------------ */
/* Entries                                                                   */

size_t gn_entry_size(size_t frame_len)
{
    return (GN_ENTRY_HEADER + frame_len + 7) & ~(size_t)7;
}

void gn_entry_write(unsigned char *out, const gn_entry *e)
{
    memcpy(out, GN_ENTRY_MAGIC, 4);
    out[4] = (unsigned char)e->kind;
    gn_be_put(out + 5, (uint64_t)e->clock, 8);
    gn_be_put(out + 13, e->proposer, 8);
    gn_be_put(out + 21, e->seq, 8);
    gn_be_put(out + GN_AT_BODY_LEN, e->body_len, 4);
    size_t end = GN_ENTRY_HEADER + e->body_len;
    memset(out + end, 0, gn_entry_size(e->body_len) - end);
}

int gn_entry_parse(const unsigned char *data, size_t len, gn_entry *e)
{
    if (len < GN_ENTRY_HEADER || memcmp(data, GN_ENTRY_MAGIC, 4) ||
        (data[4] != 'Q' && data[4] != 'T' && data[4] != 'R'))
        return -1;
    e->kind = data[4];
    e->clock = (int64_t)gn_be_get(data + 5, 8);
    e->proposer = gn_be_get(data + 13, 8);
    e->seq = gn_be_get(data + 21, 8);
    e->body_len = (size_t)gn_be_get(data + GN_AT_BODY_LEN, 4);
    e->body = data + GN_ENTRY_HEADER;
    return e->body_len <= len - GN_ENTRY_HEADER ? 0 : -1;
}

void gn_item_add(gn_buf *body, const gn_item *it)
{
    gn_buf_be(body, it->seq, 8);
    gn_buf_be(body, it->client, 8);
    gn_buf_be(body, it->request, 8);
    gn_buf_be(body, it->frame_len, 4);
    gn_buf_put(body, it->frame, it->frame_len);
}

int gn_item_next(const gn_entry *e, size_t *at, gn_item *it)
{
    if (*at == e->body_len)
        return 0;
    size_t left = e->body_len - *at;
    const unsigned char *p = e->body + *at;
    if (left < GN_ITEM_HEADER || left - GN_ITEM_HEADER < gn_be_get(p + 24, 4))
        return -1;
    it->seq = gn_be_get(p, 8);
    it->client = gn_be_get(p + 8, 8);
    it->request = gn_be_get(p + 16, 8);
    it->frame_len = (size_t)gn_be_get(p + 24, 4);
    it->frame = p + GN_ITEM_HEADER;
    *at += GN_ITEM_HEADER + it->frame_len;
    return 1;
}

/* {Tag, Wrapper, Arg, Op, Store, Args...}: {Tag, Op, Store, Args...} into
 * `inner`, Arg's bytes into *arg. 0, or -1 if it is not one. */
static int unwrap(const unsigned char *frame, size_t len, const char *wrapper, gn_buf *inner,
                  gn_slice *arg)
{
    gn_etf e = {frame, len, 1};
    uint32_t arity;
    gn_slice tag;
    if (len < 1 || frame[0] != 131 || gn_etf_tuple(&e, &arity) || arity < 4 ||
        gn_etf_skip(&e, &tag) || !gn_etf_is_atom(&e, wrapper) || gn_etf_skip(&e, NULL) ||
        gn_etf_skip(&e, arg))
        return -1;
    inner->len = 0;
    gn_enc_version(inner);
    gn_enc_tuple(inner, arity - 2);
    gn_buf_put(inner, tag.data, tag.len);
    gn_buf_put(inner, frame + e.at, len - e.at);
    return 0;
}

int gn_unwrap_rid(const unsigned char *frame, size_t len, gn_buf *inner, uint64_t *client,
                  uint64_t *seq)
{
    gn_slice arg;
    uint32_t pair;
    int64_t c, q;
    if (unwrap(frame, len, "rid", inner, &arg))
        return -1;
    gn_etf a = {arg.data, arg.len, 0};
    if (gn_etf_tuple(&a, &pair) || pair != 2 || gn_etf_int64(&a, &c) || gn_etf_int64(&a, &q) ||
        c == 0)
        return -1;
    *client = (uint64_t)c;
    *seq = (uint64_t)q;
    return 0;
}

int gn_unwrap_read(const unsigned char *frame, size_t len, gn_buf *inner, int *local)
{
    gn_slice arg;
    if (unwrap(frame, len, "read", inner, &arg))
        return -1;
    gn_etf a = {arg.data, arg.len, 0};
    if (gn_etf_is_atom(&a, "local"))
        *local = 1;
    else if (gn_etf_is_atom(&a, "linearizable"))
        *local = 0;
    else
        return -1;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Request ids                                                               */

static gn_rid **rid_bucket(gn_rids *t, uint64_t client)
{
    return &t->buckets[(client * 0x9E3779B97F4A7C15ull) >> 54];
}

gn_rid *gn_rid_find(gn_rids *t, uint64_t client)
{
    for (gn_rid *d = *rid_bucket(t, client); d; d = d->next)
        if (d->client == client)
            return d;
    return NULL;
}

static gn_rid *rid_put(gn_rids *t, uint64_t client)
{
    gn_rid *d = gn_rid_find(t, client);
    if (!d) {
        gn_rid **b = rid_bucket(t, client);
        if (!(d = calloc(1, sizeof *d)))
            abort();
        d->client = client;
        d->next = *b;
        *b = d;
    }
    return d;
}

/* Keeps `client`'s request `seq` and its reply: the first frame written to
 * `out` from `from` on (its bytes after the tag). */
void gn_rid_keep(gn_rids *t, uint64_t client, uint64_t seq, int64_t at, const gn_buf *out,
                 size_t from)
{
    gn_rid *d = rid_put(t, client);
    d->seq = seq;
    d->at = at;
    d->reply.len = 0;
    if (out->len - from < 6)
        return;
    size_t len = (size_t)gn_be_get(out->data + from, 4);
    size_t tag = (size_t)gn_be_get(out->data + from + 4, 2);
    if (6 + tag <= 4 + len && from + 4 + len <= out->len)
        gn_buf_put(&d->reply, out->data + from + 6 + tag, len - 2 - tag);
}

/* A reply as kept (rid_keep), under another tag. */
void gn_rid_reply(gn_buf *out, const gn_slice *tag, const gn_buf *reply)
{
    if (!reply->len)
        return gn_reply_error(out, tag, "stale_request");
    size_t m = gn_frame_begin(out, tag->data, tag->len);
    out->len--; /* the reply holds its own version byte */
    gn_buf_put(out, reply->data, reply->len);
    gn_frame_end(out, m);
}

static void rid_free(gn_rid *d)
{
    gn_buf_free(&d->reply);
    free(d);
}

/* Forgets the clients whose last request is older than GN_RID_KEEP_MS. */
void gn_rids_expire(gn_rids *t, int64_t now)
{
    for (size_t b = 0; b < GN_RID_BUCKETS; b++)
        for (gn_rid **at = &t->buckets[b]; *at;) {
            gn_rid *d = *at;
            if (d->at + GN_RID_KEEP_MS < now) {
                *at = d->next;
                rid_free(d);
            } else {
                at = &d->next;
            }
        }
}

void gn_rids_clear(gn_rids *t)
{
    for (size_t b = 0; b < GN_RID_BUCKETS; b++)
        while (t->buckets[b]) {
            gn_rid *d = t->buckets[b];
            t->buckets[b] = d->next;
            rid_free(d);
        }
}

static void rids_write(gn_rids *t, gn_buf *img)
{
    size_t count_at = img->len;
    uint64_t count = 0;
    gn_buf_be(img, 0, 8);
    for (size_t b = 0; b < GN_RID_BUCKETS; b++)
        for (gn_rid *d = t->buckets[b]; d; d = d->next, count++) {
            gn_buf_be(img, d->client, 8);
            gn_buf_be(img, d->seq, 8);
            gn_buf_be(img, (uint64_t)d->at, 8);
            gn_buf_be(img, d->reply.len, 4);
            gn_buf_put(img, d->reply.data, d->reply.len);
        }
    gn_be_put(img->data + count_at, count, 8);
}

/* Reads them back into `t` (emptied first); the bytes read, or 0 if
 * malformed (then `t` is left empty). */
static size_t rids_read(gn_rids *t, const unsigned char *d, size_t len)
{
    gn_rids_clear(t);
    if (len < 8)
        return 0;
    uint64_t count = gn_be_get(d, 8);
    size_t at = 8;
    for (uint64_t i = 0; i < count; i++) {
        size_t n = len - at >= 28 ? (size_t)gn_be_get(d + at + 24, 4) : 0;
        if (len - at < 28 || len - at - 28 < n) {
            gn_rids_clear(t);
            return 0;
        }
        gn_rid *x = rid_put(t, gn_be_get(d + at, 8));
        x->seq = gn_be_get(d + at + 8, 8);
        x->at = (int64_t)gn_be_get(d + at + 16, 8);
        x->reply.len = 0;
        gn_buf_put(&x->reply, d + at + 28, n);
        at += 28 + n;
    }
    return at;
}

/* ------------------------------------------------------------------------ */
/* Snapshots                                                                 */

void gn_snapshot_begin(gn_buf *out, int64_t clock, gn_rids *t)
{
    gn_buf_put(out, GN_SNAP_MAGIC_R, 4);
    gn_buf_be(out, (uint64_t)clock, 8);
    rids_write(t, out);
}

size_t gn_snapshot_parse(const unsigned char *data, size_t len, int64_t *clock, gn_rids *t)
{
    gn_rids_clear(t);
    if (len < 12 || memcmp(data, GN_SNAP_MAGIC_R, 4))
        return 0;
    size_t ids = rids_read(t, data + 12, len - 12);
    if (!ids)
        return 0;
    *clock = (int64_t)gn_be_get(data + 4, 8);
    return 12 + ids;
}
