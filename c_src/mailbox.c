/*
 * The native mailbox and the pid registry.
 *
 * A mailbox is a FIFO of items, each carrying a sequence number. An item is
 * either a *payload* (a term copied into the environment of the chunk that
 * holds it, so the sender's heap is never referenced) or a *placeholder* (no
 * term: the request itself travels as a direct message {'$gn', Seq, Item} to
 * the owner). Items live in fixed-size chunks; a chunk, with its environment
 * and every term in it, is freed once all its items have been taken, so one
 * environment is allocated per GN_CHUNK_ITEMS requests, not per request.
 *
 * The owner is woken by one message when the queue goes from idle to busy,
 * not by one message per request: the first request after idle is sent
 * directly (leaving a placeholder to keep its place in the FIFO) and sets
 * `signaled`; later requests are queued as payloads until the owner drains
 * the queue empty, which clears `signaled`. Calls always travel directly
 * (with a placeholder, or as {'$gn', Item} with none when the queue is idle),
 * so that a message their sender sent before them is in the owner's process
 * mailbox first; the Elixir side (GenNative.Server)
 * handles items strictly in sequence order and waits at a placeholder until
 * its direct message has arrived.
 *
 * Locks: `mb->lock` protects everything in a gn_mailbox (`signaled` is an
 * atomic so it can also be read as a hint). Each registry shard's rwlock
 * protects that shard's buckets and keeps the mailboxes in them alive while
 * held. Lock order: registry shard, then mailbox (gn_enqueue holds both);
 * the down callback takes them one after the other, never nested.
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
    uint64_t seq;
    ERL_NIF_TERM term; /* 0 for a placeholder, else a term in the chunk's env */
} gn_item;

typedef struct gn_chunk {
    struct gn_chunk *next;
    ErlNifEnv *env; /* allocated with the chunk's first payload */
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
    int closed; /* the owner has exited */
    int signaled; /* atomic: a wake is on its way to, or being handled by, the owner */
    uint64_t next_seq;
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

/* Appends an item to the lane; `term` (0 for a placeholder) is copied into
 * the tail chunk's environment. Call with mb->lock held. Returns 0 when out
 * of memory, leaving the lane unchanged. */
static int gn_lane_push(gn_lane *lane, uint64_t seq, ERL_NIF_TERM term)
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
    gn_item *item = &c->items[c->tail];
    item->seq = seq;
    item->term = 0;
    if (term) {
        if (!c->env && !(c->env = enif_alloc_env()))
            return 0;
        item->term = enif_make_copy(c->env, term);
    }
    c->tail++;
    lane->len++;
    return 1;
}

/* Pops the head item into `dst` as a term of `env`: its payload, or its
 * sequence number for a placeholder. A chunk whose items are all taken is
 * unlinked and pushed on *done, for the caller to free after unlocking. Call
 * with mb->lock held and the lane non-empty. */
static ERL_NIF_TERM gn_lane_pop(ErlNifEnv *env, gn_lane *lane, gn_chunk **done)
{
    gn_chunk *c = lane->first;
    gn_item *item = &c->items[c->head++];
    ERL_NIF_TERM t = item->term ? enif_make_copy(env, item->term) : enif_make_uint64(env, item->seq);
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

static ERL_NIF_TERM gn_send_direct(ErlNifEnv *env, ErlNifPid *to, uint64_t seq, ERL_NIF_TERM item)
{
    ERL_NIF_TERM msg = enif_make_tuple3(env, gn_am_gn, enif_make_uint64(env, seq), item);
    enif_send(env, to, NULL, msg); /* fails only if the owner died: dropped, as with send/2 */
    return gn_am_ok;
}

static void gn_note_accepted(gn_mailbox *mb)
{
    mb->accepted++;
    if (mb->normal.len > mb->max_length)
        mb->max_length = mb->normal.len;
}

/* Queues one request for the mailbox of `pid`. A placeholder is left when
 * `direct` is set or the owner is idle, and the request is then sent to the
 * owner as {'$gn', Seq, Item}; otherwise the request is copied into the
 * queue. A mailbox whose owner has died drops it, as send/2 to a dead
 * process does. */
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

static ERL_NIF_TERM gn_enqueue(ErlNifEnv *env, const ERL_NIF_TERM argv[], int direct)
{
    gn_charge_enqueue(env);
    ErlNifPid pid;
    if (!enif_is_pid(env, argv[0]))
        return enif_make_badarg(env);
    if (!enif_get_local_pid(env, argv[0], &pid))
        return gn_am_not_native;

    /* The shard's read lock is held until the item is queued, which keeps
     * the mailbox alive without touching its reference count. */
    gn_registry *reg = ((gn_priv *)enif_priv_data(env))->registry;
    unsigned b = gn_bucket_of(enif_hash(ERL_NIF_INTERNAL_HASH, argv[0], 0));
    ErlNifRWLock *shard = gn_shard_lock(reg, b);
    enif_rwlock_rlock(shard);
    gn_mailbox *mb = gn_bucket_find(reg, b, &pid);
    if (!mb) {
        enif_rwlock_runlock(shard);
        return gn_am_not_native;
    }

    ERL_NIF_TERM result = gn_am_ok;
    enif_mutex_lock(mb->lock);
    if (mb->closed) {
        enif_mutex_unlock(mb->lock);
        enif_rwlock_runlock(shard);
        return gn_am_ok;
    }
    int idle = !__atomic_load_n(&mb->signaled, __ATOMIC_RELAXED);
    if (idle && direct && mb->normal.len == 0) {
        /* A call to an idle server needs no place in the queue: nothing is
         * queued before it, and its sender waits for the reply, so it cannot
         * overtake anything the sender sends later. */
        mb->accepted++;
        enif_mutex_unlock(mb->lock);
        enif_rwlock_runlock(shard);
        enif_send(env, &pid, NULL, enif_make_tuple2(env, gn_am_gn, argv[1]));
        return gn_am_ok;
    }
    if (idle)
        direct = 1;
    uint64_t seq = mb->next_seq;
    if (!gn_lane_push(&mb->normal, seq, direct ? 0 : argv[1])) {
        enif_mutex_unlock(mb->lock);
        enif_rwlock_runlock(shard);
        return enif_raise_exception(env, enif_make_atom(env, "enomem"));
    }
    mb->next_seq++;
    __atomic_store_n(&mb->signaled, 1, __ATOMIC_RELEASE);
    gn_note_accepted(mb);
    enif_mutex_unlock(mb->lock);
    enif_rwlock_runlock(shard);
    if (direct)
        result = gn_send_direct(env, &pid, seq, argv[1]);
    return result;
}

/* mailbox_cast(Pid, Item) -> ok | not_native */
ERL_NIF_TERM gn_mailbox_cast_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    return gn_enqueue(env, argv, 0);
}

/* mailbox_call(Pid, Item) -> ok | not_native
 * Always direct, so that a call cannot overtake a message its sender sent
 * to the owner before it. */
ERL_NIF_TERM gn_mailbox_call_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    return gn_enqueue(env, argv, 1);
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

/* mailbox_take(Ref, Max) -> [Item]
 * Pops up to Max items in order: a payload comes out as its term, a
 * placeholder as its sequence number. Emptying the queue clears `signaled`,
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
