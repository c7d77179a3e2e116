/*
 * The port program's core: frames in, requests dispatched to stores,
 * replies out, long work in slices. No I/O of its own but the data
 * directory's files (durable.c); main.c owns the event loop.
 *
 * Ordering: requests on one store are answered in the order they arrived.
 * A request that turns into long work (a streamed reply, a purge of many
 * expired entries, a big put_many) becomes a job at the head of its store's
 * queue; while a store has jobs, its new requests wait behind them, and
 * gn_port_step runs the jobs of every busy store a slice at a time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "diag.h"
#include "durable.h"
#include "etf.h"
#include "keyenc.h"
#include "port.h"
#include "pstore.h"

#define GN_PURGE_INLINE 1000        /* expired entries a request purges itself */
#define GN_CHUNK_ENTRIES 4096       /* entries in one streamed reply frame */
#define GN_CHUNK_BYTES (256u << 10) /* about the bytes in one */
#define GN_SLICE_NS 2000000         /* the time gn_port_step takes, at most about */
#define GN_MANY_INLINE 2000         /* put_many entries done in one go */

int gn_port_stderr = 1;

void gn_buf_reserve(gn_buf *b, size_t more)
{
    if (b->cap - b->len >= more)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < more)
        cap *= 2;
    unsigned char *d = realloc(b->data, cap);
    if (!d) {
        fprintf(stderr, "gen_native_port: out of memory (%zu bytes)\n", cap);
        abort();
    }
    b->data = d;
    b->cap = cap;
}

static int64_t gn_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t gn_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* State                                                                     */

enum { JOB_REQUEST, JOB_PURGE, JOB_STREAM, JOB_MANY, JOB_RESTORE, JOB_COMPACT };
enum { S_TO_LIST, S_RANGE, S_SLICE, S_SNAPSHOT };

typedef struct gn_job {
    struct gn_job *next;
    int kind;
    gn_buf frame; /* REQUEST, MANY, RESTORE: the request's bytes */
    gn_buf tag;   /* the reply's tag */
    /* STREAM */
    int stream;
    int started;
    gn_buf resume; /* the last key sent */
    gn_buf to;     /* range: the upper bound */
    uint64_t left; /* entries still wanted */
    size_t skip;   /* slice: the first index */
    uint32_t crc;  /* snapshot: so far */
    int64_t now;
    /* MANY and RESTORE: a walk over the request */
    gn_etf pos;
    size_t base;    /* where the list (MANY) or binary (RESTORE) starts in `frame` */
    size_t bin_len; /* RESTORE: the binary's length */
    size_t at;      /* RESTORE: how far the walk is in the binary */
    uint32_t todo;
    int has_tail; /* a LIST_EXT: its tail must be [] */
    int phase;
    gn_pstore *fresh; /* MANY with a cap: its new keys; RESTORE: the new store */
    gn_buf record;    /* the journal record being built */
    size_t record_mark;
    uint64_t max_size;
    char name[1024];
    size_t name_len;
    /* COMPACT: the stores to write, by name, and where the walk is */
    gn_buf names;
    size_t names_at;
    uint64_t serial;
} gn_job;

struct gn_port {
    char *dir;
    int sync;
    gn_durable *d;
    gn_buf out;
    /* the frame being read */
    unsigned char hdr[4];
    size_t hdr_len;
    size_t want; /* the frame's length */
    gn_buf in;
    size_t skip_left; /* an oversized frame, being thrown away */
    gn_buf skip_head;
    /* stores, by name */
    gn_pstore **buckets;
    size_t nbuckets, nstores;
    gn_pstore *busy;              /* stores with jobs */
    gn_job *global, *global_tail; /* RESTORE and COMPACT */
    gn_buf compact_waiters;       /* tags waiting for the compaction */
    gn_buf sync_waiters;          /* tags waiting for the fdatasync in flight */
    int compact_pending;          /* to start once an fsync is through */
    gn_buf *frame_owner;          /* the buffer the frame being handled is in, if its own */
    int replaying;
    int stopping; /* a stop request came */
    uint64_t loaded_entries;
    gn_offload_fn offload;
};

/* Scratch buffers, reused by every request (the loop is single-threaded). */
static gn_buf scratch_key, scratch_val, stream_part, compact_recs;
static gn_pstore *dropped_store; /* set by store_drop */

/* ------------------------------------------------------------------------ */
/* Frames out                                                                */

static size_t frame_begin(gn_port *p, const unsigned char *tag, size_t tag_len)
{
    size_t mark = p->out.len;
    gn_buf_be(&p->out, 0, 4);
    gn_buf_be(&p->out, tag_len ? tag_len + 1 : 0, 2);
    if (tag_len) {
        gn_buf_byte(&p->out, 131);
        gn_buf_put(&p->out, tag, tag_len);
    }
    gn_enc_version(&p->out);
    return mark;
}

static void frame_end(gn_port *p, size_t mark)
{
    size_t n = p->out.len - mark - 4;
    for (int i = 0; i < 4; i++)
        p->out.data[mark + (size_t)i] = (unsigned char)(n >> (24 - 8 * i));
}

static void reply_atom(gn_port *p, const gn_slice *tag, const char *atom)
{
    size_t m = frame_begin(p, tag->data, tag->len);
    gn_enc_atom(&p->out, atom);
    frame_end(p, m);
}

/* Begins a frame {error, Reason}: the reason follows. */
static size_t error_begin(gn_port *p, const unsigned char *tag, size_t tag_len)
{
    size_t m = frame_begin(p, tag, tag_len);
    gn_enc_tuple(&p->out, 2);
    gn_enc_atom(&p->out, "error");
    return m;
}

static void reply_error(gn_port *p, const gn_slice *tag, const char *reason)
{
    size_t m = error_begin(p, tag->data, tag->len);
    gn_enc_atom(&p->out, reason);
    frame_end(p, m);
}

/* {error, {Kind, Text}}: a reply (badarg) or an event (bad_request). */
static void error_text(gn_port *p, const gn_slice *tag, const char *kind, const char *text)
{
    size_t m = error_begin(p, tag ? tag->data : NULL, tag ? tag->len : 0);
    gn_enc_tuple(&p->out, 2);
    gn_enc_atom(&p->out, kind);
    gn_enc_string(&p->out, text);
    frame_end(p, m);
}

static void reply_badarg(gn_port *p, const gn_slice *tag, const char *why)
{
    error_text(p, tag, "badarg", why);
}

static void reply_int(gn_port *p, const gn_slice *tag, int64_t v)
{
    size_t m = frame_begin(p, tag->data, tag->len);
    gn_enc_int(&p->out, v);
    frame_end(p, m);
}

static void enc_entry(gn_buf *b, const gn_pnode *n)
{
    gn_enc_tuple(b, 2);
    gn_buf_put(b, GN_KRAW(n), n->kraw_len);
    gn_buf_put(b, GN_VAL(n), n->val_len);
}

/* {ok, Value}, {ok, {Key, Value}} or error */
static void reply_found(gn_port *p, const gn_slice *tag, const gn_pnode *n, int entry)
{
    size_t m = frame_begin(p, tag->data, tag->len);
    if (!n) {
        gn_enc_atom(&p->out, "error");
    } else {
        gn_enc_tuple(&p->out, 2);
        gn_enc_atom(&p->out, "ok");
        if (entry)
            enc_entry(&p->out, n);
        else
            gn_buf_put(&p->out, GN_VAL(n), n->val_len);
    }
    frame_end(p, m);
}

static void event_log(gn_port *p, const char *level, const char *text)
{
    size_t m = frame_begin(p, NULL, 0);
    gn_enc_tuple(&p->out, 3);
    gn_enc_atom(&p->out, "log");
    gn_enc_atom(&p->out, level);
    gn_enc_string(&p->out, text);
    frame_end(p, m);
    gn_diag("%s", text);
}

static void event_bad_request(gn_port *p, const char *why)
{
    error_text(p, NULL, "bad_request", why);
    gn_diag("bad request: %s", why);
}

/* ------------------------------------------------------------------------ */
/* Stores by name                                                            */

static size_t name_hash(const char *name, size_t len)
{
    size_t h = 1469598103934665603u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * 1099511628211u;
    return h;
}

static gn_pstore *store_lookup(const gn_port *p, const char *name, size_t len)
{
    if (!p->nbuckets)
        return NULL;
    for (gn_pstore *s = p->buckets[name_hash(name, len) & (p->nbuckets - 1)]; s;
         s = s->next_in_bucket)
        if (s->name_len == len && memcmp(s->name, name, len) == 0)
            return s;
    return NULL;
}

static void store_link(gn_port *p, gn_pstore *s)
{
    if (p->nstores + 1 > p->nbuckets) {
        size_t nb = p->nbuckets ? 2 * p->nbuckets : 16;
        gn_pstore **b = calloc(nb, sizeof *b);
        if (!b)
            abort();
        for (size_t i = 0; i < p->nbuckets; i++)
            for (gn_pstore *t = p->buckets[i], *next; t; t = next) {
                next = t->next_in_bucket;
                size_t h = name_hash(t->name, t->name_len) & (nb - 1);
                t->next_in_bucket = b[h];
                b[h] = t;
            }
        free(p->buckets);
        p->buckets = b;
        p->nbuckets = nb;
    }
    size_t h = name_hash(s->name, s->name_len) & (p->nbuckets - 1);
    s->next_in_bucket = p->buckets[h];
    p->buckets[h] = s;
    p->nstores++;
}

static void store_unlink(gn_port *p, gn_pstore *s)
{
    gn_pstore **at = &p->buckets[name_hash(s->name, s->name_len) & (p->nbuckets - 1)];
    while (*at != s)
        at = &(*at)->next_in_bucket;
    *at = s->next_in_bucket;
    p->nstores--;
}

/* ------------------------------------------------------------------------ */
/* The journal                                                               */

static gn_buf *journal(gn_port *p)
{
    return p->d && !p->replaying ? gn_durable_journal(p->d) : NULL;
}

static void journal_simple(gn_port *p, gn_pstore *s, int op)
{
    gn_buf *j = journal(p);
    if (!j)
        return;
    size_t mark;
    gn_rec_begin(j, &mark, op, s->name, s->name_len);
    if (op == GN_REC_OPEN) {
        gn_buf_byte(j, (unsigned char)s->ordered);
        gn_buf_be(j, s->max_size, 8);
    }
    gn_rec_end(j, mark);
}

static void journal_put(gn_port *p, gn_pstore *s, const gn_pnode *n)
{
    gn_buf *j = journal(p);
    if (!j)
        return;
    size_t mark;
    gn_rec_begin(j, &mark, GN_REC_PUT, s->name, s->name_len);
    gn_rec_entry(j, GN_KRAW(n), n->kraw_len, GN_VAL(n), n->val_len, n->expires);
    gn_rec_end(j, mark);
}

static void journal_del(gn_port *p, gn_pstore *s, const unsigned char *kraw, size_t len)
{
    gn_buf *j = journal(p);
    if (!j)
        return;
    size_t mark;
    gn_rec_begin(j, &mark, GN_REC_DEL, s->name, s->name_len);
    gn_buf_be(j, len, 4);
    gn_buf_put(j, kraw, len);
    gn_rec_end(j, mark);
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                  */

typedef struct req {
    gn_slice tag;
    char op[32];
    char name[1024];
    size_t name_len;
    int has_name;
    gn_etf args;
    uint32_t nargs;
    const unsigned char *frame;
    size_t frame_len;
} req;

/* A key argument: its bytes and its canonical encoding (in `enc`). */
static int arg_key(gn_port *p, req *r, const gn_pstore *s, gn_buf *enc, gn_slice *raw)
{
    (void)p;
    size_t at = r->args.at;
    enc->len = 0;
    if (gn_etf_skip(&r->args, raw) < 0)
        return -1;
    size_t ix = at;
    if (gn_key_encode(r->args.buf, r->args.len, &ix, enc, s->ordered ? GN_KEY_EQ : GN_KEY_EXACT))
        return -1;
    return 0;
}

static int arg_value(req *r, gn_slice *raw)
{
    return gn_etf_skip(&r->args, raw);
}

static int arg_int(req *r, int64_t *v)
{
    return gn_etf_int64(&r->args, v);
}

/* A non-negative integer, or infinity (UINT64_MAX). */
static int arg_limit(req *r, uint64_t *v)
{
    if (gn_etf_is_atom(&r->args, "infinity")) {
        char name[1024];
        size_t len;
        gn_etf_atom(&r->args, name, &len);
        *v = UINT64_MAX;
        return 0;
    }
    int64_t i;
    if (arg_int(r, &i) || i < 0)
        return -1;
    *v = (uint64_t)i;
    return 0;
}

/* A store's cap: a positive integer, or infinity (0). */
static int arg_cap(req *r, uint64_t *cap)
{
    uint64_t v;
    if (arg_limit(r, &v) || v == 0)
        return -1;
    *cap = v == UINT64_MAX ? 0 : v;
    return 0;
}

static int full(const gn_pstore *s, size_t adding)
{
    return s->max_size && gn_pstore_size(s) + adding > s->max_size;
}

static void op_put(gn_port *p, req *r, gn_pstore *s, int only_new)
{
    gn_slice key, val;
    int64_t ttl;
    if (arg_key(p, r, s, &scratch_key, &key) || arg_value(r, &val) || arg_int(r, &ttl) || ttl < 0)
        return reply_badarg(p, &r->tag, "expected Key, Value, TtlMs");
    gn_pnode *n = gn_pstore_find(s, scratch_key.data, scratch_key.len);
    if (n && only_new)
        return reply_atom(p, &r->tag, "false");
    if (!n && full(s, 1))
        return reply_error(p, &r->tag, "full");
    int created;
    n = gn_pstore_put(s, scratch_key.data, scratch_key.len, key.data, key.len, val.data, val.len,
                      ttl ? gn_now_ms() + ttl : 0, &created);
    journal_put(p, s, n);
    reply_atom(p, &r->tag, only_new ? "true" : "ok");
}

static void op_get(gn_port *p, req *r, gn_pstore *s, int take)
{
    gn_slice key;
    if (arg_key(p, r, s, &scratch_key, &key))
        return reply_badarg(p, &r->tag, "expected Key");
    gn_pnode *n = gn_pstore_find(s, scratch_key.data, scratch_key.len);
    reply_found(p, &r->tag, n, 0);
    if (n && take) {
        journal_del(p, s, GN_KRAW(n), n->kraw_len);
        gn_pstore_delete(s, scratch_key.data, scratch_key.len);
    }
}

static void op_delete_key(gn_port *p, req *r, gn_pstore *s)
{
    gn_slice key;
    if (arg_key(p, r, s, &scratch_key, &key))
        return reply_badarg(p, &r->tag, "expected Key");
    if (gn_pstore_delete(s, scratch_key.data, scratch_key.len))
        journal_del(p, s, key.data, key.len);
    reply_atom(p, &r->tag, "ok");
}

static void op_update_counter(gn_port *p, req *r, gn_pstore *s)
{
    gn_slice key;
    int64_t incr, dflt, cur, next;
    if (arg_key(p, r, s, &scratch_key, &key) || arg_int(r, &incr) || arg_int(r, &dflt))
        return reply_badarg(p, &r->tag, "expected Key, Incr, Default (64-bit integers)");
    gn_pnode *n = gn_pstore_find(s, scratch_key.data, scratch_key.len);
    if (n) {
        gn_etf v = {GN_VAL(n), n->val_len, 0};
        if (gn_etf_int64(&v, &cur) || v.at != v.len)
            return reply_error(p, &r->tag, "not_integer");
    } else {
        if (full(s, 1))
            return reply_error(p, &r->tag, "full");
        cur = dflt;
    }
    if (__builtin_add_overflow(cur, incr, &next))
        return reply_error(p, &r->tag, "not_integer");
    scratch_val.len = 0;
    gn_enc_int(&scratch_val, next);
    if (n) {
        gn_pstore_set_value(s, n, scratch_val.data, scratch_val.len, n->expires);
    } else {
        int created;
        n = gn_pstore_put(s, scratch_key.data, scratch_key.len, key.data, key.len, scratch_val.data,
                          scratch_val.len, 0, &created);
    }
    journal_put(p, s, n);
    reply_int(p, &r->tag, next);
}

static void op_info(gn_port *p, req *r, gn_pstore *s)
{
    size_t m = frame_begin(p, r->tag.data, r->tag.len);
    gn_enc_map(&p->out, 4);
    gn_enc_atom(&p->out, "type");
    gn_enc_atom(&p->out, s->ordered ? "ordered_set" : "set");
    gn_enc_atom(&p->out, "size");
    gn_enc_int(&p->out, (int64_t)gn_pstore_size(s));
    gn_enc_atom(&p->out, "memory");
    gn_enc_int(&p->out, (int64_t)s->memory);
    gn_enc_atom(&p->out, "max_size");
    if (s->max_size)
        gn_enc_int(&p->out, (int64_t)s->max_size);
    else
        gn_enc_atom(&p->out, "infinity");
    frame_end(p, m);
}

static void op_step(gn_port *p, req *r, gn_pstore *s)
{
    char dir[1024];
    size_t dlen;
    gn_slice key;
    if (gn_etf_atom(&r->args, dir, &dlen) || dlen > 5)
        return reply_badarg(p, &r->tag, "expected first, last, next or prev");
    dir[dlen] = 0;
    gn_pnode *n;
    if (!strcmp(dir, "first") || !strcmp(dir, "last")) {
        if (gn_etf_skip(&r->args, NULL))
            return reply_badarg(p, &r->tag, "expected a key");
        n = gn_pstore_size(s) ? gn_pstore_at(s, dir[0] == 'f' ? 0 : gn_pstore_size(s) - 1) : NULL;
    } else if (!strcmp(dir, "next") || !strcmp(dir, "prev")) {
        if (arg_key(p, r, s, &scratch_key, &key))
            return reply_badarg(p, &r->tag, "expected a key");
        n = dir[0] == 'n' ? gn_pstore_after(s, scratch_key.data, scratch_key.len, 0)
                          : gn_pstore_before(s, scratch_key.data, scratch_key.len, 0);
    } else {
        return reply_badarg(p, &r->tag, "expected first, last, next or prev");
    }
    reply_found(p, &r->tag, n, 1);
}

static void op_rank(gn_port *p, req *r, gn_pstore *s)
{
    gn_slice key;
    if (arg_key(p, r, s, &scratch_key, &key))
        return reply_badarg(p, &r->tag, "expected Key");
    size_t m = frame_begin(p, r->tag.data, r->tag.len);
    if (gn_pstore_find(s, scratch_key.data, scratch_key.len)) {
        gn_enc_tuple(&p->out, 2);
        gn_enc_atom(&p->out, "ok");
        gn_enc_int(&p->out, (int64_t)gn_pstore_rank(s, scratch_key.data, scratch_key.len));
    } else {
        gn_enc_atom(&p->out, "error");
    }
    frame_end(p, m);
}

static void op_at(gn_port *p, req *r, gn_pstore *s)
{
    int64_t i;
    if (arg_int(r, &i))
        return reply_badarg(p, &r->tag, "expected Index (a 64-bit integer)");
    int64_t size = (int64_t)gn_pstore_size(s);
    if (i < 0)
        i += size;
    reply_found(p, &r->tag, i >= 0 && i < size ? gn_pstore_at(s, (size_t)i) : NULL, 1);
}

/* ------------------------------------------------------------------------ */
/* Jobs                                                                      */

static gn_job *job_new(int kind, const gn_slice *tag)
{
    gn_job *j = calloc(1, sizeof *j);
    if (!j)
        abort();
    j->kind = kind;
    if (tag)
        gn_buf_put(&j->tag, tag->data, tag->len);
    return j;
}

static void job_free(gn_job *j)
{
    gn_buf_free(&j->frame);
    gn_buf_free(&j->tag);
    gn_buf_free(&j->resume);
    gn_buf_free(&j->to);
    gn_buf_free(&j->record);
    gn_buf_free(&j->names);
    if (j->fresh)
        gn_pstore_free(j->fresh);
    free(j);
}

static void store_mark_busy(gn_port *p, gn_pstore *s)
{
    if (!s->busy) {
        s->busy = 1;
        s->next_busy = p->busy;
        p->busy = s;
    }
}

static void push_front(gn_port *p, gn_pstore *s, gn_job *j)
{
    j->next = s->jobs;
    s->jobs = j;
    if (!s->jobs_tail)
        s->jobs_tail = j;
    store_mark_busy(p, s);
}

static void push_back(gn_port *p, gn_pstore *s, gn_job *j)
{
    j->next = NULL;
    if (s->jobs_tail)
        s->jobs_tail->next = j;
    else
        s->jobs = j;
    s->jobs_tail = j;
    store_mark_busy(p, s);
}

static void push_global(gn_port *p, gn_job *j)
{
    j->next = NULL;
    if (p->global_tail)
        p->global_tail->next = j;
    else
        p->global = j;
    p->global_tail = j;
}

static gn_job *queue_request(const req *r)
{
    gn_job *j = job_new(JOB_REQUEST, NULL);
    gn_buf_put(&j->frame, r->frame, r->frame_len);
    return j;
}

/* ---- streams: to_list, range, slice, snapshot ---------------------------- */

static int key_cmp(const unsigned char *a, size_t alen, const unsigned char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c ? c : (alen > blen) - (alen < blen);
}

static void snap_header(gn_buf *b, const gn_pstore *s)
{
    gn_buf_put(b, "GNS2", 4);
    gn_buf_byte(b, (unsigned char)s->ordered);
    gn_buf_be(b, gn_pstore_size(s), 8);
}

/* Sends the next part of a stream; returns 1 when the stream is done. */
static int stream_step(gn_port *p, gn_pstore *s, gn_job *j)
{
    gn_pnode *n;
    if (!j->started) {
        j->started = 1;
        if (j->stream == S_RANGE)
            n = gn_pstore_after(s, j->resume.data, j->resume.len, 1);
        else if (j->stream == S_SLICE)
            n = j->skip < gn_pstore_size(s) ? gn_pstore_at(s, j->skip) : NULL;
        else
            n = gn_pstore_size(s) ? gn_pstore_at(s, 0) : NULL;
    } else {
        n = gn_pstore_after(s, j->resume.data, j->resume.len, 0);
    }
    gn_buf part = stream_part;
    part.len = 0;
    uint32_t count = 0;
    if (j->stream == S_SNAPSHOT && j->crc == 0 && j->resume.len == 0) {
        snap_header(&part, s);
        j->crc = 1; /* header sent */
    }
    const gn_pnode *last = NULL;
    while (n && j->left > 0 && count < GN_CHUNK_ENTRIES && part.len < GN_CHUNK_BYTES) {
        if (j->stream == S_RANGE && key_cmp(GN_KENC(n), n->kenc_len, j->to.data, j->to.len) > 0) {
            n = NULL;
            break;
        }
        if (j->stream == S_SNAPSHOT) {
            gn_buf_be(&part, n->kraw_len + 1u, 4);
            gn_buf_byte(&part, 131);
            gn_buf_put(&part, GN_KRAW(n), n->kraw_len);
            gn_buf_be(&part, n->val_len + 1u, 4);
            gn_buf_byte(&part, 131);
            gn_buf_put(&part, GN_VAL(n), n->val_len);
            int64_t ttl = n->expires ? n->expires - j->now : 0;
            gn_buf_be(&part, (uint64_t)(ttl > 0 ? ttl : (n->expires ? 1 : 0)), 8);
        } else {
            enc_entry(&part, n);
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
    size_t m = frame_begin(p, j->tag.data, j->tag.len);
    gn_enc_tuple(&p->out, 2);
    gn_enc_atom(&p->out, done ? "done" : "more");
    if (j->stream == S_SNAPSHOT) {
        /* the CRC runs over everything before it: it is kept in j->to */
        if (j->to.len == 0)
            gn_buf_be(&j->to, 0, 4);
        uint32_t crc = (uint32_t)gn_get_be(j->to.data, 4);
        crc = gn_port_crc32(crc, part.data, part.len);
        if (done) {
            gn_buf_be(&part, crc, 4);
        } else {
            j->to.len = 0;
            gn_buf_be(&j->to, crc, 4);
        }
        gn_enc_binary(&p->out, part.data, part.len);
    } else {
        if (count)
            gn_enc_list(&p->out, count);
        gn_buf_put(&p->out, part.data, part.len);
        gn_enc_nil(&p->out);
    }
    frame_end(p, m);
    stream_part = part;
    return done;
}

static void op_stream(gn_port *p, req *r, gn_pstore *s, int kind)
{
    gn_job *j = job_new(JOB_STREAM, &r->tag);
    j->stream = kind;
    j->left = UINT64_MAX;
    j->now = gn_now_ms();
    gn_slice raw;
    if (kind == S_RANGE) {
        if (arg_key(p, r, s, &j->resume, &raw) || arg_key(p, r, s, &j->to, &raw) ||
            arg_limit(r, &j->left)) {
            job_free(j);
            return reply_badarg(p, &r->tag, "expected From, To, Limit");
        }
    } else if (kind == S_SLICE) {
        int64_t index, count;
        if (arg_int(r, &index) || arg_int(r, &count) || count < 0) {
            job_free(j);
            return reply_badarg(p, &r->tag, "expected Index, Count");
        }
        int64_t size = (int64_t)gn_pstore_size(s);
        if (index < 0)
            index += size;
        j->skip = index < 0 ? 0 : (size_t)index;
        j->left = (uint64_t)count;
    }
    if (stream_step(p, s, j))
        job_free(j);
    else
        push_front(p, s, j);
}

/* ---- put_many ------------------------------------------------------------ */

/* Walks `todo` {Key, Value} tuples from j->pos; phase 0 checks them (and,
 * with a cap, collects the new keys), phase 1 stores them. Returns 1 when
 * the phase is through, -1 on a malformed element. */
static int many_walk(gn_port *p, gn_pstore *s, gn_job *j, size_t budget)
{
    (void)p;
    while (j->todo > 0 && budget-- > 0) {
        uint32_t arity;
        gn_slice key, val;
        size_t kat;
        if (gn_etf_tuple(&j->pos, &arity) || arity != 2)
            return -1;
        kat = j->pos.at;
        if (gn_etf_skip(&j->pos, &key) || gn_etf_skip(&j->pos, &val))
            return -1;
        scratch_key.len = 0;
        if (gn_key_encode(j->pos.buf, j->pos.len, &kat, &scratch_key,
                          s->ordered ? GN_KEY_EQ : GN_KEY_EXACT))
            return -1;
        int created;
        if (j->phase == 0) {
            if (j->fresh && !gn_pstore_find(s, scratch_key.data, scratch_key.len))
                gn_pstore_put(j->fresh, scratch_key.data, scratch_key.len, NULL, 0, NULL, 0, 0,
                              &created);
        } else {
            gn_pstore_put(s, scratch_key.data, scratch_key.len, key.data, key.len, val.data,
                          val.len, 0, &created);
            if (j->record.data)
                gn_rec_entry(&j->record, key.data, key.len, val.data, val.len, 0);
        }
        j->todo--;
    }
    return j->todo == 0;
}

/* Positions j->pos at the list's first element; returns -1 if no list. */
static int many_start(gn_job *j, uint32_t *count)
{
    j->pos.buf = j->frame.data;
    j->pos.len = j->frame.len;
    j->pos.at = j->base;
    if (gn_etf_list(&j->pos, count, &j->has_tail))
        return -1;
    j->todo = *count;
    return 0;
}

/* Runs a put_many as far as `budget` goes: 1 when answered. */
static int many_run(gn_port *p, gn_pstore *s, gn_job *j, size_t budget)
{
    uint32_t count;
    for (;;) {
        int rc = many_walk(p, s, j, budget);
        if (rc < 0) {
            gn_slice tag = {j->tag.data, j->tag.len};
            reply_badarg(p, &tag, "expected a list of {Key, Value}");
            return 1;
        }
        if (rc == 0)
            return 0;
        if (j->phase == 1)
            break;
        if (j->has_tail && gn_etf_nil(&j->pos)) {
            gn_slice tag = {j->tag.data, j->tag.len};
            reply_badarg(p, &tag, "expected a proper list of {Key, Value}");
            return 1;
        }
        /* phase 0 is through: the list is well formed */
        if (j->fresh && full(s, gn_pstore_size(j->fresh))) {
            gn_slice tag = {j->tag.data, j->tag.len};
            reply_error(p, &tag, "full");
            return 1;
        }
        j->phase = 1;
        many_start(j, &count);
        if (p->d && !p->replaying) {
            gn_rec_begin(&j->record, &j->record_mark, GN_REC_MANY, s->name, s->name_len);
            gn_buf_be(&j->record, count, 4);
        }
    }
    gn_buf *jr = journal(p);
    if (jr && j->record.data) {
        gn_rec_end(&j->record, j->record_mark);
        gn_buf_put(jr, j->record.data, j->record.len);
    }
    gn_slice tag = {j->tag.data, j->tag.len};
    reply_atom(p, &tag, "ok");
    return 1;
}

static void op_put_many(gn_port *p, req *r, gn_pstore *s)
{
    gn_job *j = job_new(JOB_MANY, &r->tag);
    /* The list is the request's last term: the job keeps the frame from
     * there on. A frame in a buffer of its own is taken over, not copied
     * (a big put_many is megabytes); phase 0 checks the list in slices. */
    if (p->frame_owner && p->frame_owner->data == r->args.buf) {
        j->frame = *p->frame_owner;
        memset(p->frame_owner, 0, sizeof *p->frame_owner);
        j->base = r->args.at;
    } else {
        gn_buf_put(&j->frame, r->args.buf + r->args.at, r->args.len - r->args.at);
    }
    uint32_t count;
    if (many_start(j, &count)) {
        job_free(j);
        return reply_badarg(p, &r->tag, "expected a list of {Key, Value}");
    }
    if (s->max_size)
        j->fresh = gn_pstore_new("", 0, s->ordered, 0);
    if (many_run(p, s, j, GN_MANY_INLINE))
        job_free(j);
    else
        push_front(p, s, j);
}

/* ---- restore ------------------------------------------------------------- */

/* A restore runs a slice at a time, as a job of its own (its store does
 * not exist yet): the checksum (phase 0), then the entries, into a store
 * linked under its name only at the end (phase 1). j->frame holds the
 * binary from j->base on, j->bin_len bytes. */
static int restore_step(gn_port *p, gn_job *j, uint64_t deadline)
{
    const unsigned char *b = j->frame.data + j->base;
    size_t n = j->bin_len;
    gn_slice tag = {j->tag.data, j->tag.len};
    if (j->phase == 0) {
        while (j->at < n - 4 && gn_now_ns() < deadline) {
            size_t take = n - 4 - j->at < (4u << 20) ? n - 4 - j->at : (4u << 20);
            j->crc = gn_port_crc32(j->crc, b + j->at, take);
            j->at += take;
        }
        if (j->at < n - 4)
            return 0;
        if (j->crc != (uint32_t)gn_get_be(b + n - 4, 4)) {
            reply_error(p, &tag, "invalid_snapshot");
            return 1;
        }
        j->phase = 1;
        j->at = 13;
        j->left = gn_get_be(b + 5, 8);
        j->now = gn_now_ms();
        j->fresh = gn_pstore_new(j->name, j->name_len, b[4], j->max_size);
        if (journal(p)) {
            gn_rec_begin(&j->record, &j->record_mark, GN_REC_RESTORE, j->name, j->name_len);
            gn_buf_byte(&j->record, b[4]);
            gn_buf_be(&j->record, j->max_size, 8);
            gn_buf_be(&j->record, 0, 4); /* the count, filled in at the end */
        }
    }
    gn_pstore *s = j->fresh;
    gn_entry_iter it = {b + j->at, b + n - 4};
    for (uint32_t i = 0; j->left > 0; i++, j->left--) {
        if ((i & 1023) == 1023 && gn_now_ns() >= deadline) {
            j->at = (size_t)(it.at - b);
            return 0;
        }
        const unsigned char *k, *v;
        size_t kl, vl;
        int64_t ttl;
        if (gn_entry_next(&it, &k, &kl, &v, &vl, &ttl) || kl < 2 || vl < 2 || k[0] != 131 ||
            v[0] != 131 || ttl < 0)
            goto bad;
        gn_etf ke = {k + 1, kl - 1, 0}, ve = {v + 1, vl - 1, 0};
        if (gn_etf_skip(&ke, NULL) || ke.at != ke.len || gn_etf_skip(&ve, NULL) || ve.at != ve.len)
            goto bad;
        size_t ix = 0;
        scratch_key.len = 0;
        if (gn_key_encode(k + 1, kl - 1, &ix, &scratch_key, s->ordered ? GN_KEY_EQ : GN_KEY_EXACT))
            goto bad;
        /* a value must be a term the VM can decode, as the NIF store checks
         * with binary_to_term (atoms in UTF-8, no NaN, ...): the key
         * encoder is the one full validator here */
        ix = 0;
        scratch_val.len = 0;
        if (gn_key_encode(v + 1, vl - 1, &ix, &scratch_val, GN_KEY_EXACT) || ix != vl - 1)
            goto bad;
        int created;
        int64_t expires = ttl ? j->now + ttl : 0;
        gn_pstore_put(s, scratch_key.data, scratch_key.len, k + 1, kl - 1, v + 1, vl - 1, expires,
                      &created);
        if (j->record.data) {
            gn_rec_entry(&j->record, k + 1, kl - 1, v + 1, vl - 1, expires);
            j->todo++; /* entries in the record */
        }
    }
    if (it.at != it.end)
        goto bad;
    if (store_lookup(p, j->name, j->name_len)) {
        reply_error(p, &tag, "already_exists"); /* made while this ran */
        return 1;
    }
    if (j->max_size && gn_pstore_size(s) > j->max_size) {
        reply_error(p, &tag, "full");
        return 1;
    }
    store_link(p, s);
    j->fresh = NULL;
    gn_buf *jr = journal(p);
    if (jr && j->record.data) {
        size_t count_at = j->record_mark + 8 + 1 + 2 + j->name_len + 1 + 8;
        for (int i = 0; i < 4; i++)
            j->record.data[count_at + (size_t)i] = (unsigned char)(j->todo >> (24 - 8 * i));
        gn_rec_end(&j->record, j->record_mark);
        gn_buf_put(jr, j->record.data, j->record.len);
    }
    reply_atom(p, &tag, "ok");
    return 1;
bad:
    reply_error(p, &tag, "invalid_snapshot");
    return 1;
}

static void op_restore(gn_port *p, req *r)
{
    gn_slice bin;
    uint64_t cap;
    if (!r->has_name || gn_etf_binary(&r->args, &bin) || arg_cap(r, &cap))
        return reply_badarg(p, &r->tag, "expected a store name, Binary, MaxSize");
    if (store_lookup(p, r->name, r->name_len))
        return reply_error(p, &r->tag, "already_exists");
    if (bin.len < 13 + 4 || memcmp(bin.data, "GNS2", 4) != 0 || bin.data[4] > 1)
        return reply_error(p, &r->tag, "invalid_snapshot");
    gn_job *j = job_new(JOB_RESTORE, &r->tag);
    memcpy(j->name, r->name, r->name_len);
    j->name_len = r->name_len;
    j->max_size = cap;
    j->bin_len = bin.len;
    if (p->frame_owner && p->frame_owner->data == r->args.buf) { /* as in put_many */
        j->frame = *p->frame_owner;
        memset(p->frame_owner, 0, sizeof *p->frame_owner);
        j->base = (size_t)(bin.data - j->frame.data);
    } else {
        gn_buf_put(&j->frame, bin.data, bin.len);
    }
    if (restore_step(p, j, gn_now_ns() + GN_SLICE_NS))
        job_free(j);
    else
        push_global(p, j);
}

/* ---- dropping a store ---------------------------------------------------- */

static void dispatch(gn_port *p, const unsigned char *frame, size_t len);

static void store_drop(gn_port *p, gn_pstore *s)
{
    /* requests queued behind go again, now finding no store (or a new one) */
    gn_job *queued = s->jobs;
    s->jobs = s->jobs_tail = NULL;
    store_unlink(p, s);
    if (s->busy) {
        gn_pstore **at = &p->busy;
        while (*at != s)
            at = &(*at)->next_busy;
        *at = s->next_busy;
    }
    gn_pstore_free(s);
    dropped_store = s;
    while (queued) {
        gn_job *j = queued;
        queued = j->next;
        if (j->kind == JOB_REQUEST)
            dispatch(p, j->frame.data, j->frame.len);
        job_free(j);
    }
}

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                  */

enum { F_STORE = 1, F_ORDERED = 2 };

static void op_open(gn_port *p, req *r, int queued);
static void op_global(gn_port *p, req *r);

/* Ops on a store: names, argument counts, whether they need an ordered_set. */
enum {
    OP_PUT,
    OP_GET,
    OP_PUT_NEW,
    OP_DELETE_KEY,
    OP_TAKE,
    OP_UPDATE_COUNTER,
    OP_SIZE,
    OP_CLEAR,
    OP_TO_LIST,
    OP_PUT_MANY,
    OP_DELETE,
    OP_INFO,
    OP_SNAPSHOT,
    OP_STEP,
    OP_RANGE,
    OP_RANK,
    OP_AT,
    OP_SLICE,
    OP_NONE
};

static const struct {
    const char *name;
    uint32_t nargs;
    int ordered;
} store_ops[] = {
    [OP_PUT] = {"put", 3, 0},
    [OP_GET] = {"get", 1, 0},
    [OP_PUT_NEW] = {"put_new", 3, 0},
    [OP_DELETE_KEY] = {"delete_key", 1, 0},
    [OP_TAKE] = {"take", 1, 0},
    [OP_UPDATE_COUNTER] = {"update_counter", 3, 0},
    [OP_SIZE] = {"size", 0, 0},
    [OP_CLEAR] = {"clear", 0, 0},
    [OP_TO_LIST] = {"to_list", 0, 0},
    [OP_PUT_MANY] = {"put_many", 1, 0},
    [OP_DELETE] = {"delete", 0, 0},
    [OP_INFO] = {"info", 0, 0},
    [OP_SNAPSHOT] = {"snapshot", 0, 0},
    [OP_STEP] = {"step", 2, 1},
    [OP_RANGE] = {"range", 3, 1},
    [OP_RANK] = {"rank", 1, 1},
    [OP_AT] = {"at", 1, 1},
    [OP_SLICE] = {"slice", 2, 1},
};

/* The store op named r->op, or OP_NONE. */
static int store_op(const req *r)
{
    for (int i = 0; i < OP_NONE; i++)
        if (!strcmp(r->op, store_ops[i].name))
            return i;
    return OP_NONE;
}

/* Runs store op `op` (see store_op) on `s`, which is not busy (or this is
 * its head job). */
static void run_on_store(gn_port *p, req *r, gn_pstore *s, int op)
{
    if (store_ops[op].ordered && !s->ordered)
        return reply_error(p, &r->tag, "not_ordered");
    switch (op) {
    case OP_PUT:
        return op_put(p, r, s, 0);
    case OP_GET:
        return op_get(p, r, s, 0);
    case OP_PUT_NEW:
        return op_put(p, r, s, 1);
    case OP_DELETE_KEY:
        return op_delete_key(p, r, s);
    case OP_TAKE:
        return op_get(p, r, s, 1);
    case OP_UPDATE_COUNTER:
        return op_update_counter(p, r, s);
    case OP_SIZE:
        return reply_int(p, &r->tag, (int64_t)gn_pstore_size(s));
    case OP_CLEAR:
        gn_pstore_clear(s);
        journal_simple(p, s, GN_REC_CLEAR);
        return reply_atom(p, &r->tag, "ok");
    case OP_TO_LIST:
        return op_stream(p, r, s, S_TO_LIST);
    case OP_PUT_MANY:
        return op_put_many(p, r, s);
    case OP_DELETE:
        journal_simple(p, s, GN_REC_DROP);
        reply_atom(p, &r->tag, "ok");
        return store_drop(p, s);
    case OP_INFO:
        return op_info(p, r, s);
    case OP_SNAPSHOT:
        return op_stream(p, r, s, S_SNAPSHOT);
    case OP_STEP:
        return op_step(p, r, s);
    case OP_RANGE:
        return op_stream(p, r, s, S_RANGE);
    case OP_RANK:
        return op_rank(p, r, s);
    case OP_AT:
        return op_at(p, r, s);
    case OP_SLICE:
        return op_stream(p, r, s, S_SLICE);
    }
}

/* Decodes a request frame; 0, or -1 if it has no readable tag (answered
 * with a bad_request event). */
static int decode(gn_port *p, const unsigned char *frame, size_t len, req *r)
{
    r->op[0] = 0;
    r->name_len = 0;
    r->has_name = 0;
    r->frame = frame;
    r->frame_len = len;
    gn_etf e = {frame, len, 0};
    uint32_t arity;
    if (len < 1 || frame[0] != 131) {
        event_bad_request(p, "not external term format");
        return -1;
    }
    e.at = 1;
    if (gn_etf_tuple(&e, &arity) || arity < 2) {
        event_bad_request(p, "not a tuple {Tag, Op, ...}");
        return -1;
    }
    if (gn_etf_skip(&e, &r->tag) || r->tag.len > 65534) {
        event_bad_request(p, "unreadable tag");
        return -1;
    }
    size_t oplen;
    char op[1024];
    if (gn_etf_atom(&e, op, &oplen) || oplen >= sizeof r->op)
        r->op[0] = 0;
    else {
        memcpy(r->op, op, oplen);
        r->op[oplen] = 0;
    }
    if (arity >= 3) {
        gn_etf probe = e;
        if (gn_etf_atom(&probe, r->name, &r->name_len) == 0)
            r->has_name = 1;
        if (gn_etf_skip(&e, NULL)) {
            r->op[0] = 0;
        }
    }
    r->args = e;
    r->nargs = arity >= 3 ? arity - 3 : 0;
    if (arity < 3)
        r->op[0] = 0;
    return 0;
}

static void dispatch(gn_port *p, const unsigned char *frame, size_t len)
{
    req r;
    if (decode(p, frame, len, &r))
        return;
    if (!r.op[0])
        return reply_badarg(p, &r.tag, "expected {Tag, Op, Store, Args...}");
    int op = store_op(&r);
    if (op == OP_NONE)
        return op_global(p, &r);
    if (r.nargs != store_ops[op].nargs)
        return reply_badarg(p, &r.tag, "wrong number of arguments");
    if (!r.has_name)
        return reply_badarg(p, &r.tag, "the store must be an atom");
    gn_pstore *s = store_lookup(p, r.name, r.name_len);
    if (!s)
        return reply_error(p, &r.tag, "no_store");
    if (s->jobs) {
        push_back(p, s, queue_request(&r));
        return;
    }
    int64_t now = gn_now_ms();
    if (gn_pstore_has_expired(s, now) && gn_pstore_expire(s, now, GN_PURGE_INLINE)) {
        /* more expired than a request purges: in slices, then this request */
        push_front(p, s, queue_request(&r));
        push_front(p, s, job_new(JOB_PURGE, NULL));
        return;
    }
    run_on_store(p, &r, s, op);
}

/* `queued`: this request comes off its store's queue, and runs now. */
static void op_open(gn_port *p, req *r, int queued)
{
    char type[1024];
    size_t tlen;
    uint64_t cap;
    if (r->nargs != 2 || !r->has_name || gn_etf_atom(&r->args, type, &tlen) || tlen > 11 ||
        arg_cap(r, &cap))
        return reply_badarg(p, &r->tag, "expected open, Name, Type, MaxSize");
    type[tlen] = 0;
    int ordered = !strcmp(type, "ordered_set");
    if (!ordered && strcmp(type, "set"))
        return reply_badarg(p, &r->tag, "the type must be set or ordered_set");
    gn_pstore *s = store_lookup(p, r->name, r->name_len);
    if (s && s->jobs && !queued) {
        push_back(p, s, queue_request(r));
        return;
    }
    if (s && s->ordered != ordered) {
        size_t m = error_begin(p, r->tag.data, r->tag.len);
        gn_enc_tuple(&p->out, 2);
        gn_enc_atom(&p->out, "wrong_type");
        gn_enc_atom(&p->out, s->ordered ? "ordered_set" : "set");
        frame_end(p, m);
        return;
    }
    if (!s) {
        s = gn_pstore_new(r->name, r->name_len, ordered, cap);
        store_link(p, s);
        journal_simple(p, s, GN_REC_OPEN);
    }
    reply_atom(p, &r->tag, "ok");
}

static void start_compaction(gn_port *p);

static void op_global(gn_port *p, req *r)
{
    if (!strcmp(r->op, "open"))
        return op_open(p, r, 0);
    if (!strcmp(r->op, "restore")) {
        if (r->nargs != 2)
            return reply_badarg(p, &r->tag, "wrong number of arguments");
        return op_restore(p, r);
    }
    if (!strcmp(r->op, "sync")) {
        /* an fdatasync in flight may fail: the answer waits for it (a
         * second one now could succeed on pages the first found bad) */
        if (p->d && gn_durable_sync_inflight(p->d)) {
            gn_buf_be(&p->sync_waiters, r->tag.len, 2);
            gn_buf_put(&p->sync_waiters, r->tag.data, r->tag.len);
            return;
        }
        if (p->d && (gn_durable_commit(p->d) || gn_durable_sync_now(p->d)))
            return; /* the journal failed: no answer, the program stops */
        return reply_atom(p, &r->tag, "ok");
    }
    if (!strcmp(r->op, "stop")) {
        p->stopping = 1; /* main.c ends the program as at the end of input */
        return;
    }
    if (!strcmp(r->op, "stores")) {
        size_t m = frame_begin(p, r->tag.data, r->tag.len);
        if (p->nstores)
            gn_enc_list(&p->out, (uint32_t)p->nstores);
        for (size_t i = 0; i < p->nbuckets; i++)
            for (gn_pstore *s = p->buckets[i]; s; s = s->next_in_bucket) {
                gn_enc_tuple(&p->out, 2);
                gn_enc_atom_len(&p->out, s->name, s->name_len);
                gn_enc_atom(&p->out, s->ordered ? "ordered_set" : "set");
            }
        gn_enc_nil(&p->out);
        frame_end(p, m);
        return;
    }
    if (!strcmp(r->op, "compact")) {
        if (!p->d)
            return reply_error(p, &r->tag, "no_dir");
        gn_buf_be(&p->compact_waiters, r->tag.len, 2);
        gn_buf_put(&p->compact_waiters, r->tag.data, r->tag.len);
        start_compaction(p);
        return;
    }
    if (!strcmp(r->op, "encode_key")) {
        char mode[1024];
        size_t mlen;
        gn_slice raw;
        size_t at = r->args.at;
        if (r->nargs != 2 || gn_etf_skip(&r->args, &raw) || gn_etf_atom(&r->args, mode, &mlen) ||
            mlen > 5)
            return reply_badarg(p, &r->tag, "expected encode_key, _, Key, eq | exact");
        mode[mlen] = 0;
        scratch_key.len = 0;
        if ((strcmp(mode, "eq") && strcmp(mode, "exact")) ||
            gn_key_encode(r->args.buf, r->args.len, &at, &scratch_key,
                          mode[1] == 'q' ? GN_KEY_EQ : GN_KEY_EXACT))
            return reply_badarg(p, &r->tag, "expected encode_key, _, Key, eq | exact");
        size_t m = frame_begin(p, r->tag.data, r->tag.len);
        gn_enc_binary(&p->out, scratch_key.data, scratch_key.len);
        frame_end(p, m);
        return;
    }
    reply_badarg(p, &r->tag, "unknown op");
}

/* ------------------------------------------------------------------------ */
/* Long work, a slice at a time                                              */

/* Runs a request that was queued behind its store's jobs. */
static void run_queued(gn_port *p, gn_pstore *s, gn_job *j)
{
    req r;
    if (decode(p, j->frame.data, j->frame.len, &r))
        return;
    int64_t now = gn_now_ms();
    if (gn_pstore_has_expired(s, now) && gn_pstore_expire(s, now, GN_PURGE_INLINE)) {
        push_front(p, s, queue_request(&r));
        push_front(p, s, job_new(JOB_PURGE, NULL));
        return;
    }
    /* a store op, or an open (the only other request queued) */
    int op = store_op(&r);
    if (op == OP_NONE)
        op_open(p, &r, 1);
    else
        run_on_store(p, &r, s, op);
}

/* Runs `s`'s jobs until the deadline; returns 0, or -1 if `s` was dropped. */
static int run_store_jobs(gn_port *p, gn_pstore *s, uint64_t deadline)
{
    dropped_store = NULL;
    while (s->jobs && gn_now_ns() < deadline) {
        gn_job *j = s->jobs;
        int done = 1;
        if (j->kind == JOB_REQUEST) {
            s->jobs = j->next;
            if (!s->jobs)
                s->jobs_tail = NULL;
            p->frame_owner = &j->frame;
            run_queued(p, s, j);
            p->frame_owner = NULL;
            job_free(j);
            if (dropped_store == s)
                return -1;
            continue;
        }
        if (j->kind == JOB_PURGE)
            done = !gn_pstore_expire(s, gn_now_ms(), 5000);
        else if (j->kind == JOB_STREAM)
            done = stream_step(p, s, j);
        else if (j->kind == JOB_MANY)
            done = many_run(p, s, j, 5000);
        if (done) {
            s->jobs = j->next;
            if (!s->jobs)
                s->jobs_tail = NULL;
            job_free(j);
        }
    }
    return 0;
}

/* ---- compaction: a fuzzy snapshot of every store ------------------------- */

static void compact_reply(gn_port *p, int ok)
{
    gn_buf *w = &p->compact_waiters;
    for (size_t at = 0; at + 2 <= w->len;) {
        gn_slice tag = {w->data + at + 2, (size_t)gn_get_be(w->data + at, 2)};
        if (ok)
            reply_atom(p, &tag, "ok");
        else
            reply_error(p, &tag, "compaction_failed");
        at += 2 + tag.len;
    }
    w->len = 0;
}

static void compact_work(void *arg)
{
    gn_durable_snap_finish(arg);
}

static void compact_after(gn_port *p, void *arg)
{
    (void)arg;
    int ok = gn_durable_snap_done(p->d) == 0;
    if (!ok)
        event_log(p, "error", "compaction failed: the journal goes on, the old snapshot stays");
    compact_reply(p, ok);
}

static void start_compaction(gn_port *p)
{
    if (gn_durable_snap_running(p->d))
        return; /* the running one answers every waiter */
    int rc = gn_durable_snap_begin(p->d);
    p->compact_pending = rc == -2;
    if (rc == -1) {
        event_log(p, "error", "cannot start a compaction (journal or snapshot file)");
        compact_reply(p, 0);
        return;
    }
    if (rc < 0)
        return;
    gn_job *j = job_new(JOB_COMPACT, NULL);
    for (size_t i = 0; i < p->nbuckets; i++)
        for (gn_pstore *s = p->buckets[i]; s; s = s->next_in_bucket) {
            gn_buf_be(&j->names, s->name_len, 2);
            gn_buf_put(&j->names, s->name, s->name_len);
        }
    push_global(p, j);
}

/* Writes a slice of the snapshot; 1 when all of it is written. */
static int compact_step(gn_port *p, gn_job *j, uint64_t deadline)
{
    gn_buf recs = compact_recs;
    int64_t now = gn_now_ms();
    while (j->names_at < j->names.len && gn_now_ns() < deadline) {
        size_t nlen = (size_t)gn_get_be(j->names.data + j->names_at, 2);
        const char *name = (const char *)j->names.data + j->names_at + 2;
        gn_pstore *s = store_lookup(p, name, nlen);
        gn_pnode *n = NULL;
        if (s && !j->started) {
            j->started = 1;
            j->serial = s->serial;
            j->resume.len = 0;
            size_t mark;
            gn_rec_begin(&recs, &mark, GN_REC_OPEN, s->name, s->name_len);
            gn_buf_byte(&recs, (unsigned char)s->ordered);
            gn_buf_be(&recs, s->max_size, 8);
            gn_rec_end(&recs, mark);
            n = gn_pstore_size(s) ? gn_pstore_at(s, 0) : NULL;
        } else if (s && s->serial == j->serial) {
            n = gn_pstore_after(s, j->resume.data, j->resume.len, 0);
        }
        if (n) {
            size_t mark, count_at;
            uint32_t count = 0;
            gn_rec_begin(&recs, &mark, GN_REC_MANY, s->name, s->name_len);
            count_at = recs.len;
            gn_buf_be(&recs, 0, 4);
            const gn_pnode *last = NULL;
            for (; n && count < GN_CHUNK_ENTRIES;
                 n = gn_pstore_after(s, GN_KENC(n), n->kenc_len, 0)) {
                last = n;
                if (n->expires && n->expires <= now)
                    continue;
                gn_rec_entry(&recs, GN_KRAW(n), n->kraw_len, GN_VAL(n), n->val_len, n->expires);
                count++;
            }
            for (int i = 0; i < 4; i++)
                recs.data[count_at + (size_t)i] = (unsigned char)(count >> (24 - 8 * i));
            gn_rec_end(&recs, mark);
            j->resume.len = 0;
            gn_buf_put(&j->resume, GN_KENC(last), last->kenc_len);
        }
        if (!n) { /* this store is written (or gone): the next */
            j->names_at += 2 + nlen;
            j->started = 0;
        }
        gn_durable_snap_write(p->d, &recs);
    }
    compact_recs = recs;
    if (j->names_at < j->names.len)
        return 0;
    if (p->offload)
        p->offload(p, compact_work, compact_after, p->d);
    else {
        compact_work(p->d);
        compact_after(p, p->d);
    }
    return 1;
}

int gn_port_step(gn_port *p)
{
    uint64_t deadline = gn_now_ns() + GN_SLICE_NS;
    for (gn_pstore **at = &p->busy; *at && gn_now_ns() < deadline;) {
        gn_pstore *s = *at;
        if (run_store_jobs(p, s, deadline) < 0)
            continue; /* dropped, and off the list */
        if (!s->jobs) {
            s->busy = 0;
            *at = s->next_busy;
        } else {
            at = &s->next_busy;
        }
    }
    while (p->global && gn_now_ns() < deadline) {
        gn_job *j = p->global;
        if (j->kind == JOB_COMPACT && !compact_step(p, j, deadline))
            break;
        if (j->kind == JOB_RESTORE && !restore_step(p, j, deadline))
            break;
        p->global = j->next;
        if (!p->global)
            p->global_tail = NULL;
        job_free(j);
    }
    if (p->compact_pending)
        start_compaction(p);
    int garbage = gn_garbage_step(20000);
    return gn_port_busy(p) || garbage;
}

int gn_port_busy(const gn_port *p)
{
    return p->busy || p->global || p->compact_pending;
}

void gn_port_sweep(gn_port *p)
{
    int64_t now = gn_now_ms();
    for (size_t i = 0; i < p->nbuckets; i++)
        for (gn_pstore *s = p->buckets[i]; s; s = s->next_in_bucket)
            if (!s->jobs && gn_pstore_has_expired(s, now) &&
                gn_pstore_expire(s, now, GN_PURGE_INLINE))
                push_front(p, s, job_new(JOB_PURGE, NULL));
}

/* ------------------------------------------------------------------------ */
/* Frames in                                                                 */

static void oversized(gn_port *p)
{
    gn_etf e = {p->skip_head.data, p->skip_head.len, 1};
    uint32_t arity;
    gn_slice tag;
    if (p->skip_head.len > 0 && p->skip_head.data[0] == 131 && !gn_etf_tuple(&e, &arity) &&
        !gn_etf_skip(&e, &tag) && tag.len <= 65534)
        reply_error(p, &tag, "frame_too_large");
    else
        event_bad_request(p, "a frame over 64 MiB, with no readable tag");
    p->skip_head.len = 0;
}

int gn_port_feed(gn_port *p, const unsigned char *data, size_t len)
{
    while (len > 0 && !p->stopping) { /* nothing is read after a stop */
        if (p->skip_left) {
            size_t take = len < p->skip_left ? len : p->skip_left;
            if (p->skip_head.len < 65536) {
                size_t keep = 65536 - p->skip_head.len;
                gn_buf_put(&p->skip_head, data, take < keep ? take : keep);
            }
            p->skip_left -= take;
            data += take;
            len -= take;
            if (!p->skip_left)
                oversized(p);
            continue;
        }
        if (p->hdr_len < 4) {
            while (p->hdr_len < 4 && len > 0) {
                p->hdr[p->hdr_len++] = *data++;
                len--;
            }
            if (p->hdr_len < 4)
                break;
            p->want = (size_t)gn_get_be(p->hdr, 4);
            if (p->want == 0) {
                event_bad_request(p, "an empty frame");
                p->hdr_len = 0;
            } else if (p->want > GN_PORT_MAX_FRAME) {
                p->skip_left = p->want;
                p->hdr_len = 0;
            }
            continue;
        }
        if (p->in.len == 0 && len >= p->want) { /* a whole frame: no copy */
            dispatch(p, data, p->want);
            data += p->want;
            len -= p->want;
            p->hdr_len = 0;
            continue;
        }
        size_t take = p->want - p->in.len < len ? p->want - p->in.len : len;
        gn_buf_put(&p->in, data, take);
        data += take;
        len -= take;
        if (p->in.len == p->want) {
            p->frame_owner = &p->in;
            dispatch(p, p->in.data, p->in.len);
            p->frame_owner = NULL;
            p->in.len = 0;
            p->hdr_len = 0;
            if (p->in.cap > (1u << 20)) /* don't keep a big frame's room */
                gn_buf_free(&p->in);
        }
    }
    return 0;
}

int gn_port_stopping(const gn_port *p)
{
    return p->stopping;
}

int gn_port_at_frame_boundary(const gn_port *p)
{
    return p->hdr_len == 0 && p->in.len == 0 && p->skip_left == 0;
}

gn_buf *gn_port_output(gn_port *p)
{
    return &p->out;
}

/* ------------------------------------------------------------------------ */
/* Loading the data directory                                                */

static void apply_entry(gn_pstore *s, const unsigned char *k, size_t kl, const unsigned char *v,
                        size_t vl, int64_t expires, int64_t now)
{
    size_t ix = 0;
    scratch_key.len = 0;
    if (gn_key_encode(k, kl, &ix, &scratch_key, s->ordered ? GN_KEY_EQ : GN_KEY_EXACT) || ix != kl)
        return; /* cannot happen: it was checked when it was written */
    if (expires && expires <= now) {
        gn_pstore_delete(s, scratch_key.data, scratch_key.len);
        return;
    }
    int created;
    gn_pstore_put(s, scratch_key.data, scratch_key.len, k, kl, v, vl, expires, &created);
}

static void apply_record(void *ctx, const gn_record *r)
{
    gn_port *p = ctx;
    int64_t now = gn_now_ms();
    gn_pstore *s = store_lookup(p, r->name, r->name_len);
    switch (r->op) {
    case GN_REC_OPEN:
        if (!s)
            store_link(p, gn_pstore_new(r->name, r->name_len, r->ordered, r->max_size));
        return;
    case GN_REC_RESTORE:
        if (s)
            store_drop(p, s);
        s = gn_pstore_new(r->name, r->name_len, r->ordered, r->max_size);
        store_link(p, s);
        break;
    case GN_REC_DROP:
        if (s)
            store_drop(p, s);
        return;
    default:
        break;
    }
    if (!s)
        return; /* a write to a store dropped later */
    if (r->op == GN_REC_CLEAR) {
        gn_pstore_clear(s);
    } else if (r->op == GN_REC_PUT) {
        apply_entry(s, r->key, r->key_len, r->val, r->val_len, r->expires, now);
    } else if (r->op == GN_REC_DEL) {
        size_t ix = 0;
        scratch_key.len = 0;
        if (!gn_key_encode(r->key, r->key_len, &ix, &scratch_key,
                           s->ordered ? GN_KEY_EQ : GN_KEY_EXACT))
            gn_pstore_delete(s, scratch_key.data, scratch_key.len);
    } else if (r->op == GN_REC_MANY || r->op == GN_REC_RESTORE) {
        gn_entry_iter it = {r->entries, r->entries + r->entries_len};
        const unsigned char *k, *v;
        size_t kl, vl;
        int64_t expires;
        while (gn_entry_next(&it, &k, &kl, &v, &vl, &expires) == 0)
            apply_entry(s, k, kl, v, vl, expires, now);
    }
    while (gn_garbage_step(100000))
        ; /* replay frees as it goes */
}

/* The fatal load event: {error, {Kind, Path}}, {error, {corrupt_journal,
 * Path, {From, To}}} or {error, {io_error, Text}}. */
static void event_load_error(gn_port *p, const gn_load_error *e)
{
    const char *text = e->kind && strcmp(e->kind, "io_error") ? e->path : e->text;
    const char *kind = e->kind ? e->kind : "io_error";
    size_t m = error_begin(p, NULL, 0);
    if (!strcmp(kind, "corrupt_journal")) {
        gn_enc_tuple(&p->out, 3);
        gn_enc_atom(&p->out, kind);
        gn_enc_string(&p->out, text);
        gn_enc_tuple(&p->out, 2);
        gn_enc_int(&p->out, (int64_t)e->from);
        gn_enc_int(&p->out, (int64_t)e->to);
    } else {
        gn_enc_tuple(&p->out, 2);
        gn_enc_atom(&p->out, kind);
        gn_enc_string(&p->out, text);
    }
    frame_end(p, m);
    if (!strcmp(kind, "corrupt_journal"))
        gn_diag("%s: %s: bytes %llu to %llu are damaged, before synced data: not loaded", kind,
                text, (unsigned long long)e->from, (unsigned long long)e->to);
    else
        gn_diag("%s: %s: not loaded", kind, text);
}

int gn_port_load(gn_port *p)
{
    uint64_t dropped = 0;
    if (p->dir) {
        gn_load_error err;
        p->replaying = 1;
        p->d = gn_durable_open(p->dir, p->sync, apply_record, p, &dropped, &err);
        p->replaying = 0;
        if (!p->d) {
            event_load_error(p, &err);
            return -1;
        }
        if (dropped) {
            char text[200];
            snprintf(
                text, sizeof text,
                "dropped %llu bytes of a torn journal tail (after the last synced offset) in %s",
                (unsigned long long)dropped, p->dir);
            event_log(p, "warning", text);
        }
    }
    uint64_t entries = 0;
    for (size_t i = 0; i < p->nbuckets; i++)
        for (gn_pstore *s = p->buckets[i]; s; s = s->next_in_bucket)
            entries += gn_pstore_size(s);
    size_t m = frame_begin(p, NULL, 0);
    gn_enc_tuple(&p->out, 2);
    gn_enc_atom(&p->out, "ready");
    gn_enc_map(&p->out, 3);
    gn_enc_atom(&p->out, "stores");
    gn_enc_int(&p->out, (int64_t)p->nstores);
    gn_enc_atom(&p->out, "entries");
    gn_enc_int(&p->out, (int64_t)entries);
    gn_enc_atom(&p->out, "dropped_bytes");
    gn_enc_int(&p->out, (int64_t)dropped);
    frame_end(p, m);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Life                                                                      */

gn_port *gn_port_new(const char *dir, int sync)
{
    gn_port *p = calloc(1, sizeof *p);
    if (!p)
        abort();
    p->dir = dir ? strdup(dir) : NULL;
    p->sync = sync;
    return p;
}

void gn_port_set_offload(gn_port *p, gn_offload_fn fn)
{
    p->offload = fn;
}

int gn_port_commit(gn_port *p)
{
    const char *kind, *text;
    if (!p->d)
        return 0;
    if (gn_durable_commit(p->d) < 0)
        return -1;
    if (gn_durable_wants_compaction(p->d))
        start_compaction(p);
    return gn_durable_failed(p->d, &kind, &text) ? -1 : 0;
}

int gn_port_sync_begin(gn_port *p)
{
    return p->d ? gn_durable_sync_begin(p->d) : -1;
}

int gn_port_sync_done(gn_port *p, int result)
{
    if (gn_durable_sync_done(p->d, result) < 0)
        return -1;
    gn_buf *w = &p->sync_waiters;
    if (w->len == 0)
        return 0;
    /* what they wait for may have been written after that fdatasync began */
    if (gn_durable_commit(p->d) < 0 || gn_durable_sync_now(p->d) < 0)
        return -1;
    for (size_t at = 0; at + 2 <= w->len;) {
        gn_slice tag = {w->data + at + 2, (size_t)gn_get_be(w->data + at, 2)};
        reply_atom(p, &tag, "ok");
        at += 2 + tag.len;
    }
    w->len = 0;
    return 0;
}

void gn_port_fail(gn_port *p)
{
    const char *kind = "journal_write_failed", *text = "the journal failed";
    if (p->d)
        gn_durable_failed(p->d, &kind, &text);
    p->out.len = 0; /* nothing more is acknowledged */
    error_text(p, NULL, kind, text);
    gn_diag("%s: %s: exiting, nothing more acknowledged", kind, text);
}

void gn_port_free(gn_port *p)
{
    for (size_t i = 0; i < p->nbuckets; i++)
        for (gn_pstore *s = p->buckets[i], *next; s; s = next) {
            next = s->next_in_bucket;
            for (gn_job *j = s->jobs, *jn; j; j = jn) {
                jn = j->next;
                job_free(j);
            }
            gn_pstore_free(s);
        }
    for (gn_job *j = p->global, *jn; j; j = jn) {
        jn = j->next;
        job_free(j);
    }
    while (gn_garbage_step(SIZE_MAX))
        ;
    gn_durable_close(p->d);
    free(p->buckets);
    gn_buf_free(&p->out);
    gn_buf_free(&p->in);
    gn_buf_free(&p->skip_head);
    gn_buf_free(&p->compact_waiters);
    gn_buf_free(&p->sync_waiters);
    gn_buf_free(&scratch_key);
    gn_buf_free(&scratch_val);
    gn_buf_free(&stream_part);
    gn_buf_free(&compact_recs);
    free(p->dir);
    free(p);
}
