/*
 * The external term format decoder of etf_decode.h: a scan that checks
 * every length against the bytes left and every tag against the ones it
 * takes (and looks up the atoms), then a build over the same bytes that
 * trusts the scan. Both recurse one level per nested term, at most
 * GN_DECODE_DEPTH deep (a list's elements are walked, not recursed).
 * test/gen_native/store_snapshot_encoding_test.exs restores hand-made
 * encodings of every tag, canonical or not, and compares the result with
 * binary_to_term/2's.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "alloc.h"
#include "etf.h"
#include "etf_decode.h"
#include "snapshot.h"

#define GN_DECODE_DEPTH 64

/* ------------------------------------------------------------------------ */
/* Atoms                                                                     */

struct gn_atom_dec {
    const unsigned char *enc; /* NULL: a free slot */
    size_t len;
    ERL_NIF_TERM atom;
};

void gn_etf_atoms_free(gn_etf_atoms *atoms)
{
    gn_free(atoms->slots);
    atoms->slots = NULL;
    atoms->cap = atoms->count = 0;
}

static size_t gn_atom_find(const gn_etf_atoms *a, const unsigned char *enc, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ enc[i]) * 1099511628211ull;
    size_t i = (size_t)h & (a->cap - 1);
    while (a->slots[i].enc && !(a->slots[i].len == len && memcmp(a->slots[i].enc, enc, len) == 0))
        i = (i + 1) & (a->cap - 1);
    return i;
}

static int gn_atoms_grow(gn_etf_atoms *a)
{
    size_t cap = a->cap ? 2 * a->cap : 64, old_cap = a->cap;
    struct gn_atom_dec *old = a->slots, *slots = gn_alloc(cap * sizeof(*slots));
    if (!slots)
        return 0;
    memset(slots, 0, cap * sizeof(*slots));
    a->slots = slots;
    a->cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].enc)
            a->slots[gn_atom_find(a, old[i].enc, old[i].len)] = old[i];
    gn_free(old);
    return 1;
}

/* The atom encoded at enc[0, len) (tag and length included), if this node
 * knows it: 1 and *atom, else 0. */
static int gn_atom_lookup(ErlNifEnv *env, gn_etf_atoms *a, const unsigned char *enc, size_t len,
                          ERL_NIF_TERM *atom)
{
    if (2 * (a->count + 1) > a->cap && !gn_atoms_grow(a))
        return 0;
    struct gn_atom_dec *slot = &a->slots[gn_atom_find(a, enc, len)];
    if (!slot->enc) {
        /* the atom alone, version byte first: text at most 255 characters
         * of up to 4 bytes, its header 3 */
        unsigned char buf[1 + 3 + 4 * 255];
        if (len > sizeof(buf) - 1)
            return 0;
        buf[0] = 131;
        memcpy(buf + 1, enc, len);
        if (enif_binary_to_term(env, buf, len + 1, &slot->atom, ERL_NIF_BIN2TERM_SAFE) != len + 1)
            return 0;
        slot->enc = enc;
        slot->len = len;
        a->count++;
    }
    *atom = slot->atom;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* The scan                                                                  */

typedef struct gn_reader {
    const unsigned char *p, *end;
    ErlNifEnv *env;
    gn_etf_atoms *atoms;
    int boxed; /* the scan saw a binary or a map (see gn_etf_decode) */
} gn_reader;

static int gn_has(const gn_reader *r, size_t n)
{
    return (size_t)(r->end - r->p) >= n;
}

/* An atom's encoding at r->p: its length, or 0 if it is not an atom. */
static size_t gn_atom_len(const gn_reader *r)
{
    switch (r->p[0]) {
    case 100: /* ATOM_EXT */
    case 118: /* ATOM_UTF8_EXT */
        return gn_has(r, 3) ? 3 + gn_be_get(r->p + 1, 2) : 0;
    case 115: /* SMALL_ATOM_EXT */
    case 119: /* SMALL_ATOM_UTF8_EXT */
        return gn_has(r, 2) ? 2 + (size_t)r->p[1] : 0;
    default:
        return 0;
    }
}

/* SMALL_BIG_EXT's magnitude, when it is one this decoder takes: 1 to 8
 * bytes, no leading zero byte, a sign byte of 0 or 1, and for a negative
 * one a magnitude of at most 2^63. */
static int gn_small_big(const unsigned char *p, size_t n, int *neg, uint64_t *mag)
{
    if (n == 0 || n > 8 || p[0] > 1 || p[n] == 0)
        return 0;
    *neg = p[0];
    *mag = 0;
    for (size_t i = n; i > 0; i--)
        *mag = (*mag << 8) | p[i];
    return !*neg || *mag <= (uint64_t)1 << 63;
}

static int gn_scan(gn_reader *r, int depth)
{
    if (depth > GN_DECODE_DEPTH || !gn_has(r, 1))
        return 0;
    const unsigned char *p = r->p;
    size_t n, left = (size_t)(r->end - p);
    if (gn_etf_leaf(p, left, &n)) {
        int neg;
        uint64_t mag;
        double d;
        if (n > left)
            return 0;
        switch (p[0]) {
        case 99:  /* FLOAT_EXT */
        case 77:  /* BIT_BINARY_EXT */
        case 111: /* LARGE_BIG_EXT */
            return 0;
        case 70: /* NEW_FLOAT_EXT */
            mag = gn_be_get(p + 1, 8);
            memcpy(&d, &mag, sizeof(d));
            if (!isfinite(d))
                return 0;
            break;
        case 110: /* SMALL_BIG_EXT */
            if (!gn_small_big(p + 2, p[1], &neg, &mag))
                return 0;
            break;
        case 109: /* BINARY_EXT */
            r->boxed = 1;
            break;
        default:
            break;
        }
        r->p += n;
        return 1;
    }
    switch (p[0]) {
    case 100:
    case 115:
    case 118:
    case 119: {
        ERL_NIF_TERM atom;
        n = gn_atom_len(r);
        if (!n || !gn_has(r, n) || !gn_atom_lookup(r->env, r->atoms, p, n, &atom))
            return 0;
        break;
    }
    case 104: /* SMALL_TUPLE_EXT */
    case 105: /* LARGE_TUPLE_EXT */
    case 108: /* LIST_EXT: the elements, then the tail */
    case 116: /* MAP_EXT: keys and values */ {
        int small = p[0] == 104;
        uint64_t elems;
        if (!gn_has(r, small ? 2 : 5))
            return 0;
        elems = small ? p[1] : gn_be_get(p + 1, 4);
        if (p[0] == 108) {
            elems += 1;
        } else if (p[0] == 116) {
            elems *= 2;
            r->boxed = 1;
        }
        /* each element takes a byte at least */
        if (!gn_has(r, (small ? 2 : 5) + elems))
            return 0;
        r->p += small ? 2 : 5;
        for (uint64_t i = 0; i < elems; i++)
            if (!gn_scan(r, depth + 1))
                return 0;
        return 1;
    }
    default:
        return 0;
    }
    if (!gn_has(r, n))
        return 0;
    r->p += n;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* The build, over bytes the scan took                                       */

/* `n` terms read into an array (on the stack when few), for a tuple, a
 * list or a map. */
#define GN_STACK_ELEMS 16

static int gn_build(gn_reader *r, ERL_NIF_TERM *t);

static ERL_NIF_TERM *gn_build_elems(gn_reader *r, size_t n, ERL_NIF_TERM *stack)
{
    ERL_NIF_TERM *elems = n <= GN_STACK_ELEMS ? stack : gn_alloc(n * sizeof(*elems));
    if (!elems)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (!gn_build(r, &elems[i])) {
            if (elems != stack)
                gn_free(elems);
            return NULL;
        }
    return elems;
}

static void gn_elems_free(ERL_NIF_TERM *elems, const ERL_NIF_TERM *stack)
{
    if (elems != stack)
        gn_free(elems);
}

static int gn_build(gn_reader *r, ERL_NIF_TERM *t)
{
    ErlNifEnv *env = r->env;
    const unsigned char *p = r->p;
    ERL_NIF_TERM stack[GN_STACK_ELEMS], *elems;
    switch (p[0]) {
    case 97:
        *t = enif_make_uint(env, p[1]);
        r->p += 2;
        return 1;
    case 98:
        *t = enif_make_int(env, (int32_t)(uint32_t)gn_be_get(p + 1, 4));
        r->p += 5;
        return 1;
    case 70: {
        double d;
        uint64_t bits = gn_be_get(p + 1, 8);
        memcpy(&d, &bits, sizeof(d));
        *t = enif_make_double(env, d);
        r->p += 9;
        return 1;
    }
    case 110: {
        int neg;
        uint64_t mag;
        gn_small_big(p + 2, p[1], &neg, &mag);
        *t = neg ? enif_make_int64(env, (int64_t)(0 - mag)) : enif_make_uint64(env, mag);
        r->p += 3 + (size_t)p[1];
        return 1;
    }
    case 100:
    case 115:
    case 118:
    case 119: {
        size_t n = gn_atom_len(r);
        gn_atom_lookup(env, r->atoms, p, n, t); /* found by the scan */
        r->p += n;
        return 1;
    }
    case 106:
        *t = enif_make_list(env, 0);
        r->p += 1;
        return 1;
    case 107: {
        size_t n = gn_be_get(p + 1, 2);
        *t = enif_make_string_len(env, (const char *)p + 3, n, ERL_NIF_LATIN1);
        r->p += 3 + n;
        return 1;
    }
    case 109: {
        size_t n = gn_be_get(p + 1, 4);
        unsigned char *w = enif_make_new_binary(env, n, t);
        if (!w)
            return 0;
        memcpy(w, p + 5, n);
        r->p += 5 + n;
        return 1;
    }
    case 104:
    case 105: {
        size_t n = p[0] == 104 ? p[1] : gn_be_get(p + 1, 4);
        r->p += p[0] == 104 ? 2 : 5;
        if (!(elems = gn_build_elems(r, n, stack)))
            return 0;
        *t = enif_make_tuple_from_array(env, elems, (unsigned)n);
        gn_elems_free(elems, stack);
        return 1;
    }
    case 108: {
        size_t n = gn_be_get(p + 1, 4);
        ERL_NIF_TERM list;
        r->p += 5;
        if (!(elems = gn_build_elems(r, n, stack)))
            return 0;
        if (!gn_build(r, &list)) {
            gn_elems_free(elems, stack);
            return 0;
        }
        for (size_t i = n; i > 0; i--)
            list = enif_make_list_cell(env, elems[i - 1], list);
        *t = list;
        gn_elems_free(elems, stack);
        return 1;
    }
    case 116: {
        size_t n = gn_be_get(p + 1, 4), pairs = 0;
        r->p += 5;
        ERL_NIF_TERM *keys = n <= GN_STACK_ELEMS / 2 ? stack : gn_alloc(2 * n * sizeof(*keys));
        if (!keys)
            return 0;
        ERL_NIF_TERM *vals = keys + n;
        int ok = 1;
        for (; ok && pairs < n; pairs++)
            ok = gn_build(r, &keys[pairs]) && gn_build(r, &vals[pairs]);
        /* duplicate keys: left to binary_to_term to judge */
        ok = ok && enif_make_map_from_arrays(env, keys, vals, n, t);
        gn_elems_free(keys, stack);
        return ok;
    }
    default:
        return 0; /* the scan let nothing else through */
    }
}

int gn_etf_decode(ErlNifEnv *env, ErlNifEnv *scratch, const unsigned char *data, size_t len,
                  ERL_NIF_TERM *t, gn_etf_atoms *atoms)
{
    if (len < 2 || data[0] != 131)
        return 0;
    gn_reader r = {data + 1, data + len, env, atoms, 0};
    if (!gn_scan(&r, 0) || r.p != r.end)
        return 0;
    r.p = data + 1;
    if (!r.boxed)
        return gn_build(&r, t);
    /* Binaries and maps are made on the environment's process heap, a heap
     * fragment each in an environment of our own: built in the scratch
     * one, then copied, the term takes one compact stretch. */
    ERL_NIF_TERM built;
    r.env = scratch;
    int ok = gn_build(&r, &built);
    if (ok)
        *t = enif_make_copy(env, built);
    enif_clear_env(scratch);
    return ok;
}
