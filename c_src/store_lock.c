/*
 * The store's readers-writer lock (see store_lock.h for the design and
 * its memory ordering). The waiters' mutex and condition variable are
 * only touched when some thread blocks: `waiters` says whether an unlock
 * must wake anyone.
 */
#include <stdint.h>
#include <string.h>

#include "alloc.h"
#include "store_lock.h"

static atomic_uint gn_rw_next_slot;
static _Thread_local unsigned gn_rw_my_slot; /* 1 + the slot; 0: none yet */

static inline gn_rw_slot *gn_rw_slot_of(gn_rwlock *l)
{
    unsigned ix = gn_rw_my_slot;
    if (!ix)
        ix = gn_rw_my_slot = 1 + atomic_fetch_add(&gn_rw_next_slot, 1) % GN_RW_SLOTS;
    return &l->slots[ix - 1];
}

size_t gn_rw_bytes(void)
{
    return sizeof(gn_rwlock) + GN_CACHE_LINE;
}

gn_rwlock *gn_rw_create(void)
{
    void *block = gn_alloc(gn_rw_bytes());
    if (!block)
        return NULL;
    gn_rwlock *l =
        (gn_rwlock *)(((uintptr_t)block + GN_CACHE_LINE - 1) & ~(uintptr_t)(GN_CACHE_LINE - 1));
    memset(l, 0, sizeof(*l));
    l->block = block;
    for (int i = 0; i < GN_RW_SLOTS; i++)
        atomic_init(&l->slots[i].readers, 0);
    atomic_init(&l->writer, 0);
    atomic_init(&l->waiters, 0);
    l->mutex = enif_mutex_create("gn_store_lock");
    l->cond = enif_cond_create("gn_store_lock");
    if (!l->mutex || !l->cond) {
        gn_rw_destroy(l);
        return NULL;
    }
    return l;
}

void gn_rw_destroy(gn_rwlock *l)
{
    if (!l)
        return;
    if (l->mutex)
        enif_mutex_destroy(l->mutex);
    if (l->cond)
        enif_cond_destroy(l->cond);
    gn_free(l->block);
}

static void gn_rw_wake(gn_rwlock *l)
{
    if (atomic_load(&l->waiters)) {
        enif_mutex_lock(l->mutex);
        enif_cond_broadcast(l->cond);
        enif_mutex_unlock(l->mutex);
    }
}

/* A reader's attempt; on failure its count is withdrawn (and a waiting
 * writer may then need waking: the caller's business). */
static int gn_rw_try_read(gn_rwlock *l, gn_rw_slot *slot)
{
    atomic_fetch_add(&slot->readers, 1);
    if (!atomic_load(&l->writer))
        return 0;
    atomic_fetch_sub(&slot->readers, 1);
    return 1;
}

static int gn_rw_drained(gn_rwlock *l)
{
    for (int i = 0; i < GN_RW_SLOTS; i++)
        if (atomic_load(&l->slots[i].readers))
            return 0;
    return 1;
}

int gn_rw_tryrlock(gn_rwlock *l)
{
    if (!gn_rw_try_read(l, gn_rw_slot_of(l)))
        return 0;
    gn_rw_wake(l);
    return 1;
}

void gn_rw_rlock(gn_rwlock *l)
{
    gn_rw_slot *slot = gn_rw_slot_of(l);
    if (!gn_rw_try_read(l, slot))
        return;
    enif_mutex_lock(l->mutex);
    atomic_fetch_add(&l->waiters, 1);
    /* our withdrawn count may have been what a waiting writer waited on */
    enif_cond_broadcast(l->cond);
    /* Tries from here on hold the mutex, as a blocked writer's drain check
     * does, so no writer can see their passing count: a failed one wakes
     * nobody (waking the other blocked readers, which would fail in turn
     * and wake this one, keeps them all spinning while the writer holds). */
    while (gn_rw_try_read(l, slot))
        enif_cond_wait(l->cond, l->mutex);
    atomic_fetch_sub(&l->waiters, 1);
    enif_mutex_unlock(l->mutex);
}

void gn_rw_runlock(gn_rwlock *l)
{
    atomic_fetch_sub(&gn_rw_slot_of(l)->readers, 1);
    gn_rw_wake(l);
}

int gn_rw_tryrwlock(gn_rwlock *l)
{
    int free = 0;
    if (!atomic_compare_exchange_strong(&l->writer, &free, 1))
        return 1;
    if (gn_rw_drained(l))
        return 0;
    atomic_store(&l->writer, 0);
    gn_rw_wake(l);
    return 1;
}

void gn_rw_rwlock(gn_rwlock *l)
{
    if (gn_rw_tryrwlock(l) == 0)
        return;
    enif_mutex_lock(l->mutex);
    atomic_fetch_add(&l->waiters, 1);
    for (;;) {
        int free = 0;
        if (atomic_compare_exchange_strong(&l->writer, &free, 1))
            break;
        enif_cond_wait(l->cond, l->mutex);
    }
    /* the flag is ours: no new reader gets in; wait for those inside */
    while (!gn_rw_drained(l))
        enif_cond_wait(l->cond, l->mutex);
    atomic_fetch_sub(&l->waiters, 1);
    enif_mutex_unlock(l->mutex);
}

void gn_rw_rwunlock(gn_rwlock *l)
{
    atomic_store(&l->writer, 0);
    gn_rw_wake(l);
}
