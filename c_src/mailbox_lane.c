/*
 * The mailbox's lanes: each a chain of chunks of items, with a cursor that
 * splits the items taken (and not retired yet) from those queued. Pushing
 * a request, retiring what was taken, rewinding it in front again, and
 * freeing chunks. Peeking and taking are inline in mailbox_impl.h, as the
 * enqueue and take paths call them.
 *
 * Locking: mb->lock is not taken here. Every function expects it held
 * for the mailbox whose lane it is given, except gn_chunks_free, which
 * works on chunks no lane holds any more (after unlocking, or on the
 * reaper thread).
 */
#include <string.h>

#include "mailbox_impl.h"

int gn_lane_push(gn_lane *lane, ERL_NIF_TERM term, ErlNifEnv *own, uint16_t cost, uint64_t seq,
                 uint32_t epoch, int is_call)
{
    gn_chunk *c = lane->last;
    if (!c || c->tail == GN_CHUNK_ITEMS) {
        gn_chunk *n = gn_alloc(sizeof(*n));
        if (!n)
            return 0;
        if (!(n->env = enif_alloc_env())) {
            gn_free(n);
            return 0;
        }
        n->next = NULL;
        n->head = n->tail = 0;
        if (c) {
            c->next = n;
        } else {
            lane->first = lane->cur = n;
            lane->pos = 0;
        }
        lane->last = n;
        c = n;
    }
    gn_item *item = &c->items[c->tail++];
    item->own = own;
    item->term = own ? term : enif_make_copy(c->env, term);
    item->cost = cost;
    item->seq = seq;
    item->epoch = epoch;
    item->is_call = (uint8_t)is_call;
    item->dead = 0;
    lane->len++;
    return 1;
}

void gn_lane_retire(gn_lane *lane, size_t live, gn_chunk **done)
{
    gn_chunk *c;
    while ((c = lane->first)) {
        if (c->head == GN_CHUNK_ITEMS) {
            lane->first = c->next;
            if (lane->cur == c) {
                lane->cur = c->next;
                lane->pos = 0;
            }
            if (!lane->first)
                lane->last = NULL;
            c->next = *done;
            *done = c;
            continue;
        }
        if (c == lane->cur && c->head == lane->pos)
            break;
        if (!c->items[c->head].dead) {
            if (live == 0)
                break;
            live--;
            lane->inflight--;
        }
        c->head++;
    }
}

void gn_lane_rewind(gn_lane *lane)
{
    if (!lane->first)
        return;
    lane->cur = lane->first;
    lane->pos = lane->first->head;
    lane->len += lane->inflight;
    lane->inflight = 0;
}

void gn_chunks_free(void *arg)
{
    gn_chunk *c = arg;
    while (c) {
        gn_chunk *next = c->next;
        for (unsigned i = 0; i < c->tail; i++)
            if (c->items[i].own)
                enif_free_env(c->items[i].own);
        if (c->env)
            enif_free_env(c->env);
        gn_free(c);
        c = next;
    }
}

void gn_lane_discard(gn_lane *lane)
{
    if (lane->first)
        gn_reap(gn_chunks_free, lane->first);
    memset(lane, 0, sizeof(*lane));
}
