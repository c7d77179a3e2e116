/*
 * The native mailbox and the pid registry.
 *
 * A mailbox is a FIFO of cast requests owned by one server process. Each
 * request is copied into the environment of the chunk that holds it, so the
 * sender's heap is never referenced; a chunk, with its environment and every
 * term in it, is freed once all its items are taken, so one environment is
 * allocated per GN_CHUNK_ITEMS requests, not per request.
 *
 * Delivery. A cast to an idle server (empty queue, no wake pending, no
 * direct cast in flight) is sent directly as {'$gen_cast', Request}, exactly
 * as GenServer.cast would, and counted in `inflight` until the owner acks
 * it. Otherwise the request is queued, and the *sender* wakes the owner with
 * one '$gn_wake' message if no wake is pending (`signaled`). Because the
 * sender sends the wake, it lands in the owner's process mailbox before any
 * message the sender sends afterwards; the owner drains the queue until it
 * is empty (the take that empties it clears `signaled`) or, when process
 * messages are waiting, up to the queue's length at that moment. Together
 * these give GenServer's guarantee that whatever a process queued before
 * sending a message is handled before that message, system messages
 * included, without ever starving the process mailbox.
 *
 * Locks: `mb->lock` protects everything in a gn_mailbox (`signaled` is an
 * atomic so it can also be read as a hint). Each registry shard's rwlock
 * protects that shard's buckets. No code holds a shard lock and a mailbox
 * lock at once.
 *
 * Lifetime: the registry holds one resource reference per live mailbox. The
 * owner's exit fires the monitor's down callback, which closes the mailbox,
 * hands its items to the reaper and drops the registry's reference, all in
 * O(1), whatever the queue holds.
 */
#include <string.h>

#include "mailbox.h"

#define GN_CHUNK_ITEMS 256
#define GN_REG_SHARDS 64
#define GN_REG_BUCKETS (1u << 16)

typedef struct gn_item {
    ERL_NIF_TERM term; /* in the chunk's env */
} gn_item;

typedef struct gn_chunk {
    struct gn_chunk *next;
    ErlNifEnv *env;      /* allocated with the chunk's first payload */
    unsigned head, tail; /* items[head..tail) are live */
    gn_item items[GN_CHUNK_ITEMS];
} gn_chunk;

typedef struct gn_lane {
    gn_chunk *first, *last;
    size_t len;
} gn_lane;

typedef struct gn_mailbox {
    ErlNifMutex *lock;
    ErlNifPid owner;
    ErlNifMonitor monitor;
    gn_registry *registry;
    uint64_t reg_hash;
    int closed;        /* the owner has exited */
    int signaled;      /* atomic: a wake is on its way to, or being handled by, the owner */
    uint64_t inflight; /* direct casts sent and not yet acked by the owner */
    gn_lane normal;
    uint64_t accepted;
    size_t max_length;
} gn_mailbox;

typedef struct gn_reg_entry {
    struct gn_reg_entry *next;
    gn_mailbox *mb;
} gn_reg_entry;

struct gn_registry {
    ErlNifRWLock *locks[GN_REG_SHARDS];
    gn_reg_entry *buckets[GN_REG_BUCKETS];
    int refs; /* library instances sharing it; changed only in load/upgrade/unload */
};

static ErlNifResourceType *gn_mailbox_rtype;

/* ------------------------------------------------------------------------ */
/* Lanes                                                                     */

/* Appends a copy of `term` to the lane. Call with mb->lock held. Returns 0
 * when out of memory, leaving the lane unchanged. */
static int gn_lane_push(gn_lane *lane, ERL_NIF_TERM term)
{
    gn_chunk *c = lane->last;
    if (!c || c->tail == GN_CHUNK_ITEMS) {
        gn_chunk *n = enif_alloc(sizeof(*n));
        if (!n)
            return 0;
        n->next = NULL;
        n->env = NULL;
        n->head = n->tail = 0;
        if (c)
            c->next = n;
        else
            lane->first = n;
        lane->last = n;
        c = n;
    }
    if (!c->env && !(c->env = enif_alloc_env()))
        return 0;
    c->items[c->tail++].term = enif_make_copy(c->env, term);
    lane->len++;
    return 1;
}

/* Pops the head item as a term of `env`. A chunk whose items are all taken
 * is unlinked and pushed on *done, for the caller to free after unlocking.
 * Call with mb->lock held and the lane non-empty. */
static ERL_NIF_TERM gn_lane_pop(ErlNifEnv *env, gn_lane *lane, gn_chunk **done)
{
    gn_chunk *c = lane->first;
    ERL_NIF_TERM t = enif_make_copy(env, c->items[c->head++].term);
    lane->len--;
    if (c->head == GN_CHUNK_ITEMS) {
        lane->first = c->next;
        if (!lane->first)
            lane->last = NULL;
        c->next = *done;
        *done = c;
    }
    return t;
}

/* Frees a chain of chunks and every term in them. */
static void gn_chunks_free(void *arg)
{
    gn_chunk *c = arg;
    while (c) {
        gn_chunk *next = c->next;
        if (c->env)
            enif_free_env(c->env);
        enif_free(c);
        c = next;
    }
}

/* Detaches the lane's chunks and hands them to the reaper; O(1). */
static void gn_lane_discard(gn_lane *lane)
{
    if (lane->first)
        gn_reaper_push(gn_current ? gn_current->reaper : NULL, gn_chunks_free, lane->first);
    lane->first = lane->last = NULL;
    lane->len = 0;
}

/* ------------------------------------------------------------------------ */
/* Registry                                                                  */

gn_registry *gn_registry_new(void)
{
    gn_registry *reg = enif_alloc(sizeof(*reg));
    if (!reg)
        return NULL;
    memset(reg, 0, sizeof(*reg));
    for (int i = 0; i < GN_REG_SHARDS; i++) {
        if (!(reg->locks[i] = enif_rwlock_create("gn_registry_shard"))) {
            reg->refs = 1;
            gn_registry_release(reg);
            return NULL;
        }
    }
    reg->refs = 1;
    return reg;
}

void gn_registry_retain(gn_registry *reg)
{
    reg->refs++;
}

void gn_registry_release(gn_registry *reg)
{
    if (--reg->refs > 0)
        return;
    for (unsigned b = 0; b < GN_REG_BUCKETS; b++) {
        gn_reg_entry *e = reg->buckets[b];
        while (e) {
            gn_reg_entry *next = e->next;
            enif_release_resource(e->mb);
            enif_free(e);
            e = next;
        }
    }
    for (int i = 0; i < GN_REG_SHARDS; i++)
        if (reg->locks[i])
            enif_rwlock_destroy(reg->locks[i]);
    enif_free(reg);
}

static inline unsigned gn_bucket_of(uint64_t hash)
{
    return (unsigned)(hash & (GN_REG_BUCKETS - 1));
}

static inline ErlNifRWLock *gn_shard_lock(gn_registry *reg, unsigned bucket)
{
    return reg->locks[bucket & (GN_REG_SHARDS - 1)];
}

/* The mailbox of `pid` in bucket b, or NULL. Call with the shard locked. */
static gn_mailbox *gn_bucket_find(gn_registry *reg, unsigned b, const ErlNifPid *pid)
{
    for (gn_reg_entry *e = reg->buckets[b]; e; e = e->next)
        if (enif_compare_pids(&e->mb->owner, pid) == 0)
            return e->mb;
    return NULL;
}

/* Returns the live mailbox of `pid` with a resource reference the caller
 * must release, or NULL. */
static gn_mailbox *gn_registry_lookup(gn_registry *reg, ERL_NIF_TERM pid_term, const ErlNifPid *pid)
{
    unsigned b = gn_bucket_of(enif_hash(ERL_NIF_INTERNAL_HASH, pid_term, 0));
    ErlNifRWLock *lock = gn_shard_lock(reg, b);
    enif_rwlock_rlock(lock);
    gn_mailbox *found = gn_bucket_find(reg, b, pid);
    if (found)
        enif_keep_resource(found);
    enif_rwlock_runlock(lock);
    return found;
}

/* Adds mb under its owner; the registry takes a resource reference.
 * Returns 0 if the owner already has a mailbox. */
static int gn_registry_insert(gn_registry *reg, gn_mailbox *mb)
{
    unsigned b = gn_bucket_of(mb->reg_hash);
    ErlNifRWLock *lock = gn_shard_lock(reg, b);
    gn_reg_entry *entry = enif_alloc(sizeof(*entry));
    if (!entry)
        return 0;
    enif_rwlock_rwlock(lock);
    if (gn_bucket_find(reg, b, &mb->owner)) {
        enif_rwlock_rwunlock(lock);
        enif_free(entry);
        return 0;
    }
    entry->mb = mb;
    entry->next = reg->buckets[b];
    reg->buckets[b] = entry;
    enif_keep_resource(mb);
    enif_rwlock_rwunlock(lock);
    return 1;
}

/* Removes mb and drops the registry's reference, if it was registered. */
static void gn_registry_remove(gn_registry *reg, gn_mailbox *mb)
{
    unsigned b = gn_bucket_of(mb->reg_hash);
    ErlNifRWLock *lock = gn_shard_lock(reg, b);
    gn_reg_entry *removed = NULL;
    enif_rwlock_rwlock(lock);
    for (gn_reg_entry **p = &reg->buckets[b]; *p; p = &(*p)->next) {
        if ((*p)->mb == mb) {
            removed = *p;
            *p = removed->next;
            break;
        }
    }
    enif_rwlock_rwunlock(lock);
    if (removed) {
        enif_free(removed);
        enif_release_resource(mb);
    }
}

/* ------------------------------------------------------------------------ */
/* Resource callbacks                                                        */

static void gn_mailbox_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    gn_mailbox *mb = obj;
    gn_lane_discard(&mb->normal);
    if (mb->lock)
        enif_mutex_destroy(mb->lock);
}

static void gn_mailbox_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon)
{
    (void)env;
    (void)pid;
    (void)mon;
    gn_mailbox *mb = obj;
    enif_mutex_lock(mb->lock);
    mb->closed = 1;
    gn_lane_discard(&mb->normal);
    __atomic_store_n(&mb->signaled, 0, __ATOMIC_RELEASE);
    enif_mutex_unlock(mb->lock);
    gn_registry_remove(mb->registry, mb); /* may drop the last reference: last */
}

int gn_mailbox_load(ErlNifEnv *env, gn_priv *priv, ErlNifResourceFlags flags)
{
    ErlNifResourceTypeInit init = {
        .dtor = gn_mailbox_dtor,
        .stop = NULL,
        .down = gn_mailbox_down,
    };
    ErlNifResourceType *rt = enif_open_resource_type_x(env, "gn_mailbox", &init, flags, NULL);
    if (!rt)
        return 0;
    gn_mailbox_rtype = rt;
    priv->mailbox_rtype = rt;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* NIFs                                                                      */

/* mailbox_new() -> Ref | {error, already_exists}
 * Creates the calling process's mailbox and registers it under its pid. */
ERL_NIF_TERM gn_mailbox_new_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    (void)argv;
    gn_priv *priv = enif_priv_data(env);
    gn_mailbox *mb = enif_alloc_resource(gn_mailbox_rtype, sizeof(*mb));
    if (!mb)
        return enif_raise_exception(env, enif_make_atom(env, "enomem"));
    memset(mb, 0, sizeof(*mb));
    mb->registry = priv->registry;
    mb->lock = enif_mutex_create("gn_mailbox");
    if (!mb->lock || !enif_self(env, &mb->owner)) {
        enif_release_resource(mb);
        return enif_make_badarg(env);
    }
    mb->reg_hash = enif_hash(ERL_NIF_INTERNAL_HASH, enif_make_pid(env, &mb->owner), 0);
    if (enif_monitor_process(env, mb, &mb->owner, &mb->monitor) != 0) {
        enif_release_resource(mb);
        return enif_make_badarg(env);
    }
    if (!gn_registry_insert(priv->registry, mb)) {
        enif_demonitor_process(env, mb, &mb->monitor);
        mb->closed = 1;
        enif_release_resource(mb);
        return enif_make_tuple2(env, gn_am_error, gn_am_already_exists);
    }
    ERL_NIF_TERM ref = enif_make_resource(env, mb);
    enif_release_resource(mb);
    return ref;
}

static gn_mailbox *gn_lookup_arg(ErlNifEnv *env, ERL_NIF_TERM pid_term, ErlNifPid *pid)
{
    if (!enif_get_local_pid(env, pid_term, pid))
        return NULL;
    gn_priv *priv = enif_priv_data(env);
    return gn_registry_lookup(priv->registry, pid_term, pid);
}

static void gn_note_accepted(gn_mailbox *mb)
{
    mb->accepted++;
    if (mb->normal.len > mb->max_length)
        mb->max_length = mb->normal.len;
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
 * mailbox found closed is dropped and looked up again. At most one
 * reference per thread is held this way. */
static __thread gn_mailbox *gn_cache_mb;

static void gn_cache_forget(gn_mailbox *mb)
{
    if (gn_cache_mb == mb) {
        gn_cache_mb = NULL;
        enif_release_resource(mb);
    }
}

static gn_mailbox *gn_cached_mailbox(ErlNifEnv *env, ERL_NIF_TERM pid_term, const ErlNifPid *pid)
{
    gn_mailbox *mb = gn_cache_mb;
    if (mb && enif_compare_pids(&mb->owner, pid) == 0)
        return mb;
    gn_priv *priv = enif_priv_data(env);
    if (!(mb = gn_registry_lookup(priv->registry, pid_term, pid)))
        return NULL;
    /* The lookup's reference becomes the cache's. */
    if (gn_cache_mb)
        enif_release_resource(gn_cache_mb);
    gn_cache_mb = mb;
    return mb;
}

/* mailbox_cast(Pid, Request) -> ok | not_native
 * Delivers a cast to the native mailbox of Pid (see the top of this file).
 * A mailbox whose owner has died drops it, as send/2 to a dead process does. */
ERL_NIF_TERM gn_mailbox_cast_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ErlNifPid pid;
    if (!enif_is_pid(env, argv[0]))
        return enif_make_badarg(env);
    if (!enif_get_local_pid(env, argv[0], &pid))
        return gn_am_not_native;
    gn_charge_enqueue(env);

    gn_mailbox *mb = gn_cached_mailbox(env, argv[0], &pid);
    if (!mb)
        return gn_am_not_native;

    enum { QUEUED, DIRECT, WAKE } how = QUEUED;
    enif_mutex_lock(mb->lock);
    if (mb->closed) {
        /* Its owner died. Forget it, and look again: the pid may have been
         * reused by a new server. */
        enif_mutex_unlock(mb->lock);
        gn_cache_forget(mb);
        if (!(mb = gn_cached_mailbox(env, argv[0], &pid)))
            return gn_am_not_native;
        enif_mutex_lock(mb->lock);
        if (mb->closed) {
            enif_mutex_unlock(mb->lock);
            return gn_am_ok;
        }
    }
    int signaled = __atomic_load_n(&mb->signaled, __ATOMIC_RELAXED);
    if (!signaled && mb->normal.len == 0 && mb->inflight == 0) {
        mb->inflight++;
        how = DIRECT;
    } else {
        if (!gn_lane_push(&mb->normal, argv[1])) {
            enif_mutex_unlock(mb->lock);
            return enif_raise_exception(env, enif_make_atom(env, "enomem"));
        }
        if (!signaled) {
            __atomic_store_n(&mb->signaled, 1, __ATOMIC_RELEASE);
            how = WAKE;
        }
    }
    gn_note_accepted(mb);
    enif_mutex_unlock(mb->lock);

    /* Sent from the caller's environment, so it is ordered with the caller's
     * other messages to the owner; fails only if the owner died (dropped, as
     * with send/2). */
    if (how == DIRECT)
        enif_send(env, &pid, NULL, enif_make_tuple2(env, gn_am_gen_cast, argv[1]));
    else if (how == WAKE)
        enif_send(env, &pid, NULL, gn_am_wake);
    return gn_am_ok;
}

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

/* mailbox_take(Ref, Max) -> [Request]
 * Pops up to Max requests in order. Emptying the queue clears `signaled`,
 * so that the next request wakes the owner again. */
ERL_NIF_TERM gn_mailbox_take_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    unsigned max;
    gn_mailbox *mb = gn_owned_mailbox(env, argv[0]);
    if (!mb || !enif_get_uint(env, argv[1], &max) || max == 0 || max > GN_MAILBOX_MAX_BATCH)
        return enif_make_badarg(env);

    ERL_NIF_TERM batch[GN_MAILBOX_MAX_BATCH];
    gn_chunk *done = NULL;
    unsigned n = 0;
    enif_mutex_lock(mb->lock);
    if (mb->closed) {
        enif_mutex_unlock(mb->lock);
        return enif_make_badarg(env);
    }
    while (n < max && mb->normal.len > 0)
        batch[n++] = gn_lane_pop(env, &mb->normal, &done);
    if (mb->normal.len == 0)
        __atomic_store_n(&mb->signaled, 0, __ATOMIC_RELEASE);
    enif_mutex_unlock(mb->lock);
    gn_chunks_free(done);
    enif_consume_timeslice(env, 1 + (int)(n / 32));
    return enif_make_list_from_array(env, batch, n);
}

/* mailbox_ack(Ref) -> ok
 * The owner has handled a direct cast. Also called for casts that did not
 * come through the mailbox (GenServer.cast), hence the floor at zero:
 * `inflight` only steers casts between the direct and the queued path. */
ERL_NIF_TERM gn_mailbox_ack_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_mailbox *mb = gn_owned_mailbox(env, argv[0]);
    if (!mb)
        return enif_make_badarg(env);
    enif_mutex_lock(mb->lock);
    if (mb->inflight > 0)
        mb->inflight--;
    enif_mutex_unlock(mb->lock);
    return gn_am_ok;
}

/* mailbox_length(Ref) -> non_neg_integer() */
ERL_NIF_TERM gn_mailbox_length_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_mailbox *mb = gn_owned_mailbox(env, argv[0]);
    if (!mb)
        return enif_make_badarg(env);
    enif_mutex_lock(mb->lock);
    size_t len = mb->normal.len;
    enif_mutex_unlock(mb->lock);
    return enif_make_uint64(env, len);
}

/* mailbox_info(Pid) -> #{length, accepted, max_length} | not_native
 * O(1), without a message to the owner. */
ERL_NIF_TERM gn_mailbox_info_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ErlNifPid pid;
    if (!enif_is_pid(env, argv[0]))
        return enif_make_badarg(env);
    gn_mailbox *mb = gn_lookup_arg(env, argv[0], &pid);
    if (!mb)
        return gn_am_not_native;
    enif_mutex_lock(mb->lock);
    ERL_NIF_TERM keys[] = {gn_am_length, gn_am_accepted, gn_am_max_length};
    ERL_NIF_TERM vals[] = {
        enif_make_uint64(env, mb->normal.len),
        enif_make_uint64(env, mb->accepted),
        enif_make_uint64(env, mb->max_length),
    };
    enif_mutex_unlock(mb->lock);
    enif_release_resource(mb);
    ERL_NIF_TERM map;
    enif_make_map_from_arrays(env, keys, vals, 3, &map);
    return map;
}
