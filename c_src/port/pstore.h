/*
 * A store of the port program: an AVL tree of entries ordered by their
 * keys' canonical encodings (keyenc.h), each node with its subtree's size
 * (rank and index queries in O(log n)), and a min-heap of the entries that
 * expire. Single-threaded: only the event loop's thread touches a store.
 */
#ifndef GN_PORT_PSTORE_H
#define GN_PORT_PSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "keyenc.h"

typedef struct gn_pnode {
    struct gn_pnode *left, *right;
    size_t size; /* entries in this subtree */
    int height;
    uint32_t kenc_len, kraw_len, val_len;
    /* kenc | kraw (the key's ETF, no version byte) | value's ETF */
    unsigned char *data;
    int64_t expires; /* wall-clock ms; 0: never */
    size_t heap_ix;
} gn_pnode;

#define GN_KENC(n) ((n)->data)
#define GN_KRAW(n) ((n)->data + (n)->kenc_len)
#define GN_VAL(n) ((n)->data + (n)->kenc_len + (n)->kraw_len)

struct gn_job;
struct gn_waiting;

typedef struct gn_pstore {
    char *name; /* UTF-8, not terminated */
    size_t name_len;
    int ordered;
    uint64_t max_size; /* 0: no cap */
    gn_pnode *root;
    size_t memory; /* bytes held by entries */
    gn_pnode **heap;
    size_t heap_len, heap_cap;
    struct gn_job *jobs; /* long work on this store, the next first (jobs.c) */
    /* requests waiting behind the jobs, in order (dispatch.c) */
    struct gn_waiting *waiting, *waiting_tail;
    struct gn_pstore *next_in_bucket; /* in the table of stores (stores.c) */
    struct gn_pstore *next_busy;      /* on the list of stores with work (jobs.c) */
    int busy;
    uint64_t serial; /* unique per store object, for resumable walks */
} gn_pstore;

gn_pstore *gn_pstore_new(const char *name, size_t name_len, int ordered, uint64_t max_size);
/* Hands the entries to the garbage list (freed in slices) and frees the rest. */
void gn_pstore_free(gn_pstore *s);

static inline size_t gn_pstore_size(const gn_pstore *s)
{
    return s->root ? s->root->size : 0;
}

/* Whether `adding` more entries would go over the store's cap. */
static inline int gn_pstore_full(const gn_pstore *s, size_t adding)
{
    return s->max_size && gn_pstore_size(s) + adding > s->max_size;
}

gn_pnode *gn_pstore_find(const gn_pstore *s, const unsigned char *kenc, size_t klen);
/* Puts an entry, replacing the key's entry if there is one; *created tells
 * which. The bytes are copied. */
gn_pnode *gn_pstore_put(gn_pstore *s, const unsigned char *kenc, size_t kenc_len,
                        const unsigned char *kraw, size_t kraw_len, const unsigned char *val,
                        size_t val_len, int64_t expires, int *created);
/* Replaces a node's value (same key), keeping or changing its expiry. */
void gn_pstore_set_value(gn_pstore *s, gn_pnode *n, const unsigned char *val, size_t val_len,
                         int64_t expires);
/* Removes the key's entry; 1 if there was one. */
int gn_pstore_delete(gn_pstore *s, const unsigned char *kenc, size_t klen);
/* Removes every entry (handed to the garbage list). */
void gn_pstore_clear(gn_pstore *s);

/* How the store's keys are encoded: GN_KEY_EQ for an ordered_set. */
static inline int gn_pstore_key_mode(const gn_pstore *s)
{
    return s->ordered ? GN_KEY_EQ : GN_KEY_EXACT;
}

/* The entry at `index` in key order, or NULL when index >= size. */
gn_pnode *gn_pstore_at(const gn_pstore *s, size_t index);
/* How many keys sort before `kenc`. */
size_t gn_pstore_rank(const gn_pstore *s, const unsigned char *kenc, size_t klen);
/* The first entry with a key > kenc (>= when `inclusive`), or NULL. */
gn_pnode *gn_pstore_after(const gn_pstore *s, const unsigned char *kenc, size_t klen,
                          int inclusive);
/* The last entry with a key < kenc (<= when `inclusive`), or NULL. */
gn_pnode *gn_pstore_before(const gn_pstore *s, const unsigned char *kenc, size_t klen,
                           int inclusive);

/* Removes up to `budget` entries expired at `now`; returns 1 if expired
 * entries remain. */
int gn_pstore_expire(gn_pstore *s, int64_t now, size_t budget);
static inline int gn_pstore_has_expired(const gn_pstore *s, int64_t now)
{
    return s->heap_len > 0 && s->heap[0]->expires <= now;
}

/* Frees up to `budget` nodes of trees handed over by clear/free; returns 1
 * while garbage remains. */
int gn_garbage_step(size_t budget);

/* Bytes an entry accounts for in `memory`. */
size_t gn_pnode_bytes(const gn_pnode *n);

#endif
