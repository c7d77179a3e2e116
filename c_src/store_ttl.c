/*
 * The store's TTL bookkeeping: the expiry heap of each store, and the sweep
 * list of the stores that hold expiring entries (see store_ttl.h for what
 * an expiry means to readers and writers; purging is in store.c).
 *
 * Locking: a store's heap is changed only with that store's write lock
 * held. The sweep list is protected by shared->ttl_lock, which these
 * functions take themselves; it is taken after a store lock, never before
 * one.
 */
#include <string.h>

#include "heap.h"
#include "store_ttl.h"

GN_HEAP_DEFINE(gn, gn_store, gn_ext)

void gn_ttl_list_add(gn_store *s)
{
    gn_store_shared *sh = s->shared;
    if (s->on_ttl_list)
        return;
    enif_mutex_lock(sh->ttl_lock);
    s->ttl_prev = NULL;
    s->ttl_next = sh->ttl_head;
    if (sh->ttl_head)
        sh->ttl_head->ttl_prev = s;
    sh->ttl_head = s;
    s->on_ttl_list = 1;
    enif_keep_resource(s);
    enif_mutex_unlock(sh->ttl_lock);
}

/* Call without any store lock held (lock order: store, then list; the
 * sweep takes the list lock alone). Drops the list's reference. */
void gn_ttl_list_remove(gn_store *s)
{
    gn_store_shared *sh = s->shared;
    enif_mutex_lock(sh->ttl_lock);
    int was = s->on_ttl_list;
    if (was) {
        if (s->ttl_prev)
            s->ttl_prev->ttl_next = s->ttl_next;
        else
            sh->ttl_head = s->ttl_next;
        if (s->ttl_next)
            s->ttl_next->ttl_prev = s->ttl_prev;
        s->on_ttl_list = 0;
    }
    enif_mutex_unlock(sh->ttl_lock);
    if (was)
        enif_release_resource(s);
}

/* Sets when `n` expires (0: never), keeping the heap in step. Returns 0
 * when out of memory. */
int gn_set_expiry(gn_store *s, gn_node *n, int64_t expires)
{
    gn_ext *e = n->ext;
    if (e && e->heap_ix != SIZE_MAX) {
        size_t i = e->heap_ix;
        if (expires) {
            e->expires = expires;
            gn_heap_up(s, i);
            gn_heap_down(s, e->heap_ix);
            return 1;
        }
        gn_heap_swap(s, i, --s->heap_len);
        e->heap_ix = SIZE_MAX;
        e->expires = 0;
        if (i < s->heap_len) {
            gn_heap_up(s, i);
            gn_heap_down(s, s->heap[i]->heap_ix == i ? i : s->heap[i]->heap_ix);
        }
        gn_ext_trim(s, n);
        return 1;
    }
    if (!expires)
        return 1;
    if (s->heap_len == s->heap_cap) {
        size_t cap = s->heap_cap ? 2 * s->heap_cap : 64;
        gn_ext **h = gn_alloc(cap * sizeof(*h));
        if (!h)
            return 0;
        if (s->heap)
            memcpy(h, s->heap, s->heap_len * sizeof(*h));
        gn_free(s->heap);
        s->heap = h;
        s->heap_cap = cap;
    }
    if (!(e = gn_ext_need(s, n)))
        return 0;
    e->heap_ix = s->heap_len;
    s->heap[s->heap_len++] = e;
    e->expires = expires;
    gn_heap_up(s, e->heap_ix);
    return 1;
}

gn_store **gn_ttl_list_collect(gn_store_shared *sh, size_t *count)
{
    size_t n = 0, cap = 16;
    gn_store **todo = gn_alloc(cap * sizeof(*todo));
    if (!todo)
        return NULL;
    enif_mutex_lock(sh->ttl_lock);
    for (gn_store *s = sh->ttl_head; s; s = s->ttl_next) {
        if (n == cap) {
            gn_store **more = gn_alloc(2 * cap * sizeof(*more));
            if (!more)
                break;
            memcpy(more, todo, n * sizeof(*more));
            gn_free(todo);
            todo = more;
            cap *= 2;
        }
        enif_keep_resource(s);
        todo[n++] = s;
    }
    enif_mutex_unlock(sh->ttl_lock);
    *count = n;
    return todo;
}
