/*
 * AVL balancing for trees whose nodes carry their subtree's size (for rank
 * and index queries), shared by the NIF store (store_impl.h) and the port
 * program's store (port/pstore.c).
 *
 * GN_AVL_DEFINE(prefix, node) defines, for a struct type `node` with the
 * members `node *left, *right; size_t size; int height;`:
 *
 *   prefix_size(n)  prefix_height(n)  prefix_update(n)
 *   prefix_rotate_left(n)  prefix_rotate_right(n)  prefix_balance(n)
 *   prefix_take_min(n, &min)  prefix_remove_root(n)  prefix_at(n, i)
 *
 * `balance` recomputes `n` and rotates it back into balance after one
 * insertion or removal below it, returning the subtree's new root. `at`
 * is the index query: the node at 0-based position `i` in key order, or
 * NULL past the end; O(log n).
 */
#ifndef GN_AVL_H
#define GN_AVL_H

#include <stddef.h>

#define GN_AVL_DEFINE(prefix, node)                                                                \
    static inline size_t prefix##_size(const node *n)                                              \
    {                                                                                              \
        return n ? n->size : 0;                                                                    \
    }                                                                                              \
    static inline int prefix##_height(const node *n)                                               \
    {                                                                                              \
        return n ? n->height : 0;                                                                  \
    }                                                                                              \
    static inline void prefix##_update(node *n)                                                    \
    {                                                                                              \
        int hl = prefix##_height(n->left), hr = prefix##_height(n->right);                         \
        n->height = 1 + (hl > hr ? hl : hr);                                                       \
        n->size = 1 + prefix##_size(n->left) + prefix##_size(n->right);                            \
    }                                                                                              \
    static inline node *prefix##_rotate_right(node *n)                                             \
    {                                                                                              \
        node *l = n->left;                                                                         \
        n->left = l->right;                                                                        \
        l->right = n;                                                                              \
        prefix##_update(n);                                                                        \
        prefix##_update(l);                                                                        \
        return l;                                                                                  \
    }                                                                                              \
    static inline node *prefix##_rotate_left(node *n)                                              \
    {                                                                                              \
        node *r = n->right;                                                                        \
        n->right = r->left;                                                                        \
        r->left = n;                                                                               \
        prefix##_update(n);                                                                        \
        prefix##_update(r);                                                                        \
        return r;                                                                                  \
    }                                                                                              \
    static inline node *prefix##_balance(node *n)                                                  \
    {                                                                                              \
        prefix##_update(n);                                                                        \
        int b = prefix##_height(n->left) - prefix##_height(n->right);                              \
        if (b > 1) {                                                                               \
            if (prefix##_height(n->left->left) < prefix##_height(n->left->right))                  \
                n->left = prefix##_rotate_left(n->left);                                           \
            return prefix##_rotate_right(n);                                                       \
        }                                                                                          \
        if (b < -1) {                                                                              \
            if (prefix##_height(n->right->right) < prefix##_height(n->right->left))                \
                n->right = prefix##_rotate_right(n->right);                                        \
            return prefix##_rotate_left(n);                                                        \
        }                                                                                          \
        return n;                                                                                  \
    }                                                                                              \
    /* Detaches the smallest node of `n` into *min; returns what is left. */                       \
    static node *prefix##_take_min(node *n, node **min)                                            \
    {                                                                                              \
        if (!n->left) {                                                                            \
            *min = n;                                                                              \
            return n->right;                                                                       \
        }                                                                                          \
        n->left = prefix##_take_min(n->left, min);                                                 \
        return prefix##_balance(n);                                                                \
    }                                                                                              \
    /* The subtree that takes the place of `n` once `n` is removed. */                             \
    static inline node *prefix##_remove_root(node *n)                                              \
    {                                                                                              \
        if (!n->left)                                                                              \
            return n->right;                                                                       \
        if (!n->right)                                                                             \
            return n->left;                                                                        \
        node *m;                                                                                   \
        node *right = prefix##_take_min(n->right, &m);                                             \
        m->left = n->left;                                                                         \
        m->right = right;                                                                          \
        return prefix##_balance(m);                                                                \
    }                                                                                              \
    /* The node at position i in key order, or NULL past the end. */                               \
    static inline node *prefix##_at(node *n, size_t i)                                             \
    {                                                                                              \
        while (n) {                                                                                \
            size_t l = prefix##_size(n->left);                                                     \
            if (i == l)                                                                            \
                return n;                                                                          \
            if (i < l) {                                                                           \
                n = n->left;                                                                       \
            } else {                                                                               \
                i -= l + 1;                                                                        \
                n = n->right;                                                                      \
            }                                                                                      \
        }                                                                                          \
        return NULL;                                                                               \
    }

#endif
