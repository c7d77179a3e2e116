/*
 * The native state store's private header: the structs its files share,
 * and the entries/index/arena core (store.c) they build on. Nothing outside
 * the store's files includes it; nif.c sees store.h only.
 *
 * An ordered_set is an AVL tree of entries, each with its subtree's size,
 * so that rank and index queries are O(log n); it orders keys by Erlang
 * term order and matches them with == (as ETS ordered_set). A set is a
 * hash table alone (a set has no order: rank, at, first, next, range are
 * refused on it), matching keys exactly (=:=, as ETS set), hashed with the
 * VM's internal hash, which hashes =:= terms alike (0.0 and -0.0 on OTP
 * 25 and 26), as ETS's own set relies on.
 *
 * An entry holds its key and value as terms in the store's arena
 * environment (a get copies the value out), so that what comes back is
 * === to what went in and nothing references a process heap. A removed or
 * overwritten term stays in the arena as garbage until the arena is
 * rebuilt from the live entries (on a dirty scheduler for a big store),
 * once garbage outweighs live terms. Keys are encoded only when a
 * snapshot is written (on a dirty scheduler).
 *
 * The files, each a concern (none calls "up" the list):
 *   store.c              entries, the tree, the hash table, the arena and
 *                        its accounting, purging expired entries
 *   store_ttl.c          the expiry heap and the sweep list
 *   store_names.c        the name registry
 *   store_lock.c         the store's readers-writer lock
 *   store_access.c       how a NIF takes a store's lock, and big terms
 *   store_nif.c          the resource, load/upgrade/unload, the point NIFs
 *   store_walk_nif.c     NIFs that read in key order (step, rank, range...)
 *   store_snapshot_nif.c snapshot and restore (format: snapshot.c)
 *
 * Locks: `s->lock` (a readers-writer lock, store_lock.h, that readers on
 * different schedulers take without sharing a written cache line)
 * protects everything in a gn_store: readers
 * hold it shared, writers exclusive, so a reader never sees a half-applied
 * write. `names_lock` (in the shared state) protects the name registry; it
 * is never held with a store lock held. `ttl_lock` protects the sweep
 * list; it may be taken with a store lock held (store, then list), never
 * the other way round. Every function declared here that takes a gn_store
 * expects its lock held (shared for reads, exclusive for changes) unless
 * it says otherwise.
 *
 * Lifetime: a store is a resource. Deleting it (delete/1, its owner's exit
 * with lifetime: owner) detaches the entries and the arena and hands them
 * to the reaper in O(1); the resource stays, flagged deleted, while any
 * process still holds a handle, and every use of it raises.
 */
#ifndef GN_STORE_IMPL_H
#define GN_STORE_IMPL_H

#include "avl.h"
#include "store.h"
#include "store_lock.h"

/* What only some entries need: an expiry, off-heap binaries to account
 * for, or word counts too big for the node. Most entries have none of
 * these, and no gn_ext. */
typedef struct gn_ext {
    struct gn_node *node;
    int64_t expires;       /* monotonic ms; 0: never */
    size_t heap_ix;        /* position in the expiry heap, or SIZE_MAX */
    size_t kbin, vbin;     /* bytes of the off-heap binaries key and value reference */
    size_t kwords, vwords; /* where the node's own say GN_WORDS_EXT */
} gn_ext;

#define GN_WORDS_EXT UINT16_MAX

/* An entry. A set's takes only what is before the tree's links (see
 * GN_SET_NODE_SIZE): 40 bytes; an ordered_set's, 56. */
typedef struct gn_node {
    ERL_NIF_TERM key;   /* in the store's arena */
    ERL_NIF_TERM value; /* in the store's arena: a get copies it out */
    gn_ext *ext;        /* or NULL */
    /* heap words of the key and value terms in the arena, for accounting
     * and for sizing copies (gn_kwords, gn_vwords): GN_WORDS_EXT for a
     * term of that many or more, counted in the gn_ext */
    uint16_t kw, vw;
    union {
        uint32_t hash; /* a set's: its key's */
        int height;    /* an ordered_set's: its subtree's */
    };
    union {
        struct gn_node *hnext; /* a set's chain */
        struct {               /* an ordered_set's tree */
            struct gn_node *left, *right;
            size_t size;
        };
    };
} gn_node;

#define GN_SET_NODE_SIZE (offsetof(gn_node, hnext) + sizeof(gn_node *))

static inline size_t gn_kwords(const gn_node *n)
{
    return n->kw == GN_WORDS_EXT ? n->ext->kwords : n->kw;
}

static inline size_t gn_vwords(const gn_node *n)
{
    return n->vw == GN_WORDS_EXT ? n->ext->vwords : n->vw;
}

typedef struct gn_store {
    gn_rwlock *lock; /* store_lock.h */
    int ordered;
    int public_access;
    int named_lifetime;
    int deleted;
    int orphan; /* a named store whose owner exited */
    ErlNifPid owner;
    ErlNifMonitor monitor;
    gn_store_shared *shared;
    ERL_NIF_TERM name; /* an atom, or 0 */
    size_t max_size;   /* SIZE_MAX: no cap */
    size_t count;      /* live entries (and, until purged, expired ones) */
    gn_node *root;     /* an ordered_set's tree */
    /* A set's hash table: chains, `hcap` (a power of two) of them */
    gn_node **htab;
    size_t hcap;
    int hbits;     /* hcap is 2^hbits */
    int hash_grow; /* a big table to regrow on a dirty scheduler */
    ErlNifEnv *arena;
    /* Memory, in bytes unless named words (see "Accounting" in store.c):
     * `memory`: the entries' own allocations and the off-heap binaries
     * their live terms reference; `live_words`: the heap words of the live
     * terms in the arena; `arena_bytes`: what the arena's heap fragments
     * take, live or dead; `dead_bin`: off-heap binaries that only dead
     * terms in the arena reference. */
    size_t memory, live_words, arena_bytes, dead_bin;
    size_t frag_left; /* words left in the arena's current fragment */
    /* TTL: a min-heap of the entries that expire, by expiry time */
    gn_ext **heap;
    size_t heap_len, heap_cap;
    /* on the sweep list (shared->ttl_lock) while it holds expiring entries */
    struct gn_store *ttl_next, *ttl_prev;
    int on_ttl_list;
} gn_store;

/* The stores' resource type (store_nif.c). */
extern ErlNifResourceType *gn_store_rtype;

/* What every store of the VM shares: the name registry and the list of
 * stores to sweep. It lives in the library's private data (gn_priv), not in
 * file statics, so that an upgraded library takes it over with the stores:
 * named stores stay reachable, and TTL sweeping goes on. Library instances
 * count their references (load, upgrade and unload are serialized by the
 * VM). */
struct gn_store_shared {
    int refs;
    ErlNifMutex *names_lock;   /* the name registry (store_names.c) */
    struct gn_name *names;     /* few stores are named: a list */
    ErlNifMutex *ttl_lock;     /* the sweep list (store_ttl.c) */
    struct gn_store *ttl_head; /* stores holding expiring entries */
};

static inline gn_store_shared *gn_shared(ErlNifEnv *env)
{
    return ((gn_priv *)enif_priv_data(env))->stores;
}

GN_AVL_DEFINE(gn, gn_node)

/* ------------------------------------------------------------------------ */
/* Entries and the tree (store.c)                                            */

/* A key being looked up, and its hash once a set has needed it. */
typedef struct gn_probe {
    ERL_NIF_TERM key;
    uint32_t hash;
    int hashed;
} gn_probe;

/* Orders p's key against n's, by term order (ordered sets only). */
static inline int gn_cmp(const gn_store *s, gn_probe *p, const gn_node *n)
{
    (void)s;
    return enif_compare(p->key, n->key);
}

/* The entry for p's key, or NULL; it may have expired. */
gn_node *gn_find(const gn_store *s, gn_probe *p);
/* The live entry for p's key: an expired one is removed first. Call with
 * the write lock held. */
gn_node *gn_find_live(gn_store *s, gn_probe *p);
/* Adds a new entry (its key, p's, not in the store) to the tree or the
 * hash table; 0 when out of memory (nothing changed). Account for it with
 * gn_account_add. */
int gn_link(gn_store *s, gn_node *n, gn_probe *p);
/* Removes the entry for p's key, if any, from the tree or the hash table
 * and the expiry heap; returns it, to be freed (gn_node_free) after its
 * value is read. */
gn_node *gn_unlink(gn_store *s, gn_probe *p);
/* A balanced tree of nodes[lo, hi), which are in key order. */
gn_node *gn_build(gn_node **nodes, size_t lo, size_t hi);

/* Every entry of a store, in key order for an ordered_set, in no order for
 * a set. The store must not change while it is walked (values and terms
 * may be replaced, not links). */
typedef struct gn_iter {
    const gn_store *s;
    gn_node *n;
    size_t bucket;
    int top;
    gn_node *stack[128]; /* an AVL tree of 2^64 entries is below 93 deep */
} gn_iter;

void gn_iter_start(gn_iter *it, const gn_store *s);
gn_node *gn_iter_next(gn_iter *it);

/* A term's size, as gn_term_words counts it: heap words, and bytes of the
 * off-heap binaries it references. */
typedef struct gn_termsize {
    size_t words, bin;
} gn_termsize;

/* Builds an entry for key/value, not yet in the store; NULL when out of
 * memory. */
gn_node *gn_node_new(gn_store *s, ErlNifEnv *env, ERL_NIF_TERM key, ERL_NIF_TERM value);
/* Builds an entry as gn_node_new does, for terms that may already be in
 * the store's arena: a term flagged kin or vin (decoded there by a
 * restore, and charged with gn_arena_charge) is taken as it is, not
 * copied. ksize and vsize: the terms' sizes, when known (else NULL). */
gn_node *gn_node_make(gn_store *s, ErlNifEnv *env, ERL_NIF_TERM key, const gn_termsize *ksize,
                      int kin, ERL_NIF_TERM value, const gn_termsize *vsize, int vin);
/* Replaces an entry's value; returns 0 when out of memory. */
int gn_node_set(gn_store *s, ErlNifEnv *env, gn_node *n, ERL_NIF_TERM value);
/* Gives an entry the key as last put (see store.c); 0 when out of memory. */
int gn_node_rekey(gn_store *s, ErlNifEnv *env, gn_node *n, ERL_NIF_TERM key);
void gn_node_free(gn_node *n);
/* An entry's gn_ext, made (and accounted) if it has none; NULL when out of
 * memory. For an entry in the store. */
gn_ext *gn_ext_need(gn_store *s, gn_node *n);
/* Frees an entry's gn_ext once it holds nothing (no expiry, no binaries). */
void gn_ext_trim(gn_store *s, gn_node *n);

/* Puts key/value (a new entry, or a new value and key for an existing one)
 * with its expiry; sets *fresh for a new entry. `vsize`: the value's size,
 * if the caller has it (else NULL). Returns 0 when out of
 * memory, -1 when the store is full. Call with the write lock held. */
int gn_put_entry(gn_store *s, ErlNifEnv *env, ERL_NIF_TERM key, ERL_NIF_TERM value,
                 const gn_termsize *vsize, int64_t expires, int put_new, int *fresh);
/* Removes up to `max` expired entries; returns how many expired remain
 * (0, or 1 for some). Call with the write lock held. */
size_t gn_purge(gn_store *s, int64_t now, size_t max);

/* Rehashes a set's table into `cap` chains (a power of two). O(n): inline
 * for small stores, else on a dirty scheduler. Keeps the old table when
 * out of memory. */
void gn_hash_resize(gn_store *s, size_t cap);
/* The chains for a table of `entries`. */
size_t gn_hash_cap(size_t entries);

/* ------------------------------------------------------------------------ */
/* The arena and accounting (store.c)                                        */

/* Counts `words` heap words put into the arena (by a copy, or a decoding). */
void gn_arena_charge(gn_store *s, size_t words);
/* Counts a new entry's memory (after gn_link). */
void gn_account_add(gn_store *s, const gn_node *n);
/* The heap words `t` takes, as the VM's size_object counts them; adds to
 * *bin the bytes of the off-heap binaries it references; stops counting
 * past `limit` words. */
size_t gn_term_words(ErlNifEnv *env, ERL_NIF_TERM t, size_t *bin, size_t limit, int depth);
/* The bytes the store holds, as the VM would count them. */
size_t gn_store_memory(const gn_store *s);
/* Whether the arena is mostly garbage (or a big set's index is due to
 * grow): time for gn_arena_compact. */
int gn_arena_bloated(const gn_store *s);
/* Rebuilds the arena from the live entries. O(n). */
void gn_arena_compact(gn_store *s);
/* At the end of a write: compacts a small store's bloated arena inline and
 * returns 0, or returns 1 for a big one, to be compacted on a dirty
 * scheduler once the lock is released. */
int gn_write_compact(gn_store *s);
/* Empties the store in O(1): its entries, its hash table and its arena go
 * to the reaper. With `reuse`, it gets a fresh arena for new entries;
 * without (a deleted store, or its destructor), none. */
void gn_store_detach(gn_store *s, int reuse);
/* Frees a store's entries (not their terms: those live in the arena) now:
 * a tree (root) or a hash table. No lock needed: they belong to no store. */
void gn_entries_free(gn_node *root, gn_node **htab, size_t hcap);

#endif
