/*
 * The senders' NIFs: send (admitting or queueing a request, under the
 * overflow policy, or parking its sender), cancel (a blocked sender gives
 * up) and info. Also what the send path needs of its own: finding the
 * target's mailbox (a per-thread cache before the registry), sizing a
 * request (small, or copied outside the lock on a dirty scheduler), and
 * parking a sender in its lane's FIFO.
 *
 * Locking: a NIF takes mb->lock at most once and releases it before it
 * sends anything (the wake, a normal call's message, the outbox), except
 * the wake gn_admit_waiters sends under the lock. An unbounded
 * message-mode mailbox admits without the lock. The registry is looked up
 * with no mailbox lock held.
 */
#include <string.h>
#include <time.h>

#include "mailbox_impl.h"
#include "registry.h"

/* Microseconds, for costs only: clock_gettime() is a vDSO call, several
 * times cheaper than enif_monotonic_time() on the enqueue path. */
static uint64_t gn_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint16_t gn_cost_since(uint64_t t0)
{
    uint64_t us = gn_now_us() - t0;
    return us > UINT16_MAX ? UINT16_MAX : (uint16_t)us;
}

/* Whether copying `t` is small work: a walk that stops once it has seen
 * about `*budget` cells or `depth` levels, so O(budget) whatever the term.
 * What it cannot size cheaply (a fun's environment, a bignum, a bitstring
 * that is not a binary) counts as large. A binary over 64 bytes is
 * reference-counted: its copy shares the bytes. */
static int gn_term_small(ErlNifEnv *env, ERL_NIF_TERM t, long *budget, int depth)
{
    if (--*budget < 0 || depth == 0)
        return 0;
    switch (enif_term_type(env, t)) {
    case ERL_NIF_TERM_TYPE_ATOM:
    case ERL_NIF_TERM_TYPE_FLOAT:
    case ERL_NIF_TERM_TYPE_PID:
    case ERL_NIF_TERM_TYPE_PORT:
    case ERL_NIF_TERM_TYPE_REFERENCE:
        return 1;
    case ERL_NIF_TERM_TYPE_INTEGER: {
        ErlNifSInt64 i;
        ErlNifUInt64 u;
        return enif_get_int64(env, t, &i) || enif_get_uint64(env, t, &u);
    }
    case ERL_NIF_TERM_TYPE_BITSTRING: {
        ErlNifBinary bin;
        if (!enif_inspect_binary(env, t, &bin))
            return 0;
        if (bin.size <= 64)
            *budget -= (long)(bin.size / 8);
        return *budget >= 0;
    }
    case ERL_NIF_TERM_TYPE_TUPLE: {
        int arity;
        const ERL_NIF_TERM *elems;
        enif_get_tuple(env, t, &arity, &elems);
        for (int i = 0; i < arity; i++)
            if (!gn_term_small(env, elems[i], budget, depth - 1))
                return 0;
        return 1;
    }
    case ERL_NIF_TERM_TYPE_LIST: {
        ERL_NIF_TERM head;
        while (enif_get_list_cell(env, t, &head, &t))
            if (--*budget < 0 || !gn_term_small(env, head, budget, depth - 1))
                return 0;
        return enif_is_empty_list(env, t) || gn_term_small(env, t, budget, depth - 1);
    }
    case ERL_NIF_TERM_TYPE_MAP: {
        size_t size;
        enif_get_map_size(env, t, &size);
        if (size > (size_t)*budget)
            return 0;
        ErlNifMapIterator it;
        if (!enif_map_iterator_create(env, t, &it, ERL_NIF_MAP_ITERATOR_FIRST))
            return 0;
        ERL_NIF_TERM k, v;
        int small = 1;
        while (small && enif_map_iterator_get_pair(env, &it, &k, &v)) {
            small = gn_term_small(env, k, budget, depth - 1) &&
                    gn_term_small(env, v, budget, depth - 1);
            enif_map_iterator_next(env, &it);
        }
        enif_map_iterator_destroy(env, &it);
        return small;
    }
    default:
        return 0;
    }
}

/* A request whose copy may take longer than this many cells' worth (some
 * 10 us) is copied outside the lock, on a dirty scheduler. */
#define GN_SMALL_CELLS 2048
#define GN_SMALL_DEPTH 64
/* What a small request's copy is taken to cost, from the cells its walk
 * saw (a copy runs some 300 cells a microsecond here): timing each copy
 * would cost two clock reads per enqueue. */
#define GN_CELLS_PER_US 256

/* The longest queue so far, the one now included. */
static size_t gn_max_length(gn_mailbox *mb)
{
    gn_note_max(mb, gn_normal_len(mb) + mb->lanes[GN_HIGH].len);
    return __atomic_load_n(&mb->max_length, __ATOMIC_RELAXED);
}

/* What an admitted call is told: go ahead, with or without a deadline. */
static ERL_NIF_TERM gn_admitted(const gn_mailbox *mb)
{
    return mb->expire ? gn_am_deadline : gn_am_ok;
}

static ERL_NIF_TERM gn_make_overflow(gn_overflow o)
{
    switch (o) {
    case GN_REJECT:
        return gn_am_reject;
    case GN_DROP_NEWEST:
        return gn_am_drop_newest;
    case GN_DROP_OLDEST:
        return gn_am_drop_oldest;
    default:
        return gn_am_block;
    }
}

/* An enqueue costs far more than the one reduction a NIF call is charged,
 * most of all under contention; unreported, a producer's timeslice stretches
 * past a millisecond. Charge 1% of a timeslice (about 10 us) every 8 calls
 * per scheduler thread. */
static __thread unsigned gn_enqueue_calls;

static void gn_charge_enqueue(ErlNifEnv *env)
{
    if ((++gn_enqueue_calls & 7) == 0)
        enif_consume_timeslice(env, 1);
}

/* Each scheduler thread remembers the last mailbox it delivered to, with a
 * resource reference that keeps it allocated, so a producer casting to one
 * server in a loop skips the registry (a hash and a shared lock). A cached
 * mailbox found closed is dropped and looked up again (the pid may belong
 * to a new server). At most one reference per thread is held this way. */
static __thread gn_mailbox *gn_cache_mb;

static void gn_cache_forget(gn_mailbox *mb)
{
    if (gn_cache_mb == mb) {
        gn_cache_mb = NULL;
        enif_release_resource(mb);
    }
}

static gn_mailbox *gn_cached_mailbox(ERL_NIF_TERM pid_term, const ErlNifPid *pid)
{
    gn_mailbox *mb = gn_cache_mb;
    if (mb && enif_compare_pids(&mb->owner, pid) == 0)
        return mb;
    uint64_t hash = gn_registry_hash(pid_term);
    if (!(mb = gn_registry_lookup(gn_current->registry, hash, pid)))
        return NULL;
    /* The lookup's reference becomes the cache's. */
    if (gn_cache_mb)
        enif_release_resource(gn_cache_mb);
    gn_cache_mb = mb;
    return mb;
}

/* The mailbox of `pid_term`, live if it has one, not locked; NULL if none.
 * A closed one is returned only when the pid has no live mailbox either:
 * its requests are dropped, as send/2 to a dead process drops messages. */
static gn_mailbox *gn_target(ErlNifEnv *env, ERL_NIF_TERM pid_term, ErlNifPid *pid)
{
    if (!enif_get_local_pid(env, pid_term, pid))
        return NULL;
    gn_mailbox *mb = gn_cached_mailbox(pid_term, pid);
    if (!mb || !__atomic_load_n(&mb->closed, __ATOMIC_ACQUIRE))
        return mb;
    gn_cache_forget(mb);
    return gn_cached_mailbox(pid_term, pid);
}

/* Returns the mailbox of `pid_term` locked (possibly closed), or NULL. */
static gn_mailbox *gn_lock_target(ErlNifEnv *env, ERL_NIF_TERM pid_term, ErlNifPid *pid)
{
    gn_mailbox *mb = gn_target(env, pid_term, pid);
    if (mb)
        enif_mutex_lock(mb->lock);
    return mb;
}

/* Parks the caller as a blocked sender of `item`. Call with mb->lock held.
 * Returns {wait, Tag}, or 0 when out of memory. */
static ERL_NIF_TERM gn_block(ErlNifEnv *env, gn_mailbox *mb, const ErlNifPid *self,
                             ERL_NIF_TERM item, ErlNifEnv **own, uint16_t cost, int lane,
                             int is_call)
{
    gn_waiter *w = enif_alloc_resource(gn_waiter_rtype, sizeof(*w));
    if (!w)
        return 0;
    memset(w, 0, sizeof(*w));
    if (*own) {
        /* copied already, outside the lock */
        w->env = *own;
        *own = NULL;
        w->item = item;
        w->cost = cost;
    } else if ((w->env = enif_alloc_env())) {
        w->item = enif_make_copy(w->env, item);
        w->cost = cost;
    } else {
        enif_release_resource(w);
        return 0;
    }
    enif_keep_resource(mb);
    w->mb = mb;
    w->pid = *self;
    w->result = gn_am_ok;
    w->lane = lane;
    w->is_call = is_call;
    w->deliver = GN_KEEP;
    w->gen = mb->wait_gen;
    w->linked = 1;
    /* the allocation's reference is the FIFO's */
    w->prev = mb->wait_tail[lane];
    if (w->prev)
        w->prev->next = w;
    else
        mb->wait_head[lane] = w;
    mb->wait_tail[lane] = w;
    mb->waiting++;
    mb->waiting_lane[lane]++;
    return enif_make_tuple2(env, gn_am_wait, enif_make_resource(env, w));
}

/* mailbox_send(Pid, Item, Lane, Kind) ->
 *     ok | send | deadline | busy | {ok, DroppedCall} | not_native | full | dropped | {wait, Tag}
 *
 * Lane: normal | high. Kind: cast (Item is a normal cast, or a wrapped
 * priority cast), admit (a normal call asks for room; nothing is queued; it
 * is told ok, or deadline when the server skips calls whose caller gave up,
 * so the call must carry its deadline; under block, busy: it is to come
 * back as a call) or call (on the high lane, Item is a priority call
 * wrapped by GenNative, to queue; on the normal lane, Item is the
 * {'$gen_call', From, Request} message of a normal call, sent to the owner
 * from here as soon as there is room). A normal cast admitted in message
 * mode gets `send`: the caller sends {'$gen_cast', Item} itself, with send/2,
 * which costs less than enif_send. See mailbox_impl.h for what each
 * result means.
 *
 * A request the mailbox keeps (queued, or held by a blocked sender) is
 * copied into it. A large one is copied before the lock is taken, on a
 * dirty scheduler, so that the lock is held O(1) and no normal scheduler
 * copies more than a few thousand cells. */
static ERL_NIF_TERM gn_send(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[], int dirty);

ERL_NIF_TERM gn_mailbox_send_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    return gn_send(env, argc, argv, 0);
}

static ERL_NIF_TERM gn_mailbox_send_dirty(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    return gn_send(env, argc, argv, 1);
}

static ERL_NIF_TERM gn_send(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[], int dirty)
{
    ErlNifPid pid;
    int lane_ix, is_call, admit;
    if (!enif_is_pid(env, argv[0]))
        return enif_make_badarg(env);
    if (enif_is_identical(argv[2], gn_am_normal))
        lane_ix = GN_NORMAL;
    else if (enif_is_identical(argv[2], gn_am_high))
        lane_ix = GN_HIGH;
    else
        return enif_make_badarg(env);
    admit = enif_is_identical(argv[3], gn_am_admit);
    is_call = admit || enif_is_identical(argv[3], gn_am_call);
    if (!is_call && !enif_is_identical(argv[3], gn_am_cast))
        return enif_make_badarg(env);
    if (admit && lane_ix != GN_NORMAL)
        return enif_make_badarg(env);
    if (!dirty)
        gn_charge_enqueue(env);

    gn_mailbox *mb = gn_target(env, argv[0], &pid);
    if (!mb)
        return gn_am_not_native;
    /* sent as a process message: a message-mode cast, a normal call */
    int direct = lane_ix == GN_NORMAL && (!mb->queue || is_call);

    if (direct && mb->capacity == SIZE_MAX) {
        /* Unbounded message mode: count, and send; no lock. */
        if (__atomic_load_n(&mb->closed, __ATOMIC_ACQUIRE))
            return gn_am_ok; /* dropped, as send/2 to a dead process is */
        __atomic_fetch_add(&mb->accepted, 1, __ATOMIC_RELAXED);
        if (admit)
            return gn_admitted(mb);
        if (is_call) {
            enif_send(env, &pid, NULL, argv[1]);
            return gn_am_ok;
        }
        __atomic_fetch_add(&mb->sent, 1, __ATOMIC_RELAXED);
        return gn_am_send;
    }

    /* What the mailbox may keep: a queued request, or a blocked sender's. */
    ERL_NIF_TERM item = argv[1];
    ErlNifEnv *own = NULL;
    uint16_t cost = 0;
    long budget = GN_SMALL_CELLS;
    if (!admit && (!direct || mb->overflow == GN_BLOCK) &&
        !gn_term_small(env, item, &budget, GN_SMALL_DEPTH)) {
        if (!dirty)
            return enif_schedule_nif(env, "mailbox_send", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                     gn_mailbox_send_dirty, argc, argv);
        if (!(own = enif_alloc_env()))
            return enif_raise_exception(env, gn_am_enomem);
        uint64_t t0 = gn_now_us();
        item = enif_make_copy(own, argv[1]);
        cost = gn_cost_since(t0);
    } else {
        cost = (uint16_t)((GN_SMALL_CELLS - budget) / GN_CELLS_PER_US);
    }

    enif_mutex_lock(mb->lock);
    if (mb->closed) {
        gn_unlock(mb);
        if (own)
            enif_free_env(own);
        return gn_am_ok;
    }

    enum { SEND_AS_IS, WAKE, WAKE_TOO, NONE } how = NONE;
    ERL_NIF_TERM result = gn_am_ok;
    gn_chunk *done = NULL;
    gn_lane *lane = &mb->lanes[lane_ix];
    ErlNifPid self;
    enif_self(env, &self);

    if (mb->waiting_lane[lane_ix] > 0 || gn_lane_len(mb, lane_ix) >= mb->capacity) {
        switch (mb->overflow) {
        case GN_REJECT:
            mb->rejected++;
            result = gn_am_full;
            goto unlock;
        case GN_DROP_NEWEST:
            mb->dropped++;
            result = gn_am_dropped;
            goto unlock;
        case GN_DROP_OLDEST:
            if (lane->len > 0) {
                /* The evicted request moves from accepted to dropped, so
                 * that the counters add up to what was sent. */
                gn_item *old = gn_lane_peek(lane);
                gn_lane_take(lane);
                old->dead = 1;
                __atomic_fetch_sub(&mb->accepted, 1, __ATOMIC_RELAXED);
                mb->dropped++;
                if (old->is_call && old->epoch == mb->epoch)
                    result = enif_make_tuple2(env, gn_am_ok, enif_make_copy(env, old->term));
                /* A held lane keeps it behind the cursor with the items
                 * in flight until they are retired. */
                if (!mb->hold)
                    gn_lane_retire(lane, SIZE_MAX, &done);
            }
            break;
        case GN_BLOCK:
            if (admit) {
                result = gn_am_busy;
                goto unlock;
            }
            result = gn_block(env, mb, &self, item, &own, cost, lane_ix, is_call);
            if (!result) {
                gn_unlock(mb);
                if (own)
                    enif_free_env(own);
                return enif_raise_exception(env, gn_am_enomem);
            }
            goto unlock;
        }
    }

    __atomic_fetch_add(&mb->accepted, 1, __ATOMIC_RELAXED);
    if (admit) {
        if (result == gn_am_ok)
            result = gn_admitted(mb);
        goto unlock;
    }
    if (direct) {
        if (!is_call) {
            __atomic_fetch_add(&mb->sent, 1, __ATOMIC_RELAXED);
            gn_note_length(mb);
        }
        if (is_call)
            how = SEND_AS_IS;
        else
            result = gn_am_send;
        goto unlock;
    }
    if (!gn_lane_push(lane, item, own, cost, mb->next_seq, mb->epoch, is_call)) {
        __atomic_fetch_sub(&mb->accepted, 1, __ATOMIC_RELAXED);
        gn_unlock(mb);
        gn_chunks_free(done);
        if (own)
            enif_free_env(own);
        return enif_raise_exception(env, gn_am_enomem);
    }
    own = NULL; /* the item's now */
    mb->next_seq++;
    gn_note_length(mb);
    /* The wake goes out after unlocking, to keep the lock short on this
     * path. A sender that finds a wake pending but not sent yet sends one
     * too: its own wake, not the other's, must precede what it sends next. */
    if (!__atomic_load_n(&mb->signaled, __ATOMIC_RELAXED)) {
        __atomic_store_n(&mb->signaled, 1, __ATOMIC_RELEASE);
        __atomic_fetch_add(&mb->unsent, 1, __ATOMIC_RELAXED);
        how = WAKE;
    } else if (__atomic_load_n(&mb->unsent, __ATOMIC_ACQUIRE) > 0) {
        how = WAKE_TOO;
    }

unlock:
    gn_unlock(mb);
    gn_chunks_free(done);
    if (own) /* not kept: rejected, dropped, or sent as a message */
        enif_free_env(own);
    /* Sent from the caller's environment, so it is ordered with the caller's
     * other messages to the owner; fails only if the owner died (dropped, as
     * with send/2). */
    if (how == SEND_AS_IS)
        enif_send(env, &pid, NULL, argv[1]);
    else if (how == WAKE || how == WAKE_TOO)
        enif_send(env, &pid, NULL, gn_am_wake);
    if (how == WAKE)
        __atomic_fetch_sub(&mb->unsent, 1, __ATOMIC_RELEASE);
    return result;
}

/* mailbox_cancel(Pid, Tag) -> cancelled | not_found
 * A blocked sender gives up; its request counts as rejected. not_found: it
 * was admitted or released already, and {Tag, Result} is on its way. O(1)
 * (plus the waiters behind it it lets in). */
ERL_NIF_TERM gn_mailbox_cancel_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_waiter *w;
    if (!enif_is_pid(env, argv[0]) ||
        !enif_get_resource(env, argv[1], gn_waiter_rtype, (void **)&w))
        return enif_make_badarg(env);
    gn_mailbox *mb = w->mb;
    gn_outbox out = GN_OUTBOX(mb);
    enif_mutex_lock(mb->lock);
    int found = w->linked && w->gen == mb->wait_gen;
    if (found) {
        gn_wait_unlink(mb, w);
        mb->rejected++; /* it gave up: sent, never accepted */
        /* Those behind it may fit now. */
        if (mb->waiting && !mb->closed)
            gn_admit_waiters(env, mb, &out);
    }
    gn_unlock(mb);
    gn_outbox_flush(env, &out);
    if (!found)
        return gn_am_not_found;
    if (w->env)
        enif_free_env(w->env);
    w->env = NULL;
    enif_release_resource(w); /* the FIFO's reference */
    return gn_am_cancelled;
}

/* mailbox_info(Pid) -> map() | not_native
 * O(1), without a message to the owner. */
ERL_NIF_TERM gn_mailbox_info_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ErlNifPid pid;
    if (!enif_is_pid(env, argv[0]))
        return enif_make_badarg(env);
    gn_mailbox *mb = gn_lock_target(env, argv[0], &pid);
    if (!mb)
        return gn_am_not_native;
    ERL_NIF_TERM keys[] = {gn_am_length,     gn_am_high_length,    gn_am_capacity, gn_am_overflow,
                           gn_am_accepted,   gn_am_rejected,       gn_am_dropped,  gn_am_expired,
                           gn_am_max_length, gn_am_blocked_senders};
    ERL_NIF_TERM vals[] = {
        enif_make_uint64(env, gn_normal_len(mb)),
        enif_make_uint64(env, mb->lanes[GN_HIGH].len),
        mb->capacity == SIZE_MAX ? gn_am_infinity : enif_make_uint64(env, mb->capacity),
        gn_make_overflow(mb->overflow),
        enif_make_uint64(env, __atomic_load_n(&mb->accepted, __ATOMIC_RELAXED)),
        enif_make_uint64(env, mb->rejected),
        enif_make_uint64(env, mb->dropped),
        enif_make_uint64(env, mb->expired),
        enif_make_uint64(env, gn_max_length(mb)),
        enif_make_uint64(env, mb->waiting),
    };
    gn_unlock(mb);
    ERL_NIF_TERM map;
    enif_make_map_from_arrays(env, keys, vals, sizeof(keys) / sizeof(keys[0]), &map);
    return map;
}
