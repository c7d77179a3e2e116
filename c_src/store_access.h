/*
 * How a store NIF gets at a store without holding up a normal scheduler:
 * resolving the handle and taking the store's lock (only tried on a normal
 * scheduler: when busy, the call moves to a dirty one to wait), purging
 * what has expired before a read of the whole store, and sizing the work
 * on big keys and values (past GN_INLINE_BYTES, the call goes dirty).
 *
 * Locking: gn_store_lock and the GN_READ/GN_WRITE/GN_VIEW macros return
 * with the store's lock held (shared, or exclusive for writes), or with it
 * released and *err set; the NIF releases it when done. The cost functions
 * take no lock.
 */
#ifndef GN_STORE_ACCESS_H
#define GN_STORE_ACCESS_H

#include "store_impl.h"

typedef ERL_NIF_TERM gn_nif_fn(ErlNifEnv *, int, const ERL_NIF_TERM[]);

/* Resolves a store handle and takes its lock; NULL after setting *err.
 * `write`: exclusive, and only for the owner of a protected store (or, for
 * delete, anyone when the store is orphaned). Use or writes of a deleted
 * store raise store_deleted; a write by another process to a protected store
 * raises not_owner. On a normal scheduler the lock is only tried: if it is
 * busy (a dirty NIF walking a big store holds it), the call moves itself to
 * a dirty scheduler to wait there, never holding up a normal one. */
gn_store *gn_store_lock(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[], gn_nif_fn *self,
                        int write, ERL_NIF_TERM *err);

/* For reads that see the whole store (size, rank, index, walks): first purge
 * what has expired. Called with the read lock held; returns with it held,
 * or NULL (lock released, *err set). A regular NIF purges up to
 * GN_PURGE_INLINE entries, and only if it gets the write lock at once;
 * anything more, and it reschedules itself (`self` with argc/argv) on a
 * dirty scheduler, which purges everything and then reads. That is the one
 * way a store NIF asks for more time: nothing is raised for the caller to
 * retry. */
gn_store *gn_fresh_view(ErlNifEnv *env, gn_store *s, int argc, const ERL_NIF_TERM argv[],
                        gn_nif_fn *self, ERL_NIF_TERM *err);

/* A view of an ordered_set: on a set, unlocks and raises not_ordered. */
int gn_ordered_or_raise(ErlNifEnv *env, gn_store *s, ERL_NIF_TERM *err);

/* In a NIF named `fn`: take the store in argv[0] for reading or writing. */
#define GN_READ(fn, s, err) ((s) = gn_store_lock(env, argc, argv, fn, 0, &(err)))
#define GN_WRITE(fn, s, err) ((s) = gn_store_lock(env, argc, argv, fn, 1, &(err)))
/* Reading the whole store: as GN_READ, after purging what has expired. */
#define GN_VIEW(fn, s, err)                                                                        \
    (GN_READ(fn, s, err) && ((s) = gn_fresh_view(env, (s), argc, argv, fn, &(err))))

#define GN_VIEW_ORDERED(fn, s, err) (GN_VIEW(fn, s, err) && gn_ordered_or_raise(env, (s), &(err)))

/* ------------------------------------------------------------------------ */
/* Big terms                                                                 */
/*
 * Work on one key or value grows with its size: a put copies the value and
 * encodes and hashes the key, a get copies the value out. A regular NIF
 * handles terms up to GN_INLINE_BYTES (a bounded walk finds out, before
 * anything is done), charging the scheduler's timeslice by the bytes it
 * copies; past that, the call reschedules itself on a dirty scheduler.
 */

#define GN_INLINE_BYTES ((size_t)64 * 1024)

/* Bytes of work on `key` (encoded, hashed, compared: binaries in full),
 * counted up to a little past `limit`. */
size_t gn_key_cost(ErlNifEnv *env, ERL_NIF_TERM key, size_t limit);
/* Bytes of work on copying an entry out. */
size_t gn_entry_cost(const gn_node *n);
/* Whether work of `cost` bytes is too much for this (normal) scheduler. */
int gn_too_big(size_t cost);
/* Reschedules fn(argc, argv) on a dirty scheduler: a term too big. */
ERL_NIF_TERM gn_go_dirty(ErlNifEnv *env, gn_nif_fn *fn, int argc, const ERL_NIF_TERM argv[]);
/* Charges the timeslice for `bytes` copied on a normal scheduler. */
void gn_charge(ErlNifEnv *env, size_t bytes);

#endif
