/*
 * The native state store's resource and its NIFs that are not about order
 * or snapshots: the resource type and its callbacks (destructor, owner
 * down), load/upgrade/unload, and new, whereis, put, get, delete_key,
 * take, update_counter, size, info, delete, clear, put_many and sweep.
 * Walks in key order are in store_walk_nif.c, snapshot and restore in
 * store_snapshot_nif.c; the data structure itself in store.c.
 *
 * Locking: a NIF takes the store's lock through store_access.h (GN_READ,
 * GN_WRITE, GN_VIEW; new/5 adopting a named store, and the dirty
 * compaction, take it directly) and releases it before it returns. The
 * name registry and the sweep list are taken only with no store lock held,
 * except gn_ttl_list_add (store, then list). The owner-down callback never
 * waits for a store's lock on a normal scheduler (gn_store_down).
 */
#include <string.h>

#include "snapshot.h"
#include "store_access.h"
#include "store_names.h"
#include "store_ttl.h"

ErlNifResourceType *gn_store_rtype;

/* ------------------------------------------------------------------------ */
/* Resource callbacks                                                        */

static void gn_store_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    gn_store *s = obj;
    gn_store_detach(s, 0);
    if (s->lock)
        gn_rw_destroy(s->lock);
}

static void gn_store_mark_deleted(gn_store *s)
{
    s->deleted = 1;
    gn_store_detach(s, 0);
}

/* The owner `pid` of `s` is down: a :named store becomes an orphan, any
 * other is deleted. Call with the write lock held; returns whether to drop
 * the name (after unlocking). Nothing happens if the store has been adopted
 * since (its owner is another process). */
static int gn_store_owner_gone(gn_store *s, const ErlNifPid *pid)
{
    if (s->deleted || s->orphan || enif_compare_pids(&s->owner, pid) != 0)
        return 0;
    if (s->named_lifetime) {
        s->orphan = 1;
        return 0;
    }
    gn_store_mark_deleted(s);
    return 1;
}

typedef struct gn_down_job {
    gn_store *s; /* holds a resource reference */
    ErlNifPid pid;
} gn_down_job;

static void gn_store_down_job(void *arg)
{
    gn_down_job *job = arg;
    gn_store *s = job->s;
    gn_rw_rwlock(s->lock);
    int unregister = gn_store_owner_gone(s, &job->pid);
    gn_rw_rwunlock(s->lock);
    if (unregister)
        gn_name_remove(s);
    enif_release_resource(s);
    gn_free(job);
}

/* Runs on a normal scheduler: never waits for the store's lock. If a dirty
 * NIF holds it (a walk of a big store), the work goes to the reaper thread,
 * which may wait. Until it is done, new/2 adopts a :named store whose owner
 * is not alive as if it were an orphan (see gn_store_new_nif). */
static void gn_store_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon)
{
    (void)env;
    (void)mon;
    gn_store *s = obj;
    if (gn_rw_tryrwlock(s->lock) != 0) {
        gn_down_job *job = gn_alloc(sizeof(*job));
        if (job) {
            enif_keep_resource(s);
            job->s = s;
            job->pid = *pid;
            gn_reap(gn_store_down_job, job);
            return;
        }
        gn_rw_rwlock(s->lock); /* out of memory: wait, rather than lose the exit */
    }
    int unregister = gn_store_owner_gone(s, pid);
    gn_rw_rwunlock(s->lock);
    if (unregister)
        gn_name_remove(s); /* may drop the last reference: last */
}

/* A fresh shared state for priv->stores; the library that loads first
 * makes it, and gn_store_upgrade hands it on. */
int gn_store_load(ErlNifEnv *env, gn_priv *priv, ErlNifResourceFlags flags)
{
    gn_crc32_init(); /* for snapshots */
    ErlNifResourceTypeInit init = {.dtor = gn_store_dtor, .stop = NULL, .down = gn_store_down};
    ErlNifResourceType *rt = enif_open_resource_type_x(env, "gn_store", &init, flags, NULL);
    if (!rt)
        return 0;
    gn_store_rtype = rt;
    gn_store_shared *sh = gn_alloc(sizeof(*sh));
    if (!sh)
        return 0;
    memset(sh, 0, sizeof(*sh));
    sh->refs = 1;
    sh->names_lock = enif_mutex_create("gn_store_names");
    sh->ttl_lock = enif_mutex_create("gn_store_ttl");
    priv->stores = sh;
    return sh->names_lock && sh->ttl_lock;
}

/* An upgrade: the new library takes over the old one's stores (named
 * stores, the sweep list) instead of the fresh state its load made. */
void gn_store_upgrade(gn_priv *priv, gn_priv *old)
{
    gn_store_shared *fresh = priv->stores;
    priv->stores = old->stores;
    priv->stores->refs++;
    /* no store ever saw the fresh state */
    enif_mutex_destroy(fresh->names_lock);
    enif_mutex_destroy(fresh->ttl_lock);
    gn_free(fresh);
}

/* Drops this library's reference; the last one releases the named stores'
 * references. The shared state itself, and its locks, are kept: a store
 * that outlives every library instance (a handle still held) may still
 * run its down callback, which takes them. */
void gn_store_unload(gn_priv *priv)
{
    gn_store_shared *sh = priv->stores;
    if (!sh || --sh->refs > 0)
        return;
    if (!sh->names_lock)
        return;
    gn_names_release(sh);
}

/* ------------------------------------------------------------------------ */
/* NIFs                                                                      */

/* store_new(Type, Name | nil, Access, Lifetime, MaxSize | infinity)
 *   -> {ok, Store} | {error, already_exists}
 * With the name of a named store whose owner exited: adopts it. */
ERL_NIF_TERM gn_store_new_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    int ordered, pub, named;
    ErlNifUInt64 max = SIZE_MAX;
    if (enif_is_identical(argv[0], gn_am_ordered_set))
        ordered = 1;
    else if (enif_is_identical(argv[0], gn_am_set))
        ordered = 0;
    else
        return enif_make_badarg(env);
    int has_name = !enif_is_identical(argv[1], gn_am_nil);
    if (has_name && !enif_is_atom(env, argv[1]))
        return enif_make_badarg(env);
    if (enif_is_identical(argv[2], gn_am_public))
        pub = 1;
    else if (enif_is_identical(argv[2], gn_am_protected))
        pub = 0;
    else
        return enif_make_badarg(env);
    if (enif_is_identical(argv[3], gn_am_named))
        named = 1;
    else if (enif_is_identical(argv[3], gn_am_owner))
        named = 0;
    else
        return enif_make_badarg(env);
    if (named && !has_name)
        return enif_make_badarg(env);
    if (!enif_is_identical(argv[4], gn_am_infinity) &&
        (!enif_get_uint64(env, argv[4], &max) || max == 0))
        return enif_make_badarg(env);

    ErlNifPid self;
    if (!enif_self(env, &self))
        return enif_make_badarg(env);

    /* A name in use: adopt its store if it is an orphan, or a :named store
     * whose owner has exited (the down callback may still be on its way).
     * The store's lock is taken with the names lock released; a regular NIF
     * only tries it, and waits on a dirty scheduler if it is busy. */
    gn_store_shared *sh = gn_shared(env);
    if (has_name) {
        gn_store *old = gn_name_lookup(sh, argv[1]);
        if (old) {
            if (enif_thread_type() != ERL_NIF_THR_NORMAL_SCHEDULER) {
                gn_rw_rwlock(old->lock);
            } else if (gn_rw_tryrwlock(old->lock) != 0) {
                enif_release_resource(old);
                return enif_schedule_nif(env, "gn_store_new", ERL_NIF_DIRTY_JOB_IO_BOUND,
                                         gn_store_new_nif, argc, argv);
            }
            ERL_NIF_TERM result;
            int gone =
                old->orphan || (old->named_lifetime && !enif_is_process_alive(env, &old->owner));
            if (gone && !old->deleted && old->ordered == ordered &&
                enif_monitor_process(env, old, &self, &old->monitor) == 0) {
                old->owner = self;
                old->orphan = 0;
                result = enif_make_tuple2(env, gn_am_ok, enif_make_resource(env, old));
            } else {
                result = enif_make_tuple2(env, gn_am_error, gn_am_already_exists);
            }
            gn_rw_rwunlock(old->lock);
            enif_release_resource(old);
            return result;
        }
    }

    gn_store *s = enif_alloc_resource(gn_store_rtype, sizeof(*s));
    /* zeroed at once: a failure below releases it, and the destructor
     * reads every field */
    if (s)
        memset(s, 0, sizeof(*s));
    gn_name *entry = has_name ? gn_name_new() : NULL;
    if (!s || (has_name && !entry))
        goto enomem;
    s->ordered = ordered;
    s->public_access = pub;
    s->named_lifetime = named;
    s->name = has_name ? argv[1] : 0;
    s->max_size = (size_t)max;
    s->owner = self;
    s->shared = sh;
    if (!(s->lock = gn_rw_create()) || !(s->arena = enif_alloc_env()))
        goto enomem;
    if (enif_monitor_process(env, s, &self, &s->monitor) != 0)
        goto enomem;
    if (has_name && !gn_name_register(sh, entry, argv[1], s)) {
        /* registered meanwhile by another process: start over */
        gn_name_free(entry);
        enif_demonitor_process(env, s, &s->monitor);
        enif_release_resource(s);
        return gn_store_new_nif(env, argc, argv);
    }
    ERL_NIF_TERM ref = enif_make_resource(env, s);
    enif_release_resource(s);
    return enif_make_tuple2(env, gn_am_ok, ref);

enomem:
    if (entry)
        gn_name_free(entry);
    if (s)
        enif_release_resource(s);
    return enif_raise_exception(env, gn_am_enomem);
}

/* store_whereis(Name) -> Store | nil */
ERL_NIF_TERM gn_store_whereis_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    if (!enif_is_atom(env, argv[0]))
        return enif_make_badarg(env);
    gn_store *s = gn_name_lookup(gn_shared(env), argv[0]);
    if (!s)
        return gn_am_nil;
    ERL_NIF_TERM ref = enif_make_resource(env, s);
    enif_release_resource(s);
    return ref;
}

/* store_compact(Store, Result) -> Result (dirty): rebuilds a big store's
 * arena after a write that left it mostly garbage, then returns that
 * write's result. */
static ERL_NIF_TERM gn_store_compact_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_store *s;
    if (enif_get_resource(env, argv[0], gn_store_rtype, (void **)&s)) {
        gn_rw_rwlock(s->lock);
        if (!s->deleted && gn_arena_bloated(s))
            gn_arena_compact(s);
        gn_rw_rwunlock(s->lock);
    }
    return argv[1];
}

static ERL_NIF_TERM gn_compact_later(ErlNifEnv *env, ERL_NIF_TERM store, ERL_NIF_TERM result)
{
    ERL_NIF_TERM args[2] = {store, result};
    return enif_schedule_nif(env, "gn_store_compact", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                             gn_store_compact_nif, 2, args);
}

/* store_put(Store, Key, Value, put | put_new, TtlMs) -> ok | true | false | {error, full}
 * TtlMs: 0 for none. */
ERL_NIF_TERM gn_store_put_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ERL_NIF_TERM err;
    gn_store *s;
    ErlNifSInt64 ttl;
    int put_new = enif_is_identical(argv[3], gn_am_put_new);
    if ((!put_new && !enif_is_identical(argv[3], gn_am_put)) ||
        !enif_get_int64(env, argv[4], &ttl) || ttl < 0)
        return enif_make_badarg(env);
    size_t cost = gn_key_cost(env, argv[1], GN_INLINE_BYTES);
    /* the value's size, sized once: exact when within the limit */
    gn_termsize vsize = {0, 0}, *known = NULL;
    if (cost <= GN_INLINE_BYTES) {
        size_t limit = GN_INLINE_BYTES / sizeof(ERL_NIF_TERM);
        vsize.words = gn_term_words(env, argv[2], &vsize.bin, limit, 0);
        cost += vsize.words * sizeof(ERL_NIF_TERM);
        known = vsize.words <= limit ? &vsize : NULL;
    }
    if (gn_too_big(cost))
        return gn_go_dirty(env, gn_store_put_nif, argc, argv);
    if (!GN_WRITE(gn_store_put_nif, s, err))
        return err;
    int64_t now = ttl || s->heap_len ? gn_now_ms() : 0;
    if (s->heap_len)
        gn_purge(s, now, GN_PURGE_ON_WRITE);
    int fresh,
        ok = gn_put_entry(s, env, argv[1], argv[2], known, ttl ? now + ttl : 0, put_new, &fresh);
    int compact = gn_write_compact(s);
    gn_rw_rwunlock(s->lock);
    gn_charge(env, cost);
    if (ok == 0)
        return enif_raise_exception(env, gn_am_enomem);
    if (ok < 0)
        return enif_make_tuple2(env, gn_am_error, gn_am_full);
    ERL_NIF_TERM result = put_new ? (fresh ? gn_am_true : gn_am_false) : gn_am_ok;
    return compact ? gn_compact_later(env, argv[0], result) : result;
}

/* store_get(Store, Key) -> {ok, Value} | error */
ERL_NIF_TERM gn_store_get_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err, result;
    gn_store *s;
    size_t cost = gn_key_cost(env, argv[1], GN_INLINE_BYTES);
    if (gn_too_big(cost))
        return gn_go_dirty(env, gn_store_get_nif, argc, argv);
    if (!GN_READ(gn_store_get_nif, s, err))
        return err;
    gn_probe p = {.key = argv[1]};
    gn_node *n = gn_find(s, &p);
    if (n && n->ext && gn_expired(n, gn_now_ms()))
        n = NULL;
    if (n && gn_too_big(cost + gn_vwords(n) * sizeof(ERL_NIF_TERM))) {
        gn_rw_runlock(s->lock);
        return gn_go_dirty(env, gn_store_get_nif, argc, argv);
    }
    if (n)
        cost += gn_vwords(n) * sizeof(ERL_NIF_TERM);
    result = n ? enif_make_tuple2(env, gn_am_ok, enif_make_copy(env, n->value)) : gn_am_error;
    gn_rw_runlock(s->lock);
    gn_charge(env, cost);
    return result;
}

/* store_delete_key(Store, Key) -> ok */
ERL_NIF_TERM gn_store_delete_key_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    size_t cost = gn_key_cost(env, argv[1], GN_INLINE_BYTES);
    if (gn_too_big(cost))
        return gn_go_dirty(env, gn_store_delete_key_nif, argc, argv);
    if (!GN_WRITE(gn_store_delete_key_nif, s, err))
        return err;
    gn_purge(s, gn_now_ms(), GN_PURGE_ON_WRITE);
    gn_probe p = {.key = argv[1]};
    gn_node *n = gn_unlink(s, &p);
    int compact = gn_write_compact(s);
    gn_rw_rwunlock(s->lock);
    if (n)
        gn_node_free(n);
    return compact ? gn_compact_later(env, argv[0], gn_am_ok) : gn_am_ok;
}

/* store_take(Store, Key) -> {ok, Value} | error */
ERL_NIF_TERM gn_store_take_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    size_t cost = gn_key_cost(env, argv[1], GN_INLINE_BYTES);
    if (gn_too_big(cost))
        return gn_go_dirty(env, gn_store_take_nif, argc, argv);
    if (!GN_WRITE(gn_store_take_nif, s, err))
        return err;
    int64_t now = gn_now_ms();
    gn_purge(s, now, GN_PURGE_ON_WRITE);
    gn_probe p = {.key = argv[1]};
    gn_node *n = gn_find(s, &p);
    if (n && gn_too_big(cost + gn_vwords(n) * sizeof(ERL_NIF_TERM))) {
        gn_rw_rwunlock(s->lock);
        return gn_go_dirty(env, gn_store_take_nif, argc, argv);
    }
    n = n ? gn_unlink(s, &p) : NULL;
    /* the value lives in the arena: copy it out while the lock is held */
    ERL_NIF_TERM v = n && !gn_expired(n, now) ? enif_make_copy(env, n->value) : 0;
    if (v)
        cost += gn_vwords(n) * sizeof(ERL_NIF_TERM);
    int compact = gn_write_compact(s);
    gn_rw_rwunlock(s->lock);
    gn_charge(env, cost);
    if (n)
        gn_node_free(n);
    if (!v)
        return gn_am_error;
    ERL_NIF_TERM result = enif_make_tuple2(env, gn_am_ok, v);
    return compact ? gn_compact_later(env, argv[0], result) : result;
}

/* store_update_counter(Store, Key, Incr, Default) -> Integer
 * Raises not_integer if the value (or Default) is not an integer. */
ERL_NIF_TERM gn_store_update_counter_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    ErlNifSInt64 incr, current;
    if (!enif_get_int64(env, argv[2], &incr))
        return enif_make_badarg(env);
    if (gn_too_big(gn_key_cost(env, argv[1], GN_INLINE_BYTES)))
        return gn_go_dirty(env, gn_store_update_counter_nif, argc, argv);
    if (!GN_WRITE(gn_store_update_counter_nif, s, err))
        return err;
    gn_probe p = {.key = argv[1]};
    gn_node *n = gn_find_live(s, &p);
    /* enif_raise_exception returns a term that may be 0: a flag for ENOMEM */
    ERL_NIF_TERM result = 0, value;
    int done = 0;
    int oom = 1;
    if (n) {
        if (!enif_get_int64(env, n->value, &current)) {
            result = enif_raise_exception(env, gn_am_not_integer);
            oom = 0;
            goto out;
        }
    } else if (!enif_get_int64(env, argv[3], &current)) {
        result = enif_raise_exception(env, gn_am_not_integer);
        oom = 0;
        goto out;
    } else if (s->count >= s->max_size &&
               (gn_purge(s, gn_now_ms(), GN_PURGE_INLINE), s->count >= s->max_size)) {
        result = enif_make_tuple2(env, gn_am_error, gn_am_full);
        oom = 0;
        goto out;
    }
    if ((incr > 0 && current > INT64_MAX - incr) || (incr < 0 && current < INT64_MIN - incr)) {
        result = enif_raise_exception(env, gn_am_not_integer);
        oom = 0;
        goto out;
    }
    value = enif_make_int64(env, current + incr);
    if (n) {
        if (!gn_node_set(s, env, n, value))
            goto out;
    } else {
        if (!(n = gn_node_new(s, env, argv[1], value)))
            goto out;
        if (!gn_link(s, n, &p)) {
            gn_node_free(n);
            goto out;
        }
        gn_account_add(s, n);
    }
    result = value;
    oom = 0;
    done = 1;
out:;
    /* a bignum counter leaves its old value in the arena: compact too */
    int compact = done && gn_write_compact(s);
    gn_rw_rwunlock(s->lock);
    if (oom)
        return enif_raise_exception(env, gn_am_enomem);
    return compact ? gn_compact_later(env, argv[0], result) : result;
}

/* store_size(Store) -> non_neg_integer() */
ERL_NIF_TERM gn_store_size_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!GN_VIEW(gn_store_size_nif, s, err))
        return err;
    size_t n = s->count;
    gn_rw_runlock(s->lock);
    return enif_make_uint64(env, n);
}

/* store_info(Store) -> #{type, size, memory, owner, name, access, lifetime} */
ERL_NIF_TERM gn_store_info_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!GN_VIEW(gn_store_info_nif, s, err))
        return err;
    ERL_NIF_TERM keys[] = {gn_am_type, gn_am_size,   gn_am_memory,  gn_am_owner,
                           gn_am_name, gn_am_access, gn_am_lifetime};
    ERL_NIF_TERM vals[] = {
        s->ordered ? gn_am_ordered_set : gn_am_set,
        enif_make_uint64(env, s->count),
        enif_make_uint64(env, gn_store_memory(s)),
        s->orphan ? gn_am_nil : enif_make_pid(env, &s->owner),
        s->name ? s->name : gn_am_nil,
        s->public_access ? gn_am_public : gn_am_protected,
        s->named_lifetime ? gn_am_named : gn_am_owner,
    };
    gn_rw_runlock(s->lock);
    ERL_NIF_TERM map;
    enif_make_map_from_arrays(env, keys, vals, 7, &map);
    return map;
}

/* store_delete(Store) -> ok: frees the store (owner only, or any process
 * for a public store); every later use raises store_deleted. */
ERL_NIF_TERM gn_store_delete_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!(s = gn_store_lock(env, argc, argv, gn_store_delete_nif, 2, &err)))
        return err;
    gn_store_mark_deleted(s);
    gn_rw_rwunlock(s->lock);
    gn_name_remove(s);
    return gn_am_ok;
}

/* store_clear(Store) -> ok. O(1): the entries go to the reaper. */
ERL_NIF_TERM gn_store_clear_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!GN_WRITE(gn_store_clear_nif, s, err))
        return err;
    gn_store_detach(s, 1);
    gn_rw_rwunlock(s->lock);
    return gn_am_ok;
}

/* store_put_many(Store, [{K, V}]) -> ok | {error, full} (dirty)
 * All or nothing for the cap: checked before anything is written. */
ERL_NIF_TERM gn_store_put_many_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ERL_NIF_TERM err, head, tail = argv[1];
    gn_store *s;
    unsigned len;
    if (!enif_get_list_length(env, argv[1], &len))
        return enif_make_badarg(env);
    while (enif_get_list_cell(env, tail, &head, &tail)) {
        const ERL_NIF_TERM *kv;
        int arity;
        if (!enif_get_tuple(env, head, &arity, &kv) || arity != 2)
            return enif_make_badarg(env);
    }
    if (!GN_WRITE(gn_store_put_many_nif, s, err))
        return err;
    int64_t now = gn_now_ms();
    gn_purge(s, now, SIZE_MAX);
    if (s->max_size != SIZE_MAX && s->count + len > s->max_size) {
        /* Count the distinct new keys, each once, in a scratch store keyed
         * like the store: all or nothing. */
        gn_store scratch;
        memset(&scratch, 0, sizeof(scratch));
        scratch.ordered = s->ordered;
        scratch.max_size = SIZE_MAX;
        scratch.arena = enif_alloc_env();
        size_t fresh = 0;
        int oom = !scratch.arena;
        tail = argv[1];
        while (!oom && enif_get_list_cell(env, tail, &head, &tail)) {
            const ERL_NIF_TERM *kv;
            int arity;
            enif_get_tuple(env, head, &arity, &kv);
            gn_probe p = {.key = kv[0]};
            if (!gn_find(s, &p) && !gn_find(&scratch, &p)) {
                gn_node *n = gn_node_new(&scratch, env, kv[0], gn_am_nil);
                if (n && gn_link(&scratch, n, &p)) {
                    fresh++;
                } else {
                    if (n)
                        gn_node_free(n);
                    oom = 1;
                }
            }
        }
        gn_entries_free(scratch.root, scratch.htab, scratch.hcap);
        if (scratch.arena)
            enif_free_env(scratch.arena);
        if (oom || s->count + fresh > s->max_size) {
            gn_rw_rwunlock(s->lock);
            return oom ? enif_raise_exception(env, gn_am_enomem)
                       : enif_make_tuple2(env, gn_am_error, gn_am_full);
        }
    }
    if (!s->ordered && s->count + len > 2 * s->hcap)
        gn_hash_resize(s, gn_hash_cap(s->count + len)); /* once, not as it goes */
    int ok = 1;
    tail = argv[1];
    while (ok == 1 && enif_get_list_cell(env, tail, &head, &tail)) {
        const ERL_NIF_TERM *kv;
        int arity, fresh;
        enif_get_tuple(env, head, &arity, &kv);
        ok = gn_put_entry(s, env, kv[0], kv[1], NULL, 0, 0, &fresh);
    }
    if (gn_arena_bloated(s))
        gn_arena_compact(s);
    gn_rw_rwunlock(s->lock);
    return ok == 1 ? gn_am_ok : enif_raise_exception(env, gn_am_enomem);
}

/* store_sweep() -> ok (dirty): purges every store holding expiring entries,
 * and forgets those that hold none any more. Called every second by
 * GenNative.Store.Sweeper. */
ERL_NIF_TERM gn_store_sweep_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)env;
    (void)argc;
    (void)argv;
    size_t n;
    gn_store **todo = gn_ttl_list_collect(gn_shared(env), &n);
    if (!todo)
        return enif_raise_exception(env, gn_am_enomem);
    int64_t now = gn_now_ms();
    for (size_t i = 0; i < n; i++) {
        gn_store *s = todo[i];
        gn_rw_rwlock(s->lock);
        if (!s->deleted) {
            gn_purge(s, now, SIZE_MAX);
            if (gn_arena_bloated(s))
                gn_arena_compact(s);
        }
        int idle = s->deleted || s->heap_len == 0;
        gn_rw_rwunlock(s->lock);
        if (idle)
            gn_ttl_list_remove(s);
        enif_release_resource(s);
    }
    gn_free(todo);
    return gn_am_ok;
}
