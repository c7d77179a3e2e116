/*
 * The mailbox owner's NIFs: take (a batch out of the lanes, admitting
 * blocked senders into the room made), watermark, high, ack, and the
 * hold test hook. Each works on a mailbox the calling process owns
 * (gn_owned_mailbox), except high and hold, which check only the handle.
 *
 * Locking: take, watermark and hold take mb->lock and release it before
 * they return. A take sends its wakes under the lock (see gn_signal in
 * mailbox_waiters.c) and flushes the outbox after unlocking. high reads a
 * hint, lock-free; ack takes the lock only for an expired call or a
 * message-mode cast of a bounded mailbox, and is lock-free otherwise.
 */
#include <time.h>

#include "mailbox_impl.h"

/* Resolves a mailbox handle the calling process owns; NULL (badarg) for a
 * foreign term, another process's mailbox, or one whose owner has exited. */
static gn_mailbox *gn_owned_mailbox(ErlNifEnv *env, ERL_NIF_TERM term)
{
    gn_mailbox *mb;
    ErlNifPid self;
    if (!enif_get_resource(env, term, gn_mailbox_rtype, (void **)&mb))
        return NULL;
    if (!enif_self(env, &self) || enif_compare_pids(&self, &mb->owner) != 0)
        return NULL;
    return mb;
}

/* A take copies its requests out of the lanes, under the lock, on the
 * owner's scheduler: it stops before a request that would take it past
 * this budget, and hands a request too big for a normal scheduler to a
 * dirty one. A copy out costs about what the copy in cost its sender,
 * noted in `cost` (timed for a large request, estimated from its size for
 * a small one): the budget goes by those (so that a batch of small
 * requests is never cut short because the thread was preempted), and
 * the time actually spent is charged to the owner's timeslice. */
#define GN_TAKE_BUDGET_US 250
#define GN_TAKE_DIRTY_US 600

static ERL_NIF_TERM gn_take(ErlNifEnv *env, const ERL_NIF_TERM argv[], int dirty);

static ERL_NIF_TERM gn_mailbox_take_dirty(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    return gn_take(env, argv, 1);
}

/* mailbox_take(Ref, Max, Upto, Wake) -> [Request] | {more, [Request]}
 * Pops up to Max requests, the high lane first, then normal requests whose
 * sequence number is at most Upto (infinity: all; high: none), then admits
 * blocked senders into the room made. Calls queued before the last adoption
 * are skipped. A list of fewer than Max means the lanes were emptied or
 * Upto reached; {more, Requests}: the take stopped at its time budget
 * (large requests) with more to take, as if it had taken Max.
 * Wake = true when the owner is handling a wake: finding both lanes empty
 * then clears `signaled`, so that the next request wakes the owner again,
 * and lanes refilled by blocked senders get a wake of their own. In a hold
 * mailbox, the requests taken before are retired first (the owner takes
 * only once it has handled them), and those taken now are held. */
ERL_NIF_TERM gn_mailbox_take_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    return gn_take(env, argv, 0);
}

static ERL_NIF_TERM gn_take(ErlNifEnv *env, const ERL_NIF_TERM argv[], int dirty)
{
    unsigned max;
    ErlNifUInt64 upto = UINT64_MAX;
    int high_only = 0, wake;
    gn_mailbox *mb = gn_owned_mailbox(env, argv[0]);
    if (!mb || !enif_get_uint(env, argv[1], &max) || max == 0 || max > GN_MAILBOX_MAX_BATCH)
        return enif_make_badarg(env);
    if (enif_is_identical(argv[2], gn_am_high))
        high_only = 1;
    else if (!enif_is_identical(argv[2], gn_am_infinity) && !enif_get_uint64(env, argv[2], &upto))
        return enif_make_badarg(env);
    if (enif_is_identical(argv[3], gn_am_true))
        wake = 1;
    else if (enif_is_identical(argv[3], gn_am_false))
        wake = 0;
    else
        return enif_make_badarg(env);

    ERL_NIF_TERM batch[GN_MAILBOX_MAX_BATCH];
    gn_chunk *done = NULL;
    gn_outbox out = GN_OUTBOX(mb);
    unsigned n = 0;
    int cut = 0, too_big = 0;
    ErlNifTime start = enif_monotonic_time(ERL_NIF_USEC);
    unsigned long costs = 0;
    enif_mutex_lock(mb->lock);
    if (mb->closed) {
        gn_unlock(mb);
        return enif_make_badarg(env);
    }
    /* Message-mode casts are counted without the lock, and the longest
     * queue noted when the owner is about to shorten it: here, or at an ack. */
    gn_note_length(mb);
    if (mb->hold) {
        /* The owner takes again only once it has handled all it took. */
        gn_lane_retire(&mb->lanes[GN_HIGH], SIZE_MAX, &done);
        gn_lane_retire(&mb->lanes[GN_NORMAL], SIZE_MAX, &done);
        __atomic_store_n(&mb->acked, 0, __ATOMIC_RELAXED);
    }
    for (int l = GN_HIGH; l >= (high_only ? GN_HIGH : GN_NORMAL) && !cut && !too_big; l--) {
        gn_lane *lane = &mb->lanes[l];
        gn_item *item;
        while (n < max && (item = gn_lane_peek(lane))) {
            if (l == GN_NORMAL && item->seq > upto)
                break;
            if (n > 0 && costs + item->cost > GN_TAKE_BUDGET_US) {
                cut = 1;
                break;
            }
            if (n == 0 && !dirty && item->cost > GN_TAKE_DIRTY_US) {
                too_big = 1;
                break;
            }
            gn_lane_take(lane);
            if (item->is_call && item->epoch != mb->epoch) {
                /* its caller exited with the old owner */
                __atomic_fetch_sub(&mb->accepted, 1, __ATOMIC_RELAXED);
                mb->dropped++;
                item->dead = 1;
                continue;
            }
            batch[n++] = enif_make_copy(env, item->term);
            costs += item->cost;
            if (mb->hold)
                lane->inflight++;
            else
                item->dead = 1;
        }
        if (!mb->hold)
            gn_lane_retire(lane, SIZE_MAX, &done);
    }
    if (too_big) {
        /* nothing taken: take again on a dirty scheduler */
        gn_unlock(mb);
        gn_chunks_free(done);
        return enif_schedule_nif(env, "mailbox_take", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 gn_mailbox_take_dirty, 4, argv);
    }
    if (mb->waiting) {
        /* The owner is draining: a lane it refills needs no wake unless the
         * drain ends with this take. */
        int was = __atomic_load_n(&mb->signaled, __ATOMIC_RELAXED);
        int more = gn_admit_waiters(env, mb, &out);
        if (wake && was && (gn_queued(mb) > 0 || more) && n < max && !cut)
            enif_send(env, &mb->owner, NULL, gn_am_wake);
    }
    if (wake && gn_queued(mb) == 0)
        __atomic_store_n(&mb->signaled, 0, __ATOMIC_RELEASE);
    gn_unlock(mb);
    gn_chunks_free(done);
    gn_outbox_flush(env, &out);
    if (!dirty) {
        ErlNifTime spent = enif_monotonic_time(ERL_NIF_USEC) - start;
        int percent = 1 + (int)(n / 32) + (int)(spent / 10);
        enif_consume_timeslice(env, percent > 100 ? 100 : percent);
    }
    ERL_NIF_TERM list = enif_make_list_from_array(env, batch, n);
    return cut ? enif_make_tuple2(env, gn_am_more, list) : list;
}

/* mailbox_watermark(Ref) -> Seq | none
 * The newest request in the normal lane: what the owner drains up to before
 * it handles the process messages waiting now, since any of their senders
 * may have known of anything queued before. none: the lane is empty. */
ERL_NIF_TERM gn_mailbox_watermark_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_mailbox *mb = gn_owned_mailbox(env, argv[0]);
    if (!mb)
        return enif_make_badarg(env);
    enif_mutex_lock(mb->lock);
    size_t len = mb->lanes[GN_NORMAL].len;
    uint64_t mark = mb->next_seq - 1;
    gn_unlock(mb);
    return len ? enif_make_uint64(env, mark) : gn_am_none;
}

/* Takes one off `sent`, not below zero: a cast sent with GenServer.cast was
 * never counted. Notes the longest queue on the way. */
static void gn_sent_dec(gn_mailbox *mb)
{
    size_t sent = __atomic_load_n(&mb->sent, __ATOMIC_RELAXED);
    gn_note_max(mb, sent + __atomic_load_n(&mb->high_hint, __ATOMIC_RELAXED));
    while (sent > 0 && !__atomic_compare_exchange_n(&mb->sent, &sent, sent - 1, 1, __ATOMIC_RELAXED,
                                                    __ATOMIC_RELAXED))
        ;
}

/* mailbox_high(Ref) -> boolean()
 * Whether priority requests wait: the owner asks before each call or other
 * message it handles. Reads a hint only, so it needs no lock and no owner
 * check; it is on the path of every call. */
ERL_NIF_TERM gn_mailbox_high_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_mailbox *mb;
    if (!enif_get_resource(env, argv[0], gn_mailbox_rtype, (void **)&mb))
        return enif_make_badarg(env);
    return __atomic_load_n(&mb->high_hint, __ATOMIC_ACQUIRE) ? gn_am_true : gn_am_false;
}

/* mailbox_ack(Ref, What) -> ok | high
 * The owner is about to handle a process message, or has handled requests
 * it took. What: cast (a {'$gen_cast', _}: in message mode one fewer is
 * waiting, and a blocked sender may fit now), expired (a call whose caller
 * gave up, which the owner skips: it moves from accepted to expired), or N,
 * a count: the next N requests of its last take are handled (or skipped),
 * so that a keep_on_crash mailbox does not hand them out again if the
 * owner dies; lock-free. Returns high when priority requests wait, to be
 * handled first. */
ERL_NIF_TERM gn_mailbox_ack_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_mailbox *mb = gn_owned_mailbox(env, argv[0]);
    unsigned handled;
    int cast = enif_is_identical(argv[1], gn_am_cast);
    int expired = enif_is_identical(argv[1], gn_am_expired);
    int count = !cast && !expired && enif_get_uint(env, argv[1], &handled);
    if (!mb || (!cast && !expired && !count))
        return enif_make_badarg(env);
    if (count) {
        /* Only the owner writes it; the down callback reads it after the
         * owner has exited, and the next take resets it. */
        if (mb->hold)
            __atomic_fetch_add(&mb->acked, handled, __ATOMIC_RELEASE);
    } else if (expired) {
        enif_mutex_lock(mb->lock);
        __atomic_fetch_sub(&mb->accepted, 1, __ATOMIC_RELAXED);
        mb->expired++;
        gn_unlock(mb);
    } else if (cast && !mb->queue) {
        if (gn_lock_free(mb)) {
            gn_sent_dec(mb);
        } else {
            gn_outbox out = GN_OUTBOX(mb);
            enif_mutex_lock(mb->lock);
            gn_sent_dec(mb);
            if (mb->waiting && !mb->closed)
                gn_admit_waiters(env, mb, &out);
            gn_unlock(mb);
            gn_outbox_flush(env, &out);
        }
    }
    return __atomic_load_n(&mb->high_hint, __ATOMIC_ACQUIRE) ? gn_am_high : gn_am_ok;
}

/* mailbox_hold(Ref, Ms, Notify) -> ok (dirty I/O; a test hook, not API)
 * Holds the mailbox's lock for Ms milliseconds (at most 2000), telling
 * Notify `locked` once it has it and `unlocking` just before it lets go:
 * the only way to have the lock busy at a chosen moment, since every
 * critical section of the mailbox is O(1). The tests use it to show that
 * the owner-down callback never waits for the lock. */
ERL_NIF_TERM gn_mailbox_hold_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_mailbox *mb;
    unsigned ms;
    ErlNifPid notify;
    if (!enif_get_resource(env, argv[0], gn_mailbox_rtype, (void **)&mb) ||
        !enif_get_uint(env, argv[1], &ms) || ms > 2000 ||
        !enif_get_local_pid(env, argv[2], &notify))
        return enif_make_badarg(env);
    enif_mutex_lock(mb->lock);
    enif_send(env, &notify, NULL, gn_am_locked);
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
    enif_send(env, &notify, NULL, gn_am_unlocking);
    enif_mutex_unlock(mb->lock);
    return gn_am_ok;
}
