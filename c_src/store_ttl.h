/*
 * The store's TTL: each store's expiry heap (a min-heap of its entries that
 * expire, by expiry time) and the sweep list, the VM-wide list of stores
 * holding expiring entries that store_sweep/0 walks.
 *
 * An expired entry is never returned: point reads check its time, and every
 * other read first purges what has expired (a bounded number in a regular
 * NIF; beyond it the caller is asked to purge on a dirty scheduler and come
 * back). Writes purge a few as they go, and GenNative.Store.Sweeper calls
 * store_sweep/0 every second, so an expired entry's memory is reclaimed
 * within about a second of its expiry even if nobody touches the store.
 *
 * Locking: the heap is part of its store: call gn_set_expiry with the
 * store's write lock held. The sweep list has its own lock
 * (shared->ttl_lock), taken inside these functions; gn_ttl_list_add may be
 * called with a store lock held (lock order: store, then list), the others
 * without any.
 */
#ifndef GN_STORE_TTL_H
#define GN_STORE_TTL_H

#include "store_impl.h"

/* Expired entries a regular NIF may purge: each is a tree removal and a
 * free, about 1-2 us with a million entries, so this stays well under 1 ms. */
#define GN_PURGE_INLINE 200
#define GN_PURGE_ON_WRITE 16

static inline int64_t gn_now_ms(void)
{
    return (int64_t)enif_monotonic_time(ERL_NIF_MSEC);
}

static inline int gn_expired(const gn_node *n, int64_t now)
{
    return n->ext && n->ext->expires && n->ext->expires <= now;
}

/* When `n` expires (monotonic ms), or 0 for never. */
static inline int64_t gn_expires(const gn_node *n)
{
    return n->ext ? n->ext->expires : 0;
}

static inline int gn_needs_purge(const gn_store *s, int64_t now)
{
    return s->heap_len && s->heap[0]->expires <= now;
}

/* Sets when `n` (an entry in the store, accounted) expires (0: never),
 * keeping the heap in step; an expiring entry has a gn_ext. Returns 0 when
 * out of memory. */
int gn_set_expiry(gn_store *s, gn_node *n, int64_t expires);

/* Puts `s` on the sweep list (with a reference), if it is not there. */
void gn_ttl_list_add(gn_store *s);
/* Takes `s` off the sweep list, dropping the list's reference. Call
 * without any store lock held. */
void gn_ttl_list_remove(gn_store *s);
/* The stores on the sweep list, each with a reference of its own for the
 * caller to release, and their number in *count; NULL when out of memory
 * (some may be left out when memory runs short while collecting). Free
 * the array with gn_free. */
gn_store **gn_ttl_list_collect(gn_store_shared *sh, size_t *count);

#endif
