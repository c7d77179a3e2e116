/*
 * put_many: a list of {Key, Value} stored all or nothing. The list is
 * checked whole first (phase 0: well formed, and with a cap, how many keys
 * are new), then stored (phase 1), each a slice at a time: a big one is a
 * job on its store.
 */
#include <string.h>

#include "record.h"
#include "ops.h"
#include "reply.h"
#include "state.h"

#define GN_MANY_INLINE 2000 /* entries done in one go, before it becomes a job */
#define GN_MANY_SLICE 5000  /* entries done in one slice of the job */

typedef struct many_job {
    gn_job job;
    gn_buf frame; /* the request's bytes, or those of its list */
    size_t base;  /* where the list starts in `frame` */
    gn_etf pos;   /* the walk over the list */
    uint32_t todo;
    int has_tail; /* a LIST_EXT: its tail must be [] */
    int phase;
    gn_pstore *fresh; /* with a cap: the new keys */
    gn_buf record;    /* the journal record being built */
    size_t record_mark;
} many_job;

/* Walks `todo` {Key, Value} tuples from j->pos; phase 0 checks them (and,
 * with a cap, collects the new keys), phase 1 stores them. Returns 1 when
 * the phase is through, -1 on a malformed element. */
static int many_walk(gn_port *p, gn_pstore *s, many_job *j, size_t budget)
{
    while (j->todo > 0 && budget-- > 0) {
        uint32_t arity;
        gn_slice key, val;
        size_t kat;
        if (gn_etf_tuple(&j->pos, &arity) || arity != 2)
            return -1;
        kat = j->pos.at;
        if (gn_etf_skip(&j->pos, &key) || gn_etf_skip(&j->pos, &val))
            return -1;
        p->key.len = 0;
        if (gn_key_encode(j->pos.buf, j->pos.len, &kat, &p->key, gn_pstore_key_mode(s)))
            return -1;
        int created;
        if (j->phase == 0) {
            if (j->fresh && !gn_pstore_find(s, p->key.data, p->key.len))
                gn_pstore_put(j->fresh, p->key.data, p->key.len, NULL, 0, NULL, 0, 0, &created);
        } else {
            gn_pstore_put(s, p->key.data, p->key.len, key.data, key.len, val.data, val.len, 0,
                          &created);
            if (j->record.data)
                gn_rec_entry(&j->record, key.data, key.len, val.data, val.len, 0);
        }
        j->todo--;
    }
    return j->todo == 0;
}

/* Positions j->pos at the list's first element; returns -1 if no list. */
static int many_start(many_job *j, uint32_t *count)
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
static int many_run(gn_port *p, gn_pstore *s, many_job *j, size_t budget)
{
    gn_slice tag = gn_buf_slice(&j->job.tag);
    uint32_t count;
    for (;;) {
        int rc = many_walk(p, s, j, budget);
        if (rc < 0) {
            gn_reply_badarg(&p->out, &tag, "expected a list of {Key, Value}");
            return 1;
        }
        if (rc == 0)
            return 0;
        if (j->phase == 1)
            break;
        if (j->has_tail && gn_etf_nil(&j->pos)) {
            gn_reply_badarg(&p->out, &tag, "expected a proper list of {Key, Value}");
            return 1;
        }
        /* phase 0 is through: the list is well formed */
        if (j->fresh && gn_pstore_full(s, gn_pstore_size(j->fresh))) {
            gn_reply_error(&p->out, &tag, "full");
            return 1;
        }
        j->phase = 1;
        many_start(j, &count);
        if (gn_port_journal(p)) {
            gn_rec_begin(&j->record, &j->record_mark, GN_REC_MANY, s->name, s->name_len);
            gn_buf_be(&j->record, count, 4);
        }
    }
    gn_buf *jr = gn_port_journal(p);
    if (jr && j->record.data) {
        gn_rec_end(&j->record, j->record_mark);
        gn_buf_put(jr, j->record.data, j->record.len);
    }
    gn_reply_atom(&p->out, &tag, "ok");
    return 1;
}

static int many_step(gn_port *p, gn_pstore *s, gn_job *job, uint64_t deadline)
{
    (void)deadline; /* a budget of entries instead */
    return many_run(p, s, (many_job *)job, GN_MANY_SLICE);
}

static void many_release(gn_job *job)
{
    many_job *j = (many_job *)job;
    gn_buf_free(&j->frame);
    gn_buf_free(&j->record);
    if (j->fresh)
        gn_pstore_free(j->fresh);
}

void gn_op_put_many(gn_port *p, gn_request *r, gn_pstore *s)
{
    many_job *j = gn_job_new(sizeof *j, many_step, many_release);
    gn_buf_put(&j->job.tag, r->tag.data, r->tag.len);
    /* The list is the request's last term: the job keeps the frame from
     * there on (phase 0 checks the list in slices). */
    if (gn_port_take_frame(p, r->args.buf, &j->frame))
        j->base = r->args.at;
    else
        gn_buf_put(&j->frame, r->args.buf + r->args.at, r->args.len - r->args.at);
    uint32_t count;
    if (many_start(j, &count)) {
        gn_job_free(&j->job);
        return gn_reply_badarg(&p->out, &r->tag, "expected a list of {Key, Value}");
    }
    if (s->max_size)
        j->fresh = gn_pstore_new("", 0, s->ordered, 0);
    if (many_run(p, s, j, GN_MANY_INLINE))
        gn_job_free(&j->job);
    else
        gn_jobs_push(&p->jobs, s, &j->job);
}
