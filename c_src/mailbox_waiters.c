/*
 * The mailbox's blocked senders (overflow: block): each lane's FIFO of
 * waiters, admitting them in arrival order into the room made, releasing
 * them all when the owner exits, and the outbox through which they are
 * told (and their requests delivered) once the lock is released. Parking
 * a sender is the send path's (mailbox_send.c, gn_block).
 *
 * Locking: gn_wait_unlink, gn_admit_waiters and gn_release_waiters expect
 * mb->lock held; gn_outbox_flush expects it released (it sends messages).
 * Telling a waiter `closed` after a release runs on the reaper thread.
 */
#include "mailbox_impl.h"

static void gn_outbox_add(gn_outbox *out, gn_waiter *w)
{
    w->next = NULL;
    if (out->last)
        out->last->next = w;
    else
        out->released = w;
    out->last = w;
}

/* Tells a waiter unlinked from its FIFO its result, frees its request, and
 * drops the FIFO's reference. Any thread; no lock held. */
static void gn_waiter_tell(ErlNifEnv *caller_env, gn_waiter *w)
{
    /* A waiter admitted into a lane handed its env (and request) over. */
    ErlNifEnv *menv = w->env ? w->env : enif_alloc_env();
    if (menv) {
        ERL_NIF_TERM msg = enif_make_tuple2(menv, enif_make_resource(menv, w), w->result);
        enif_send(caller_env, &w->pid, menv, msg); /* fails only if the sender died */
        enif_free_env(menv);
    }
    w->env = NULL;
    enif_release_resource(w);
}

void gn_outbox_flush(ErlNifEnv *caller_env, gn_outbox *out)
{
    gn_waiter *w = out->released;
    int sent = 0;
    while (w) {
        gn_waiter *next = w->next;
        /* The request reaches the owner before its sender is told, so it
         * comes before anything the sender sends next, and blocked senders'
         * requests arrive in the order they are admitted. */
        if (w->deliver)
            enif_send(caller_env, &out->owner, NULL,
                      w->deliver == GN_AS_CAST ? enif_make_tuple2(w->env, gn_am_gen_cast, w->item)
                                               : w->item);
        sent += w->deliver ? 2 : 1;
        gn_waiter_tell(caller_env, w); /* may free w */
        w = next;
    }
    out->released = out->last = NULL;
    if (sent)
        enif_consume_timeslice(caller_env, sent / 4 > 99 ? 100 : 1 + sent / 4);
}

void gn_wait_unlink(gn_mailbox *mb, gn_waiter *w)
{
    int l = w->lane;
    if (w->prev)
        w->prev->next = w->next;
    else
        mb->wait_head[l] = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        mb->wait_tail[l] = w->prev;
    w->prev = w->next = NULL;
    w->linked = 0;
    mb->waiting--;
    mb->waiting_lane[l]--;
}

/* Wakes the owner unless a wake is pending, on the paths other than a
 * sender's enqueue (admitted waiters, refills). Call with mb->lock held: the
 * wake is sent before the lock is released, so a sender that then finds
 * `signaled` set knows the wake is already in the owner's process mailbox,
 * ahead of anything it sends next (a wake sent after unlocking could be
 * overtaken by a message caused by a later sender's cast). */
static void gn_signal(ErlNifEnv *env, gn_mailbox *mb)
{
    if (__atomic_load_n(&mb->signaled, __ATOMIC_RELAXED))
        return;
    __atomic_store_n(&mb->signaled, 1, __ATOMIC_RELEASE);
    enif_send(env, &mb->owner, NULL, gn_am_wake);
}

/* The most gn_admit_waiters admits in one call. */
#define GN_ADMIT_SLICE 128

int gn_admit_waiters(ErlNifEnv *env, gn_mailbox *mb, gn_outbox *out)
{
    int pushed = 0, more = 0;
    unsigned admitted = 0;
    for (int l = GN_NORMAL; l <= GN_HIGH && !more; l++) {
        gn_waiter *w;
        while ((w = mb->wait_head[l])) {
            if (admitted == GN_ADMIT_SLICE) {
                more = 1;
                break;
            }
            int into_lane = l == GN_HIGH || (mb->queue && !w->is_call);
            if (gn_lane_len(mb, l) >= mb->capacity ||
                (into_lane && !gn_lane_push(&mb->lanes[l], w->item, w->env, w->cost, mb->next_seq,
                                            mb->epoch, w->is_call)))
                break;
            if (into_lane) {
                w->env = NULL; /* the item's now: no copy under the lock */
                mb->next_seq++;
                pushed = 1;
            } else if (w->is_call) {
                w->deliver = GN_AS_IS;
            } else {
                w->deliver = GN_AS_CAST;
                __atomic_fetch_add(&mb->sent, 1, __ATOMIC_RELAXED);
            }
            w->result = gn_am_ok;
            gn_wait_unlink(mb, w);
            __atomic_fetch_add(&mb->accepted, 1, __ATOMIC_RELAXED);
            gn_outbox_add(out, w);
            admitted++;
        }
    }
    gn_note_length(mb);
    if (pushed || more)
        gn_signal(env, mb);
    return more;
}

/* Tells every waiter of a released chain `closed`: a reaper job, so that
 * an owner's exit costs O(1) however many senders wait. */
static void gn_waiters_close(void *arg)
{
    gn_waiter *w = arg;
    while (w) {
        gn_waiter *next = w->next;
        w->result = gn_am_closed;
        gn_waiter_tell(NULL, w);
        w = next;
    }
}

void gn_release_waiters(gn_mailbox *mb)
{
    gn_waiter *all = mb->wait_head[GN_NORMAL];
    if (mb->wait_tail[GN_NORMAL])
        mb->wait_tail[GN_NORMAL]->next = mb->wait_head[GN_HIGH];
    else
        all = mb->wait_head[GN_HIGH];
    if (all)
        gn_reap(gn_waiters_close, all);
    for (int l = GN_NORMAL; l <= GN_HIGH; l++) {
        mb->wait_head[l] = mb->wait_tail[l] = NULL;
        mb->waiting_lane[l] = 0;
    }
    mb->waiting = 0;
    mb->wait_gen++;
}
