/*
 * Dispatch (dispatch.h): the table of ops, decoding a request and running
 * its handler, the requests waiting behind a store's jobs, and the ops
 * that make and drop stores (open, delete).
 *
 * Ordering: requests on one store are answered in the order they arrived.
 * A request that turns into long work (a streamed reply, a purge of many
 * expired entries, a big put_many) becomes a job at the head of its store's
 * jobs; while a store has jobs, its new requests wait behind them, and
 * gn_port_step runs the jobs of every busy store a slice at a time, then
 * the requests that waited.
 */
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "journal.h"
#include "ops.h"
#include "reply.h"
#include "request.h"
#include "state.h"

#define GN_PURGE_SLICE 5000 /* expired entries purged in one slice of the job */

enum {
    OP_STORE = 1,   /* on a store: named by an atom, existing, waits behind its jobs */
    OP_ORDERED = 2, /* on an ordered_set */
};
#define ANY_ARITY UINT32_MAX /* the handler checks the arguments */

typedef struct gn_op {
    const char *name;
    uint32_t arity; /* arguments after the store */
    int flags;
    gn_op_fn *handler;
} gn_op;

static const gn_op ops[] = {
    {"put", 3, OP_STORE, gn_op_put},
    {"get", 1, OP_STORE, gn_op_get},
    {"put_new", 3, OP_STORE, gn_op_put_new},
    {"delete_key", 1, OP_STORE, gn_op_delete_key},
    {"take", 1, OP_STORE, gn_op_take},
    {"update_counter", 3, OP_STORE, gn_op_update_counter},
    {"size", 0, OP_STORE, gn_op_size},
    {"clear", 0, OP_STORE, gn_op_clear},
    {"to_list", 0, OP_STORE, gn_op_to_list},
    {"put_many", 1, OP_STORE, gn_op_put_many},
    {"delete", 0, OP_STORE, gn_op_delete},
    {"info", 0, OP_STORE, gn_op_info},
    {"snapshot", 0, OP_STORE, gn_op_snapshot},
    {"step", 2, OP_STORE | OP_ORDERED, gn_op_step},
    {"range", 3, OP_STORE | OP_ORDERED, gn_op_range},
    {"rank", 1, OP_STORE | OP_ORDERED, gn_op_rank},
    {"at", 1, OP_STORE | OP_ORDERED, gn_op_at},
    {"slice", 2, OP_STORE | OP_ORDERED, gn_op_slice},
    /* global: the third element is a name or anything */
    {"open", ANY_ARITY, 0, gn_op_open},
    {"restore", 2, 0, gn_op_restore},
    {"sync", ANY_ARITY, 0, gn_op_sync},
    {"stop", ANY_ARITY, 0, gn_op_stop},
    {"stores", ANY_ARITY, 0, gn_op_stores},
    {"compact", ANY_ARITY, 0, gn_op_compact},
    {"encode_key", ANY_ARITY, 0, gn_op_encode_key},
};

static const gn_op *find_op(const char *name)
{
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (!strcmp(name, ops[i].name))
            return &ops[i];
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Requests waiting behind a store's jobs                                    */

typedef struct gn_waiting {
    struct gn_waiting *next;
    gn_buf frame;
} gn_waiting;

static void wait_behind(gn_port *p, gn_pstore *s, const gn_request *r, int first)
{
    gn_waiting *w = calloc(1, sizeof *w);
    if (!w)
        abort();
    gn_buf_put(&w->frame, r->frame, r->frame_len);
    if (first) {
        w->next = s->waiting;
        s->waiting = w;
        if (!s->waiting_tail)
            s->waiting_tail = w;
    } else {
        if (s->waiting_tail)
            s->waiting_tail->next = w;
        else
            s->waiting = w;
        s->waiting_tail = w;
    }
    gn_jobs_mark_busy(&p->jobs, s);
}

static gn_waiting *take_waiting(gn_pstore *s)
{
    gn_waiting *w = s->waiting;
    s->waiting = w->next;
    if (!s->waiting)
        s->waiting_tail = NULL;
    return w;
}

static void waiting_free(gn_waiting *w)
{
    gn_buf_free(&w->frame);
    free(w);
}

/* ------------------------------------------------------------------------ */
/* Purging expired entries before a request                                  */

static int purge_step(gn_port *p, gn_pstore *s, gn_job *j, uint64_t deadline)
{
    (void)p;
    (void)j;
    (void)deadline;
    return !gn_pstore_expire(s, gn_now_ms(), GN_PURGE_SLICE);
}

static void purge_later(gn_port *p, gn_pstore *s)
{
    gn_jobs_push(&p->jobs, s, gn_job_new(sizeof(gn_job), purge_step, NULL));
}

/* Purges s's expired entries, up to GN_PURGE_INLINE; when more remain,
 * queues their purge, and `r` behind it: 1 then. */
static int purge_first(gn_port *p, gn_pstore *s, const gn_request *r)
{
    int64_t now = gn_now_ms();
    if (!gn_pstore_has_expired(s, now) || !gn_pstore_expire(s, now, GN_PURGE_INLINE))
        return 0;
    wait_behind(p, s, r, 1);
    purge_later(p, s);
    return 1;
}

void gn_dispatch_sweep(gn_port *p, gn_pstore *s, int64_t now)
{
    if (!s->jobs && !s->waiting && gn_pstore_has_expired(s, now) &&
        gn_pstore_expire(s, now, GN_PURGE_INLINE))
        purge_later(p, s);
}

/* ------------------------------------------------------------------------ */
/* Running requests                                                          */

/* Runs store op `op` on `s`, which has no jobs. */
static void run_on_store(gn_port *p, gn_request *r, gn_pstore *s, const gn_op *op)
{
    if ((op->flags & OP_ORDERED) && !s->ordered)
        return gn_reply_error(&p->out, &r->tag, "not_ordered");
    op->handler(p, r, s);
}

void gn_dispatch(gn_port *p, const unsigned char *frame, size_t len)
{
    gn_request r;
    if (gn_request_decode(&p->out, frame, len, &r))
        return;
    if (!r.op[0])
        return gn_reply_badarg(&p->out, &r.tag, "expected {Tag, Op, Store, Args...}");
    const gn_op *op = find_op(r.op);
    if (!op)
        return gn_reply_badarg(&p->out, &r.tag, "unknown op");
    if (op->arity != ANY_ARITY && r.nargs != op->arity)
        return gn_reply_badarg(&p->out, &r.tag, "wrong number of arguments");
    if (!(op->flags & OP_STORE))
        return op->handler(p, &r, NULL);
    if (!r.has_name)
        return gn_reply_badarg(&p->out, &r.tag, "the store must be an atom");
    gn_pstore *s = gn_stores_find(&p->stores, r.name, r.name_len);
    if (!s)
        return gn_reply_error(&p->out, &r.tag, "no_store");
    if (s->jobs || s->waiting)
        return wait_behind(p, s, &r, 0);
    if (purge_first(p, s, &r))
        return;
    run_on_store(p, &r, s, op);
}

/* Runs a request that waited behind s's jobs: a store op, or an open (the
 * only other request that waits). */
static void run_waiting(gn_port *p, gn_pstore *s, gn_waiting *w)
{
    gn_request r;
    if (gn_request_decode(&p->out, w->frame.data, w->frame.len, &r))
        return;
    r.queued = 1;
    if (purge_first(p, s, &r))
        return;
    const gn_op *op = find_op(r.op);
    if (op->flags & OP_STORE)
        run_on_store(p, &r, s, op);
    else
        op->handler(p, &r, s);
}

/* Runs s's work until the deadline; returns 0, or -1 if `s` was dropped. */
static int run_store(gn_port *p, gn_pstore *s, uint64_t deadline)
{
    while ((s->jobs || s->waiting) && gn_now_ns() < deadline) {
        if (s->jobs) {
            gn_jobs_run_next(p, s, deadline);
            continue;
        }
        gn_waiting *w = take_waiting(s);
        uint64_t drops = p->drops;
        p->frame_owner = &w->frame;
        run_waiting(p, s, w);
        p->frame_owner = NULL;
        waiting_free(w);
        if (p->drops != drops)
            return -1; /* only s can be: what waits on s is on s */
    }
    return 0;
}

void gn_dispatch_step(gn_port *p, uint64_t deadline)
{
    for (gn_pstore **at = &p->jobs.busy; *at && gn_now_ns() < deadline;) {
        gn_pstore *s = *at;
        if (run_store(p, s, deadline) < 0)
            continue; /* dropped, and off the list */
        if (!s->jobs && !s->waiting) {
            s->busy = 0;
            *at = s->next_busy;
        } else {
            at = &s->next_busy;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Making and dropping stores                                                */

void gn_op_open(gn_port *p, gn_request *r, gn_pstore *unused)
{
    (void)unused;
    char type[1024];
    size_t tlen;
    uint64_t cap;
    if (r->nargs != 2 || !r->has_name || gn_etf_atom(&r->args, type, &tlen) || tlen > 11 ||
        gn_arg_cap(r, &cap))
        return gn_reply_badarg(&p->out, &r->tag, "expected open, Name, Type, MaxSize");
    type[tlen] = 0;
    int ordered = !strcmp(type, "ordered_set");
    if (!ordered && strcmp(type, "set"))
        return gn_reply_badarg(&p->out, &r->tag, "the type must be set or ordered_set");
    gn_pstore *s = gn_stores_find(&p->stores, r->name, r->name_len);
    if (s && (s->jobs || s->waiting) && !r->queued)
        return wait_behind(p, s, r, 0);
    if (s && s->ordered != ordered) {
        size_t m = gn_error_begin(&p->out, r->tag.data, r->tag.len);
        gn_enc_tuple(&p->out, 2);
        gn_enc_atom(&p->out, "wrong_type");
        gn_enc_atom(&p->out, s->ordered ? "ordered_set" : "set");
        gn_frame_end(&p->out, m);
        return;
    }
    if (!s) {
        s = gn_pstore_new(r->name, r->name_len, ordered, cap);
        gn_stores_add(&p->stores, s);
        gn_journal_open(gn_port_journal(p), s);
    }
    gn_reply_atom(&p->out, &r->tag, "ok");
}

void gn_op_delete(gn_port *p, gn_request *r, gn_pstore *s)
{
    gn_journal_bare(gn_port_journal(p), s, GN_REC_DROP);
    gn_reply_atom(&p->out, &r->tag, "ok");
    gn_store_drop(p, s);
}

void gn_store_drop(gn_port *p, gn_pstore *s)
{
    gn_waiting *waiting = s->waiting;
    s->waiting = s->waiting_tail = NULL;
    gn_jobs_forget(&p->jobs, s);
    gn_stores_remove(&p->stores, s);
    gn_pstore_free(s);
    p->drops++;
    while (waiting) {
        gn_waiting *w = waiting;
        waiting = w->next;
        gn_dispatch(p, w->frame.data, w->frame.len);
        waiting_free(w);
    }
}

void gn_store_free(gn_port *p, gn_pstore *s)
{
    while (s->waiting)
        waiting_free(take_waiting(s));
    gn_jobs_forget(&p->jobs, s);
    gn_pstore_free(s);
}
