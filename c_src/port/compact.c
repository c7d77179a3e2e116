/*
 * Compaction (compact.h) and the `compact` op: the snapshot's records are
 * written store by store, a chunk of entries at a time, then fsynced and
 * renamed off the loop thread (p->offload).
 */
#include "compact.h"
#include "durable.h"
#include "journal.h"
#include "ops.h"
#include "reply.h"
#include "state.h"

typedef struct compact_job {
    gn_job job;
    gn_buf names; /* the stores to write: name length (2) | name, ... */
    size_t names_at;
    int started;     /* the store at names_at is being written */
    uint64_t serial; /* its serial: a store made anew under its name is not */
    gn_buf resume;   /* the last key written */
} compact_job;

static void compact_reply(gn_port *p, int ok)
{
    gn_tags_reply(&p->out, &p->compact_waiters, ok ? NULL : "compaction_failed");
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
        gn_event_log(&p->out, "error",
                     "compaction failed: the journal goes on, the old snapshot stays");
    compact_reply(p, ok);
}

/* Writes a slice of the snapshot; 1 when all of it is written. */
static int compact_step(gn_port *p, gn_pstore *unused, gn_job *job, uint64_t deadline)
{
    (void)unused;
    compact_job *j = (compact_job *)job;
    gn_buf *recs = &p->recs;
    int64_t now = gn_now_ms();
    while (j->names_at < j->names.len && gn_now_ns() < deadline) {
        size_t nlen = (size_t)gn_be_get(j->names.data + j->names_at, 2);
        const char *name = (const char *)j->names.data + j->names_at + 2;
        gn_pstore *s = gn_stores_find(&p->stores, name, nlen);
        gn_pnode *n = NULL;
        if (s && !j->started) {
            j->started = 1;
            j->serial = s->serial;
            j->resume.len = 0;
            gn_journal_open(recs, s);
            n = gn_pstore_at(s, 0);
        } else if (s && s->serial == j->serial) {
            n = gn_pstore_after(s, j->resume.data, j->resume.len, 0);
        }
        if (n) {
            const gn_pnode *last = gn_journal_chunk(recs, s, n, now);
            j->resume.len = 0;
            gn_buf_put(&j->resume, GN_KENC(last), last->kenc_len);
            n = gn_pstore_after(s, GN_KENC(last), last->kenc_len, 0);
        }
        if (!n) { /* this store is written (or gone): the next */
            j->names_at += 2 + nlen;
            j->started = 0;
        }
        gn_durable_snap_write(p->d, recs);
    }
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

static void compact_release(gn_job *job)
{
    compact_job *j = (compact_job *)job;
    gn_buf_free(&j->names);
    gn_buf_free(&j->resume);
}

void gn_compact_start(gn_port *p)
{
    if (gn_durable_snap_running(p->d))
        return; /* the running one answers every waiter */
    int rc = gn_durable_snap_begin(p->d);
    p->compact_pending = rc == -2;
    if (rc == -1) {
        gn_event_log(&p->out, "error", "cannot start a compaction (journal or snapshot file)");
        compact_reply(p, 0);
        return;
    }
    if (rc < 0)
        return;
    compact_job *j = gn_job_new(sizeof *j, compact_step, compact_release);
    size_t b;
    for (gn_pstore *s = gn_stores_first(&p->stores, &b); s; s = gn_stores_next(&p->stores, &b, s)) {
        gn_buf_be(&j->names, s->name_len, 2);
        gn_buf_put(&j->names, s->name, s->name_len);
    }
    gn_jobs_push_global(&p->jobs, &j->job);
}

void gn_op_compact(gn_port *p, gn_request *r, gn_pstore *s)
{
    (void)s;
    if (!p->d)
        return gn_reply_error(&p->out, &r->tag, "no_dir");
    gn_tags_add(&p->compact_waiters, &r->tag);
    gn_compact_start(p);
}
