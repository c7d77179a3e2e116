/*
 * Replication through libraft (raft.h): routing requests, proposing
 * entries, applying them, ticks for reads and time, snapshots, membership.
 */
#include <errno.h>
#include <raft.h>
#include <raft/uv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diag.h"
#include "dispatch.h"
#include "image.h"
#include "raft.h"
#include "raft_log.h"
#include "reply.h"
#include "request.h"
#include "state.h"

/* A write proposed by this member, until its entry is applied here (it is
 * answered then) or libraft gives up on it. */
typedef struct gn_proposal {
    struct gn_raft *r;
    struct gn_proposal *prev, *next;
    uint64_t seq;
    int answered;
    gn_buf tag;
} gn_proposal;

/* The writes read from the VM at once, proposed in one entry. */
typedef struct gn_batch {
    struct raft_apply req;
    struct gn_raft *r;
    size_t n;
    gn_proposal *qs[];
} gn_batch;

/* A tick: the reads that came before it are served once it is applied. */
typedef struct gn_tick {
    struct raft_apply req;
    struct gn_raft *r;
    int sweep;    /* proposed by the sweep */
    gn_buf reads; /* frames: length (4) | frame, ... */
} gn_tick;

/* A membership change or a leadership transfer, answered when through. */
typedef struct gn_change {
    union {
        struct raft_change change;
        struct raft_transfer transfer;
    };
    struct gn_raft *r;
    uint64_t id;              /* the member added, removed, or to lead */
    int promote;              /* added: to make a voter once it has caught up */
    struct raft_apply retire; /* removed: its retirement entry */
    uv_timer_t wait;          /* removed: the heartbeats that carry it */
    gn_buf tag;
} gn_change;

#define GN_SNAPSHOT_EVERY 16384   /* log entries between snapshots, by default */
#define GN_RETIRED_FILE "RETIRED" /* in the directory of a removed member */
#define GN_BORN_FILE "BORN"       /* when the directory was first used, ms */

struct gn_raft {
    gn_port *p;
    uv_loop_t *loop;
    char *dir;
    unsigned heartbeat_ms;
    int retired;     /* this member was removed: it serves nothing more */
    int64_t born_ms; /* when its directory was first used (BORN) */
    struct raft raft;
    struct raft_io io;
    struct raft_uv_transport transport;
    struct raft_fsm fsm;
    int local_reads;
    uint64_t proposer, seq;
    gn_proposal *pending; /* writes in flight, oldest first */
    gn_proposal *pending_tail;
    gn_tick *tick;     /* the tick in flight, if any */
    gn_buf reads_next; /* reads that came after it: they need the next */
    int sweep_tick;    /* a tick proposed by the sweep is in flight */
    gn_buf discard;    /* the output of requests applied for other members */
    gn_rids rids;      /* request ids (raft_log.h) */
    gn_buf body;       /* the writes read since the last gn_raft_flush */
    gn_proposal **forming;
    size_t forming_n, forming_cap;
    gn_buf inner;      /* a request unwrapped from its id */
    gn_buf inner_read; /* a request unwrapped from its consistency */
    void (*after)(void);
};

/* ------------------------------------------------------------------------ */
/* Replies                                                                   */

/* {error, {Why, Leader}}, Leader: {Id, Address} or nil. */
static void reply_leader(gn_raft *r, const gn_slice *tag, const char *why)
{
    raft_id id = 0;
    const char *address = NULL;
    raft_leader(&r->raft, &id, &address);
    gn_buf *out = &r->p->out;
    size_t m = gn_error_begin(out, tag->data, tag->len);
    gn_enc_tuple(out, 2);
    gn_enc_atom(out, why);
    if (id && address) {
        gn_enc_tuple(out, 2);
        gn_enc_int(out, (int64_t)id);
        gn_enc_string(out, address);
    } else {
        gn_enc_atom(out, "nil");
    }
    gn_frame_end(out, m);
}

/* {error, {raft, Text}}: libraft refused a request. */
static void reply_raft_error(gn_raft *r, const gn_slice *tag, int rc)
{
    gn_error_text(&r->p->out, tag, "raft", raft_strerror(rc));
}

/* The tag of a frame (it was decoded once already). */
static gn_slice frame_tag(gn_raft *r, const unsigned char *frame, size_t len)
{
    gn_request req;
    gn_slice none = {NULL, 0};
    return gn_request_decode(&r->p->out, frame, len, &req) ? none : req.tag;
}

/* ------------------------------------------------------------------------ */
/* Applying entries                                                          */

/* Runs every job to its end: an entry is applied whole, at its point of
 * the log. */
static void drain(gn_port *p)
{
    while (gn_port_busy(p))
        gn_port_step(p);
}

/* This member is being removed from the group (a retirement entry naming
 * it was committed): it leaves a mark in its directory, which it will not
 * start on again until reset, and serves nothing more. */
static void retire(gn_raft *r)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", r->dir, GN_RETIRED_FILE);
    FILE *f = fopen(path, "w");
    if (!f || fputs("removed from its group: reset the directory to reuse it\n", f) < 0 ||
        fflush(f) || fsync(fileno(f)))
        gn_diag("raft: cannot mark %s: %s", path, strerror(errno));
    if (f)
        fclose(f);
    r->retired = 1;
}

static gn_proposal *find_pending(gn_raft *r, uint64_t seq)
{
    for (gn_proposal *q = r->pending; q; q = q->next)
        if (q->seq == seq)
            return q;
    return NULL;
}

/* Applies one request of a 'Q' entry: answered here if this member
 * proposed it and still waits, else its output is dropped. */
static void apply_request(gn_raft *r, const gn_entry *e, const gn_item *it)
{
    gn_port *p = r->p;
    gn_proposal *q = e->proposer == r->proposer ? find_pending(r, it->seq) : NULL;
    gn_rid *d = it->client ? gn_rid_find(&r->rids, it->client) : NULL;
    if (d && it->request <= d->seq) {
        /* a retry of a request already applied (or an older one): not
         * applied again; the proposer gets the first reply */
        if (q) {
            gn_slice tag = gn_buf_slice(&q->tag);
            if (it->request == d->seq)
                gn_rid_reply(&p->out, &tag, &d->reply);
            else
                gn_reply_error(&p->out, &tag, "stale_request");
            q->answered = 1;
        }
        return;
    }
    gn_buf saved = p->out;
    if (!q)
        p->out = r->discard; /* another member's request: it answers it */
    size_t before = p->out.len;
    gn_dispatch(p, it->frame, it->frame_len);
    drain(p);
    if (it->client)
        gn_rid_keep(&r->rids, it->client, it->request, e->clock, &p->out, before);
    if (q) {
        q->answered = 1;
    } else {
        r->discard = p->out;
        r->discard.len = 0;
        p->out = saved;
    }
}

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
    gn_raft *r = fsm->data;
    gn_port *p = r->p;
    gn_entry e;
    *result = NULL;
    if (gn_entry_parse(buf->base, buf->len, &e)) {
        gn_diag("raft: an entry of the log is not ours (%zu bytes): skipped", buf->len);
        return 0;
    }
    if (e.clock > gn_group_ms)
        gn_group_ms = e.clock;
    drain(p); /* what earlier entries and reads left, with its own output */
    if (e.kind == 'R') {
        /* an entry proposed before this directory was made names an
         * earlier member of this id (removed, then its directory reset) */
        if (e.seq == r->raft.id && e.clock >= r->born_ms)
            retire(r);
        return 0;
    }
    if (e.kind == 'T') {
        gn_port_sweep(p); /* purge what has expired by the group's clock */
        drain(p);
        gn_rids_expire(&r->rids, gn_group_ms);
        return 0;
    }
    size_t at = 0;
    gn_item it;
    int more;
    while ((more = gn_item_next(&e, &at, &it)) == 1)
        apply_request(r, &e, &it);
    if (more < 0)
        gn_diag("raft: an entry of the log has a malformed request: the rest is skipped");
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Snapshots                                                                 */

static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    gn_raft *r = fsm->data;
    gn_buf img = {0};
    gn_snapshot_begin(&img, gn_group_ms, &r->rids);
    gn_image_write(r->p, &img);
    *bufs = raft_malloc(sizeof **bufs);
    if (!*bufs) {
        gn_buf_free(&img);
        return RAFT_NOMEM;
    }
    (*bufs)[0].base = img.data;
    (*bufs)[0].len = img.len;
    *n_bufs = 1;
    return 0;
}

static int fsm_snapshot_finalize(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    (void)fsm;
    for (unsigned i = 0; i < *n_bufs; i++)
        free((*bufs)[i].base); /* a gn_buf's */
    raft_free(*bufs);
    *bufs = NULL;
    *n_bufs = 0;
    return 0;
}

static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    gn_raft *r = fsm->data;
    const unsigned char *d = buf->base;
    int rc = RAFT_MALFORMED;
    gn_rids ids = {0};
    int64_t clock;
    size_t at = gn_snapshot_parse(d, buf->len, &clock, &ids);
    if (at) {
        drain(r->p);
        if (gn_image_load(r->p, d + at, buf->len - at) == 0) {
            gn_rids_clear(&r->rids);
            r->rids = ids;
            gn_group_ms = clock;
            rc = 0;
        }
    }
    if (rc)
        gn_rids_clear(&ids);
    if (rc)
        gn_diag("raft: a snapshot that is not ours (%zu bytes): not restored", buf->len);
    raft_free(buf->base);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Proposing                                                                 */

/* An entry's buffer, with its header; the body (if any) goes at
 * GN_ENTRY_HEADER. */
static unsigned char *entry_new(gn_raft *r, int kind, uint64_t seq, size_t body_len)
{
    gn_entry h = {kind, gn_wall_ms(), r->proposer, seq, NULL, body_len};
    unsigned char *e = raft_malloc(gn_entry_size(body_len));
    if (e)
        gn_entry_write(e, &h);
    return e;
}

static void unlink_pending(gn_raft *r, gn_proposal *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        r->pending = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        r->pending_tail = q->prev;
}

/* Answers and frees a write libraft is through with. One not answered
 * when applied is in the log (raft_apply took it): whatever libraft says
 * now (leadership lost, shut down), a later leader may still commit it:
 * it may or may not be applied in the end, and the reply says so. */
static void proposal_done(gn_raft *r, gn_proposal *q)
{
    unlink_pending(r, q);
    if (!q->answered) {
        gn_slice tag = gn_buf_slice(&q->tag);
        reply_leader(r, &tag, "leadership_lost");
    }
    gn_buf_free(&q->tag);
    free(q);
}

static void on_batch_applied(struct raft_apply *req, int status, void *result)
{
    (void)status;
    (void)result;
    gn_batch *b = req->data;
    gn_raft *r = b->r;
    for (size_t i = 0; i < b->n; i++)
        proposal_done(r, b->qs[i]);
    free(b);
    r->after();
}

/* Adds a write to the entry being formed (gn_raft_flush proposes it);
 * `client` and `rseq` are its request id (0, 0: none). */
static void add_write(gn_raft *r, const gn_slice *tag, const unsigned char *frame, size_t len,
                      uint64_t client, uint64_t rseq)
{
    if (r->forming_n == r->forming_cap) {
        r->forming_cap = r->forming_cap ? 2 * r->forming_cap : 64;
        r->forming = realloc(r->forming, r->forming_cap * sizeof *r->forming);
        if (!r->forming)
            abort();
    }
    gn_proposal *q = calloc(1, sizeof *q);
    if (!q)
        abort();
    q->r = r;
    q->seq = ++r->seq;
    gn_buf_put(&q->tag, tag->data, tag->len);
    gn_item it = {q->seq, client, rseq, frame, len};
    gn_item_add(&r->body, &it);
    r->forming[r->forming_n++] = q;
    q->prev = r->pending_tail;
    if (r->pending_tail)
        r->pending_tail->next = q;
    else
        r->pending = q;
    r->pending_tail = q;
}

void gn_raft_flush(gn_raft *r)
{
    if (!r->forming_n)
        return;
    size_t n = r->forming_n;
    gn_batch *b = malloc(sizeof *b + n * sizeof(gn_proposal *));
    unsigned char *e = b ? entry_new(r, 'Q', 0, r->body.len) : NULL;
    int rc = RAFT_NOMEM;
    if (e) {
        memcpy(e + GN_ENTRY_HEADER, r->body.data, r->body.len);
        b->r = r;
        b->n = n;
        memcpy(b->qs, r->forming, n * sizeof(gn_proposal *));
        b->req.data = b;
        struct raft_buffer buf = {e, gn_entry_size(r->body.len)};
        rc = raft_apply(&r->raft, &b->req, &buf, 1, on_batch_applied);
        if (rc)
            raft_free(e);
    }
    if (rc) {
        /* not in the log: certainly not applied */
        for (size_t i = 0; i < n; i++) {
            gn_proposal *q = r->forming[i];
            gn_slice tag = gn_buf_slice(&q->tag);
            if (rc == RAFT_NOTLEADER)
                reply_leader(r, &tag, "not_leader");
            else
                reply_raft_error(r, &tag, rc);
            q->answered = 1;
            proposal_done(r, q);
        }
        free(b);
    }
    r->forming_n = 0;
    r->body.len = 0;
    if (r->body.cap > (4u << 20))
        gn_buf_free(&r->body);
}

/* ------------------------------------------------------------------------ */
/* Ticks: linearizable reads, and the group's clock                          */

static void propose_tick(gn_raft *r, int sweep);

/* Serves (ok) or refuses (not) the reads a tick carried. */
static void tick_reads(gn_raft *r, gn_buf *reads, int ok)
{
    for (size_t at = 0; at + 4 <= reads->len;) {
        size_t len = (size_t)gn_be_get(reads->data + at, 4);
        const unsigned char *frame = reads->data + at + 4;
        at += 4 + len;
        if (ok) {
            gn_dispatch(r->p, frame, len);
        } else {
            gn_slice tag = frame_tag(r, frame, len);
            if (tag.data)
                reply_leader(r, &tag, "not_leader");
        }
    }
    gn_buf_free(reads);
}

static void on_tick_applied(struct raft_apply *req, int status, void *result)
{
    (void)result;
    gn_tick *t = req->data;
    gn_raft *r = t->r;
    if (t->sweep)
        r->sweep_tick = 0;
    else
        r->tick = NULL;
    int sweep = t->sweep;
    tick_reads(r, &t->reads, status == 0);
    free(t);
    if (!sweep && r->reads_next.len)
        propose_tick(r, 0);
    r->after();
}

static void propose_tick(gn_raft *r, int sweep)
{
    gn_tick *t = calloc(1, sizeof *t);
    unsigned char *e = t ? entry_new(r, 'T', 0, 0) : NULL;
    if (!e) {
        free(t);
        if (!sweep)
            tick_reads(r, &r->reads_next, 0);
        return;
    }
    t->r = r;
    t->sweep = sweep;
    t->req.data = t;
    if (!sweep) {
        t->reads = r->reads_next;
        memset(&r->reads_next, 0, sizeof r->reads_next);
    }
    struct raft_buffer b = {e, gn_entry_size(0)};
    int rc = raft_apply(&r->raft, &t->req, &b, 1, on_tick_applied);
    if (rc) {
        raft_free(e);
        tick_reads(r, &t->reads, 0);
        free(t);
        return;
    }
    if (sweep)
        r->sweep_tick = 1;
    else
        r->tick = t;
}

/* A read on the leader: served after the next tick is applied. */
static void read_after_tick(gn_raft *r, const unsigned char *frame, size_t len)
{
    gn_buf_be(&r->reads_next, len, 4);
    gn_buf_put(&r->reads_next, frame, len);
    if (!r->tick)
        propose_tick(r, 0);
}

void gn_raft_sweep(gn_raft *r)
{
    if (raft_state(&r->raft) == RAFT_LEADER && !r->sweep_tick)
        propose_tick(r, 1);
}

/* ------------------------------------------------------------------------ */
/* Status, membership and leadership                                         */

static const char *state_name(int state)
{
    switch (state) {
    case RAFT_FOLLOWER:
        return "follower";
    case RAFT_CANDIDATE:
        return "candidate";
    case RAFT_LEADER:
        return "leader";
    default:
        return "unavailable";
    }
}

/* #{id, state, leader, last_index, applied, members} */
static void reply_status(gn_raft *r, const gn_slice *tag)
{
    gn_buf *out = &r->p->out;
    raft_id lid = 0;
    const char *laddr = NULL;
    raft_leader(&r->raft, &lid, &laddr);
    size_t m = gn_frame_begin(out, tag->data, tag->len);
    gn_enc_map(out, 6);
    gn_enc_atom(out, "id");
    gn_enc_int(out, (int64_t)r->raft.id);
    gn_enc_atom(out, "state");
    gn_enc_atom(out, state_name(raft_state(&r->raft)));
    gn_enc_atom(out, "leader");
    if (lid && laddr) {
        gn_enc_tuple(out, 2);
        gn_enc_int(out, (int64_t)lid);
        gn_enc_string(out, laddr);
    } else {
        gn_enc_atom(out, "nil");
    }
    gn_enc_atom(out, "last_index");
    gn_enc_int(out, (int64_t)raft_last_index(&r->raft));
    gn_enc_atom(out, "applied");
    gn_enc_int(out, (int64_t)raft_last_applied(&r->raft));
    gn_enc_atom(out, "members");
    const struct raft_configuration *c = &r->raft.configuration;
    if (c->n)
        gn_enc_list(out, c->n);
    for (unsigned i = 0; i < c->n; i++) {
        gn_enc_tuple(out, 3);
        gn_enc_int(out, (int64_t)c->servers[i].id);
        gn_enc_string(out, c->servers[i].address);
        gn_enc_atom(out, c->servers[i].role == RAFT_VOTER     ? "voter"
                         : c->servers[i].role == RAFT_STANDBY ? "standby"
                                                              : "spare");
    }
    gn_enc_nil(out);
    gn_frame_end(out, m);
}

static gn_change *change_new(gn_raft *r, const gn_slice *tag)
{
    gn_change *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->r = r;
    gn_buf_put(&c->tag, tag->data, tag->len);
    return c;
}

static void change_done(gn_change *c, int status)
{
    gn_raft *r = c->r;
    gn_slice tag = gn_buf_slice(&c->tag);
    if (status == 0)
        gn_reply_atom(&r->p->out, &tag, "ok");
    else if (status == RAFT_NOTLEADER || status == RAFT_LEADERSHIPLOST)
        reply_leader(r, &tag, status == RAFT_NOTLEADER ? "not_leader" : "leadership_lost");
    else
        reply_raft_error(r, &tag, status);
    gn_buf_free(&c->tag);
    free(c);
    r->after();
}

static void on_changed(struct raft_change *req, int status)
{
    gn_change *c = req->data;
    if (status == 0 && c->promote) {
        /* added as a spare: now a voter, once it has caught up */
        c->promote = 0;
        int rc = raft_assign(&c->r->raft, &c->change, c->id, RAFT_VOTER, on_changed);
        if (rc == 0)
            return;
        status = rc;
    }
    change_done(c, status);
}

static void on_transferred(struct raft_transfer *req)
{
    gn_change *c = req->data;
    raft_id lid = 0;
    const char *laddr = NULL;
    raft_leader(&c->r->raft, &lid, &laddr);
    gn_slice tag = gn_buf_slice(&c->tag);
    if (lid && lid != c->r->raft.id && (!c->id || lid == c->id)) {
        gn_reply_atom(&c->r->p->out, &tag, "ok");
    } else {
        gn_error_text(&c->r->p->out, &tag, "transfer_failed", "the leadership did not move");
    }
    gn_raft *r = c->r;
    gn_buf_free(&c->tag);
    free(c);
    r->after();
}

/* Removing a member: a retirement entry naming it goes through the log
 * first, so that the member, still in the group, applies it and marks its
 * directory; a few heartbeats later (they carry the commit to it) the
 * member is removed. */
static void on_retire_waited(uv_handle_t *h)
{
    gn_change *c = h->data;
    c->change.data = c;
    int rc = raft_remove(&c->r->raft, &c->change, (raft_id)c->id, on_changed);
    if (rc)
        change_done(c, rc);
}

static void on_retire_timer(uv_timer_t *t)
{
    uv_close((uv_handle_t *)t, on_retire_waited);
}

static void on_retired(struct raft_apply *req, int status, void *result)
{
    (void)result;
    gn_change *c = req->data;
    gn_raft *r = c->r;
    if (status)
        return change_done(c, status);
    c->wait.data = c;
    if (uv_timer_init(r->loop, &c->wait) ||
        uv_timer_start(&c->wait, on_retire_timer, 3 * (uint64_t)r->heartbeat_ms, 0))
        on_retire_waited((uv_handle_t *)&c->wait); /* cannot happen: remove at once */
}

static int propose_retire(gn_change *c)
{
    gn_raft *r = c->r;
    unsigned char *e = entry_new(r, 'R', c->id, 0);
    if (!e)
        return RAFT_NOMEM;
    c->retire.data = c;
    struct raft_buffer b = {e, gn_entry_size(0)};
    int rc = raft_apply(&r->raft, &c->retire, &b, 1, on_retired);
    if (rc)
        raft_free(e);
    return rc;
}

/* raft_add Id Address | raft_remove Id | raft_transfer Id (0: any) */
static void membership(gn_raft *r, gn_request *req)
{
    int64_t id;
    int rc;
    if (raft_state(&r->raft) != RAFT_LEADER)
        return reply_leader(r, &req->tag, "not_leader");
    if (req->nargs < 1 || gn_arg_int(req, &id) || id < 0)
        return gn_reply_badarg(&r->p->out, &req->tag, "expected a member id");
    gn_change *c = change_new(r, &req->tag);
    c->id = (uint64_t)id;
    if (!strcmp(req->op, "raft_add")) {
        gn_slice addr;
        char text[256];
        if (req->nargs != 2 || id == 0 || gn_etf_binary(&req->args, &addr) || addr.len == 0 ||
            addr.len >= sizeof text) {
            gn_buf_free(&c->tag);
            free(c);
            return gn_reply_badarg(&r->p->out, &req->tag, "expected raft_add, Id, \"host:port\"");
        }
        memcpy(text, addr.data, addr.len);
        text[addr.len] = 0;
        c->promote = 1;
        c->change.data = c;
        rc = raft_add(&r->raft, &c->change, (raft_id)id, text, on_changed);
    } else if (!strcmp(req->op, "raft_remove")) {
        rc = propose_retire(c);
    } else {
        c->transfer.data = c;
        rc = raft_transfer(&r->raft, &c->transfer, (raft_id)id, on_transferred);
    }
    if (rc)
        change_done(c, rc);
}

/* ------------------------------------------------------------------------ */
/* Routing the VM's requests                                                 */

enum { ROUTE_WRITE, ROUTE_READ, ROUTE_HERE, ROUTE_STATUS, ROUTE_MEMBERSHIP };

static int route_of(const char *op)
{
    static const char *const writes[] = {
        "put",   "put_new",  "delete_key", "take", "update_counter",
        "clear", "put_many", "delete",     "open", "restore"};
    static const char *const here[] = {"sync", "stop", "encode_key", "compact"};
    for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++)
        if (!strcmp(op, writes[i]))
            return ROUTE_WRITE;
    for (size_t i = 0; i < sizeof here / sizeof here[0]; i++)
        if (!strcmp(op, here[i]))
            return ROUTE_HERE;
    if (!strcmp(op, "raft_status"))
        return ROUTE_STATUS;
    if (!strcmp(op, "raft_add") || !strcmp(op, "raft_remove") || !strcmp(op, "raft_transfer"))
        return ROUTE_MEMBERSHIP;
    return ROUTE_READ; /* and unknown ops, which dispatch refuses */
}

static void route(void *ctx, const unsigned char *frame, size_t len)
{
    gn_raft *r = ctx;
    gn_request req;
    uint64_t client = 0, rseq = 0;
    int local = r->local_reads;
    if (gn_request_decode(&r->p->out, frame, len, &req))
        return;
    if (!strcmp(req.op, "read")) {
        if (gn_unwrap_read(frame, len, &r->inner_read, &local))
            return gn_reply_badarg(
                &r->p->out, &req.tag,
                "expected {Tag, read, local | linearizable, Op, Store, Args...}");
        frame = r->inner_read.data;
        len = r->inner_read.len;
        if (gn_request_decode(&r->p->out, frame, len, &req))
            return;
    }
    if (!strcmp(req.op, "rid")) {
        if (gn_unwrap_rid(frame, len, &r->inner, &client, &rseq))
            return gn_reply_badarg(&r->p->out, &req.tag,
                                   "expected {Tag, rid, {Client, Seq}, Op, Store, Args...}");
        frame = r->inner.data;
        len = r->inner.len;
        if (gn_request_decode(&r->p->out, frame, len, &req))
            return;
    }
    int leader = raft_state(&r->raft) == RAFT_LEADER;
    int to = route_of(req.op);
    if (r->retired && to != ROUTE_STATUS && strcmp(req.op, "stop"))
        return gn_reply_error(&r->p->out, &req.tag, "removed_member");
    switch (to) {
    case ROUTE_HERE:
        return gn_dispatch(r->p, frame, len);
    case ROUTE_STATUS:
        return reply_status(r, &req.tag);
    case ROUTE_MEMBERSHIP:
        return membership(r, &req);
    case ROUTE_WRITE:
        if (!leader)
            return reply_leader(r, &req.tag, "not_leader");
        return add_write(r, &req.tag, frame, len, client, rseq);
    default:
        if (local)
            return gn_dispatch(r->p, frame, len);
        if (!leader)
            return reply_leader(r, &req.tag, "not_leader");
        return read_after_tick(r, frame, len);
    }
}

/* ------------------------------------------------------------------------ */
/* Life                                                                      */

/* Parses "Id=host:port,..." into `conf`; 0, or -1 if malformed. */
static int parse_members(const char *text, struct raft_configuration *conf)
{
    char *copy = strdup(text), *save = NULL;
    int rc = copy ? 0 : -1;
    for (char *m = copy ? strtok_r(copy, ",", &save) : NULL; m && !rc;
         m = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(m, '='), *end;
        unsigned long long id = eq ? strtoull(m, &end, 10) : 0;
        if (!eq || end != eq || id == 0 || !eq[1] ||
            raft_configuration_add(conf, (raft_id)id, eq + 1, RAFT_VOTER))
            rc = -1;
    }
    free(copy);
    return conf->n ? rc : -1;
}

/* When the directory was first used: read from its BORN file, or written
 * there now. 0, or -1 (errno). */
static int born(const char *dir, int64_t *ms)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, GN_BORN_FILE);
    FILE *f = fopen(path, "r");
    long long v;
    if (f) {
        int ok = fscanf(f, "%lld", &v) == 1;
        fclose(f);
        if (!ok) {
            errno = EINVAL;
            return -1;
        }
        *ms = v;
        return 0;
    }
    *ms = gn_wall_ms();
    if (!(f = fopen(path, "w")))
        return -1;
    int bad = fprintf(f, "%lld\n", (long long)*ms) < 0 || fflush(f) || fsync(fileno(f));
    return fclose(f) || bad ? -1 : 0;
}

static void on_closed(struct raft *raft);

/* Undoes a start that failed after `stage` steps: 0 none, 1 the transport,
 * 2 the I/O, 3 raft_init (then libraft closes, and on_closed frees, once
 * the loop runs). Returns NULL. */
static gn_raft *start_failed(gn_raft *r, int stage)
{
    if (stage >= 3) {
        raft_close(&r->raft, on_closed);
        return NULL;
    }
    if (stage >= 2)
        raft_uv_close(&r->io);
    if (stage >= 1)
        raft_uv_tcp_close(&r->transport);
    free(r->dir);
    free(r);
    return NULL;
}

gn_raft *gn_raft_start(uv_loop_t *loop, gn_port *p, const gn_raft_config *c, void (*after)(void),
                       const char **kind, char *err, size_t errlen)
{
    *kind = "raft_failed";
    gn_raft *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    r->p = p;
    r->loop = loop;
    r->dir = strdup(c->dir);
    r->heartbeat_ms = c->heartbeat_ms ? c->heartbeat_ms : 100;
    r->after = after;
    r->local_reads = c->local_reads;
    r->proposer = ((uint64_t)uv_hrtime() << 16) ^ (uint64_t)getpid() ^ ((uint64_t)c->id << 48);
    r->fsm.version = 2;
    r->fsm.data = r;
    r->fsm.apply = fsm_apply;
    r->fsm.snapshot = fsm_snapshot;
    r->fsm.snapshot_finalize = fsm_snapshot_finalize;
    r->fsm.restore = fsm_restore;
    r->raft.data = r;
    gn_group_ms = gn_wall_ms(); /* until the first entry is applied */
    int rc;
    if (mkdir(c->dir, 0700) && errno != EEXIST) {
        snprintf(err, errlen, "%s: %s", c->dir, strerror(errno));
        return start_failed(r, 0);
    }
    char marker[4096];
    snprintf(marker, sizeof marker, "%s/%s", c->dir, GN_RETIRED_FILE);
    if (access(marker, F_OK) == 0) {
        *kind = "removed_member";
        snprintf(err, errlen, "%s", c->dir);
        return start_failed(r, 0);
    }
    if (born(c->dir, &r->born_ms)) {
        snprintf(err, errlen, "%s/%s: %s", c->dir, GN_BORN_FILE, strerror(errno));
        return start_failed(r, 0);
    }
    if ((rc = raft_uv_tcp_init(&r->transport, loop))) {
        snprintf(err, errlen, "raft_uv_tcp_init: %s", raft_strerror(rc));
        return start_failed(r, 0);
    }
    if ((rc = raft_uv_init(&r->io, loop, c->dir, &r->transport))) {
        snprintf(err, errlen, "raft_uv_init: %s: %s", c->dir, r->io.errmsg);
        return start_failed(r, 1);
    }
    if ((rc = raft_init(&r->raft, &r->io, &r->fsm, c->id, c->address))) {
        snprintf(err, errlen, "raft_init: %s", raft_errmsg(&r->raft));
        return start_failed(r, 2);
    }
    if (c->election_ms)
        raft_set_election_timeout(&r->raft, c->election_ms);
    if (c->heartbeat_ms)
        raft_set_heartbeat_timeout(&r->raft, c->heartbeat_ms);
    /* a snapshot writes every store on the loop: libraft's default (every
     * 1,024 entries) spent most of a busy group's time on them */
    unsigned every = c->snapshot_every ? c->snapshot_every : GN_SNAPSHOT_EVERY;
    raft_set_snapshot_threshold(&r->raft, every);
    raft_set_snapshot_trailing(&r->raft, every / 4 ? every / 4 : 1);
    raft_set_pre_vote(&r->raft, true);
    if (c->members) {
        struct raft_configuration conf;
        raft_configuration_init(&conf);
        if (parse_members(c->members, &conf)) {
            raft_configuration_close(&conf);
            snprintf(err, errlen, "bad --raft-members: %s", c->members);
            return start_failed(r, 3);
        }
        rc = raft_bootstrap(&r->raft, &conf);
        raft_configuration_close(&conf);
        if (rc && rc != RAFT_CANTBOOTSTRAP) { /* CANTBOOTSTRAP: not a new directory */
            snprintf(err, errlen, "raft_bootstrap: %s", raft_errmsg(&r->raft));
            return start_failed(r, 3);
        }
    }
    if ((rc = raft_start(&r->raft))) {
        snprintf(err, errlen, "raft_start: %s", raft_errmsg(&r->raft));
        return start_failed(r, 3);
    }
    gn_port_set_router(p, route, r);
    return r;
}

static void on_closed(struct raft *raft)
{
    gn_raft *r = raft->data;
    raft_uv_close(&r->io);
    raft_uv_tcp_close(&r->transport);
    gn_buf_free(&r->reads_next);
    gn_buf_free(&r->discard);
    gn_rids_clear(&r->rids);
    gn_buf_free(&r->inner);
    gn_buf_free(&r->inner_read);
    gn_buf_free(&r->body);
    free(r->forming);
    free(r->dir);
    free(r);
}

static void after_nothing(void)
{
}

void gn_raft_close(gn_raft *r)
{
    gn_port_set_router(r->p, NULL, NULL);
    r->after = after_nothing; /* what libraft fails now is not answered */
    raft_close(&r->raft, on_closed);
}
