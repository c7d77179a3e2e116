/*
 * The native mailbox's resources and lifetime: the resource types and
 * their callbacks (the destructors; the owner's exit, which closes the
 * mailbox), load, and the NIFs that make a mailbox, adopt a kept one and
 * discard it. See mailbox_impl.h for the design, the locks and the other
 * files.
 *
 * Locking: the NIFs here take mb->lock and release it before they return.
 * The owner-down callback never waits for it on a scheduler: it only
 * try-locks, and hands the close to the reaper thread when the lock is
 * busy. The registry's locks are taken with no mailbox lock held, except
 * by adopt, which registers the new owner (gn_take_ownership) under
 * mb->lock: mailbox, then registry, never the other way round.
 */
#include <string.h>

#include "mailbox_impl.h"
#include "registry.h"

ErlNifResourceType *gn_mailbox_rtype;
ErlNifResourceType *gn_waiter_rtype;

/* ------------------------------------------------------------------------ */
/* Resource callbacks                                                        */

static void gn_mailbox_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    gn_mailbox *mb = obj;
    /* No waiter is linked: each holds a reference to mb while it is. */
    gn_lane_discard(&mb->lanes[GN_NORMAL]);
    gn_lane_discard(&mb->lanes[GN_HIGH]);
    if (mb->lock)
        enif_mutex_destroy(mb->lock);
}

static void gn_waiter_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    gn_waiter *w = obj;
    if (w->env)
        enif_free_env(w->env);
    if (w->mb)
        enif_release_resource(w->mb);
}

/* The owner has exited: closes the mailbox, keeps its lanes or frees them,
 * releases its blocked senders and takes it out of the registry, in O(1)
 * whatever it holds. Call with mb->lock held; unlocks. */
static void gn_mailbox_close(gn_mailbox *mb)
{
    gn_chunk *done = NULL;
    __atomic_store_n(&mb->closed, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&mb->sent, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&mb->signaled, 0, __ATOMIC_RELEASE);
    if (!mb->keep) {
        gn_lane_discard(&mb->lanes[GN_NORMAL]);
        gn_lane_discard(&mb->lanes[GN_HIGH]);
    } else {
        /* What the owner took out and had not handled goes back in front,
         * for the next owner: a take hands out the high lane's items
         * first, and the owner acks them in that order. */
        size_t acked = __atomic_load_n(&mb->acked, __ATOMIC_ACQUIRE);
        size_t high = mb->lanes[GN_HIGH].inflight;
        gn_lane_retire(&mb->lanes[GN_HIGH], acked < high ? acked : high, &done);
        gn_lane_retire(&mb->lanes[GN_NORMAL], acked < high ? 0 : acked - high, &done);
        gn_lane_rewind(&mb->lanes[GN_HIGH]);
        gn_lane_rewind(&mb->lanes[GN_NORMAL]);
        __atomic_store_n(&mb->acked, 0, __ATOMIC_RELAXED);
    }
    gn_release_waiters(mb);
    gn_unlock(mb);
    if (done)
        gn_reap(gn_chunks_free, done);
    /* may drop the last reference: last */
    gn_registry_remove(mb->registry, mb->reg_hash, mb);
}

static void gn_mailbox_close_deferred(void *arg)
{
    gn_mailbox *mb = arg;
    enif_mutex_lock(mb->lock);
    gn_mailbox_close(mb);
    enif_release_resource(mb);
}

/* The down callback runs on a normal scheduler: it never waits for the
 * lock (a sender or the reaper may hold it), but hands the close to the
 * reaper thread then. */
static void gn_mailbox_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon)
{
    (void)env;
    (void)pid;
    (void)mon;
    gn_mailbox *mb = obj;
    if (enif_mutex_trylock(mb->lock) != 0) {
        enif_keep_resource(mb);
        gn_reap(gn_mailbox_close_deferred, mb);
        return;
    }
    gn_mailbox_close(mb);
}

int gn_mailbox_load(ErlNifEnv *env, gn_priv *priv, ErlNifResourceFlags flags)
{
    ErlNifResourceTypeInit init = {
        .dtor = gn_mailbox_dtor,
        .stop = NULL,
        .down = gn_mailbox_down,
    };
    ErlNifResourceType *rt = enif_open_resource_type_x(env, "gn_mailbox", &init, flags, NULL);
    ErlNifResourceTypeInit winit = {.dtor = gn_waiter_dtor, .stop = NULL, .down = NULL};
    ErlNifResourceType *wrt = enif_open_resource_type_x(env, "gn_waiter", &winit, flags, NULL);
    if (!rt || !wrt)
        return 0;
    gn_mailbox_rtype = rt;
    gn_waiter_rtype = wrt;
    priv->mailbox_rtype = rt;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Making, adopting and discarding a mailbox                                 */

static int gn_get_overflow(ERL_NIF_TERM t, gn_overflow *out)
{
    if (enif_is_identical(t, gn_am_reject))
        *out = GN_REJECT;
    else if (enif_is_identical(t, gn_am_drop_newest))
        *out = GN_DROP_NEWEST;
    else if (enif_is_identical(t, gn_am_drop_oldest))
        *out = GN_DROP_OLDEST;
    else if (enif_is_identical(t, gn_am_block))
        *out = GN_BLOCK;
    else
        return 0;
    return 1;
}

/* Makes the calling process the owner of mb: monitor and registry. */
static int gn_take_ownership(ErlNifEnv *env, gn_mailbox *mb)
{
    if (!enif_self(env, &mb->owner))
        return 0;
    mb->reg_hash = gn_registry_hash(enif_make_pid(env, &mb->owner));
    mb->registry = gn_current->registry;
    if (enif_monitor_process(env, mb, &mb->owner, &mb->monitor) != 0)
        return 0;
    if (!gn_registry_insert(mb->registry, mb->reg_hash, &mb->owner, mb)) {
        enif_demonitor_process(env, mb, &mb->monitor);
        return 0;
    }
    return 1;
}

/* Reads a list of the atoms queue, keep and expire. */
static int gn_get_flags(ErlNifEnv *env, ERL_NIF_TERM list, int *queue, int *keep, int *expire)
{
    ERL_NIF_TERM head, tail = list;
    *queue = *keep = *expire = 0;
    while (enif_get_list_cell(env, tail, &head, &tail)) {
        if (enif_is_identical(head, gn_am_queue))
            *queue = 1;
        else if (enif_is_identical(head, gn_am_keep))
            *keep = 1;
        else if (enif_is_identical(head, gn_am_expire))
            *expire = 1;
        else
            return 0;
    }
    return enif_is_empty_list(env, tail);
}

/* mailbox_new(Capacity, Overflow, Flags) -> Ref | {error, already_exists}
 * Creates the calling process's mailbox and registers it under its pid.
 * Capacity: pos_integer() | infinity; Overflow: reject | drop_newest |
 * drop_oldest | block; Flags: a list of queue (queue mode), keep
 * (keep_on_crash, needs queue) and expire (drop_expired_calls).
 * drop_oldest needs queue mode: only a queued cast can be evicted. */
ERL_NIF_TERM gn_mailbox_new_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ErlNifUInt64 cap;
    gn_overflow overflow;
    size_t capacity;
    int queue, keep, expire;
    if (enif_is_identical(argv[0], gn_am_infinity))
        capacity = SIZE_MAX;
    else if (enif_get_uint64(env, argv[0], &cap) && cap > 0 && cap < SIZE_MAX)
        capacity = (size_t)cap;
    else
        return enif_make_badarg(env);
    if (!gn_get_overflow(argv[1], &overflow) || !gn_get_flags(env, argv[2], &queue, &keep, &expire))
        return enif_make_badarg(env);
    if ((keep || overflow == GN_DROP_OLDEST) && !queue)
        return enif_make_badarg(env);

    gn_mailbox *mb = enif_alloc_resource(gn_mailbox_rtype, sizeof(*mb));
    if (!mb)
        return enif_raise_exception(env, gn_am_enomem);
    memset(mb, 0, sizeof(*mb));
    mb->capacity = capacity;
    mb->overflow = overflow;
    mb->next_seq = 1;
    mb->queue = queue;
    mb->keep = keep;
    mb->hold = keep;
    mb->expire = expire;
    mb->closed = 1; /* until owned: the destructor must not find it live */
    if (!(mb->lock = enif_mutex_create("gn_mailbox"))) {
        enif_release_resource(mb);
        return enif_raise_exception(env, gn_am_enomem);
    }
    if (!gn_take_ownership(env, mb)) {
        enif_release_resource(mb);
        return enif_make_tuple2(env, gn_am_error, gn_am_already_exists);
    }
    mb->closed = 0;
    ERL_NIF_TERM ref = enif_make_resource(env, mb);
    enif_release_resource(mb);
    return ref;
}

/* mailbox_adopt(Ref) -> non_neg_integer() | not_ready
 * The calling process becomes the owner of a kept mailbox whose owner has
 * exited; returns how many requests wait in it. Calls queued for the old
 * owner will be skipped. not_ready: the old owner's exit has not reached
 * the mailbox yet. */
ERL_NIF_TERM gn_mailbox_adopt_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_mailbox *mb;
    if (!enif_get_resource(env, argv[0], gn_mailbox_rtype, (void **)&mb))
        return enif_make_badarg(env);
    enif_mutex_lock(mb->lock);
    if (!mb->closed && mb->keep) {
        gn_unlock(mb);
        return gn_am_not_ready;
    }
    if (!mb->closed || !mb->keep || !gn_take_ownership(env, mb)) {
        gn_unlock(mb);
        return enif_make_badarg(env);
    }
    __atomic_store_n(&mb->closed, 0, __ATOMIC_RELEASE);
    mb->epoch++;
    size_t len = gn_queued(mb);
    /* The new owner wakes itself if anything waits. */
    __atomic_store_n(&mb->signaled, len > 0, __ATOMIC_RELEASE);
    gn_unlock(mb);
    return enif_make_uint64(env, len);
}

/* mailbox_discard(Ref) -> ok
 * The mailbox is not to be kept: frees what it holds if its owner has
 * exited, or lets the owner's exit free it. */
ERL_NIF_TERM gn_mailbox_discard_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_mailbox *mb;
    if (!enif_get_resource(env, argv[0], gn_mailbox_rtype, (void **)&mb))
        return enif_make_badarg(env);
    enif_mutex_lock(mb->lock);
    mb->keep = 0;
    if (mb->closed) {
        gn_lane_discard(&mb->lanes[GN_NORMAL]);
        gn_lane_discard(&mb->lanes[GN_HIGH]);
    }
    gn_unlock(mb);
    return gn_am_ok;
}
