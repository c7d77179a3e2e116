/*
 * A store's lock: a readers-writer lock built for many readers on many
 * schedulers, as ETS's read_concurrency. A reader counts itself in one of
 * GN_RW_SLOTS counters, each on its own cache line (the slot a thread
 * uses is fixed when it first takes a store lock), and then checks the
 * writer flag; a writer sets the flag and then checks that every counter
 * is zero. Readers on different schedulers thus never write the same
 * cache line, where ErlNifRWLock makes every reader write one word. The
 * price is a writer's scan of the counters (GN_RW_SLOTS loads).
 *
 * The try functions never wait and may fail spuriously while a reader or
 * a writer is only trying; the blocking ones wait on a condition variable
 * and are for dirty schedulers and other threads that may block. A writer
 * that blocks sets the flag first and then waits for readers to drain,
 * so a stream of readers cannot starve it. All return 0 on success, as
 * enif_rwlock_try* do.
 *
 * Memory ordering: the reader's increment and the writer's flag are
 * sequentially consistent, so that of a reader and a writer racing, at
 * least one sees the other (Dekker); so are the unlocks.
 */
#ifndef GN_STORE_LOCK_H
#define GN_STORE_LOCK_H

#include <stdatomic.h>
#include <stddef.h>

#include <erl_nif.h>

#define GN_RW_SLOTS 8
#define GN_CACHE_LINE 64

typedef struct gn_rw_slot {
    atomic_long readers;
    char pad[GN_CACHE_LINE - sizeof(atomic_long)];
} gn_rw_slot;

typedef struct gn_rwlock {
    gn_rw_slot slots[GN_RW_SLOTS]; /* first: cache-line aligned */
    atomic_int writer;             /* 1 while a writer holds or takes it */
    atomic_int waiters;            /* threads blocked in a *lock call */
    ErlNifMutex *mutex;            /* for the waiters */
    ErlNifCond *cond;
    void *block; /* the allocation, before alignment */
} gn_rwlock;

/* A new lock, or NULL when out of memory; `gn_rw_bytes` is what it takes. */
gn_rwlock *gn_rw_create(void);
void gn_rw_destroy(gn_rwlock *l);
size_t gn_rw_bytes(void);

int gn_rw_tryrlock(gn_rwlock *l);
void gn_rw_rlock(gn_rwlock *l);
void gn_rw_runlock(gn_rwlock *l);
int gn_rw_tryrwlock(gn_rwlock *l);
void gn_rw_rwlock(gn_rwlock *l);
void gn_rw_rwunlock(gn_rwlock *l);

#endif
