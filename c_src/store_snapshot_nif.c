/*
 * Store snapshots: store_snapshot/1 writes a store's live entries as a
 * GNS2 binary, and store_restore/6 builds a new store from one. The byte
 * format, its CRC and framing are in snapshot.c; this file holds what
 * needs the VM: encoding keys and values (etf_encode.c, straight into the
 * snapshot), and decoding a snapshot's terms without making atoms until
 * every byte of it has been checked. Most terms are decoded straight into
 * the new store's arena (etf_decode.c); the rest, by
 * enif_binary_to_term into the caller's environment, from where they are
 * copied (etf_scan.c when they name atoms this node does not know).
 *
 * Locking: a snapshot holds the store's read lock (GN_VIEW) while it
 * writes. A restore checks and decodes the whole binary with no lock held,
 * then fills a store it has just created, holding its write lock, before
 * anyone else can see it; the sweep list is joined after the lock is
 * released.
 */
#include <string.h>

#include "etf_decode.h"
#include "etf_encode.h"
#include "etf_scan.h"
#include "snapshot.h"
#include "store_access.h"
#include "store_names.h"
#include "store_ttl.h"

/*
 * Format: see snapshot.h. Entries expired at snapshot time are left out.
 * restore checks all of it, and builds the whole tree, before a store
 * exists: never a half-built store.
 */

/* Writes a 4-byte length, then 131 and t's encoding, and patches the
 * length in. */
static void gn_snap_put_term(ErlNifEnv *env, ERL_NIF_TERM t, gn_etf_out *out)
{
    unsigned char *w = gn_etf_reserve(out, 5);
    if (!w)
        return;
    size_t at = out->len;
    w[4] = 131;
    out->len += 5;
    if (gn_etf_encode(env, t, out)) {
        size_t len = out->len - at - 4;
        if (len > UINT32_MAX)
            out->ok = 0;
        else
            gn_be_put(out->bin.data + at, len, 4);
    }
}

/* store_snapshot(Store) -> binary() (dirty)
 * Keys and values are encoded straight into the snapshot (etf_encode.c),
 * which starts at about the size the live terms take and doubles as
 * needed. */
ERL_NIF_TERM gn_store_snapshot_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ERL_NIF_TERM err;
    gn_store *s;
    if (!GN_VIEW(gn_store_snapshot_nif, s, err))
        return err;
    size_t count = 0;
    int64_t now = gn_now_ms();
    gn_etf_out out;
    int have = gn_etf_out_init(&out, GN_SNAP_HEADER + GN_SNAP_TRAILER + s->count * GN_SNAP_FRAMING +
                                         s->live_words * sizeof(ERL_NIF_TERM));
    if (have) {
        out.len = GN_SNAP_HEADER;
        gn_iter it;
        gn_iter_start(&it, s);
        for (gn_node *n; out.ok && (n = gn_iter_next(&it));) {
            if (gn_expired(n, now))
                continue;
            gn_snap_put_term(env, n->key, &out);
            gn_snap_put_term(env, n->value, &out);
            int64_t expires = gn_expires(n);
            unsigned char *w = gn_etf_reserve(&out, 8);
            if (w) {
                gn_be_put(w, expires ? (uint64_t)(expires - now) : 0, 8);
                out.len += 8;
            }
            count++;
        }
    }
    int ordered = s->ordered;
    gn_rw_runlock(s->lock);
    unsigned char *w = gn_etf_reserve(&out, GN_SNAP_TRAILER);
    int ok = w && enif_realloc_binary(&out.bin, out.len + GN_SNAP_TRAILER);
    gn_etf_out_done(&out);
    if (!ok) {
        if (have)
            enif_release_binary(&out.bin);
        return enif_raise_exception(env, gn_am_enomem);
    }
    gn_snap_put_header(out.bin.data, ordered, count);
    gn_snap_seal(out.bin.data, out.bin.size);
    return enif_make_binary(env, &out.bin);
}

static int gn_snap_term(ErlNifEnv *env, const unsigned char *data, size_t len, ERL_NIF_TERM *t,
                        ErlNifBinary *scratch, const ErlNifBinary *marker, gn_atom_set *unknown);

/* One entry of a snapshot, as read by the first pass. */
typedef struct gn_snap_entry {
    gn_snap_frame f;          /* encodings, in the snapshot, and ttl */
    ERL_NIF_TERM key, value;  /* 0 until decoded */
    gn_termsize ksize, vsize; /* for a term decoded into the arena */
    unsigned char kin, vin;   /* whether it was (else: in the caller's env) */
} gn_snap_entry;

/* Decodes one term of an entry: into the arena when etf_decode.c takes it
 * (sized there, *in set; `build` is its scratch environment), else as
 * gn_snap_term does. */
static int gn_snap_term_in(ErlNifEnv *env, ErlNifEnv *arena, ErlNifEnv *build, gn_etf_atoms *atoms,
                           const unsigned char *data, size_t len, ERL_NIF_TERM *t,
                           gn_termsize *size, unsigned char *in, ErlNifBinary *scratch,
                           const ErlNifBinary *marker, gn_atom_set *unknown)
{
    if (gn_etf_decode(arena, build, data, len, t, atoms)) {
        size->bin = 0;
        size->words = gn_term_words(arena, *t, &size->bin, SIZE_MAX, 0);
        *in = 1;
        return 1;
    }
    *in = 0;
    return gn_snap_term(env, data, len, t, scratch, marker, unknown);
}

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

/* The first pass over a snapshot's entries: checks every byte
 * and decodes what it can without making atoms. Returns the entries
 * (gn_alloc), or NULL with *err set: invalid_snapshot, unsafe_snapshot
 * (`safe` and an entry names atoms this node does not know), system_limit
 * (it would make more than `atoms_left` atoms), or an enomem exception. */
static gn_snap_entry *gn_snap_read(ErlNifEnv *env, ErlNifEnv *arena, const gn_snap_info *snap,
                                   int safe, uint64_t atoms_left, ERL_NIF_TERM *err)
{
    ERL_NIF_TERM invalid = enif_make_tuple2(env, gn_am_error, gn_am_invalid_snapshot);
    uint64_t count = snap->count; /* gn_snap_open checked that it fits */
    gn_snap_iter it = snap->entries;
    gn_snap_entry *es = gn_alloc((count + 1) * sizeof(*es));
    ErlNifBinary scratch, marker;
    int scratch_ok = enif_alloc_binary(0, &scratch);
    int marker_ok = enif_term_to_binary(env, enif_make_ref(env), &marker);
    gn_atom_set unknown = {NULL, 0, 0};
    gn_etf_atoms atoms = {NULL, 0, 0};
    ErlNifEnv *build = enif_alloc_env(); /* etf_decode.c's scratch */
    int later = 0;
    if (!es || !scratch_ok || !marker_ok || !build) {
        *err = enif_raise_exception(env, gn_am_enomem);
        goto fail;
    }
    *err = invalid;
    for (uint64_t i = 0; i < count; i++) {
        gn_snap_entry *e = &es[i];
        const gn_snap_frame *f = &e->f;
        int rk, rv;
        if (!gn_snap_next(&it, &e->f))
            goto fail;
        if (!(rk = gn_snap_term_in(env, arena, build, &atoms, f->key, f->klen, &e->key, &e->ksize,
                                   &e->kin, &scratch, &marker, &unknown)) ||
            !(rv = gn_snap_term_in(env, arena, build, &atoms, f->value, f->vlen, &e->value,
                                   &e->vsize, &e->vin, &scratch, &marker, &unknown)))
            goto fail;
        later |= rk == 2 || rv == 2;
    }
    if (!gn_snap_at_end(&it))
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
        if ((!e->key && enif_binary_to_term(env, e->f.key, e->f.klen, &e->key, 0) != e->f.klen) ||
            (!e->value &&
             enif_binary_to_term(env, e->f.value, e->f.vlen, &e->value, 0) != e->f.vlen))
            goto fail; /* cannot happen: the copy decoded */
    }
    enif_release_binary(&scratch);
    enif_release_binary(&marker);
    gn_atom_set_free(&unknown);
    gn_etf_atoms_free(&atoms);
    enif_free_env(build);
    return es;

fail:
    if (scratch_ok)
        enif_release_binary(&scratch);
    if (marker_ok)
        enif_release_binary(&marker);
    gn_atom_set_free(&unknown);
    gn_etf_atoms_free(&atoms);
    if (build)
        enif_free_env(build);
    gn_free(es);
    return NULL;
}

/* An entry for e, taking what was decoded into the arena as it is. */
static gn_node *gn_snap_node(gn_store *s, ErlNifEnv *env, const gn_snap_entry *e)
{
    return gn_node_make(s, env, e->key, e->kin ? &e->ksize : NULL, e->kin, e->value,
                        e->vin ? &e->vsize : NULL, e->vin);
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
    gn_snap_info snap;
    if (!gn_snap_open(bin.data, bin.size, &snap))
        return enif_make_tuple2(env, gn_am_error, gn_am_invalid_snapshot);
    uint64_t count = snap.count;
    ERL_NIF_TERM err;
    /* the new store's arena: most terms are decoded straight into it */
    ErlNifEnv *arena = enif_alloc_env();
    if (!arena)
        return enif_raise_exception(env, gn_am_enomem);
    gn_snap_entry *es = gn_snap_read(env, arena, &snap, safe, atoms_left, &err);
    if (!es) {
        enif_free_env(arena);
        return err;
    }

    /* A new store, even where new/2 would adopt an orphaned named one. */
    if (!enif_is_identical(argv[1], gn_am_nil) && enif_is_atom(env, argv[1])) {
        gn_store *held = gn_name_lookup(gn_shared(env), argv[1]);
        if (held) {
            enif_release_resource(held);
            gn_free(es);
            enif_free_env(arena);
            return enif_make_tuple2(env, gn_am_error, gn_am_already_exists);
        }
    }

    /* Create the store, fill it, and only then hand it out. */
    ERL_NIF_TERM args[5] = {snap.ordered ? gn_am_ordered_set : gn_am_set, argv[1], argv[2], argv[3],
                            argv[4]};
    (void)argc;
    ERL_NIF_TERM created = gn_store_new_nif(env, 5, args);
    const ERL_NIF_TERM *tuple;
    int arity;
    gn_store *s;
    if (!enif_get_tuple(env, created, &arity, &tuple) || !enif_is_identical(tuple[0], gn_am_ok)) {
        gn_free(es);
        enif_free_env(arena);
        return created; /* already_exists, or an exception */
    }
    enif_get_resource(env, tuple[1], gn_store_rtype, (void **)&s);
    gn_rw_rwlock(s->lock);
    /* the store takes the arena the terms were decoded into (its own is
     * new and empty), and is charged for them */
    enif_free_env(s->arena);
    s->arena = arena;
    for (uint64_t i = 0; i < count; i++) {
        if (es[i].kin)
            gn_arena_charge(s, es[i].ksize.words);
        if (es[i].vin)
            gn_arena_charge(s, es[i].vsize.words);
    }
    int ok = 1;
    size_t nsorted = 0;
    /* An ordered_set's snapshot lists its keys in order: collect them, to
     * build a balanced tree in O(n) at the end; anything else is inserted. */
    gn_node **sorted = s->ordered ? gn_alloc(count * sizeof(gn_node *) + sizeof(gn_node *)) : NULL;
    if (!s->ordered && count)
        gn_hash_resize(s, gn_hash_cap(count < s->max_size ? count : s->max_size));
    for (uint64_t i = 0; ok && i < count; i++) {
        gn_snap_entry *e = &es[i];
        gn_probe p = {.key = e->key};
        gn_node *n;
        if (sorted && (!nsorted || gn_cmp(s, &p, sorted[nsorted - 1]) > 0) &&
            nsorted < s->max_size) {
            if (!(n = gn_snap_node(s, env, e))) {
                ok = 0;
                continue;
            }
            sorted[nsorted++] = n;
            s->count++;
            gn_account_add(s, n);
            /* the heap holds the entry, wherever it goes in the tree */
            if (e->f.ttl && !gn_set_expiry(s, n, gn_now_ms() + e->f.ttl))
                ok = 0;
            continue;
        }
        if (sorted) {
            /* out of order: everything so far goes into the tree */
            s->root = gn_build(sorted, 0, nsorted);
            gn_free(sorted);
            sorted = NULL;
        }
        n = gn_find(s, &p);
        if (n) {
            /* a repeated key: the later entry wins, as with put */
            ok = gn_node_rekey(s, env, n, e->key) && gn_node_set(s, env, n, e->value);
        } else if (s->count >= s->max_size) {
            gn_rw_rwunlock(s->lock);
            gn_store_delete_nif(env, 1, &tuple[1]);
            gn_free(es);
            return enif_make_tuple2(env, gn_am_error, gn_am_full);
        } else if ((n = gn_snap_node(s, env, e))) {
            if (gn_link(s, n, &p)) {
                gn_account_add(s, n);
            } else {
                gn_node_free(n);
                n = NULL;
                ok = 0;
            }
        } else {
            ok = 0;
        }
        if (ok && n && e->f.ttl && !gn_set_expiry(s, n, gn_now_ms() + e->f.ttl))
            ok = 0;
    }
    gn_free(es);
    if (sorted) {
        s->root = gn_build(sorted, 0, nsorted);
        gn_free(sorted);
    }
    int ttl = s->heap_len != 0;
    gn_rw_rwunlock(s->lock);
    if (ok && ttl)
        gn_ttl_list_add(s);
    if (!ok) {
        /* out of memory: every entry was valid */
        gn_store_delete_nif(env, 1, &tuple[1]);
        return enif_raise_exception(env, gn_am_enomem);
    }
    return created;
}
