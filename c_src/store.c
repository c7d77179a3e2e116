/*
 * The native state store's core: entries, the AVL tree and a set's hash
 * index, the arena that holds the entries' terms and its accounting, and
 * purging expired entries. No NIFs here (store_nif.c and its siblings),
 * and no locking: every function expects the caller to hold the store's
 * lock (shared to read, exclusive to change anything), except
 * gn_reap_tree, which works on what no store holds any more. See
 * store_impl.h for the design, the locks and the other files.
 */
#include <string.h>

#include "store_impl.h"
#include "store_ttl.h"

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

void gn_node_free(gn_node *n)
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

void gn_account_add(gn_store *s, const gn_node *n)
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
size_t gn_term_words(ErlNifEnv *env, ERL_NIF_TERM t, size_t *bin, size_t limit, int depth)
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

/* ------------------------------------------------------------------------ */
/* Freeing                                                                   */

void gn_tree_free(gn_node *n)
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
void gn_reap_tree(gn_node *root, ErlNifEnv *arena)
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
void gn_store_detach(gn_store *s, int reuse)
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

/* ------------------------------------------------------------------------ */
/* The tree and the hash index                                               */

int gn_cmp(const gn_store *s, gn_probe *p, const gn_node *n)
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

void gn_probe_done(gn_probe *p)
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
void gn_hash_rebuild(gn_store *s, size_t cap)
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

size_t gn_hash_cap(size_t entries)
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

gn_node *gn_find(const gn_store *s, gn_probe *p)
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
gn_node *gn_insert(const gn_store *s, gn_node *n, gn_node *node, gn_probe *p)
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
void gn_link(gn_store *s, gn_node *n, gn_probe *p)
{
    s->root = gn_insert(s, s->root, n, p);
    gn_hash_add(s, n);
}

/* Removes the entry for key, if any; returns it, to be freed after the
 * value is read. Call with the write lock held. */
gn_node *gn_unlink(gn_store *s, gn_probe *p)
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

/* ------------------------------------------------------------------------ */
/* Entries                                                                   */

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
gn_node *gn_node_new(gn_store *s, ErlNifEnv *env, ERL_NIF_TERM key, ERL_NIF_TERM value)
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
gn_node *gn_node_from_etf(gn_store *s, ErlNifEnv *env, ERL_NIF_TERM key, const unsigned char *k,
                          size_t klen, ERL_NIF_TERM value)
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
int gn_node_set(gn_store *s, ErlNifEnv *env, gn_node *n, ERL_NIF_TERM value)
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
int gn_node_rekey(gn_store *s, ErlNifEnv *env, gn_node *n, ERL_NIF_TERM key)
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
gn_node *gn_find_live(gn_store *s, gn_probe *p)
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
int gn_put_entry(gn_store *s, ErlNifEnv *env, ERL_NIF_TERM key, ERL_NIF_TERM value, int64_t expires,
                 int put_new, int *fresh)
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

/* ------------------------------------------------------------------------ */
/* Expired entries                                                           */

/* Removes up to `max` expired entries; returns how many expired remain. */
size_t gn_purge(gn_store *s, int64_t now, size_t max)
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

/* ------------------------------------------------------------------------ */
/* Arena compaction                                                          */

/* Once removed keys outnumber live ones in the arena, rebuild it from the
 * encoded keys. O(n): only reached from dirty NIFs or small stores. */
void gn_arena_compact(gn_store *s)
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
int gn_arena_bloated(const gn_store *s)
{
    size_t live = s->live_words * sizeof(ERL_NIF_TERM) + s->memory;
    return gn_garbage(s) > live + GN_GARBAGE_FLOOR || s->hash_grow;
}

/* At the end of a write, with the write lock still held: once the arena is
 * mostly garbage, compacts it inline for a small store and returns 0; for a
 * big one returns 1, and the write's result goes back through a dirty
 * compaction (gn_compact_later, in store_nif.c) once the lock is
 * released. Holding on to the lock, rather than taking it again, means no
 * regular NIF ever waits for it here. */
int gn_write_compact(gn_store *s)
{
    if (!gn_arena_bloated(s))
        return 0;
    if (!gn_compact_inline(s))
        return 1;
    gn_arena_compact(s);
    return 0;
}

/* The bytes the store holds, as the VM would count them (see Accounting). */
size_t gn_store_memory(const gn_store *s)
{
    return sizeof(gn_store) + s->memory + s->arena_bytes + s->dead_bin +
           (s->hcap + s->heap_cap) * sizeof(void *) + 2 * GN_BLOCK_OVERHEAD;
}

/* ------------------------------------------------------------------------ */
/* Bulk building                                                             */

/* A balanced tree of nodes[lo, hi), which are in key order. */
gn_node *gn_build(gn_node **nodes, size_t lo, size_t hi)
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
