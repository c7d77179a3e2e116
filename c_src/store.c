/*
 * The native state store.
 *
 * A store is an AVL tree of entries, each with its subtree's size, so that
 * rank and index queries are O(log n). Both types use it: an ordered_set
 * orders keys by Erlang term order and matches them with == (as ETS
 * ordered_set); a set matches them exactly (=:=, as ETS set), so keys that
 * compare equal but are not identical (1 and 1.0) are ordered by their
 * external encoding.
 *
 * An entry keeps its key and value in external term format (ErlNifBinary),
 * so what comes back is === to what went in, memory is accounted exactly,
 * and nothing references a process heap. The key is also held as a term in
 * the store's arena environment, for comparisons; a removed entry leaves its
 * key there as garbage, and the arena is rebuilt from the encoded keys (on
 * a dirty scheduler) once garbage outnumbers live keys.
 *
 * Locks: `s->lock` (a rwlock) protects everything in a gn_store: readers
 * hold it shared, writers exclusive, so a reader never sees a half-applied
 * write. `names_lock` (in the shared state) protects the name registry; it
 * is never held with a
 * store lock held.
 *
 * Lifetime: a store is a resource. Deleting it (delete/1, its owner's exit
 * with lifetime: owner) detaches the tree and the arena and hands them to
 * the reaper in O(1); the resource stays, flagged deleted, while any process
 * still holds a handle, and every use of it raises.
 */
#include <string.h>

#include "avl.h"
#include "etf_scan.h"
#include "heap.h"
#include "store.h"

typedef struct gn_node {
    struct gn_node *left, *right;
    size_t size;
    int height;
    ERL_NIF_TERM key;     /* in the store's arena */
    ERL_NIF_TERM value;   /* in the store's arena: a get copies it out */
    unsigned char *kdata; /* the key's encoding (gn_alloc): set tie-breaks, snapshots */
    uint32_t klen;
    /* for accounting: heap words of the key and value terms in the arena,
     * and bytes of the off-heap binaries they reference */
    size_t kwords, vwords, kbin, vbin;
    struct gn_node *hnext; /* a set's hash chain */
    uint32_t hash;
    int64_t expires; /* monotonic ms; 0: never */
    size_t heap_ix;  /* position in the expiry heap, or SIZE_MAX */
} gn_node;

typedef struct gn_store {
    ErlNifRWLock *lock;
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
    gn_node *root;
    /* A set also indexes its entries by hash, for O(1) point lookups; the
     * tree stays the authority (a miss falls back to it). */
    gn_node **htab;
    size_t hcap, hcount;
    int hash_grow; /* a big table to regrow on a dirty scheduler */
    ErlNifEnv *arena;
    /* Memory, in bytes unless named words (see "Accounting" below):
     * `memory`: the entries' own allocations and the off-heap binaries
     * their live terms reference; `live_words`: the heap words of the live
     * terms in the arena; `arena_bytes`: what the arena's heap fragments
     * take, live or dead; `dead_bin`: off-heap binaries that only dead
     * terms in the arena reference. */
    size_t memory, live_words, arena_bytes, dead_bin;
    size_t frag_left; /* words left in the arena's current fragment */
    /* TTL: a min-heap of the entries that expire, by expiry time */
    gn_node **heap;
    size_t heap_len, heap_cap;
    /* on the sweep list (shared->ttl_lock) while it holds expiring entries */
    struct gn_store *ttl_next, *ttl_prev;
    int on_ttl_list;
} gn_store;

static ErlNifResourceType *gn_store_rtype;

/* What every store of the VM shares: the name registry and the list of
 * stores to sweep. It lives in the library's private data (gn_priv), not in
 * file statics, so that an upgraded library takes it over with the stores:
 * named stores stay reachable, and TTL sweeping goes on. Library instances
 * count their references (load, upgrade and unload are serialized by the
 * VM). */
struct gn_store_shared {
    int refs;
    ErlNifMutex *names_lock;
    struct gn_name *names; /* few stores are named: a list */
    ErlNifMutex *ttl_lock;
    struct gn_store *ttl_head; /* stores holding expiring entries */
};

static gn_store_shared *gn_shared(ErlNifEnv *env)
{
    return ((gn_priv *)enif_priv_data(env))->stores;
}

/* ------------------------------------------------------------------------ */
/* Names                                                                     */

typedef struct gn_name {
    struct gn_name *next;
    ERL_NIF_TERM name;
    gn_store *store; /* holds a resource reference */
} gn_name;

/* Returns the store registered as `name` with a reference, or NULL. */
static gn_store *gn_name_lookup(gn_store_shared *sh, ERL_NIF_TERM name)
{
    gn_store *s = NULL;
    enif_mutex_lock(sh->names_lock);
    for (gn_name *n = sh->names; n; n = n->next)
        if (enif_is_identical(n->name, name)) {
            s = n->store;
            enif_keep_resource(s);
            break;
        }
    enif_mutex_unlock(sh->names_lock);
    return s;
}

static void gn_name_remove(gn_store *s)
{
    gn_store_shared *sh = s->shared;
    gn_name *removed = NULL;
    enif_mutex_lock(sh->names_lock);
    for (gn_name **p = &sh->names; *p; p = &(*p)->next)
        if ((*p)->store == s) {
            removed = *p;
            *p = removed->next;
            break;
        }
    enif_mutex_unlock(sh->names_lock);
    if (removed) {
        gn_free(removed);
        enif_release_resource(s);
    }
}

/* ------------------------------------------------------------------------ */
/* Entries and the tree                                                      */

/* ------------------------------------------------------------------------ */
/* Accounting                                                                */
/*
 * info/1's memory is meant to be what the VM sees (within 10%): the
 * entries' allocations, the arena's heap fragments (live terms, dead terms
 * and slack), and the off-heap binaries referenced from it. Terms are
 * sized in heap words as the VM's size_object counts them, and the arena's
 * fragments as enif_make_copy allocates them (a term that does not fit the
 * current fragment gets a new one of its size plus MIN_HEAP_FRAG_SZ, 200
 * words). Dead terms (overwritten or removed) stay in the arena until it
 * is compacted, which happens once their bytes exceed the live ones (plus
 * GN_GARBAGE_FLOOR): garbage is bounded by bytes, whatever the entry count.
 */

#define GN_BLOCK_OVERHEAD 16 /* an allocator block's header, about */
#define GN_FRAG_EXTRA 200    /* MIN_HEAP_FRAG_SZ, in words */
#define GN_FRAG_HEADER 48    /* an ErlHeapFragment's header and block header */
#define GN_BIN_HEADER 48     /* an off-heap binary's header and block header */
#define GN_GARBAGE_FLOOR ((size_t)64 * 1024)

/* The allocator's smallest block, about (measured against :erlang.memory/0
 * on OTP 25: a few-byte key encoding takes some 64 bytes). */
#define GN_BLOCK_MIN 64

static size_t gn_node_bytes(const gn_node *n)
{
    size_t kblock = (size_t)n->klen + GN_BLOCK_OVERHEAD;
    return sizeof(gn_node) + GN_BLOCK_OVERHEAD + (kblock < GN_BLOCK_MIN ? GN_BLOCK_MIN : kblock) +
           n->kbin + n->vbin;
}

static void gn_node_free(gn_node *n)
{
    gn_free(n->kdata);
    gn_free(n);
}

/* A copy of `words` heap words into the arena. */
static void gn_arena_charge(gn_store *s, size_t words)
{
    if (words == 0)
        return;
    if (words <= s->frag_left) {
        s->frag_left -= words;
        return;
    }
    s->arena_bytes += (words + GN_FRAG_EXTRA) * sizeof(ERL_NIF_TERM) + GN_FRAG_HEADER;
    s->frag_left = GN_FRAG_EXTRA;
}

static void gn_account_add(gn_store *s, const gn_node *n)
{
    s->memory += gn_node_bytes(n);
    s->live_words += n->kwords + n->vwords;
}

/* n leaves the store: its terms stay in the arena, dead. */
static void gn_account_remove(gn_store *s, const gn_node *n)
{
    s->memory -= gn_node_bytes(n);
    s->live_words -= n->kwords + n->vwords;
    s->dead_bin += n->kbin + n->vbin;
}

static size_t gn_garbage(const gn_store *s)
{
    size_t live = s->live_words * sizeof(ERL_NIF_TERM);
    return (s->arena_bytes > live ? s->arena_bytes - live : 0) + s->dead_bin;
}

/* The heap words `t` takes, as the VM's size_object counts them; adds to
 * *bin the bytes of the off-heap (refc) binaries it references. Stops
 * counting once past `limit` words: the result is then only known to be
 * over it (and *bin to be at least what it says). Recursion is bounded:
 * past depth 64, a subterm is sized by its encoding. */
static size_t gn_term_words(ErlNifEnv *env, ERL_NIF_TERM t, size_t *bin, size_t limit, int depth)
{
    const ERL_NIF_TERM *elems;
    int arity;
    ErlNifBinary b;
    ERL_NIF_TERM head, tail;
    size_t words = 0;
    if (depth > 64) {
        if (!enif_term_to_binary(env, t, &b))
            return 64;
        words = b.size; /* an encoding's bytes bound its words from above, roughly */
        enif_release_binary(&b);
        return words;
    }
    switch (enif_term_type(env, t)) {
    case ERL_NIF_TERM_TYPE_TUPLE:
        enif_get_tuple(env, t, &arity, &elems);
        words = 1 + (size_t)arity;
        for (int i = 0; i < arity && words <= limit; i++)
            words += gn_term_words(env, elems[i], bin, limit - words, depth + 1);
        return words;
    case ERL_NIF_TERM_TYPE_LIST:
        while (words <= limit && enif_get_list_cell(env, t, &head, &tail)) {
            words += 2 + gn_term_words(env, head, bin, limit - words, depth + 1);
            t = tail;
        }
        if (words > limit || enif_is_empty_list(env, t))
            return words;
        return words + gn_term_words(env, t, bin, limit - words, depth + 1);
    case ERL_NIF_TERM_TYPE_BITSTRING:
        if (!enif_inspect_binary(env, t, &b))
            return 8; /* a bitstring: a sub binary */
        if (b.size <= 64)
            return 2 + (b.size + 7) / 8; /* a heap binary */
        *bin += b.size + GN_BIN_HEADER;
        return 6; /* a ProcBin: copying it copies no data */
    case ERL_NIF_TERM_TYPE_MAP: {
        size_t n = 0;
        ERL_NIF_TERM k, v;
        ErlNifMapIterator it;
        enif_get_map_size(env, t, &n);
        /* a flatmap: header, keys tuple, values; a hashmap: about a cons
         * per pair, and its nodes */
        words = n <= 32 ? 4 + 2 * n : 4 + 3 * n;
        if (enif_map_iterator_create(env, t, &it, ERL_NIF_MAP_ITERATOR_FIRST)) {
            while (words <= limit && enif_map_iterator_get_pair(env, &it, &k, &v)) {
                words += gn_term_words(env, k, bin, limit - words, depth + 1);
                words += gn_term_words(env, v, bin, limit - words, depth + 1);
                enif_map_iterator_next(env, &it);
            }
            enif_map_iterator_destroy(env, &it);
        }
        return words;
    }
    case ERL_NIF_TERM_TYPE_FLOAT:
        return 2;
    case ERL_NIF_TERM_TYPE_INTEGER: {
        ErlNifSInt64 i;
        ErlNifUInt64 u;
        /* small integers (60 bits) are immediate */
        if (enif_get_int64(env, t, &i))
            return i >= -((ErlNifSInt64)1 << 59) && i < ((ErlNifSInt64)1 << 59) ? 0 : 2;
        if (enif_get_uint64(env, t, &u))
            return 2;
        if (!enif_term_to_binary(env, t, &b))
            return 3;
        words = 1 + (b.size + 7) / 8;
        enif_release_binary(&b);
        return words;
    }
    case ERL_NIF_TERM_TYPE_REFERENCE:
        return 4;
    case ERL_NIF_TERM_TYPE_FUN:
        return 8;
    case ERL_NIF_TERM_TYPE_PID: {
        ErlNifPid pid;
        return enif_get_local_pid(env, t, &pid) ? 0 : 6; /* local: immediate */
    }
    case ERL_NIF_TERM_TYPE_PORT: {
        ErlNifPort port;
        return enif_get_local_port(env, t, &port) ? 0 : 6;
    }
    default:
        return 0; /* atoms */
    }
}

static void gn_tree_free(gn_node *n)
{
    while (n) {
        gn_tree_free(n->left);
        gn_node *right = n->right;
        gn_node_free(n);
        n = right;
    }
}

typedef struct gn_detached {
    gn_node *root;
    ErlNifEnv *arena;
} gn_detached;

static void gn_detached_free(void *arg)
{
    gn_detached *d = arg;
    gn_tree_free(d->root);
    if (d->arena)
        enif_free_env(d->arena);
    gn_free(d);
}

/* Hands a tree and an arena to the reaper in O(1); frees them at once if
 * even that small allocation fails, so nothing leaks. */
static void gn_reap_tree(gn_node *root, ErlNifEnv *arena)
{
    if (!root && !arena)
        return;
    gn_detached *d = gn_alloc(sizeof(*d));
    if (!d) {
        gn_tree_free(root);
        if (arena)
            enif_free_env(arena);
        return;
    }
    d->root = root;
    d->arena = arena;
    gn_reap(gn_detached_free, d);
}

/* Empties the store in O(1): its entries go to the reaper. With `reuse`, it
 * gets a fresh arena for new entries; without (a deleted store), none. */
static void gn_store_detach(gn_store *s, int reuse)
{
    gn_reap_tree(s->root, s->arena);
    s->root = NULL;
    s->arena = reuse ? enif_alloc_env() : NULL;
    s->memory = s->live_words = s->arena_bytes = s->dead_bin = s->frag_left = 0;
    gn_free(s->heap);
    s->heap = NULL;
    s->heap_len = s->heap_cap = 0;
    gn_free(s->htab);
    s->htab = NULL;
    s->hcap = s->hcount = 0;
    s->hash_grow = 0;
}

GN_AVL_DEFINE(gn, gn_node)

/* A key being looked up: the term, and its encoding once a set needs it. */
typedef struct gn_probe {
    ErlNifEnv *env;
    ERL_NIF_TERM key;
    ErlNifBinary bin; /* its own encoding, when has_bin */
    int has_bin;
    const unsigned char *kdata; /* the encoding compared: its own, or a node's */
    size_t klen;
} gn_probe;

static int gn_cmp(const gn_store *s, gn_probe *p, const gn_node *n)
{
    int c = enif_compare(p->key, n->key);
    if (c != 0 || s->ordered || enif_is_identical(p->key, n->key))
        return c;
    /* a set: equal (==) but not identical (=:=) keys, e.g. 1 and 1.0 */
    if (!p->kdata) {
        if (!enif_term_to_binary(p->env, p->key, &p->bin))
            return -1;
        p->has_bin = 1;
        p->kdata = p->bin.data;
        p->klen = p->bin.size;
    }
    size_t len = p->klen < n->klen ? p->klen : n->klen;
    c = memcmp(p->kdata, n->kdata, len);
    if (c == 0)
        c = p->klen < n->klen ? -1 : p->klen > n->klen;
    return c;
}

static void gn_probe_done(gn_probe *p)
{
    if (p->has_bin)
        enif_release_binary(&p->bin);
}

static uint32_t gn_key_hash(ERL_NIF_TERM key)
{
    return (uint32_t)enif_hash(ERL_NIF_PHASH2, key, 0);
}

static void gn_hash_put(gn_node **tab, size_t cap, gn_node *n)
{
    size_t b = n->hash & (cap - 1);
    n->hnext = tab[b];
    tab[b] = n;
}

/* Rebuilds a set's hash index with `cap` buckets (a power of two) from the
 * tree. O(n): inline for small stores, else on a dirty scheduler. */
static void gn_hash_rebuild(gn_store *s, size_t cap)
{
    gn_node **tab = gn_alloc(cap * sizeof(*tab));
    if (!tab)
        return; /* keep the old index: lookups fall back to the tree */
    memset(tab, 0, cap * sizeof(*tab));
    gn_node *stack[128];
    int top = 0;
    size_t count = 0;
    for (gn_node *n = s->root; n || top;) {
        while (n) {
            stack[top++] = n;
            n = n->left;
        }
        n = stack[--top];
        gn_hash_put(tab, cap, n);
        count++;
        n = n->right;
    }
    gn_free(s->htab);
    s->htab = tab;
    s->hcap = cap;
    s->hcount = count;
    s->hash_grow = 0;
}

#define GN_HASH_INLINE 4096 /* buckets a regular NIF may rebuild */

static size_t gn_hash_cap(size_t entries)
{
    size_t cap = 64;
    while (cap < entries)
        cap *= 2;
    return cap;
}

static void gn_hash_add(gn_store *s, gn_node *n)
{
    if (s->ordered)
        return;
    n->hash = gn_key_hash(n->key);
    if (!s->htab) {
        gn_hash_rebuild(s, 64);
        return; /* the rebuild indexed n with the rest */
    }
    gn_hash_put(s->htab, s->hcap, n);
    if (++s->hcount > 2 * s->hcap) {
        if (s->hcap * 4 <= GN_HASH_INLINE)
            gn_hash_rebuild(s, s->hcap * 4);
        else
            s->hash_grow = 1;
    }
}

static void gn_hash_del(gn_store *s, gn_node *n)
{
    if (s->ordered || !s->htab)
        return;
    for (gn_node **p = &s->htab[n->hash & (s->hcap - 1)]; *p; p = &(*p)->hnext)
        if (*p == n) {
            *p = n->hnext;
            s->hcount--;
            return;
        }
}

static gn_node *gn_find(const gn_store *s, gn_probe *p)
{
    if (!s->ordered && s->htab) {
        uint32_t h = gn_key_hash(p->key);
        for (gn_node *n = s->htab[h & (s->hcap - 1)]; n; n = n->hnext)
            if (n->hash == h && enif_is_identical(n->key, p->key))
                return n;
        /* not found by hash: keys that are =:= but hash apart (0.0 and
         * -0.0) are still found by the tree */
    }
    gn_node *n = s->root;
    while (n) {
        int c = gn_cmp(s, p, n);
        if (c == 0)
            return n;
        n = c < 0 ? n->left : n->right;
    }
    return NULL;
}

/* Inserts `node` (its key not in the tree). */
static gn_node *gn_insert(const gn_store *s, gn_node *n, gn_node *node, gn_probe *p)
{
    if (!n)
        return node;
    if (gn_cmp(s, p, n) < 0)
        n->left = gn_insert(s, n->left, node, p);
    else
        n->right = gn_insert(s, n->right, node, p);
    return gn_balance(n);
}

/* Unlinks the entry matching p into *out. */
static gn_node *gn_remove(const gn_store *s, gn_node *n, gn_probe *p, gn_node **out)
{
    if (!n)
        return NULL;
    int c = gn_cmp(s, p, n);
    if (c < 0) {
        n->left = gn_remove(s, n->left, p, out);
    } else if (c > 0) {
        n->right = gn_remove(s, n->right, p, out);
    } else {
        *out = n;
        return gn_remove_root(n);
    }
    return gn_balance(n);
}

/* Adds a new entry (its key not in the store) to the tree and the index. */
static void gn_link(gn_store *s, gn_node *n, gn_probe *p)
{
    s->root = gn_insert(s, s->root, n, p);
    gn_hash_add(s, n);
}

/* ------------------------------------------------------------------------ */
/* TTL                                                                       */
/*
 * An expired entry is never returned: point reads check its time, and every
 * other read first purges what has expired (a bounded number in a regular
 * NIF; beyond it the caller is asked to purge on a dirty scheduler and come
 * back). Writes purge a few as they go, and GenNative.Store.Sweeper calls
 * store_sweep/0 every second, so an expired entry's memory is reclaimed
 * within about a second of its expiry even if nobody touches the store.
 */

/* Expired entries a regular NIF may purge: each is a tree removal and a
 * free, about 1-2 us with a million entries, so this stays well under 1 ms. */
#define GN_PURGE_INLINE 200
#define GN_PURGE_ON_WRITE 16

static int64_t gn_now_ms(void)
{
    return (int64_t)enif_monotonic_time(ERL_NIF_MSEC);
}

static int gn_expired(const gn_node *n, int64_t now)
{
    return n->expires && n->expires <= now;
}

GN_HEAP_DEFINE(gn, gn_store, gn_node)

static void gn_ttl_list_add(gn_store *s)
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
static void gn_ttl_list_remove(gn_store *s)
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
static int gn_set_expiry(gn_store *s, gn_node *n, int64_t expires)
{
    if (n->heap_ix != SIZE_MAX) {
        size_t i = n->heap_ix;
        if (expires) {
            n->expires = expires;
            gn_heap_up(s, i);
            gn_heap_down(s, n->heap_ix);
            return 1;
        }
        gn_heap_swap(s, i, --s->heap_len);
        n->heap_ix = SIZE_MAX;
        if (i < s->heap_len) {
            gn_heap_up(s, i);
            gn_heap_down(s, s->heap[i]->heap_ix == i ? i : s->heap[i]->heap_ix);
        }
    } else if (expires) {
        if (s->heap_len == s->heap_cap) {
            size_t cap = s->heap_cap ? 2 * s->heap_cap : 64;
            gn_node **h = gn_alloc(cap * sizeof(*h));
            if (!h)
                return 0;
            if (s->heap)
                memcpy(h, s->heap, s->heap_len * sizeof(*h));
            gn_free(s->heap);
            s->heap = h;
            s->heap_cap = cap;
        }
        n->heap_ix = s->heap_len;
        s->heap[s->heap_len++] = n;
        n->expires = expires;
        gn_heap_up(s, n->heap_ix);
        return 1;
    }
    n->expires = expires;
    return 1;
}

static gn_node *gn_unlink(gn_store *s, gn_probe *p);
static int gn_arena_bloated(const gn_store *s);
static int gn_write_compact(gn_store *s);
static ERL_NIF_TERM gn_compact_later(ErlNifEnv *env, ERL_NIF_TERM store, ERL_NIF_TERM result);

/* Removes up to `max` expired entries; returns how many expired remain. */
static size_t gn_purge(gn_store *s, int64_t now, size_t max)
{
    while (s->heap_len && gn_expired(s->heap[0], now)) {
        if (max-- == 0)
            return 1;
        gn_node *top = s->heap[0];
        gn_probe p = {.env = NULL, .key = top->key, .kdata = top->kdata, .klen = top->klen};
        gn_node *n = gn_unlink(s, &p);
        if (n)
            gn_node_free(n);
    }
    return 0;
}

static int gn_needs_purge(const gn_store *s, int64_t now)
{
    return s->heap_len && gn_expired(s->heap[0], now);
}

/* ------------------------------------------------------------------------ */
/* Resource callbacks                                                        */

static void gn_store_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    gn_store *s = obj;
    gn_reap_tree(s->root, s->arena);
    gn_free(s->heap);
    gn_free(s->htab);
    if (s->lock)
        enif_rwlock_destroy(s->lock);
}

static void gn_store_mark_deleted(gn_store *s)
{
    s->deleted = 1;
    gn_store_detach(s, 0);
}

/* The owner `pid` of `s` is down: a :named store becomes an orphan, any
 * other is deleted. Call with the write lock held; returns whether to drop
 * the name (after unlocking). Nothing happens if the store has been adopted
 * since (its owner is another process). */
static int gn_store_owner_gone(gn_store *s, const ErlNifPid *pid)
{
    if (s->deleted || s->orphan || enif_compare_pids(&s->owner, pid) != 0)
        return 0;
    if (s->named_lifetime) {
        s->orphan = 1;
        return 0;
    }
    gn_store_mark_deleted(s);
    return 1;
}

typedef struct gn_down_job {
    gn_store *s; /* holds a resource reference */
    ErlNifPid pid;
} gn_down_job;

static void gn_store_down_job(void *arg)
{
    gn_down_job *job = arg;
    gn_store *s = job->s;
    enif_rwlock_rwlock(s->lock);
    int unregister = gn_store_owner_gone(s, &job->pid);
    enif_rwlock_rwunlock(s->lock);
    if (unregister)
        gn_name_remove(s);
    enif_release_resource(s);
    gn_free(job);
}

/* Runs on a normal scheduler: never waits for the store's lock. If a dirty
 * NIF holds it (a walk of a big store), the work goes to the reaper thread,
 * which may wait. Until it is done, new/2 adopts a :named store whose owner
 * is not alive as if it were an orphan (see gn_store_new_nif). */
static void gn_store_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon)
{
    (void)env;
    (void)mon;
    gn_store *s = obj;
    if (enif_rwlock_tryrwlock(s->lock) != 0) {
        gn_down_job *job = gn_alloc(sizeof(*job));
        if (job) {
            enif_keep_resource(s);
            job->s = s;
            job->pid = *pid;
            gn_reap(gn_store_down_job, job);
            return;
        }
        enif_rwlock_rwlock(s->lock); /* out of memory: wait, rather than lose the exit */
    }
    int unregister = gn_store_owner_gone(s, pid);
    enif_rwlock_rwunlock(s->lock);
    if (unregister)
        gn_name_remove(s); /* may drop the last reference: last */
}

static void gn_crc_init(void);

/* A fresh shared state for priv->stores; the library that loads first
 * makes it, and gn_store_upgrade hands it on. */
int gn_store_load(ErlNifEnv *env, gn_priv *priv, ErlNifResourceFlags flags)
{
    gn_crc_init();
    ErlNifResourceTypeInit init = {.dtor = gn_store_dtor, .stop = NULL, .down = gn_store_down};
    ErlNifResourceType *rt = enif_open_resource_type_x(env, "gn_store", &init, flags, NULL);
    if (!rt)
        return 0;
    gn_store_rtype = rt;
    gn_store_shared *sh = gn_alloc(sizeof(*sh));
    if (!sh)
        return 0;
    memset(sh, 0, sizeof(*sh));
    sh->refs = 1;
    sh->names_lock = enif_mutex_create("gn_store_names");
    sh->ttl_lock = enif_mutex_create("gn_store_ttl");
    priv->stores = sh;
    return sh->names_lock && sh->ttl_lock;
}

/* An upgrade: the new library takes over the old one's stores (named
 * stores, the sweep list) instead of the fresh state its load made. */
void gn_store_upgrade(gn_priv *priv, gn_priv *old)
{
    gn_store_shared *fresh = priv->stores;
    priv->stores = old->stores;
    priv->stores->refs++;
    /* no store ever saw the fresh state */
    enif_mutex_destroy(fresh->names_lock);
    enif_mutex_destroy(fresh->ttl_lock);
    gn_free(fresh);
}

/* Drops this library's reference; the last one releases the named stores'
 * references. The shared state itself, and its locks, are kept: a store
 * that outlives every library instance (a handle still held) may still
 * run its down callback, which takes them. */
void gn_store_unload(gn_priv *priv)
{
    gn_store_shared *sh = priv->stores;
    if (!sh || --sh->refs > 0)
        return;
    if (!sh->names_lock)
        return;
    enif_mutex_lock(sh->names_lock);
    gn_name *n = sh->names;
    sh->names = NULL;
    enif_mutex_unlock(sh->names_lock);
    while (n) {
        gn_name *next = n->next;
        enif_release_resource(n->store);
        gn_free(n);
        n = next;
    }
}

/* ------------------------------------------------------------------------ */
/* Access                                                                    */

/* Resolves a store handle and takes its lock; NULL after setting *err.
 * `write`: exclusive, and only for the owner of a protected store (or, for
 * delete, anyone when the store is orphaned). Use or writes of a deleted
 * store raise store_deleted; a write by another process to a protected store
 * raises not_owner. On a normal scheduler the lock is only tried: if it is
 * busy (a dirty NIF walking a big store holds it), the call moves itself to
 * a dirty scheduler to wait there, never holding up a normal one. */
typedef ERL_NIF_TERM gn_nif_fn(ErlNifEnv *, int, const ERL_NIF_TERM[]);

static gn_store *gn_store_lock(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[], gn_nif_fn *self,
                               int write, ERL_NIF_TERM *err)
{
    gn_store *s;
    if (!enif_get_resource(env, argv[0], gn_store_rtype, (void **)&s)) {
        *err = enif_make_badarg(env);
        return NULL;
    }
    if (enif_thread_type() == ERL_NIF_THR_NORMAL_SCHEDULER) {
        if ((write ? enif_rwlock_tryrwlock(s->lock) : enif_rwlock_tryrlock(s->lock)) != 0) {
            *err = enif_schedule_nif(env, "gn_store_wait", ERL_NIF_DIRTY_JOB_IO_BOUND, self, argc,
                                     argv);
            return NULL;
        }
    } else if (write) {
        enif_rwlock_rwlock(s->lock);
    } else {
        enif_rwlock_rlock(s->lock);
    }
    if (s->deleted) {
        *err = enif_raise_exception(env, gn_am_store_deleted);
        goto fail;
    }
    if (write == 1 && !s->public_access) {
        ErlNifPid self_pid;
        if (s->orphan || !enif_self(env, &self_pid) ||
            enif_compare_pids(&self_pid, &s->owner) != 0) {
            *err = enif_raise_exception(env, gn_am_not_owner);
            goto fail;
        }
    }
    if (write == 2 && !s->public_access && !s->orphan) {
        ErlNifPid self_pid;
        if (!enif_self(env, &self_pid) || enif_compare_pids(&self_pid, &s->owner) != 0) {
            *err = enif_raise_exception(env, gn_am_not_owner);
            goto fail;
        }
    }
    return s;
fail:
    if (write)
        enif_rwlock_rwunlock(s->lock);
    else
        enif_rwlock_runlock(s->lock);
    return NULL;
}

/* For reads that see the whole store (size, rank, index, walks): first purge
 * what has expired. Called with the read lock held; returns with it held,
 * or NULL (lock released, *err set). A regular NIF purges up to
 * GN_PURGE_INLINE entries, and only if it gets the write lock at once;
 * anything more, and it reschedules itself (`self` with argc/argv) on a
 * dirty scheduler, which purges everything and then reads. That is the one
 * way a store NIF asks for more time: nothing is raised for the caller to
 * retry. */
static gn_store *gn_fresh_view(ErlNifEnv *env, gn_store *s, int argc, const ERL_NIF_TERM argv[],
                               gn_nif_fn *self, ERL_NIF_TERM *err)
{
    int dirty = enif_thread_type() != ERL_NIF_THR_NORMAL_SCHEDULER;
    /* Entries expiring continuously: each round purges all that expired
     * by its start; the bound is a backstop, never reached in practice. */
    for (int tries = 0; tries < 64; tries++) {
        int64_t now = gn_now_ms();
        if (!gn_needs_purge(s, now))
            return s;
        enif_rwlock_runlock(s->lock);
        if (dirty)
            enif_rwlock_rwlock(s->lock);
        else if (tries >= 2 || enif_rwlock_tryrwlock(s->lock) != 0)
            goto go_dirty;
        size_t left = s->deleted ? 0 : gn_purge(s, now, dirty ? SIZE_MAX : GN_PURGE_INLINE);
        enif_rwlock_rwunlock(s->lock);
        if (left)
            goto go_dirty;
        if (dirty)
            enif_rwlock_rlock(s->lock);
        else if (enif_rwlock_tryrlock(s->lock) != 0)
            goto go_dirty;
        if (s->deleted) {
            enif_rwlock_runlock(s->lock);
            *err = enif_raise_exception(env, gn_am_store_deleted);
            return NULL;
        }
    }
    return s;

go_dirty:
    *err = enif_schedule_nif(env, "gn_store_purge_first", ERL_NIF_DIRTY_JOB_CPU_BOUND, self, argc,
                             argv);
    return NULL;
}

/* In a NIF named `fn`: take the store in argv[0] for reading or writing. */
#define GN_READ(fn, s, err) ((s) = gn_store_lock(env, argc, argv, fn, 0, &(err)))
#define GN_WRITE(fn, s, err) ((s) = gn_store_lock(env, argc, argv, fn, 1, &(err)))
/* Reading the whole store: as GN_READ, after purging what has expired. */
#define GN_VIEW(fn, s, err)                                                                        \
    (GN_READ(fn, s, err) && ((s) = gn_fresh_view(env, (s), argc, argv, fn, &(err))))

/* A view of an ordered_set: on a set, unlocks and raises not_ordered. */
static int gn_ordered_or_raise(ErlNifEnv *env, gn_store *s, ERL_NIF_TERM *err)
{
    if (s->ordered)
        return 1;
    enif_rwlock_runlock(s->lock);
    *err = enif_raise_exception(env, gn_am_not_ordered);
    return 0;
}

#define GN_VIEW_ORDERED(fn, s, err) (GN_VIEW(fn, s, err) && gn_ordered_or_raise(env, (s), &(err)))

static ERL_NIF_TERM gn_entry(ErlNifEnv *env, const gn_node *n)
{
    return enif_make_tuple2(env, enif_make_copy(env, n->key), enif_make_copy(env, n->value));
}

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
#define GN_SLICE_BYTES ((size_t)512 * 1024) /* copied in about a timeslice (1 ms) */

/* Bytes of work on `key` (encoded, hashed, compared: binaries in full),
 * counted up to a little past `limit`. */
static size_t gn_key_cost(ErlNifEnv *env, ERL_NIF_TERM key, size_t limit)
{
    size_t bin = 0;
    size_t words = gn_term_words(env, key, &bin, limit / sizeof(ERL_NIF_TERM), 0);
    return words * sizeof(ERL_NIF_TERM) + bin;
}

/* Bytes of work on copying `value` (an off-heap binary is referenced, not
 * copied), counted up to a little past `limit`. */
static size_t gn_value_cost(ErlNifEnv *env, ERL_NIF_TERM value, size_t limit)
{
    size_t bin = 0;
    return gn_term_words(env, value, &bin, limit / sizeof(ERL_NIF_TERM), 0) * sizeof(ERL_NIF_TERM);
}

static size_t gn_entry_cost(const gn_node *n)
{
    return (n->kwords + n->vwords) * sizeof(ERL_NIF_TERM);
}

/* Whether work of `cost` bytes is too much for this (normal) scheduler. */
static int gn_too_big(size_t cost)
{
    return cost > GN_INLINE_BYTES && enif_thread_type() == ERL_NIF_THR_NORMAL_SCHEDULER;
}

static ERL_NIF_TERM gn_go_dirty(ErlNifEnv *env, gn_nif_fn *fn, int argc, const ERL_NIF_TERM argv[])
{
    return enif_schedule_nif(env, "gn_store_big_term", ERL_NIF_DIRTY_JOB_CPU_BOUND, fn, argc, argv);
}

/* Charges the timeslice for `bytes` copied on a normal scheduler. */
static void gn_charge(ErlNifEnv *env, size_t bytes)
{
    if (bytes < GN_SLICE_BYTES / 100 || enif_thread_type() != ERL_NIF_THR_NORMAL_SCHEDULER)
        return;
    size_t pct = bytes * 100 / GN_SLICE_BYTES;
    enif_consume_timeslice(env, pct > 100 ? 100 : (int)pct);
}

/* ------------------------------------------------------------------------ */
/* NIFs                                                                      */

/* store_new(Type, Name | nil, Access, Lifetime, MaxSize | infinity)
 *   -> {ok, Store} | {error, already_exists}
 * With the name of a named store whose owner exited: adopts it. */
ERL_NIF_TERM gn_store_new_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    int ordered, pub, named;
    ErlNifUInt64 max = SIZE_MAX;
    if (enif_is_identical(argv[0], gn_am_ordered_set))
        ordered = 1;
    else if (enif_is_identical(argv[0], gn_am_set))
        ordered = 0;
    else
        return enif_make_badarg(env);
    int has_name = !enif_is_identical(argv[1], gn_am_nil);
    if (has_name && !enif_is_atom(env, argv[1]))
        return enif_make_badarg(env);
    if (enif_is_identical(argv[2], gn_am_public))
        pub = 1;
    else if (enif_is_identical(argv[2], gn_am_protected))
        pub = 0;
    else
        return enif_make_badarg(env);
    if (enif_is_identical(argv[3], gn_am_named))
        named = 1;
    else if (enif_is_identical(argv[3], gn_am_owner))
        named = 0;
    else
        return enif_make_badarg(env);
    if (named && !has_name)
        return enif_make_badarg(env);
    if (!enif_is_identical(argv[4], gn_am_infinity) &&
        (!enif_get_uint64(env, argv[4], &max) || max == 0))
        return enif_make_badarg(env);

    ErlNifPid self;
    if (!enif_self(env, &self))
        return enif_make_badarg(env);

    /* A name in use: adopt its store if it is an orphan, or a :named store
     * whose owner has exited (the down callback may still be on its way).
     * The store's lock is taken with the names lock released; a regular NIF
     * only tries it, and waits on a dirty scheduler if it is busy. */
    gn_store_shared *sh = gn_shared(env);
    if (has_name) {
        gn_store *old = gn_name_lookup(sh, argv[1]);
        if (old) {
            if (enif_thread_type() != ERL_NIF_THR_NORMAL_SCHEDULER) {
                enif_rwlock_rwlock(old->lock);
            } else if (enif_rwlock_tryrwlock(old->lock) != 0) {
                enif_release_resource(old);
                return enif_schedule_nif(env, "gn_store_new", ERL_NIF_DIRTY_JOB_IO_BOUND,
                                         gn_store_new_nif, argc, argv);
            }
            ERL_NIF_TERM result;
            int gone =
                old->orphan || (old->named_lifetime && !enif_is_process_alive(env, &old->owner));
            if (gone && !old->deleted && old->ordered == ordered &&
                enif_monitor_process(env, old, &self, &old->monitor) == 0) {
                old->owner = self;
                old->orphan = 0;
                result = enif_make_tuple2(env, gn_am_ok, enif_make_resource(env, old));
            } else {
                result = enif_make_tuple2(env, gn_am_error, gn_am_already_exists);
            }
            enif_rwlock_rwunlock(old->lock);
            enif_release_resource(old);
            return result;
        }
    }

    gn_store *s = enif_alloc_resource(gn_store_rtype, sizeof(*s));
    /* zeroed at once: a failure below releases it, and the destructor
     * reads every field */
    if (s)
        memset(s, 0, sizeof(*s));
    gn_name *entry = has_name ? gn_alloc(sizeof(*entry)) : NULL;
    if (!s || (has_name && !entry))
        goto enomem;
    s->ordered = ordered;
    s->public_access = pub;
    s->named_lifetime = named;
    s->name = has_name ? argv[1] : 0;
    s->max_size = (size_t)max;
    s->owner = self;
    s->shared = sh;
    if (!(s->lock = enif_rwlock_create("gn_store")) || !(s->arena = enif_alloc_env()))
        goto enomem;
    if (enif_monitor_process(env, s, &self, &s->monitor) != 0)
        goto enomem;
    enif_mutex_lock(sh->names_lock);
    if (has_name) {
        for (gn_name *n = sh->names; n; n = n->next)
            if (enif_is_identical(n->name, argv[1])) {
                /* registered meanwhile by another process: start over */
                enif_mutex_unlock(sh->names_lock);
                gn_free(entry);
                enif_demonitor_process(env, s, &s->monitor);
                enif_release_resource(s);
                return gn_store_new_nif(env, argc, argv);
            }
        entry->name = argv[1];
        entry->store = s;
        entry->next = sh->names;
        sh->names = entry;
        enif_keep_resource(s);
    }
    enif_mutex_unlock(sh->names_lock);
    ERL_NIF_TERM ref = enif_make_resource(env, s);
    enif_release_resource(s);
    return enif_make_tuple2(env, gn_am_ok, ref);

enomem:
    if (entry)
        gn_free(entry);
    if (s)
        enif_release_resource(s);
    return enif_raise_exception(env, gn_am_enomem);
}

/* store_whereis(Name) -> Store | nil */
ERL_NIF_TERM gn_store_whereis_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    if (!enif_is_atom(env, argv[0]))
        return enif_make_badarg(env);
    gn_store *s = gn_name_lookup(gn_shared(env), argv[0]);
    if (!s)
        return gn_am_nil;
    ERL_NIF_TERM ref = enif_make_resource(env, s);
    enif_release_resource(s);
    return ref;
}

/* Copies key and value into the arena, and sizes them. */
static void gn_node_terms(gn_store *s, ErlNifEnv *env, gn_node *n, ERL_NIF_TERM key,
                          ERL_NIF_TERM value)
{
    n->kbin = n->vbin = 0;
    n->kwords = gn_term_words(env, key, &n->kbin, SIZE_MAX, 0);
    n->vwords = gn_term_words(env, value, &n->vbin, SIZE_MAX, 0);
    n->key = enif_make_copy(s->arena, key);
    gn_arena_charge(s, n->kwords);
    n->value = enif_make_copy(s->arena, value);
    gn_arena_charge(s, n->vwords);
}

/* Builds an entry for key/value; NULL when out of memory. */
static gn_node *gn_node_new(gn_store *s, ErlNifEnv *env, ERL_NIF_TERM key, ERL_NIF_TERM value)
{
    gn_node *n = gn_alloc(sizeof(*n));
    if (!n)
        return NULL;
    ErlNifBinary kbin;
    if (!enif_term_to_binary(env, key, &kbin)) {
        gn_free(n);
        return NULL;
    }
    n->kdata = gn_alloc(kbin.size ? kbin.size : 1);
    if (!n->kdata) {
        enif_release_binary(&kbin);
        gn_free(n);
        return NULL;
    }
    memcpy(n->kdata, kbin.data, kbin.size);
    n->klen = (uint32_t)kbin.size;
    enif_release_binary(&kbin);
    n->left = n->right = NULL;
    n->size = 1;
    n->height = 1;
    n->expires = 0;
    n->heap_ix = SIZE_MAX;
    gn_node_terms(s, env, n, key, value);
    return n;
}

/* Builds an entry from encodings already at hand (a snapshot's); `key` is
 * the decoded key. NULL when out of memory. */
static gn_node *gn_node_from_etf(gn_store *s, ErlNifEnv *env, ERL_NIF_TERM key,
                                 const unsigned char *k, size_t klen, ERL_NIF_TERM value)
{
    gn_node *n = gn_alloc(sizeof(*n));
    if (!n)
        return NULL;
    if (!(n->kdata = gn_alloc(klen ? klen : 1))) {
        gn_free(n);
        return NULL;
    }
    memcpy(n->kdata, k, klen);
    n->klen = (uint32_t)klen;
    n->left = n->right = NULL;
    n->size = 1;
    n->height = 1;
    n->expires = 0;
    n->heap_ix = SIZE_MAX;
    gn_node_terms(s, env, n, key, value);
    return n;
}

/* Replaces an entry's value; returns 0 when out of memory. */
static int gn_node_set(gn_store *s, ErlNifEnv *env, gn_node *n, ERL_NIF_TERM value)
{
    /* the old value stays in the arena, dead, until it is compacted */
    s->memory -= n->vbin;
    s->live_words -= n->vwords;
    s->dead_bin += n->vbin;
    n->vbin = 0;
    n->vwords = gn_term_words(env, value, &n->vbin, SIZE_MAX, 0);
    n->value = enif_make_copy(s->arena, value);
    gn_arena_charge(s, n->vwords);
    s->memory += n->vbin;
    s->live_words += n->vwords;
    return 1;
}

/* Gives an entry the key as last put, as ETS does: equal keys (1 and 1.0
 * in an ordered_set, 0.0 and -0.0) keep their place but take the new
 * term. Returns 0 when out of memory. */
static int gn_node_rekey(gn_store *s, ErlNifEnv *env, gn_node *n, ERL_NIF_TERM key)
{
    /* An identical key of a type that has one encoding needs nothing; only
     * terms holding floats (0.0 and -0.0 are =:=) can be identical yet
     * encode differently. */
    if (enif_is_identical(n->key, key)) {
        switch (enif_term_type(env, key)) {
        case ERL_NIF_TERM_TYPE_ATOM:
        case ERL_NIF_TERM_TYPE_BITSTRING:
        case ERL_NIF_TERM_TYPE_INTEGER:
        case ERL_NIF_TERM_TYPE_PID:
        case ERL_NIF_TERM_TYPE_PORT:
        case ERL_NIF_TERM_TYPE_REFERENCE:
            return 1;
        default:
            break;
        }
    }
    ErlNifBinary kbin;
    if (!enif_term_to_binary(env, key, &kbin))
        return 0;
    if (kbin.size == n->klen && memcmp(kbin.data, n->kdata, kbin.size) == 0) {
        enif_release_binary(&kbin);
        return 1;
    }
    unsigned char *kdata = gn_alloc(kbin.size ? kbin.size : 1);
    if (!kdata) {
        enif_release_binary(&kbin);
        return 0;
    }
    memcpy(kdata, kbin.data, kbin.size);
    /* the old key stays in the arena, dead, until it is compacted */
    s->memory -= gn_node_bytes(n);
    s->live_words -= n->kwords;
    s->dead_bin += n->kbin;
    gn_free(n->kdata);
    n->kdata = kdata;
    n->klen = (uint32_t)kbin.size;
    gn_hash_del(s, n); /* its hash changes with its key */
    n->kbin = 0;
    n->kwords = gn_term_words(env, key, &n->kbin, SIZE_MAX, 0);
    n->key = enif_make_copy(s->arena, key);
    gn_arena_charge(s, n->kwords);
    gn_hash_add(s, n);
    s->memory += gn_node_bytes(n);
    s->live_words += n->kwords;
    enif_release_binary(&kbin);
    return 1;
}

/* The live entry for p's key: an expired one is removed first. Call with
 * the write lock held. */
static gn_node *gn_find_live(gn_store *s, gn_probe *p)
{
    gn_node *n = gn_find(s, p);
    if (n && n->expires && gn_expired(n, gn_now_ms())) {
        gn_unlink(s, p);
        gn_node_free(n);
        n = NULL;
    }
    return n;
}

/* Puts key/value (a new entry, or a new value and key for an existing one)
 * with its expiry; sets *fresh for a new entry. Returns 0 when out of
 * memory, -1 when the store is full. Call with the write lock held. */
static int gn_put_entry(gn_store *s, ErlNifEnv *env, ERL_NIF_TERM key, ERL_NIF_TERM value,
                        int64_t expires, int put_new, int *fresh)
{
    gn_probe p = {.env = env, .key = key};
    gn_node *n = gn_find_live(s, &p);
    int ok = 1;
    *fresh = !n;
    if (n) {
        if (!put_new)
            ok = gn_node_rekey(s, env, n, key) && gn_node_set(s, env, n, value) &&
                 gn_set_expiry(s, n, expires);
    } else if (gn_size(s->root) >= s->max_size &&
               (gn_purge(s, gn_now_ms(), GN_PURGE_INLINE), gn_size(s->root) >= s->max_size)) {
        /* full, counting only live entries (expired ones were purged) */
        ok = -1;
    } else if ((n = gn_node_new(s, env, key, value))) {
        gn_link(s, n, &p);
        gn_account_add(s, n);
        if (!gn_set_expiry(s, n, expires)) {
            gn_unlink(s, &p);
            gn_node_free(n);
            ok = 0;
        }
    } else {
        ok = 0;
    }
    gn_probe_done(&p);
    if (ok == 1 && expires)
        gn_ttl_list_add(s);
    return ok;
}

/* store_put(Store, Key, Value, put | put_new, TtlMs) -> ok | true | false | {error, full}
 * TtlMs: 0 for none. */
ERL_NIF_TERM gn_store_put_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ERL_NIF_TERM err;
    gn_store *s;
    ErlNifSInt64 ttl;
    int put_new = enif_is_identical(argv[3], gn_am_put_new);
    if ((!put_new && !enif_is_identical(argv[3], gn_am_put)) ||
        !enif_get_int64(env, argv[4], &ttl) || ttl < 0)
        return enif_make_badarg(env);
    size_t cost = gn_key_cost(env, argv[1], GN_INLINE_BYTES);
    if (cost <= GN_INLINE_BYTES)
        cost += gn_value_cost(env, argv[2], GN_INLINE_BYTES);
    if (gn_too_big(cost))
        return gn_go_dirty(env, gn_store_put_nif, argc, argv);
    if (!GN_WRITE(gn_store_put_nif, s, err))
        return err;
    int64_t now = ttl || s->heap_len ? gn_now_ms() : 0;
    if (s->heap_len)
        gn_purge(s, now, GN_PURGE_ON_WRITE);
    int fresh, ok = gn_put_entry(s, env, argv[1], argv[2], ttl ? now + ttl : 0, put_new, &fresh);
    int compact = gn_write_compact(s);
    enif_rwlock_rwunlock(s->lock);
    gn_charge(env, cost);
    if (ok == 0)
        return enif_raise_exception(env, gn_am_enomem);
    if (ok < 0)
        return enif_make_tuple2(env, gn_am_error, gn_am_full);
    ERL_NIF_TERM result = put_new ? (fresh ? gn_am_true : gn_am_false) : gn_am_ok;
    return compact ? gn_compact_later(env, argv[0], result) : result;
}

/* store_get(Store, Key) -> {ok, Value} | error */
ERL_NIF_TERM gn_store_get_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err, result;
    gn_store *s;
    size_t cost = gn_key_cost(env, argv[1], GN_INLINE_BYTES);
    if (gn_too_big(cost))
        return gn_go_dirty(env, gn_store_get_nif, argc, argv);
    if (!GN_READ(gn_store_get_nif, s, err))
        return err;
    gn_probe p = {.env = env, .key = argv[1]};
    gn_node *n = gn_find(s, &p);
    if (n && n->expires && gn_expired(n, gn_now_ms()))
        n = NULL;
    if (n && gn_too_big(cost + n->vwords * sizeof(ERL_NIF_TERM))) {
        enif_rwlock_runlock(s->lock);
        gn_probe_done(&p);
        return gn_go_dirty(env, gn_store_get_nif, argc, argv);
    }
    if (n)
        cost += n->vwords * sizeof(ERL_NIF_TERM);
    result = n ? enif_make_tuple2(env, gn_am_ok, enif_make_copy(env, n->value)) : gn_am_error;
    enif_rwlock_runlock(s->lock);
    gn_probe_done(&p);
    gn_charge(env, cost);
    return result;
}

/* Removes the entry for key, if any; returns it, to be freed after the
 * value is read. Call with the write lock held. */
static gn_node *gn_unlink(gn_store *s, gn_probe *p)
{
    gn_node *out = NULL;
    s->root = gn_remove(s, s->root, p, &out);
    if (out) {
        gn_hash_del(s, out);
        gn_set_expiry(s, out, 0);
        gn_account_remove(s, out);
    }
    return out;
}

/* Once removed keys outnumber live ones in the arena, rebuild it from the
 * encoded keys. O(n): only reached from dirty NIFs or small stores. */
static void gn_arena_compact(gn_store *s)
{
    ErlNifEnv *fresh = enif_alloc_env();
    if (!fresh)
        return;
    s->arena_bytes = s->frag_left = s->dead_bin = 0;
    gn_node *stack[128];
    int top = 0;
    gn_node *n = s->root;
    while (n || top) {
        while (n) {
            stack[top++] = n;
            n = n->left;
        }
        n = stack[--top];
        n->key = enif_make_copy(fresh, n->key);
        gn_arena_charge(s, n->kwords);
        n->value = enif_make_copy(fresh, n->value);
        gn_arena_charge(s, n->vwords);
        n = n->right;
    }
    enif_free_env(s->arena);
    s->arena = fresh;
    /* The index and the expiry heap give back what a shrunken store no
     * longer needs (this is O(n) already). */
    size_t live = gn_size(s->root);
    if (!s->ordered && s->htab && s->hcap > 64 && live * 8 < s->hcap) {
        if (live) {
            gn_hash_rebuild(s, gn_hash_cap(live));
        } else {
            gn_free(s->htab);
            s->htab = NULL;
            s->hcap = s->hcount = 0;
        }
    }
    if (s->heap_cap > 64 && s->heap_len * 4 < s->heap_cap) {
        size_t cap = s->heap_len ? 2 * s->heap_len : 0;
        gn_node **h = cap ? gn_alloc(cap * sizeof(*h)) : NULL;
        if (h || !cap) {
            if (h)
                memcpy(h, s->heap, s->heap_len * sizeof(*h));
            gn_free(s->heap);
            s->heap = h;
            s->heap_cap = cap;
        }
    }
}

/* Compacting a store of up to this many entries, and this many bytes of
 * live terms, stays well under 1 ms: the walk is per entry, the copy per
 * word (off-heap binaries are not copied, only referenced). */
#define GN_COMPACT_INLINE 4096
#define GN_COMPACT_INLINE_BYTES ((size_t)128 * 1024)

static int gn_compact_inline(const gn_store *s)
{
    return gn_size(s->root) <= GN_COMPACT_INLINE &&
           s->live_words * sizeof(ERL_NIF_TERM) <= GN_COMPACT_INLINE_BYTES;
}

/* Once the arena's dead bytes exceed the live ones (and the floor), it is
 * rebuilt from the live entries; or a big set's hash index is due to grow. */
static int gn_arena_bloated(const gn_store *s)
{
    size_t live = s->live_words * sizeof(ERL_NIF_TERM) + s->memory;
    return gn_garbage(s) > live + GN_GARBAGE_FLOOR || s->hash_grow;
}

/* store_compact(Store, Result) -> Result (dirty): rebuilds a big store's
 * arena after a write that left it mostly garbage, then returns that
 * write's result. */
static ERL_NIF_TERM gn_store_compact_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_store *s;
    if (enif_get_resource(env, argv[0], gn_store_rtype, (void **)&s)) {
        enif_rwlock_rwlock(s->lock);
        if (!s->deleted && gn_arena_bloated(s)) {
            gn_arena_compact(s);
            if (s->hash_grow)
                gn_hash_rebuild(s, gn_hash_cap(gn_size(s->root)));
        }
        enif_rwlock_rwunlock(s->lock);
    }
    return argv[1];
}

/* At the end of a write, with the write lock still held: once the arena is
 * mostly garbage, compacts it inline for a small store and returns 0; for a
 * big one returns 1, and the write's result goes back through a dirty
 * compaction (gn_compact_later) once the lock is released. Holding on to
 * the lock, rather than taking it again, means no regular NIF ever waits
 * for it here. */
static int gn_write_compact(gn_store *s)
{
    if (!gn_arena_bloated(s))
        return 0;
    if (!gn_compact_inline(s))
        return 1;
    gn_arena_compact(s);
    return 0;
}

static ERL_NIF_TERM gn_compact_later(ErlNifEnv *env, ERL_NIF_TERM store, ERL_NIF_TERM result)
{
    ERL_NIF_TERM args[2] = {store, result};
    return enif_schedule_nif(env, "gn_store_compact", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                             gn_store_compact_nif, 2, args);
}

/* store_delete_key(Store, Key) -> ok */
ERL_NIF_TERM gn_store_delete_key_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    size_t cost = gn_key_cost(env, argv[1], GN_INLINE_BYTES);
    if (gn_too_big(cost))
        return gn_go_dirty(env, gn_store_delete_key_nif, argc, argv);
    if (!GN_WRITE(gn_store_delete_key_nif, s, err))
        return err;
    gn_purge(s, gn_now_ms(), GN_PURGE_ON_WRITE);
    gn_probe p = {.env = env, .key = argv[1]};
    gn_node *n = gn_unlink(s, &p);
    int compact = gn_write_compact(s);
    enif_rwlock_rwunlock(s->lock);
    gn_probe_done(&p);
    if (n)
        gn_node_free(n);
    return compact ? gn_compact_later(env, argv[0], gn_am_ok) : gn_am_ok;
}

/* store_take(Store, Key) -> {ok, Value} | error */
ERL_NIF_TERM gn_store_take_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    size_t cost = gn_key_cost(env, argv[1], GN_INLINE_BYTES);
    if (gn_too_big(cost))
        return gn_go_dirty(env, gn_store_take_nif, argc, argv);
    if (!GN_WRITE(gn_store_take_nif, s, err))
        return err;
    int64_t now = gn_now_ms();
    gn_purge(s, now, GN_PURGE_ON_WRITE);
    gn_probe p = {.env = env, .key = argv[1]};
    gn_node *n = gn_find(s, &p);
    if (n && gn_too_big(cost + n->vwords * sizeof(ERL_NIF_TERM))) {
        enif_rwlock_rwunlock(s->lock);
        gn_probe_done(&p);
        return gn_go_dirty(env, gn_store_take_nif, argc, argv);
    }
    n = n ? gn_unlink(s, &p) : NULL;
    /* the value lives in the arena: copy it out while the lock is held */
    ERL_NIF_TERM v = n && !gn_expired(n, now) ? enif_make_copy(env, n->value) : 0;
    int compact = gn_write_compact(s);
    enif_rwlock_rwunlock(s->lock);
    gn_probe_done(&p);
    if (n)
        gn_node_free(n);
    if (!v)
        return gn_am_error;
    ERL_NIF_TERM result = enif_make_tuple2(env, gn_am_ok, v);
    return compact ? gn_compact_later(env, argv[0], result) : result;
}

/* store_update_counter(Store, Key, Incr, Default) -> Integer
 * Raises not_integer if the value (or Default) is not an integer. */
ERL_NIF_TERM gn_store_update_counter_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    ErlNifSInt64 incr, current;
    if (!enif_get_int64(env, argv[2], &incr))
        return enif_make_badarg(env);
    if (gn_too_big(gn_key_cost(env, argv[1], GN_INLINE_BYTES)))
        return gn_go_dirty(env, gn_store_update_counter_nif, argc, argv);
    if (!GN_WRITE(gn_store_update_counter_nif, s, err))
        return err;
    gn_probe p = {.env = env, .key = argv[1]};
    gn_node *n = gn_find_live(s, &p);
    /* enif_raise_exception returns a term that may be 0: a flag for ENOMEM */
    ERL_NIF_TERM result = 0, value;
    int done = 0;
    int oom = 1;
    if (n) {
        if (!enif_get_int64(env, n->value, &current)) {
            result = enif_raise_exception(env, gn_am_not_integer);
            oom = 0;
            goto out;
        }
    } else if (!enif_get_int64(env, argv[3], &current)) {
        result = enif_raise_exception(env, gn_am_not_integer);
        oom = 0;
        goto out;
    } else if (gn_size(s->root) >= s->max_size &&
               (gn_purge(s, gn_now_ms(), GN_PURGE_INLINE), gn_size(s->root) >= s->max_size)) {
        result = enif_make_tuple2(env, gn_am_error, gn_am_full);
        oom = 0;
        goto out;
    }
    if ((incr > 0 && current > INT64_MAX - incr) || (incr < 0 && current < INT64_MIN - incr)) {
        result = enif_raise_exception(env, gn_am_not_integer);
        oom = 0;
        goto out;
    }
    value = enif_make_int64(env, current + incr);
    if (n) {
        if (!gn_node_set(s, env, n, value))
            goto out;
    } else {
        if (!(n = gn_node_new(s, env, argv[1], value)))
            goto out;
        gn_link(s, n, &p);
        gn_account_add(s, n);
    }
    result = value;
    oom = 0;
    done = 1;
out:;
    /* a bignum counter leaves its old value in the arena: compact too */
    int compact = done && gn_write_compact(s);
    enif_rwlock_rwunlock(s->lock);
    gn_probe_done(&p);
    if (oom)
        return enif_raise_exception(env, gn_am_enomem);
    return compact ? gn_compact_later(env, argv[0], result) : result;
}

/* store_size(Store) -> non_neg_integer() */
ERL_NIF_TERM gn_store_size_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!GN_VIEW(gn_store_size_nif, s, err))
        return err;
    size_t n = gn_size(s->root);
    enif_rwlock_runlock(s->lock);
    return enif_make_uint64(env, n);
}

/* The bytes the store holds, as the VM would count them (see Accounting). */
static size_t gn_store_memory(const gn_store *s)
{
    return sizeof(gn_store) + s->memory + s->arena_bytes + s->dead_bin +
           (s->hcap + s->heap_cap) * sizeof(void *) + 2 * GN_BLOCK_OVERHEAD;
}

/* store_info(Store) -> #{type, size, memory, owner, name, access, lifetime} */
ERL_NIF_TERM gn_store_info_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!GN_VIEW(gn_store_info_nif, s, err))
        return err;
    ERL_NIF_TERM keys[] = {gn_am_type, gn_am_size,   gn_am_memory,  gn_am_owner,
                           gn_am_name, gn_am_access, gn_am_lifetime};
    ERL_NIF_TERM vals[] = {
        s->ordered ? gn_am_ordered_set : gn_am_set,
        enif_make_uint64(env, gn_size(s->root)),
        enif_make_uint64(env, gn_store_memory(s)),
        s->orphan ? gn_am_nil : enif_make_pid(env, &s->owner),
        s->name ? s->name : gn_am_nil,
        s->public_access ? gn_am_public : gn_am_protected,
        s->named_lifetime ? gn_am_named : gn_am_owner,
    };
    enif_rwlock_runlock(s->lock);
    ERL_NIF_TERM map;
    enif_make_map_from_arrays(env, keys, vals, 7, &map);
    return map;
}

/* store_delete(Store) -> ok: frees the store (owner only, or any process
 * for a public store); every later use raises store_deleted. */
ERL_NIF_TERM gn_store_delete_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!(s = gn_store_lock(env, argc, argv, gn_store_delete_nif, 2, &err)))
        return err;
    gn_store_mark_deleted(s);
    enif_rwlock_rwunlock(s->lock);
    gn_name_remove(s);
    return gn_am_ok;
}

/* store_step(Store, first | last | next | prev, Key) -> {ok, {K, V}} | error
 * Ordered sets only (the caller checks). */
ERL_NIF_TERM gn_store_step_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    int first = enif_is_identical(argv[1], gn_am_first),
        last = enif_is_identical(argv[1], gn_am_last);
    int next = enif_is_identical(argv[1], gn_am_next),
        prev = enif_is_identical(argv[1], gn_am_prev);
    if (!(first || last || next || prev))
        return enif_make_badarg(env);
    size_t cost = first || last ? 0 : gn_key_cost(env, argv[2], GN_INLINE_BYTES);
    if (gn_too_big(cost))
        return gn_go_dirty(env, gn_store_step_nif, argc, argv);
    if (!GN_VIEW_ORDERED(gn_store_step_nif, s, err))
        return err;
    gn_probe p = {.env = env, .key = argv[2]};
    gn_node *found = NULL, *n = s->root;
    if (first || last) {
        while (n) {
            found = n;
            n = first ? n->left : n->right;
        }
    } else {
        while (n) {
            int c = gn_cmp(s, &p, n);
            if (next ? c < 0 : c > 0) {
                found = n;
                n = next ? n->left : n->right;
            } else {
                n = next ? n->right : n->left;
            }
        }
    }
    if (found && gn_too_big(cost + gn_entry_cost(found))) {
        enif_rwlock_runlock(s->lock);
        gn_probe_done(&p);
        return gn_go_dirty(env, gn_store_step_nif, argc, argv);
    }
    cost += found ? gn_entry_cost(found) : 0;
    ERL_NIF_TERM result =
        found ? enif_make_tuple2(env, gn_am_ok, gn_entry(env, found)) : gn_am_error;
    enif_rwlock_runlock(s->lock);
    gn_probe_done(&p);
    gn_charge(env, cost);
    return result;
}

/* store_rank(Store, Key) -> {ok, Index} | error (0-based) */
ERL_NIF_TERM gn_store_rank_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (gn_too_big(gn_key_cost(env, argv[1], GN_INLINE_BYTES)))
        return gn_go_dirty(env, gn_store_rank_nif, argc, argv);
    if (!GN_VIEW_ORDERED(gn_store_rank_nif, s, err))
        return err;
    gn_probe p = {.env = env, .key = argv[1]};
    gn_node *n = s->root;
    size_t rank = 0;
    int found = 0;
    while (n) {
        int c = gn_cmp(s, &p, n);
        if (c == 0) {
            rank += gn_size(n->left);
            found = 1;
            break;
        }
        if (c < 0) {
            n = n->left;
        } else {
            rank += gn_size(n->left) + 1;
            n = n->right;
        }
    }
    enif_rwlock_runlock(s->lock);
    gn_probe_done(&p);
    return found ? enif_make_tuple2(env, gn_am_ok, enif_make_uint64(env, rank)) : gn_am_error;
}

static gn_node *gn_at(gn_node *n, size_t i)
{
    while (n) {
        size_t l = gn_size(n->left);
        if (i < l) {
            n = n->left;
        } else if (i == l) {
            return n;
        } else {
            i -= l + 1;
            n = n->right;
        }
    }
    return NULL;
}

/* store_at(Store, Index) -> {ok, {K, V}} | error; a negative index counts
 * from the end. */
ERL_NIF_TERM gn_store_at_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    ErlNifSInt64 i;
    if (!enif_get_int64(env, argv[1], &i))
        return enif_make_badarg(env);
    if (!GN_VIEW_ORDERED(gn_store_at_nif, s, err))
        return err;
    int64_t size = (int64_t)gn_size(s->root);
    if (i < 0)
        i += size;
    gn_node *n = (i >= 0 && i < size) ? gn_at(s->root, (size_t)i) : NULL;
    if (n && gn_too_big(gn_entry_cost(n))) {
        enif_rwlock_runlock(s->lock);
        return gn_go_dirty(env, gn_store_at_nif, argc, argv);
    }
    size_t cost = n ? gn_entry_cost(n) : 0;
    ERL_NIF_TERM result = n ? enif_make_tuple2(env, gn_am_ok, gn_entry(env, n)) : gn_am_error;
    enif_rwlock_runlock(s->lock);
    gn_charge(env, cost);
    return result;
}

/* In-order walk over [from, to] (bounds optional), up to `limit` entries,
 * skipping the first `skip`, consed in reverse onto *acc. */
typedef struct gn_walk {
    ErlNifEnv *env;
    const gn_store *s;
    gn_probe *from, *to;
    size_t skip, limit, taken;
    ERL_NIF_TERM acc;
} gn_walk;

static void gn_walk_tree(gn_walk *w, gn_node *n)
{
    while (n && w->taken < w->limit) {
        int after_from = !w->from || gn_cmp(w->s, w->from, n) <= 0;
        int before_to = !w->to || gn_cmp(w->s, w->to, n) >= 0;
        if (w->skip && w->skip >= gn_size(n->left))
            w->skip -= gn_size(n->left); /* a slice skips whole subtrees: O(log n) */
        else if (after_from)
            gn_walk_tree(w, n->left);
        if (after_from && before_to && w->taken < w->limit) {
            if (w->skip)
                w->skip--;
            else {
                w->acc = enif_make_list_cell(w->env, gn_entry(w->env, n), w->acc);
                w->taken++;
            }
        }
        if (!before_to)
            return;
        n = n->right;
    }
}

static ERL_NIF_TERM gn_reverse(ErlNifEnv *env, ERL_NIF_TERM list)
{
    ERL_NIF_TERM out;
    enif_make_reverse_list(env, list, &out);
    return out;
}

/* store_to_list(Store) -> [{K, V}] (dirty) */
ERL_NIF_TERM gn_store_to_list_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!GN_VIEW(gn_store_to_list_nif, s, err))
        return err;
    gn_walk w = {env, s, NULL, NULL, 0, SIZE_MAX, 0, enif_make_list(env, 0)};
    gn_walk_tree(&w, s->root);
    enif_rwlock_runlock(s->lock);
    return gn_reverse(env, w.acc);
}

/* store_range(Store, From, To, Limit | infinity) -> [{K, V}] (dirty)
 * store_range(Store, {index, I}, Count, _) -> slice */
ERL_NIF_TERM gn_store_range_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    ErlNifUInt64 limit = SIZE_MAX;
    const ERL_NIF_TERM *slice;
    int arity;
    ErlNifSInt64 index;
    ErlNifUInt64 count;
    if (enif_get_tuple(env, argv[1], &arity, &slice) && arity == 2 &&
        enif_is_identical(slice[0], gn_am_index)) {
        if (!enif_get_int64(env, slice[1], &index) || !enif_get_uint64(env, argv[2], &count))
            return enif_make_badarg(env);
        if (!GN_VIEW_ORDERED(gn_store_range_nif, s, err))
            return err;
        int64_t size = (int64_t)gn_size(s->root);
        if (index < 0)
            index += size;
        if (index < 0)
            index = 0;
        gn_walk w = {env, s, NULL, NULL, (size_t)index, (size_t)count, 0, enif_make_list(env, 0)};
        gn_walk_tree(&w, s->root);
        enif_rwlock_runlock(s->lock);
        return gn_reverse(env, w.acc);
    }
    if (!enif_is_identical(argv[3], gn_am_infinity) && !enif_get_uint64(env, argv[3], &limit))
        return enif_make_badarg(env);
    if (!GN_VIEW_ORDERED(gn_store_range_nif, s, err))
        return err;
    gn_probe from = {.env = env, .key = argv[1]}, to = {.env = env, .key = argv[2]};
    gn_walk w = {env, s, &from, &to, 0, (size_t)limit, 0, enif_make_list(env, 0)};
    gn_walk_tree(&w, s->root);
    enif_rwlock_runlock(s->lock);
    gn_probe_done(&from);
    gn_probe_done(&to);
    return gn_reverse(env, w.acc);
}

/* store_clear(Store) -> ok. O(1): the entries go to the reaper. */
ERL_NIF_TERM gn_store_clear_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!GN_WRITE(gn_store_clear_nif, s, err))
        return err;
    gn_store_detach(s, 1);
    enif_rwlock_rwunlock(s->lock);
    return gn_am_ok;
}

/* store_put_many(Store, [{K, V}]) -> ok | {error, full} (dirty)
 * All or nothing for the cap: checked before anything is written. */
ERL_NIF_TERM gn_store_put_many_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ERL_NIF_TERM err, head, tail = argv[1];
    gn_store *s;
    unsigned len;
    if (!enif_get_list_length(env, argv[1], &len))
        return enif_make_badarg(env);
    while (enif_get_list_cell(env, tail, &head, &tail)) {
        const ERL_NIF_TERM *kv;
        int arity;
        if (!enif_get_tuple(env, head, &arity, &kv) || arity != 2)
            return enif_make_badarg(env);
    }
    if (!GN_WRITE(gn_store_put_many_nif, s, err))
        return err;
    int64_t now = gn_now_ms();
    gn_purge(s, now, SIZE_MAX);
    if (s->max_size != SIZE_MAX && gn_size(s->root) + len > s->max_size) {
        /* Count the distinct new keys, each once, in a scratch tree keyed
         * like the store: all or nothing. */
        gn_store scratch;
        memset(&scratch, 0, sizeof(scratch));
        scratch.ordered = s->ordered;
        scratch.max_size = SIZE_MAX;
        scratch.arena = enif_alloc_env();
        size_t fresh = 0;
        int oom = !scratch.arena;
        tail = argv[1];
        while (!oom && enif_get_list_cell(env, tail, &head, &tail)) {
            const ERL_NIF_TERM *kv;
            int arity;
            enif_get_tuple(env, head, &arity, &kv);
            gn_probe p = {.env = env, .key = kv[0]};
            if (!gn_find(s, &p) && !gn_find(&scratch, &p)) {
                gn_node *n = gn_node_new(&scratch, env, kv[0], gn_am_nil);
                if (n) {
                    scratch.root = gn_insert(&scratch, scratch.root, n, &p);
                    fresh++;
                } else {
                    oom = 1;
                }
            }
            gn_probe_done(&p);
        }
        gn_tree_free(scratch.root);
        if (scratch.arena)
            enif_free_env(scratch.arena);
        if (oom || gn_size(s->root) + fresh > s->max_size) {
            enif_rwlock_rwunlock(s->lock);
            return oom ? enif_raise_exception(env, gn_am_enomem)
                       : enif_make_tuple2(env, gn_am_error, gn_am_full);
        }
    }
    int ok = 1;
    tail = argv[1];
    while (ok == 1 && enif_get_list_cell(env, tail, &head, &tail)) {
        const ERL_NIF_TERM *kv;
        int arity, fresh;
        enif_get_tuple(env, head, &arity, &kv);
        ok = gn_put_entry(s, env, kv[0], kv[1], 0, 0, &fresh);
    }
    if (gn_arena_bloated(s)) {
        gn_arena_compact(s);
        if (s->hash_grow)
            gn_hash_rebuild(s, gn_hash_cap(gn_size(s->root)));
    }
    enif_rwlock_rwunlock(s->lock);
    return ok == 1 ? gn_am_ok : enif_raise_exception(env, gn_am_enomem);
}

/* store_sweep() -> ok (dirty): purges every store holding expiring entries,
 * and forgets those that hold none any more. Called every second by
 * GenNative.Store.Sweeper. */
ERL_NIF_TERM gn_store_sweep_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)env;
    (void)argc;
    (void)argv;
    size_t n = 0, cap = 16;
    gn_store **todo = gn_alloc(cap * sizeof(*todo));
    if (!todo)
        return enif_raise_exception(env, gn_am_enomem);
    gn_store_shared *sh = gn_shared(env);
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
    int64_t now = gn_now_ms();
    for (size_t i = 0; i < n; i++) {
        gn_store *s = todo[i];
        enif_rwlock_rwlock(s->lock);
        if (!s->deleted) {
            gn_purge(s, now, SIZE_MAX);
            if (gn_arena_bloated(s))
                gn_arena_compact(s);
        }
        int idle = s->deleted || s->heap_len == 0;
        enif_rwlock_rwunlock(s->lock);
        if (idle)
            gn_ttl_list_remove(s);
        enif_release_resource(s);
    }
    gn_free(todo);
    return gn_am_ok;
}

/* ------------------------------------------------------------------------ */
/* Snapshots                                                                 */
/*
 * Format: "GNS2" | type (1 byte: 0 set, 1 ordered_set) | count (8, big
 * endian) | count x (klen (4) | key ETF | vlen (4) | value ETF | time to
 * live left in ms, 0 for none (8)) | CRC32 (4) of everything before it.
 * Entries expired at snapshot time are left out. restore checks all of it, and builds the whole
 * tree, before a store exists: never a half-built store.
 */

/* Filled at load, before any NIF can read it. */
static uint32_t gn_crc_table[256];

static void gn_crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        gn_crc_table[i] = c;
    }
}

static uint32_t gn_crc32(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--)
        c = gn_crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void gn_put_be(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)(v & 0xFF);
}

static uint64_t gn_get_be(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = (v << 8) | p[i];
    return v;
}

#define GN_SNAP_HEADER 13

/* store_snapshot(Store) -> binary() (dirty) */
ERL_NIF_TERM gn_store_snapshot_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ERL_NIF_TERM err, out;
    gn_store *s;
    if (!GN_VIEW(gn_store_snapshot_nif, s, err))
        return err;
    /* Values live as terms: encode them first, then size and write. */
    size_t live = gn_size(s->root), total = GN_SNAP_HEADER + 4, count = 0;
    int64_t now = gn_now_ms();
    gn_node **nodes = gn_alloc((live + 1) * sizeof(*nodes));
    ErlNifBinary *vals = gn_alloc((live + 1) * sizeof(*vals));
    gn_node *stack[128];
    int top = 0, oom = !nodes || !vals;
    for (gn_node *n = oom ? NULL : s->root; n || top;) {
        while (n) {
            stack[top++] = n;
            n = n->left;
        }
        n = stack[--top];
        if (!gn_expired(n, now)) {
            if (!enif_term_to_binary(env, n->value, &vals[count])) {
                oom = 1;
                break;
            }
            nodes[count] = n;
            total += 16 + n->klen + vals[count].size;
            count++;
        }
        n = n->right;
    }
    unsigned char *p = oom ? NULL : enif_make_new_binary(env, total, &out);
    if (p) {
        memcpy(p, "GNS2", 4);
        p[4] = (unsigned char)s->ordered;
        gn_put_be(p + 5, count, 8);
        unsigned char *w = p + GN_SNAP_HEADER;
        for (size_t i = 0; i < count; i++) {
            gn_node *n = nodes[i];
            gn_put_be(w, n->klen, 4);
            memcpy(w + 4, n->kdata, n->klen);
            w += 4 + n->klen;
            gn_put_be(w, vals[i].size, 4);
            memcpy(w + 4, vals[i].data, vals[i].size);
            w += 4 + vals[i].size;
            gn_put_be(w, n->expires ? (uint64_t)(n->expires - now) : 0, 8);
            w += 8;
        }
        gn_put_be(w, gn_crc32(p, total - 4), 4);
    }
    enif_rwlock_runlock(s->lock);
    for (size_t i = 0; i < count; i++)
        enif_release_binary(&vals[i]);
    gn_free(vals);
    gn_free(nodes);
    return p ? out : enif_raise_exception(env, gn_am_enomem);
}

/* A balanced tree of nodes[lo, hi), which are in key order. */
static gn_node *gn_build(gn_node **nodes, size_t lo, size_t hi)
{
    if (lo >= hi)
        return NULL;
    size_t mid = lo + (hi - lo) / 2;
    gn_node *n = nodes[mid];
    n->left = gn_build(nodes, lo, mid);
    n->right = gn_build(nodes, mid + 1, hi);
    gn_update(n);
    return n;
}

/* One entry of a snapshot, as read by the first pass. */
typedef struct gn_snap_entry {
    const unsigned char *k, *v; /* encodings, in the snapshot */
    size_t klen, vlen;
    ERL_NIF_TERM key, value; /* 0 until decoded */
    int64_t ttl;
} gn_snap_entry;

/* Decodes data[0, len) into *t without making any atom: 1 if decoded, 2 if
 * it is valid but names atoms this node may not know (or external funs it
 * lacks), so that only a decoding that may make them will do; 0 if it is
 * invalid (or out of memory). *scratch is a buffer it may grow; marker is
 * the placeholders' (gn_etf_neutralize). */
static int gn_snap_term(ErlNifEnv *env, const unsigned char *data, size_t len, ERL_NIF_TERM *t,
                        ErlNifBinary *scratch, const ErlNifBinary *marker, gn_atom_set *unknown)
{
    if (enif_binary_to_term(env, data, len, t, ERL_NIF_BIN2TERM_SAFE) == len)
        return 1;
    *t = 0;
    size_t used = len;
    int r;
    do {
        if (scratch->size < used && !enif_realloc_binary(scratch, used))
            return 0;
        r = gn_etf_neutralize(env, data, len, marker->data + 1, marker->size - 1, scratch->data,
                              scratch->size, &used, unknown);
    } while (r == 2);
    ERL_NIF_TERM copy;
    if (!r || enif_binary_to_term(env, scratch->data, used > len ? used : len, &copy, 0) != used)
        return 0;
    return 2;
}

/* The first pass over a snapshot's entries (r to end): checks every byte
 * and decodes what it can without making atoms. Returns the entries
 * (gn_alloc), or NULL with *err set: invalid_snapshot, unsafe_snapshot
 * (`safe` and an entry names atoms this node does not know), system_limit
 * (it would make more than `atoms_left` atoms), or an enomem exception. */
static gn_snap_entry *gn_snap_read(ErlNifEnv *env, const unsigned char *r, const unsigned char *end,
                                   uint64_t count, int safe, uint64_t atoms_left, ERL_NIF_TERM *err)
{
    ERL_NIF_TERM invalid = enif_make_tuple2(env, gn_am_error, gn_am_invalid_snapshot);
    /* count comes from the binary: an entry takes at least 16 bytes */
    if (count > (uint64_t)(end - r) / 16) {
        *err = invalid;
        return NULL;
    }
    gn_snap_entry *es = gn_alloc((count + 1) * sizeof(*es));
    ErlNifBinary scratch, marker;
    int scratch_ok = enif_alloc_binary(0, &scratch);
    int marker_ok = enif_term_to_binary(env, enif_make_ref(env), &marker);
    gn_atom_set unknown = {NULL, 0, 0};
    int later = 0;
    if (!es || !scratch_ok || !marker_ok) {
        *err = enif_raise_exception(env, gn_am_enomem);
        goto fail;
    }
    *err = invalid;
    for (uint64_t i = 0; i < count; i++) {
        gn_snap_entry *e = &es[i];
        int rk, rv;
        if (end - r < 4 || (e->klen = gn_get_be(r, 4), (size_t)(end - r - 4) < e->klen))
            goto fail;
        e->k = r + 4;
        r += 4 + e->klen;
        if (end - r < 4 || (e->vlen = gn_get_be(r, 4), (size_t)(end - r - 4) < e->vlen))
            goto fail;
        e->v = r + 4;
        r += 4 + e->vlen;
        if (end - r < 8 || (e->ttl = (int64_t)gn_get_be(r, 8)) < 0)
            goto fail;
        r += 8;
        if (!(rk = gn_snap_term(env, e->k, e->klen, &e->key, &scratch, &marker, &unknown)) ||
            !(rv = gn_snap_term(env, e->v, e->vlen, &e->value, &scratch, &marker, &unknown)))
            goto fail;
        later |= rk == 2 || rv == 2;
    }
    if (r != end)
        goto fail;
    if (later && safe) {
        *err = enif_make_tuple2(env, gn_am_error, gn_am_unsafe_snapshot);
        goto fail;
    }
    if (unknown.count > atoms_left) {
        *err = enif_make_tuple2(env, gn_am_error, gn_am_system_limit);
        goto fail;
    }
    /* Every entry is valid: now, and only now, make the atoms. */
    for (uint64_t i = 0; later && i < count; i++) {
        gn_snap_entry *e = &es[i];
        if ((!e->key && enif_binary_to_term(env, e->k, e->klen, &e->key, 0) != e->klen) ||
            (!e->value && enif_binary_to_term(env, e->v, e->vlen, &e->value, 0) != e->vlen))
            goto fail; /* cannot happen: the copy decoded */
    }
    enif_release_binary(&scratch);
    enif_release_binary(&marker);
    gn_atom_set_free(&unknown);
    return es;

fail:
    if (scratch_ok)
        enif_release_binary(&scratch);
    if (marker_ok)
        enif_release_binary(&marker);
    gn_atom_set_free(&unknown);
    gn_free(es);
    return NULL;
}

/* store_restore(Binary, Name | nil, Access, Lifetime, MaxSize | infinity,
 *               safe | AtomsLeft)
 *   -> {ok, Store} | {error, invalid_snapshot | unsafe_snapshot | system_limit
 *                            | already_exists | full} (dirty)
 * The whole snapshot is checked before any atom is made (a rejected one
 * makes none), and the store is built before it is handed out. */
ERL_NIF_TERM gn_store_restore_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ErlNifBinary bin;
    ErlNifUInt64 atoms_left = 0;
    int safe = enif_is_identical(argv[5], gn_am_safe);
    if (!enif_inspect_binary(env, argv[0], &bin) ||
        (!safe && !enif_get_uint64(env, argv[5], &atoms_left)))
        return enif_make_badarg(env);
    ERL_NIF_TERM invalid = enif_make_tuple2(env, gn_am_error, gn_am_invalid_snapshot);
    if (bin.size < GN_SNAP_HEADER + 4 || memcmp(bin.data, "GNS2", 4) != 0 || bin.data[4] > 1 ||
        gn_crc32(bin.data, bin.size - 4) != (uint32_t)gn_get_be(bin.data + bin.size - 4, 4))
        return invalid;
    uint64_t count = gn_get_be(bin.data + 5, 8);
    ERL_NIF_TERM err;
    gn_snap_entry *es = gn_snap_read(env, bin.data + GN_SNAP_HEADER, bin.data + bin.size - 4, count,
                                     safe, atoms_left, &err);
    if (!es)
        return err;

    /* A new store, even where new/2 would adopt an orphaned named one. */
    if (!enif_is_identical(argv[1], gn_am_nil) && enif_is_atom(env, argv[1])) {
        gn_store *held = gn_name_lookup(gn_shared(env), argv[1]);
        if (held) {
            enif_release_resource(held);
            gn_free(es);
            return enif_make_tuple2(env, gn_am_error, gn_am_already_exists);
        }
    }

    /* Create the store, fill it, and only then hand it out. */
    ERL_NIF_TERM args[5] = {bin.data[4] ? gn_am_ordered_set : gn_am_set, argv[1], argv[2], argv[3],
                            argv[4]};
    (void)argc;
    ERL_NIF_TERM created = gn_store_new_nif(env, 5, args);
    const ERL_NIF_TERM *tuple;
    int arity;
    gn_store *s;
    if (!enif_get_tuple(env, created, &arity, &tuple) || !enif_is_identical(tuple[0], gn_am_ok)) {
        gn_free(es);
        return created; /* already_exists, or an exception */
    }
    enif_get_resource(env, tuple[1], gn_store_rtype, (void **)&s);
    enif_rwlock_rwlock(s->lock);
    int ok = 1, ttl_pending = 0;
    size_t nsorted = 0;
    gn_node **sorted = gn_alloc(count * sizeof(gn_node *) + sizeof(gn_node *));
    for (uint64_t i = 0; ok && i < count; i++) {
        gn_snap_entry *e = &es[i];
        gn_probe p = {.env = env, .key = e->key};
        /* A snapshot lists its keys in order: collect them, to build a
         * balanced tree in O(n) at the end; anything else is inserted. */
        if (sorted && (!nsorted || gn_cmp(s, &p, sorted[nsorted - 1]) > 0) &&
            nsorted < s->max_size) {
            gn_node *n = gn_node_from_etf(s, env, e->key, e->k, e->klen, e->value);
            if (!n) {
                ok = 0;
            } else {
                sorted[nsorted++] = n;
                gn_account_add(s, n);
                if (e->ttl)
                    ttl_pending = 1;
                n->expires = e->ttl ? gn_now_ms() + e->ttl : 0;
            }
            gn_probe_done(&p);
            continue;
        }
        if (sorted) {
            /* out of order: everything so far goes into the tree */
            s->root = gn_build(sorted, 0, nsorted);
            if (!s->ordered)
                gn_hash_rebuild(s, gn_hash_cap(nsorted));
            for (size_t j = 0; j < nsorted; j++)
                if (sorted[j]->expires) {
                    int64_t ex = sorted[j]->expires;
                    sorted[j]->expires = 0;
                    ok = ok && gn_set_expiry(s, sorted[j], ex);
                }
            gn_free(sorted);
            sorted = NULL;
        }
        gn_node *n = gn_find(s, &p);
        if (n) {
            /* a repeated key: the later entry wins, as with put */
            ok = gn_node_rekey(s, env, n, e->key) && gn_node_set(s, env, n, e->value);
        } else if (gn_size(s->root) >= s->max_size) {
            gn_probe_done(&p);
            enif_rwlock_rwunlock(s->lock);
            gn_store_delete_nif(env, 1, &tuple[1]);
            gn_free(es);
            return enif_make_tuple2(env, gn_am_error, gn_am_full);
        } else if ((n = gn_node_from_etf(s, env, e->key, e->k, e->klen, e->value))) {
            gn_link(s, n, &p);
            gn_account_add(s, n);
        } else {
            ok = 0;
        }
        if (ok && n && e->ttl && !gn_set_expiry(s, n, gn_now_ms() + e->ttl))
            ok = 0;
        gn_probe_done(&p);
    }
    gn_free(es);
    if (sorted) {
        s->root = gn_build(sorted, 0, nsorted);
        if (!s->ordered)
            gn_hash_rebuild(s, gn_hash_cap(nsorted));
        for (size_t j = 0; ttl_pending && j < nsorted; j++)
            if (sorted[j]->expires) {
                int64_t ex = sorted[j]->expires;
                sorted[j]->expires = 0;
                ok = ok && gn_set_expiry(s, sorted[j], ex);
            }
        gn_free(sorted);
    }
    int ttl = s->heap_len != 0;
    enif_rwlock_rwunlock(s->lock);
    if (ok && ttl)
        gn_ttl_list_add(s);
    if (!ok) {
        /* out of memory: every entry was valid */
        gn_store_delete_nif(env, 1, &tuple[1]);
        return enif_raise_exception(env, gn_am_enomem);
    }
    return created;
}
