/*
 * Taking a store for a NIF, and the cost of big terms (see store_access.h).
 *
 * Locking: a normal scheduler only tries a store's lock; a dirty one
 * waits for it. gn_fresh_view trades the read lock for the write lock to
 * purge, and back, so a caller must not assume the store unchanged across
 * it.
 */
#include "store_access.h"
#include "store_ttl.h"

gn_store *gn_store_lock(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[], gn_nif_fn *self,
                        int write, ERL_NIF_TERM *err)
{
    gn_store *s;
    if (!enif_get_resource(env, argv[0], gn_store_rtype, (void **)&s)) {
        *err = enif_make_badarg(env);
        return NULL;
    }
    if (enif_thread_type() == ERL_NIF_THR_NORMAL_SCHEDULER) {
        if ((write ? gn_rw_tryrwlock(s->lock) : gn_rw_tryrlock(s->lock)) != 0) {
            *err = enif_schedule_nif(env, "gn_store_wait", ERL_NIF_DIRTY_JOB_IO_BOUND, self, argc,
                                     argv);
            return NULL;
        }
    } else if (write) {
        gn_rw_rwlock(s->lock);
    } else {
        gn_rw_rlock(s->lock);
    }
    if (s->deleted) {
        *err = enif_raise_exception(env, gn_am_store_deleted);
        goto fail;
    }
    if (write == 1 && !s->public_access) {
        ErlNifPid self_pid;
        if (s->orphan || !enif_self(env, &self_pid) ||
            enif_compare_pids(&self_pid, &s->owner) != 0) {
            *err = enif_raise_exception(env, gn_am_not_owner);
            goto fail;
        }
    }
    if (write == 2 && !s->public_access && !s->orphan) {
        ErlNifPid self_pid;
        if (!enif_self(env, &self_pid) || enif_compare_pids(&self_pid, &s->owner) != 0) {
            *err = enif_raise_exception(env, gn_am_not_owner);
            goto fail;
        }
    }
    return s;
fail:
    if (write)
        gn_rw_rwunlock(s->lock);
    else
        gn_rw_runlock(s->lock);
    return NULL;
}

gn_store *gn_fresh_view(ErlNifEnv *env, gn_store *s, int argc, const ERL_NIF_TERM argv[],
                        gn_nif_fn *self, ERL_NIF_TERM *err)
{
    int dirty = enif_thread_type() != ERL_NIF_THR_NORMAL_SCHEDULER;
    /* Entries expiring continuously: each round purges all that expired
     * by its start; the bound is a backstop, never reached in practice. */
    for (int tries = 0; tries < 64; tries++) {
        int64_t now = gn_now_ms();
        if (!gn_needs_purge(s, now))
            return s;
        gn_rw_runlock(s->lock);
        if (dirty)
            gn_rw_rwlock(s->lock);
        else if (tries >= 2 || gn_rw_tryrwlock(s->lock) != 0)
            goto go_dirty;
        size_t left = s->deleted ? 0 : gn_purge(s, now, dirty ? SIZE_MAX : GN_PURGE_INLINE);
        gn_rw_rwunlock(s->lock);
        if (left)
            goto go_dirty;
        if (dirty)
            gn_rw_rlock(s->lock);
        else if (gn_rw_tryrlock(s->lock) != 0)
            goto go_dirty;
        if (s->deleted) {
            gn_rw_runlock(s->lock);
            *err = enif_raise_exception(env, gn_am_store_deleted);
            return NULL;
        }
    }
    return s;

go_dirty:
    *err = enif_schedule_nif(env, "gn_store_purge_first", ERL_NIF_DIRTY_JOB_CPU_BOUND, self, argc,
                             argv);
    return NULL;
}

int gn_ordered_or_raise(ErlNifEnv *env, gn_store *s, ERL_NIF_TERM *err)
{
    if (s->ordered)
        return 1;
    gn_rw_runlock(s->lock);
    *err = enif_raise_exception(env, gn_am_not_ordered);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Big terms                                                                 */

#define GN_SLICE_BYTES ((size_t)512 * 1024) /* copied in about a timeslice (1 ms) */

/* Bytes of work on `key` (encoded, hashed, compared: binaries in full),
 * counted up to a little past `limit`. */
size_t gn_key_cost(ErlNifEnv *env, ERL_NIF_TERM key, size_t limit)
{
    size_t bin = 0;
    size_t words = gn_term_words(env, key, &bin, limit / sizeof(ERL_NIF_TERM), 0);
    return words * sizeof(ERL_NIF_TERM) + bin;
}

size_t gn_entry_cost(const gn_node *n)
{
    return (gn_kwords(n) + gn_vwords(n)) * sizeof(ERL_NIF_TERM);
}

/* Whether work of `cost` bytes is too much for this (normal) scheduler. */
int gn_too_big(size_t cost)
{
    return cost > GN_INLINE_BYTES && enif_thread_type() == ERL_NIF_THR_NORMAL_SCHEDULER;
}

ERL_NIF_TERM gn_go_dirty(ErlNifEnv *env, gn_nif_fn *fn, int argc, const ERL_NIF_TERM argv[])
{
    return enif_schedule_nif(env, "gn_store_big_term", ERL_NIF_DIRTY_JOB_CPU_BOUND, fn, argc, argv);
}

/* Charges the timeslice for `bytes` copied on a normal scheduler. */
void gn_charge(ErlNifEnv *env, size_t bytes)
{
    if (bytes < GN_SLICE_BYTES / 100 || enif_thread_type() != ERL_NIF_THR_NORMAL_SCHEDULER)
        return;
    size_t pct = bytes * 100 / GN_SLICE_BYTES;
    enif_consume_timeslice(env, pct > 100 ? 100 : (int)pct);
}
