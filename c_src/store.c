/*
 * The native state store's core: entries, an ordered_set's AVL tree and a
 * set's hash table, the arena that holds the entries' terms and its accounting, and
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
 * on OTP 25: a 40-byte set entry takes as much as a 48-byte one, some 64
 * bytes, where a 56-byte ordered_set entry takes 72). */
#define GN_BLOCK_MIN 64

/* What an allocation of `size` bytes takes, about: blocks are 8-byte
 * aligned, carry a header, and are never below GN_BLOCK_MIN. */
static size_t gn_block(size_t size)
{
    size_t block = ((size + 7) & ~(size_t)7) + GN_BLOCK_OVERHEAD;
    return block < GN_BLOCK_MIN ? GN_BLOCK_MIN : block;
}

static size_t gn_node_size(const gn_store *s)
{
    return s->ordered ? sizeof(gn_node) : GN_SET_NODE_SIZE;
}

/* The bytes an entry's allocations take, and the off-heap binaries its
 * terms reference. */
static size_t gn_node_bytes(const gn_store *s, const gn_node *n)
{
    size_t bytes = gn_block(gn_node_size(s));
    if (n->ext)
        bytes += gn_block(sizeof(gn_ext)) + n->ext->kbin + n->ext->vbin;
    return bytes;
}

void gn_node_free(gn_node *n)
{
    gn_free(n->ext);
    gn_free(n);
}

/* Sets an entry's word counts; a count of GN_WORDS_EXT or more needs the
 * entry's gn_ext. */
static void gn_set_kwords(gn_node *n, size_t words)
{
    if (words >= GN_WORDS_EXT) {
        n->ext->kwords = words;
        n->kw = GN_WORDS_EXT;
    } else {
        n->kw = (uint16_t)words;
    }
}

static void gn_set_vwords(gn_node *n, size_t words)
{
    if (words >= GN_WORDS_EXT) {
        n->ext->vwords = words;
        n->vw = GN_WORDS_EXT;
    } else {
        n->vw = (uint16_t)words;
    }
}

void gn_arena_charge(gn_store *s, size_t words)
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
    s->memory += gn_node_bytes(s, n);
    s->live_words += gn_kwords(n) + gn_vwords(n);
}

/* n leaves the store: its terms stay in the arena, dead. */
static void gn_account_remove(gn_store *s, const gn_node *n)
{
    s->memory -= gn_node_bytes(s, n);
    s->live_words -= gn_kwords(n) + gn_vwords(n);
    if (n->ext)
        s->dead_bin += n->ext->kbin + n->ext->vbin;
}

static gn_ext *gn_ext_alloc(gn_node *n)
{
    gn_ext *e = gn_alloc(sizeof(*e));
    if (e) {
        memset(e, 0, sizeof(*e));
        e->node = n;
        e->heap_ix = SIZE_MAX;
    }
    return e;
}

gn_ext *gn_ext_need(gn_store *s, gn_node *n)
{
    if (n->ext)
        return n->ext;
    gn_ext *e = gn_ext_alloc(n);
    if (e) {
        n->ext = e;
        s->memory += gn_block(sizeof(gn_ext));
    }
    return e;
}

void gn_ext_trim(gn_store *s, gn_node *n)
{
    gn_ext *e = n->ext;
    if (!e || e->expires || e->heap_ix != SIZE_MAX || e->kbin || e->vbin || n->kw == GN_WORDS_EXT ||
        n->vw == GN_WORDS_EXT)
        return;
    gn_free(e);
    n->ext = NULL;
    s->memory -= gn_block(sizeof(gn_ext));
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

static void gn_tree_free(gn_node *n)
{
    while (n) {
        gn_tree_free(n->left);
        gn_node *right = n->right;
        gn_node_free(n);
        n = right;
    }
}

void gn_entries_free(gn_node *root, gn_node **htab, size_t hcap)
{
    gn_tree_free(root);
    for (size_t b = 0; htab && b < hcap; b++)
        for (gn_node *n = htab[b], *next; n; n = next) {
            next = n->hnext;
            gn_node_free(n);
        }
    gn_free(htab);
}

typedef struct gn_detached {
    gn_node *root;
    gn_node **htab;
    size_t hcap;
    ErlNifEnv *arena;
} gn_detached;

static void gn_detached_free(void *arg)
{
    gn_detached *d = arg;
    gn_entries_free(d->root, d->htab, d->hcap);
    if (d->arena)
        enif_free_env(d->arena);
    gn_free(d);
}

/* Hands a store's entries and arena to the reaper in O(1); frees them at
 * once if even that small allocation fails, so nothing leaks. */
static void gn_reap_entries(gn_node *root, gn_node **htab, size_t hcap, ErlNifEnv *arena)
{
    if (!root && !htab && !arena)
        return;
    gn_detached *d = gn_alloc(sizeof(*d));
    if (!d) {
        gn_entries_free(root, htab, hcap);
        if (arena)
            enif_free_env(arena);
        return;
    }
    d->root = root;
    d->htab = htab;
    d->hcap = hcap;
    d->arena = arena;
    gn_reap(gn_detached_free, d);
}

void gn_store_detach(gn_store *s, int reuse)
{
    gn_reap_entries(s->root, s->htab, s->hcap, s->arena);
    s->root = NULL;
    s->htab = NULL;
    s->hcap = s->count = 0;
    s->hbits = 0;
    s->hash_grow = 0;
    s->arena = reuse ? enif_alloc_env() : NULL;
    s->memory = s->live_words = s->arena_bytes = s->dead_bin = s->frag_left = 0;
    gn_free(s->heap);
    s->heap = NULL;
    s->heap_len = s->heap_cap = 0;
}

/* ------------------------------------------------------------------------ */
/* The hash table (sets)                                                     */
/*
 * A key's chain is picked by the high bits of its hash, and each chain is
 * kept sorted by hash (then by term order, then by encoding, for the rare
 * keys whose hashes tie): walking the chains in turn visits the entries in
 * an order that depends only on what the set holds, whatever the table's
 * size or the order of the puts. A set's to_list and snapshot are thus
 * the same for the same entries, and a restored set gives back the very
 * snapshot it was made from.
 */

static inline uint32_t gn_probe_hash(gn_probe *p)
{
    if (!p->hashed) {
        p->hash = (uint32_t)enif_hash(ERL_NIF_INTERNAL_HASH, p->key, 0);
        p->hashed = 1;
    }
    return p->hash;
}

static inline size_t gn_chain(const gn_store *s, uint32_t hash)
{
    return hash >> (32 - s->hbits);
}

static int gn_log2(size_t cap)
{
    int bits = 0;
    while (((size_t)1 << bits) < cap)
        bits++;
    return bits;
}

void gn_hash_resize(gn_store *s, size_t cap)
{
    gn_node **tab = gn_alloc(cap * sizeof(*tab));
    if (!tab)
        return; /* keep the old table: longer chains, still right */
    memset(tab, 0, cap * sizeof(*tab));
    int bits = gn_log2(cap);
    /* in order, pushed onto their new chains (reversed), then each chain
     * reversed back */
    for (size_t b = 0; b < s->hcap; b++)
        for (gn_node *n = s->htab[b], *next; n; n = next) {
            next = n->hnext;
            size_t nb = n->hash >> (32 - bits);
            n->hnext = tab[nb];
            tab[nb] = n;
        }
    for (size_t b = 0; b < cap; b++) {
        gn_node *rev = NULL;
        for (gn_node *n = tab[b], *next; n; n = next) {
            next = n->hnext;
            n->hnext = rev;
            rev = n;
        }
        tab[b] = rev;
    }
    gn_free(s->htab);
    s->htab = tab;
    s->hcap = cap;
    s->hbits = bits;
    s->hash_grow = 0;
}

#define GN_HASH_INLINE 4096 /* chains a regular NIF may rehash */

/* Chains for `entries`: one per one or two entries (a table grows 4x once
 * past two per chain, so a set runs at 0.5 to 2 per chain; each chain is
 * sorted, so a miss stops early). */
size_t gn_hash_cap(size_t entries)
{
    size_t cap = 64;
    while (2 * cap < entries && cap < ((size_t)1 << 31))
        cap *= 2;
    return cap;
}

/* Orders two keys whose hashes tie: by term order, then by encoding (1
 * and 1.0). */
static int gn_tie(gn_store *s, ERL_NIF_TERM a, ERL_NIF_TERM b)
{
    int c = enif_compare(a, b);
    if (c)
        return c;
    ErlNifBinary ea, eb;
    if (!enif_term_to_binary(s->arena, a, &ea))
        return 0;
    if (!enif_term_to_binary(s->arena, b, &eb)) {
        enif_release_binary(&ea);
        return 0;
    }
    size_t len = ea.size < eb.size ? ea.size : eb.size;
    c = memcmp(ea.data, eb.data, len);
    if (c == 0)
        c = ea.size < eb.size ? -1 : ea.size > eb.size;
    enif_release_binary(&ea);
    enif_release_binary(&eb);
    return c;
}

static int gn_hash_add(gn_store *s, gn_node *n, gn_probe *p)
{
    if (!s->htab) {
        gn_hash_resize(s, 64);
        if (!s->htab)
            return 0;
    }
    uint32_t h = n->hash = gn_probe_hash(p);
    gn_node **at = &s->htab[gn_chain(s, h)];
    while (*at && ((*at)->hash < h || ((*at)->hash == h && gn_tie(s, (*at)->key, n->key) < 0)))
        at = &(*at)->hnext;
    n->hnext = *at;
    *at = n;
    if (s->count + 1 > 2 * s->hcap) {
        /* a big table grows on a dirty scheduler (the compaction NIF); till
         * then its chains grow longer */
        if (s->hcap * 4 <= GN_HASH_INLINE || enif_thread_type() != ERL_NIF_THR_NORMAL_SCHEDULER)
            gn_hash_resize(s, s->hcap * 4);
        else
            s->hash_grow = 1;
    }
    return 1;
}

/* Unlinks n from its chain. */
static void gn_hash_del(gn_store *s, gn_node *n)
{
    for (gn_node **p = &s->htab[gn_chain(s, n->hash)]; *p; p = &(*p)->hnext)
        if (*p == n) {
            *p = n->hnext;
            return;
        }
}

/* ------------------------------------------------------------------------ */
/* Finding, linking and unlinking                                            */

gn_node *gn_find(const gn_store *s, gn_probe *p)
{
    if (!s->ordered) {
        if (!s->htab)
            return NULL;
        uint32_t h = gn_probe_hash(p);
        for (gn_node *n = s->htab[gn_chain(s, h)]; n && n->hash <= h; n = n->hnext)
            if (n->hash == h && enif_is_identical(n->key, p->key))
                return n;
        return NULL;
    }
    gn_node *n = s->root;
    while (n) {
        int c = enif_compare(p->key, n->key);
        if (c == 0)
            return n;
        n = c < 0 ? n->left : n->right;
    }
    return NULL;
}

/* Inserts `node` (its key not in the tree) into the subtree `n`. */
static gn_node *gn_insert(gn_node *n, gn_node *node, gn_probe *p)
{
    if (!n)
        return node;
    if (enif_compare(p->key, n->key) < 0)
        n->left = gn_insert(n->left, node, p);
    else
        n->right = gn_insert(n->right, node, p);
    return gn_balance(n);
}

/* Unlinks the entry matching p into *out. */
static gn_node *gn_remove(gn_node *n, gn_probe *p, gn_node **out)
{
    if (!n)
        return NULL;
    int c = enif_compare(p->key, n->key);
    if (c < 0) {
        n->left = gn_remove(n->left, p, out);
    } else if (c > 0) {
        n->right = gn_remove(n->right, p, out);
    } else {
        *out = n;
        return gn_remove_root(n);
    }
    return gn_balance(n);
}

int gn_link(gn_store *s, gn_node *n, gn_probe *p)
{
    if (s->ordered)
        s->root = gn_insert(s->root, n, p);
    else if (!gn_hash_add(s, n, p))
        return 0;
    s->count++;
    return 1;
}

/* Takes a linked entry out of the store's books. */
static void gn_unlinked(gn_store *s, gn_node *n)
{
    s->count--;
    gn_set_expiry(s, n, 0);
    gn_account_remove(s, n);
}

gn_node *gn_unlink(gn_store *s, gn_probe *p)
{
    gn_node *out = NULL;
    if (s->ordered) {
        s->root = gn_remove(s->root, p, &out);
    } else if ((out = gn_find(s, p))) {
        gn_hash_del(s, out);
    }
    if (out)
        gn_unlinked(s, out);
    return out;
}

/* Removes a linked entry. */
static void gn_unlink_node(gn_store *s, gn_node *n)
{
    if (s->ordered) {
        gn_probe p = {.key = n->key};
        gn_node *out = NULL;
        s->root = gn_remove(s->root, &p, &out);
    } else {
        gn_hash_del(s, n);
    }
    gn_unlinked(s, n);
}

/* ------------------------------------------------------------------------ */
/* Walking                                                                   */

void gn_iter_start(gn_iter *it, const gn_store *s)
{
    it->s = s;
    it->n = s->ordered ? s->root : NULL;
    it->bucket = 0;
    it->top = 0;
}

gn_node *gn_iter_next(gn_iter *it)
{
    const gn_store *s = it->s;
    if (!s->ordered) {
        while (!it->n) {
            if (it->bucket >= s->hcap)
                return NULL;
            it->n = s->htab[it->bucket++];
        }
        gn_node *n = it->n;
        it->n = n->hnext;
        return n;
    }
    while (it->n) {
        it->stack[it->top++] = it->n;
        it->n = it->n->left;
    }
    if (!it->top)
        return NULL;
    gn_node *n = it->stack[--it->top];
    it->n = n->right;
    return n;
}

/* ------------------------------------------------------------------------ */
/* Entries                                                                   */

/* Sizes key and value (an entry whose terms reference off-heap binaries
 * gets a gn_ext), and copies them into the arena, but for a term already
 * there (kin, vin: decoded into the arena, and charged to it, by a
 * restore). A size given is the term's (else NULL). 0 when out of memory
 * (nothing copied). */
static int gn_node_terms(gn_store *s, ErlNifEnv *env, gn_node *n, ERL_NIF_TERM key,
                         const gn_termsize *ksize, int kin, ERL_NIF_TERM value,
                         const gn_termsize *vsize, int vin)
{
    size_t kbin = ksize ? ksize->bin : 0, vbin = vsize ? vsize->bin : 0;
    size_t kwords = ksize ? ksize->words : gn_term_words(env, key, &kbin, SIZE_MAX, 0);
    size_t vwords = vsize ? vsize->words : gn_term_words(env, value, &vbin, SIZE_MAX, 0);
    if ((kbin || vbin || kwords >= GN_WORDS_EXT || vwords >= GN_WORDS_EXT) &&
        !(n->ext = gn_ext_alloc(n)))
        return 0;
    if (n->ext) {
        n->ext->kbin = kbin;
        n->ext->vbin = vbin;
    }
    gn_set_kwords(n, kwords);
    gn_set_vwords(n, vwords);
    n->key = kin ? key : enif_make_copy(s->arena, key);
    if (!kin)
        gn_arena_charge(s, kwords);
    n->value = vin ? value : enif_make_copy(s->arena, value);
    if (!vin)
        gn_arena_charge(s, vwords);
    return 1;
}

gn_node *gn_node_make(gn_store *s, ErlNifEnv *env, ERL_NIF_TERM key, const gn_termsize *ksize,
                      int kin, ERL_NIF_TERM value, const gn_termsize *vsize, int vin)
{
    gn_node *n = gn_alloc(gn_node_size(s));
    if (!n)
        return NULL;
    n->ext = NULL;
    if (s->ordered) {
        n->left = n->right = NULL;
        n->size = 1;
        n->height = 1;
    } else {
        n->hnext = NULL;
        n->hash = 0;
    }
    if (!gn_node_terms(s, env, n, key, ksize, kin, value, vsize, vin)) {
        gn_free(n);
        return NULL;
    }
    return n;
}

/* gn_node_new, with the value's size when known (else NULL). */
static gn_node *gn_node_new_sized(gn_store *s, ErlNifEnv *env, ERL_NIF_TERM key, ERL_NIF_TERM value,
                                  const gn_termsize *vsize)
{
    return gn_node_make(s, env, key, NULL, 0, value, vsize, 0);
}

gn_node *gn_node_new(gn_store *s, ErlNifEnv *env, ERL_NIF_TERM key, ERL_NIF_TERM value)
{
    return gn_node_new_sized(s, env, key, value, NULL);
}

/* Replaces an entry's key (is_key) or value with `term`, of `words` heap
 * words referencing `bin` bytes of off-heap binaries. The old term stays in
 * the arena, dead, until it is compacted. Returns 0 when out of memory. */
static int gn_node_replace(gn_store *s, gn_node *n, int is_key, ERL_NIF_TERM term, size_t words,
                           size_t bin)
{
    if ((bin || words >= GN_WORDS_EXT) && !gn_ext_need(s, n))
        return 0;
    s->live_words -= is_key ? gn_kwords(n) : gn_vwords(n);
    if (n->ext) {
        size_t *old = is_key ? &n->ext->kbin : &n->ext->vbin;
        s->memory -= *old;
        s->dead_bin += *old;
        *old = bin;
        s->memory += bin;
    }
    if (is_key)
        gn_set_kwords(n, words);
    else
        gn_set_vwords(n, words);
    gn_ext_trim(s, n);
    ERL_NIF_TERM copy = enif_make_copy(s->arena, term);
    if (is_key)
        n->key = copy;
    else
        n->value = copy;
    gn_arena_charge(s, words);
    s->live_words += words;
    return 1;
}

/* gn_node_set, with the value's size when known (else NULL). */
static int gn_node_set_sized(gn_store *s, ErlNifEnv *env, gn_node *n, ERL_NIF_TERM value,
                             const gn_termsize *vsize)
{
    size_t vbin = vsize ? vsize->bin : 0;
    size_t vwords = vsize ? vsize->words : gn_term_words(env, value, &vbin, SIZE_MAX, 0);
    return gn_node_replace(s, n, 0, value, vwords, vbin);
}

int gn_node_set(gn_store *s, ErlNifEnv *env, gn_node *n, ERL_NIF_TERM value)
{
    return gn_node_set_sized(s, env, n, value, NULL);
}

/* Whether `t` holds a float (or a map: not looked into), where terms that
 * are =:= may still differ (0.0 and -0.0). */
static int gn_has_float(ErlNifEnv *env, ERL_NIF_TERM t, int depth)
{
    const ERL_NIF_TERM *elems;
    int arity;
    ERL_NIF_TERM head;
    if (depth > 64)
        return 1;
    switch (enif_term_type(env, t)) {
    case ERL_NIF_TERM_TYPE_FLOAT:
    case ERL_NIF_TERM_TYPE_MAP:
        return 1;
    case ERL_NIF_TERM_TYPE_TUPLE:
        enif_get_tuple(env, t, &arity, &elems);
        for (int i = 0; i < arity; i++)
            if (gn_has_float(env, elems[i], depth + 1))
                return 1;
        return 0;
    case ERL_NIF_TERM_TYPE_LIST:
        while (enif_get_list_cell(env, t, &head, &t))
            if (gn_has_float(env, head, depth + 1))
                return 1;
        return !enif_is_empty_list(env, t) && gn_has_float(env, t, depth + 1);
    default:
        return 0;
    }
}

/* Gives an entry the key as last put, as ETS does: equal keys (1 and 1.0
 * in an ordered_set, 0.0 and -0.0) keep their place but take the new
 * term. Identical terms without floats are the same term: nothing to do.
 * A set's hash stays (the internal hash hashes =:= terms alike). Returns
 * 0 when out of memory. */
int gn_node_rekey(gn_store *s, ErlNifEnv *env, gn_node *n, ERL_NIF_TERM key)
{
    if (enif_is_identical(n->key, key) && !gn_has_float(env, key, 0))
        return 1;
    size_t kbin = 0;
    size_t kwords = gn_term_words(env, key, &kbin, SIZE_MAX, 0);
    return gn_node_replace(s, n, 1, key, kwords, kbin);
}

gn_node *gn_find_live(gn_store *s, gn_probe *p)
{
    gn_node *n = gn_find(s, p);
    if (n && n->ext && gn_expired(n, gn_now_ms())) {
        gn_unlink_node(s, n);
        gn_node_free(n);
        n = NULL;
    }
    return n;
}

/* What an ordered_set's put looks for, or makes, on its way down. */
typedef struct gn_upsert_ctx {
    gn_store *s;
    ErlNifEnv *env;
    ERL_NIF_TERM key, value;
    const gn_termsize *vsize;
    gn_node *found; /* the entry with an equal key */
    gn_node *made;  /* or the new one, at its leaf */
} gn_upsert_ctx;

/* One descent: finds the entry for the key, or makes and inserts a new one
 * where the key belongs (no entry either way: out of memory). A subtree
 * that did not change is not rebalanced. */
static gn_node *gn_upsert(gn_upsert_ctx *c, gn_node *n)
{
    if (!n)
        return (c->made = gn_node_new_sized(c->s, c->env, c->key, c->value, c->vsize));
    int cmp = enif_compare(c->key, n->key);
    if (cmp == 0) {
        c->found = n;
        return n;
    }
    if (cmp < 0)
        n->left = gn_upsert(c, n->left);
    else
        n->right = gn_upsert(c, n->right);
    return c->made ? gn_balance(n) : n;
}

/* Updates an existing entry's key, value and expiry, as a put. */
static int gn_put_over(gn_store *s, ErlNifEnv *env, gn_node *n, ERL_NIF_TERM key,
                       ERL_NIF_TERM value, const gn_termsize *vsize, int64_t expires)
{
    return gn_node_rekey(s, env, n, key) && gn_node_set_sized(s, env, n, value, vsize) &&
           gn_set_expiry(s, n, expires);
}

int gn_put_entry(gn_store *s, ErlNifEnv *env, ERL_NIF_TERM key, ERL_NIF_TERM value,
                 const gn_termsize *vsize, int64_t expires, int put_new, int *fresh)
{
    int ok = 1;
    if (s->ordered && s->count < s->max_size) {
        /* room for one more: find or insert in one descent */
        gn_upsert_ctx c = {s, env, key, value, vsize, NULL, NULL};
        s->root = gn_upsert(&c, s->root);
        if (c.made) {
            *fresh = 1;
            s->count++;
            gn_account_add(s, c.made);
            if (!gn_set_expiry(s, c.made, expires)) {
                gn_unlink_node(s, c.made);
                gn_node_free(c.made);
                ok = 0;
            }
        } else if (c.found) {
            /* an expired entry is as good as none: it takes the put */
            *fresh = c.found->ext && gn_expired(c.found, gn_now_ms());
            if (*fresh || !put_new)
                ok = gn_put_over(s, env, c.found, key, value, vsize, expires);
        } else {
            ok = 0;
        }
        if (ok == 1 && expires)
            gn_ttl_list_add(s);
        return ok;
    }
    gn_probe p = {.key = key};
    gn_node *n = gn_find_live(s, &p);
    *fresh = !n;
    if (n) {
        if (!put_new)
            ok = gn_put_over(s, env, n, key, value, vsize, expires);
    } else if (s->count >= s->max_size &&
               (gn_purge(s, gn_now_ms(), GN_PURGE_INLINE), s->count >= s->max_size)) {
        /* full, counting only live entries (expired ones were purged) */
        ok = -1;
    } else if ((n = gn_node_new_sized(s, env, key, value, vsize))) {
        if (!gn_link(s, n, &p)) {
            gn_node_free(n);
            ok = 0;
        } else {
            gn_account_add(s, n);
            if (!gn_set_expiry(s, n, expires)) {
                gn_unlink_node(s, n);
                gn_node_free(n);
                ok = 0;
            }
        }
    } else {
        ok = 0;
    }
    if (ok == 1 && expires)
        gn_ttl_list_add(s);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* Expired entries                                                           */

size_t gn_purge(gn_store *s, int64_t now, size_t max)
{
    while (s->heap_len && s->heap[0]->expires <= now) {
        if (max-- == 0)
            return 1;
        gn_node *n = s->heap[0]->node;
        gn_unlink_node(s, n);
        gn_node_free(n);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Arena compaction                                                          */

/* Rebuilds the arena from the live entries, and resizes what a grown or
 * shrunken store needs resized. O(n): only reached from dirty NIFs or
 * small stores. */
void gn_arena_compact(gn_store *s)
{
    ErlNifEnv *fresh = enif_alloc_env();
    if (!fresh)
        return;
    s->arena_bytes = s->frag_left = s->dead_bin = 0;
    gn_iter it;
    gn_iter_start(&it, s);
    for (gn_node *n; (n = gn_iter_next(&it));) {
        n->key = enif_make_copy(fresh, n->key);
        gn_arena_charge(s, gn_kwords(n));
        n->value = enif_make_copy(fresh, n->value);
        gn_arena_charge(s, gn_vwords(n));
    }
    enif_free_env(s->arena);
    s->arena = fresh;
    if (!s->ordered && s->htab && s->count == 0) {
        gn_free(s->htab);
        s->htab = NULL;
        s->hcap = 0;
        s->hbits = 0;
        s->hash_grow = 0;
    } else if (!s->ordered && s->htab &&
               (s->hash_grow || (s->hcap > 64 && s->count * 8 < s->hcap))) {
        gn_hash_resize(s, gn_hash_cap(s->count));
    }
    if (s->heap_cap > 64 && s->heap_len * 4 < s->heap_cap) {
        size_t cap = s->heap_len ? 2 * s->heap_len : 0;
        gn_ext **h = cap ? gn_alloc(cap * sizeof(*h)) : NULL;
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
    return s->count <= GN_COMPACT_INLINE &&
           s->live_words * sizeof(ERL_NIF_TERM) <= GN_COMPACT_INLINE_BYTES;
}

/* Once the arena's dead bytes exceed the live ones (and the floor), it is
 * rebuilt from the live entries; or a big set's hash table is due to grow. */
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
    return sizeof(gn_store) + gn_rw_bytes() + s->memory + s->arena_bytes + s->dead_bin +
           (s->hcap + s->heap_cap) * sizeof(void *) + 3 * GN_BLOCK_OVERHEAD;
}

/* ------------------------------------------------------------------------ */
/* Bulk building                                                             */

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
