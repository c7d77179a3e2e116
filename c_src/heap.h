/*
 * The expiry heap of a store: a binary min-heap of entries by expiry time,
 * each entry knowing its position. Shared by the NIF store (store_ttl.c) and
 * the port program's store (port/pstore.c).
 *
 * GN_HEAP_DEFINE(prefix, store, node) defines prefix_heap_swap(s, a, b),
 * prefix_heap_up(s, i) and prefix_heap_down(s, i) for a struct `store`
 * with `node **heap; size_t heap_len;` and a struct `node` with
 * `int64_t expires; size_t heap_ix;`.
 */
#ifndef GN_HEAP_H
#define GN_HEAP_H

#include <stddef.h>

#define GN_HEAP_DEFINE(prefix, store, node)                                                        \
    static inline void prefix##_heap_swap(store *s, size_t a, size_t b)                            \
    {                                                                                              \
        node *t = s->heap[a];                                                                      \
        s->heap[a] = s->heap[b];                                                                   \
        s->heap[b] = t;                                                                            \
        s->heap[a]->heap_ix = a;                                                                   \
        s->heap[b]->heap_ix = b;                                                                   \
    }                                                                                              \
    static inline void prefix##_heap_up(store *s, size_t i)                                        \
    {                                                                                              \
        while (i > 0 && s->heap[(i - 1) / 2]->expires > s->heap[i]->expires) {                     \
            prefix##_heap_swap(s, i, (i - 1) / 2);                                                 \
            i = (i - 1) / 2;                                                                       \
        }                                                                                          \
    }                                                                                              \
    static inline void prefix##_heap_down(store *s, size_t i)                                      \
    {                                                                                              \
        for (;;) {                                                                                 \
            size_t l = 2 * i + 1, r = l + 1, m = i;                                                \
            if (l < s->heap_len && s->heap[l]->expires < s->heap[m]->expires)                      \
                m = l;                                                                             \
            if (r < s->heap_len && s->heap[r]->expires < s->heap[m]->expires)                      \
                m = r;                                                                             \
            if (m == i)                                                                            \
                return;                                                                            \
            prefix##_heap_swap(s, i, m);                                                           \
            i = m;                                                                                 \
        }                                                                                          \
    }

#endif
