/*
 * A store's entries (pstore.h): the AVL tree with subtree sizes, the
 * expiry heap, and the garbage list that frees whole trees in slices.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../avl.h"
#include "../heap.h"
#include "keyenc.h"
#include "pstore.h"

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "gen_native_port: out of memory (%zu bytes)\n", n);
        abort();
    }
    return p;
}

static int node_cmp(const unsigned char *k, size_t klen, const gn_pnode *n)
{
    return gn_key_cmp(k, klen, GN_KENC(n), n->kenc_len);
}

size_t gn_pnode_bytes(const gn_pnode *n)
{
    return sizeof(gn_pnode) + n->kenc_len + n->kraw_len + n->val_len;
}

static uint64_t gn_serials;

gn_pstore *gn_pstore_new(const char *name, size_t name_len, int ordered, uint64_t max_size)
{
    gn_pstore *s = xmalloc(sizeof *s);
    memset(s, 0, sizeof *s);
    s->name = xmalloc(name_len);
    memcpy(s->name, name, name_len);
    s->name_len = name_len;
    s->ordered = ordered;
    s->max_size = max_size;
    s->serial = ++gn_serials;
    return s;
}

/* ------------------------------------------------------------------------ */
/* Garbage: whole trees freed a slice at a time                              */

static gn_pnode *gn_garbage; /* trees chained through their root's right link */

static void garbage_add(gn_pnode *root)
{
    if (!root)
        return;
    /* hang the current garbage under the rightmost path of `root`: the
     * destruction below walks right, so it reaches everything */
    gn_pnode *n = root;
    while (n->right)
        n = n->right;
    n->right = gn_garbage;
    gn_garbage = root;
}

int gn_garbage_step(size_t budget)
{
    /* Destruction by rotation: O(1) extra memory, resumable anywhere. */
    while (gn_garbage && budget > 0) {
        gn_pnode *n = gn_garbage;
        if (n->left) {
            gn_pnode *l = n->left;
            n->left = l->right;
            l->right = n;
            gn_garbage = l;
        } else {
            gn_garbage = n->right;
            free(n->data);
            free(n);
            budget--;
        }
    }
    return gn_garbage != NULL;
}

void gn_pstore_clear(gn_pstore *s)
{
    garbage_add(s->root);
    s->root = NULL;
    s->memory = 0;
    s->heap_len = 0;
}

void gn_pstore_free(gn_pstore *s)
{
    gn_pstore_clear(s);
    free(s->heap);
    free(s->name);
    free(s);
}

/* ------------------------------------------------------------------------ */
/* The expiry heap                                                           */

GN_HEAP_DEFINE(ttl, gn_pstore, gn_pnode)

static void heap_add(gn_pstore *s, gn_pnode *n)
{
    if (s->heap_len == s->heap_cap) {
        s->heap_cap = s->heap_cap ? 2 * s->heap_cap : 64;
        gn_pnode **h = realloc(s->heap, s->heap_cap * sizeof *h);
        if (!h) {
            fprintf(stderr, "gen_native_port: out of memory\n");
            abort();
        }
        s->heap = h;
    }
    n->heap_ix = s->heap_len;
    s->heap[s->heap_len++] = n;
    ttl_heap_up(s, n->heap_ix);
}

static void heap_remove(gn_pstore *s, gn_pnode *n)
{
    size_t i = n->heap_ix;
    if (i == SIZE_MAX)
        return;
    s->heap_len--;
    if (i != s->heap_len) {
        s->heap[i] = s->heap[s->heap_len];
        s->heap[i]->heap_ix = i;
        ttl_heap_down(s, i);
        ttl_heap_up(s, i);
    }
    n->heap_ix = SIZE_MAX;
}

static void set_expiry(gn_pstore *s, gn_pnode *n, int64_t expires)
{
    if (n->expires && !expires) {
        heap_remove(s, n);
    } else if (!n->expires && expires) {
        n->expires = expires;
        heap_add(s, n);
    } else if (expires) {
        n->expires = expires;
        ttl_heap_down(s, n->heap_ix);
        ttl_heap_up(s, n->heap_ix);
    }
    n->expires = expires;
}

/* ------------------------------------------------------------------------ */
/* The AVL tree                                                              */

GN_AVL_DEFINE(avl, gn_pnode)

static gn_pnode *insert(gn_pnode *t, gn_pnode *n)
{
    if (!t)
        return n;
    if (node_cmp(GN_KENC(n), n->kenc_len, t) < 0)
        t->left = insert(t->left, n);
    else
        t->right = insert(t->right, n);
    return avl_balance(t);
}

gn_pnode *gn_pstore_find(const gn_pstore *s, const unsigned char *kenc, size_t klen)
{
    gn_pnode *t = s->root;
    while (t) {
        int c = node_cmp(kenc, klen, t);
        if (c == 0)
            return t;
        t = c < 0 ? t->left : t->right;
    }
    return NULL;
}

static unsigned char *entry_data(const unsigned char *kenc, size_t kenc_len,
                                 const unsigned char *kraw, size_t kraw_len,
                                 const unsigned char *val, size_t val_len)
{
    unsigned char *d = xmalloc(kenc_len + kraw_len + val_len);
    memcpy(d, kenc, kenc_len);
    if (kraw_len) /* a set of keys only (put_many's new keys) has none */
        memcpy(d + kenc_len, kraw, kraw_len);
    if (val_len)
        memcpy(d + kenc_len + kraw_len, val, val_len);
    return d;
}

gn_pnode *gn_pstore_put(gn_pstore *s, const unsigned char *kenc, size_t kenc_len,
                        const unsigned char *kraw, size_t kraw_len, const unsigned char *val,
                        size_t val_len, int64_t expires, int *created)
{
    gn_pnode *n = gn_pstore_find(s, kenc, kenc_len);
    unsigned char *d = entry_data(kenc, kenc_len, kraw, kraw_len, val, val_len);
    if (n) {
        /* the key too is replaced (1.0 over 1 in an ordered_set) */
        s->memory -= gn_pnode_bytes(n);
        free(n->data);
        n->data = d;
        n->kraw_len = (uint32_t)kraw_len;
        n->val_len = (uint32_t)val_len;
        s->memory += gn_pnode_bytes(n);
        set_expiry(s, n, expires);
        *created = 0;
        return n;
    }
    n = xmalloc(sizeof *n);
    n->left = n->right = NULL;
    n->size = 1;
    n->height = 1;
    n->data = d;
    n->kenc_len = (uint32_t)kenc_len;
    n->kraw_len = (uint32_t)kraw_len;
    n->val_len = (uint32_t)val_len;
    n->expires = 0;
    n->heap_ix = SIZE_MAX;
    s->root = insert(s->root, n);
    s->memory += gn_pnode_bytes(n);
    set_expiry(s, n, expires);
    *created = 1;
    return n;
}

void gn_pstore_set_value(gn_pstore *s, gn_pnode *n, const unsigned char *val, size_t val_len,
                         int64_t expires)
{
    unsigned char *d = entry_data(GN_KENC(n), n->kenc_len, GN_KRAW(n), n->kraw_len, val, val_len);
    s->memory -= gn_pnode_bytes(n);
    free(n->data);
    n->data = d;
    n->val_len = (uint32_t)val_len;
    s->memory += gn_pnode_bytes(n);
    set_expiry(s, n, expires);
}

static gn_pnode *remove_node(gn_pnode *t, const unsigned char *k, size_t klen, gn_pnode **gone)
{
    if (!t)
        return NULL;
    int c = node_cmp(k, klen, t);
    if (c < 0) {
        t->left = remove_node(t->left, k, klen, gone);
    } else if (c > 0) {
        t->right = remove_node(t->right, k, klen, gone);
    } else {
        *gone = t;
        return avl_remove_root(t);
    }
    return avl_balance(t);
}

int gn_pstore_delete(gn_pstore *s, const unsigned char *kenc, size_t klen)
{
    gn_pnode *gone = NULL;
    s->root = remove_node(s->root, kenc, klen, &gone);
    if (!gone)
        return 0;
    heap_remove(s, gone);
    s->memory -= gn_pnode_bytes(gone);
    free(gone->data);
    free(gone);
    return 1;
}

gn_pnode *gn_pstore_at(const gn_pstore *s, size_t index)
{
    return avl_at(s->root, index);
}

size_t gn_pstore_rank(const gn_pstore *s, const unsigned char *kenc, size_t klen)
{
    size_t r = 0;
    gn_pnode *t = s->root;
    while (t) {
        int c = node_cmp(kenc, klen, t);
        if (c <= 0) {
            t = t->left;
        } else {
            r += avl_size(t->left) + 1;
            t = t->right;
        }
    }
    return r;
}

gn_pnode *gn_pstore_after(const gn_pstore *s, const unsigned char *kenc, size_t klen, int inclusive)
{
    gn_pnode *t = s->root, *best = NULL;
    while (t) {
        int c = node_cmp(kenc, klen, t);
        if (c < 0 || (inclusive && c == 0)) {
            best = t;
            t = t->left;
        } else {
            t = t->right;
        }
    }
    return best;
}

gn_pnode *gn_pstore_before(const gn_pstore *s, const unsigned char *kenc, size_t klen,
                           int inclusive)
{
    gn_pnode *t = s->root, *best = NULL;
    while (t) {
        int c = node_cmp(kenc, klen, t);
        if (c > 0 || (inclusive && c == 0)) {
            best = t;
            t = t->right;
        } else {
            t = t->left;
        }
    }
    return best;
}

int gn_pstore_expire(gn_pstore *s, int64_t now, size_t budget)
{
    while (gn_pstore_has_expired(s, now)) {
        if (budget-- == 0)
            return 1;
        gn_pnode *n = s->heap[0];
        /* copy the key out: deleting frees the node */
        unsigned char small[256];
        unsigned char *k = n->kenc_len <= sizeof small ? small : xmalloc(n->kenc_len);
        size_t klen = n->kenc_len;
        memcpy(k, GN_KENC(n), klen);
        gn_pstore_delete(s, k, klen);
        if (k != small)
            free(k);
    }
    return 0;
}
