/*
 * The port program's core (port.h) and its life: frames in, handed to
 * dispatch.c; long work in slices (gn_port_step); the journal's commits and
 * syncs; the end. No I/O of its own but the data directory's files
 * (durable.c); main.c owns the event loop. Loading is in replay.c.
 */
#include <stdlib.h>
#include <string.h>

#include "compact.h"
#include "diag.h"
#include "dispatch.h"
#include "reply.h"
#include "state.h"

int gn_port_stderr = 1;
int64_t gn_group_ms;

void gn_port_set_router(gn_port *p, gn_route_fn route, void *ctx)
{
    p->route = route;
    p->route_ctx = ctx;
}

/* A whole request frame: to the router, if there is one. */
static void handle_frame(gn_port *p, const unsigned char *frame, size_t len)
{
    p->frames++;
    if (p->route)
        p->route(p->route_ctx, frame, len);
    else
        gn_dispatch(p, frame, len);
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
        gn_reply_error(&p->out, &tag, "frame_too_large");
    else
        gn_event_bad_request(&p->out, "a frame over 64 MiB, with no readable tag");
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
            p->want = (size_t)gn_be_get(p->hdr, 4);
            if (p->want == 0) {
                gn_event_bad_request(&p->out, "an empty frame");
                p->hdr_len = 0;
            } else if (p->want > GN_PORT_MAX_FRAME) {
                p->skip_left = p->want;
                p->hdr_len = 0;
            }
            continue;
        }
        if (p->in.len == 0 && len >= p->want) { /* a whole frame: no copy */
            handle_frame(p, data, p->want);
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
            handle_frame(p, p->in.data, p->in.len);
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

uint64_t gn_port_frames(const gn_port *p)
{
    return p->frames;
}

int gn_port_journal_pending(const gn_port *p)
{
    return p->d && gn_durable_journal(p->d)->len > 0;
}

gn_buf *gn_port_output(gn_port *p)
{
    return &p->out;
}

/* ------------------------------------------------------------------------ */
/* Long work                                                                 */

int gn_port_step(gn_port *p)
{
    uint64_t deadline = gn_now_ns() + GN_SLICE_NS;
    gn_dispatch_step(p, deadline);
    gn_jobs_run_global(&p->jobs, p, deadline);
    if (p->compact_pending)
        gn_compact_start(p);
    int garbage = gn_garbage_step(20000);
    return gn_port_busy(p) || garbage;
}

int gn_port_busy(const gn_port *p)
{
    return p->jobs.busy || p->jobs.global || p->compact_pending;
}

void gn_port_sweep(gn_port *p)
{
    int64_t now = gn_now_ms();
    size_t b;
    for (gn_pstore *s = gn_stores_first(&p->stores, &b); s; s = gn_stores_next(&p->stores, &b, s))
        gn_dispatch_sweep(p, s, now);
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
        gn_compact_start(p);
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
    if (p->sync_waiters.len == 0)
        return 0;
    /* what they wait for may have been written after that fdatasync began */
    if (gn_durable_commit(p->d) < 0 || gn_durable_sync_now(p->d) < 0)
        return -1;
    gn_tags_reply(&p->out, &p->sync_waiters, NULL);
    return 0;
}

void gn_port_fail(gn_port *p)
{
    const char *kind = "journal_write_failed", *text = "the journal failed";
    if (p->d)
        gn_durable_failed(p->d, &kind, &text);
    p->out.len = 0; /* nothing more is acknowledged */
    gn_error_text(&p->out, NULL, kind, text);
    gn_diag("%s: %s: exiting, nothing more acknowledged", kind, text);
}

void gn_port_free(gn_port *p)
{
    size_t b;
    for (gn_pstore *s = gn_stores_first(&p->stores, &b), *next; s; s = next) {
        next = gn_stores_next(&p->stores, &b, s);
        gn_store_free(p, s);
    }
    gn_jobs_free(&p->jobs);
    while (gn_garbage_step(SIZE_MAX))
        ;
    gn_durable_close(p->d);
    gn_stores_free(&p->stores);
    gn_buf_free(&p->out);
    gn_buf_free(&p->in);
    gn_buf_free(&p->skip_head);
    gn_buf_free(&p->compact_waiters);
    gn_buf_free(&p->sync_waiters);
    gn_buf_free(&p->key);
    gn_buf_free(&p->val);
    gn_buf_free(&p->part);
    gn_buf_free(&p->recs);
    free(p->dir);
    free(p);
}
