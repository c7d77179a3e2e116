/*
 * The ops whose replies come in parts ({more, Part} ... {done, Part}):
 * to_list, range, slice and snapshot (a GNS2 binary, its CRC32 at the
 * end: snapshot.h's format, written a part at a time, the CRC carried
 * from part to part). The first part goes at once; the rest are a job on
 * the store.
 */
#include "../snapshot.h"
#include "ops.h"
#include "reply.h"
#include "state.h"

#define GN_CHUNK_BYTES (256u << 10) /* about the bytes in one part */

enum { S_TO_LIST, S_RANGE, S_SLICE, S_SNAPSHOT };

typedef struct stream_job {
    gn_job job;
    int kind;
    int started;
    gn_buf resume;   /* the last key sent */
    gn_buf to;       /* range: the upper bound */
    uint64_t left;   /* entries still wanted */
    size_t skip;     /* slice: the first index */
    int header_sent; /* snapshot */
    uint32_t crc;    /* snapshot: over everything sent so far */
    int64_t now;
} stream_job;

static void snap_header(gn_buf *b, const gn_pstore *s)
{
    gn_buf_room(b, GN_SNAP_HEADER);
    gn_snap_put_header(b->data + b->len, s->ordered, gn_pstore_size(s));
    b->len += GN_SNAP_HEADER;
}

/* An entry as the snapshot has it: the port store keeps the key and value
 * ETF without their version byte; ttl is the ms left (at least 1 for an
 * entry due but not yet swept), 0 for none. */
static void snap_entry(gn_buf *b, const gn_pnode *n, int64_t now)
{
    uint32_t klen = n->kraw_len + 1u, vlen = n->val_len + 1u;
    int64_t ttl = n->expires ? n->expires - now : 0;
    gn_buf_room(b, gn_snap_entry_size(klen, vlen));
    unsigned char *end = gn_snap_put_entry_bare(b->data + b->len, GN_KRAW(n), klen, GN_VAL(n), vlen,
                                                (uint64_t)(ttl > 0 ? ttl : (n->expires ? 1 : 0)));
    b->len = (size_t)(end - b->data);
}

/* Sends the next part of a stream; returns 1 when the stream is done. */
static int stream_step(gn_port *p, gn_pstore *s, gn_job *job, uint64_t deadline)
{
    (void)deadline; /* a part is small enough */
    stream_job *j = (stream_job *)job;
    gn_pnode *n;
    if (!j->started) {
        j->started = 1;
        if (j->kind == S_RANGE)
            n = gn_pstore_after(s, j->resume.data, j->resume.len, 1);
        else if (j->kind == S_SLICE)
            n = gn_pstore_at(s, j->skip);
        else
            n = gn_pstore_at(s, 0);
    } else {
        n = gn_pstore_after(s, j->resume.data, j->resume.len, 0);
    }
    gn_buf *part = &p->part;
    part->len = 0;
    uint32_t count = 0;
    if (j->kind == S_SNAPSHOT && !j->header_sent) {
        snap_header(part, s);
        j->header_sent = 1;
    }
    const gn_pnode *last = NULL;
    while (n && j->left > 0 && count < GN_CHUNK_ENTRIES && part->len < GN_CHUNK_BYTES) {
        if (j->kind == S_RANGE && gn_key_cmp(GN_KENC(n), n->kenc_len, j->to.data, j->to.len) > 0) {
            n = NULL;
            break;
        }
        if (j->kind == S_SNAPSHOT) {
            snap_entry(part, n, j->now);
        } else {
            gn_enc_entry(part, n);
        }
        count++;
        j->left--;
        last = n;
        n = gn_pstore_after(s, GN_KENC(n), n->kenc_len, 0);
    }
    int done = !n || j->left == 0;
    if (last) {
        j->resume.len = 0;
        gn_buf_put(&j->resume, GN_KENC(last), last->kenc_len);
    }
    size_t m = gn_frame_begin(&p->out, j->job.tag.data, j->job.tag.len);
    gn_enc_tuple(&p->out, 2);
    gn_enc_atom(&p->out, done ? "done" : "more");
    if (j->kind == S_SNAPSHOT) {
        j->crc = gn_crc32_update(j->crc, part->data, part->len);
        if (done)
            gn_buf_be(part, j->crc, GN_SNAP_TRAILER);
        gn_enc_binary(&p->out, part->data, part->len);
    } else {
        if (count)
            gn_enc_list(&p->out, count);
        gn_buf_put(&p->out, part->data, part->len);
        gn_enc_nil(&p->out);
    }
    gn_frame_end(&p->out, m);
    return done;
}

static void stream_release(gn_job *job)
{
    stream_job *j = (stream_job *)job;
    gn_buf_free(&j->resume);
    gn_buf_free(&j->to);
}

static void stream(gn_port *p, gn_request *r, gn_pstore *s, int kind)
{
    stream_job *j = gn_job_new(sizeof *j, stream_step, stream_release);
    gn_buf_put(&j->job.tag, r->tag.data, r->tag.len);
    j->kind = kind;
    j->left = UINT64_MAX;
    j->now = gn_now_ms();
    gn_slice raw;
    if (kind == S_RANGE) {
        if (gn_arg_key(r, s, &j->resume, &raw) || gn_arg_key(r, s, &j->to, &raw) ||
            gn_arg_limit(r, &j->left)) {
            gn_job_free(&j->job);
            return gn_reply_badarg(&p->out, &r->tag, "expected From, To, Limit");
        }
    } else if (kind == S_SLICE) {
        int64_t index, count;
        if (gn_arg_int(r, &index) || gn_arg_int(r, &count) || count < 0) {
            gn_job_free(&j->job);
            return gn_reply_badarg(&p->out, &r->tag, "expected Index, Count");
        }
        int64_t size = (int64_t)gn_pstore_size(s);
        if (index < 0)
            index += size;
        j->skip = index < 0 ? 0 : (size_t)index;
        j->left = (uint64_t)count;
    }
    if (stream_step(p, s, &j->job, 0))
        gn_job_free(&j->job);
    else
        gn_jobs_push(&p->jobs, s, &j->job);
}

void gn_op_to_list(gn_port *p, gn_request *r, gn_pstore *s)
{
    stream(p, r, s, S_TO_LIST);
}

void gn_op_range(gn_port *p, gn_request *r, gn_pstore *s)
{
    stream(p, r, s, S_RANGE);
}

void gn_op_slice(gn_port *p, gn_request *r, gn_pstore *s)
{
    stream(p, r, s, S_SLICE);
}

void gn_op_snapshot(gn_port *p, gn_request *r, gn_pstore *s)
{
    stream(p, r, s, S_SNAPSHOT);
}
