/*
 * The external term format encoder of etf_encode.h. Its output must be the
 * bytes term_to_binary/1 gives (a snapshot restored and taken again is the
 * same binary, and the port program's snapshots share the format);
 * test/gen_native/store_snapshot_encoding_test.exs compares the two over
 * every kind of term, including each boundary below.
 */
#include <stdint.h>
#include <string.h>

#include "alloc.h"
#include "etf_encode.h"
#include "snapshot.h"

/* Tags of the external term format (erl_ext_dist) this file writes. */
#define GN_NEW_FLOAT_EXT 70
#define GN_SMALL_INTEGER_EXT 97
#define GN_INTEGER_EXT 98
#define GN_SMALL_TUPLE_EXT 104
#define GN_LARGE_TUPLE_EXT 105
#define GN_NIL_EXT 106
#define GN_STRING_EXT 107
#define GN_LIST_EXT 108
#define GN_BINARY_EXT 109
#define GN_SMALL_BIG_EXT 110

#define GN_STRING_MAX 0xFFFF /* the longest list of bytes STRING_EXT holds */
#define GN_ENCODE_DEPTH 64   /* deeper terms go to enif_term_to_binary */

struct gn_atom_enc {
    ERL_NIF_TERM atom; /* 0: a free slot */
    unsigned char *enc;
    size_t len;
};

int gn_etf_out_init(gn_etf_out *out, size_t cap)
{
    memset(out, 0, sizeof(*out));
    out->ok = enif_alloc_binary(cap ? cap : 64, &out->bin);
    return out->ok;
}

void gn_etf_out_done(gn_etf_out *out)
{
    for (size_t i = 0; i < out->atoms_cap; i++)
        gn_free(out->atoms[i].enc);
    gn_free(out->atoms);
    out->atoms = NULL;
    out->atoms_cap = out->atoms_count = 0;
}

unsigned char *gn_etf_reserve(gn_etf_out *out, size_t n)
{
    if (!out->ok)
        return NULL;
    if (out->bin.size - out->len < n) {
        size_t cap = out->bin.size;
        while (cap - out->len < n)
            cap *= 2;
        if (!enif_realloc_binary(&out->bin, cap)) {
            out->ok = 0;
            return NULL;
        }
    }
    return out->bin.data + out->len;
}

static void gn_put_bytes(gn_etf_out *out, const unsigned char *p, size_t n)
{
    unsigned char *w = gn_etf_reserve(out, n);
    if (w) {
        memcpy(w, p, n);
        out->len += n;
    }
}

/* A term the VM encodes for us, its version byte left out. */
static void gn_put_by_vm(ErlNifEnv *env, ERL_NIF_TERM t, gn_etf_out *out)
{
    ErlNifBinary b;
    if (!enif_term_to_binary(env, t, &b)) {
        out->ok = 0;
        return;
    }
    gn_put_bytes(out, b.data + 1, b.size - 1);
    enif_release_binary(&b);
}

/* ------------------------------------------------------------------------ */
/* Atoms: each one's encoding asked of the VM once                           */

static size_t gn_atom_slot(const gn_etf_out *out, ERL_NIF_TERM atom)
{
    uint64_t h = (uint64_t)atom * 0x9E3779B97F4A7C15ull;
    size_t i = (size_t)(h >> 20) & (out->atoms_cap - 1);
    while (out->atoms[i].atom && out->atoms[i].atom != atom)
        i = (i + 1) & (out->atoms_cap - 1);
    return i;
}

static int gn_atoms_grow(gn_etf_out *out)
{
    size_t cap = out->atoms_cap ? 2 * out->atoms_cap : 64;
    struct gn_atom_enc *old = out->atoms, *slots = gn_alloc(cap * sizeof(*slots));
    size_t old_cap = out->atoms_cap;
    if (!slots)
        return 0;
    memset(slots, 0, cap * sizeof(*slots));
    out->atoms = slots;
    out->atoms_cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].atom)
            out->atoms[gn_atom_slot(out, old[i].atom)] = old[i];
    gn_free(old);
    return 1;
}

static void gn_put_atom(ErlNifEnv *env, ERL_NIF_TERM atom, gn_etf_out *out)
{
    if (2 * (out->atoms_count + 1) > out->atoms_cap && !gn_atoms_grow(out)) {
        gn_put_by_vm(env, atom, out);
        return;
    }
    struct gn_atom_enc *a = &out->atoms[gn_atom_slot(out, atom)];
    if (!a->atom) {
        ErlNifBinary b;
        if (!enif_term_to_binary(env, atom, &b)) {
            out->ok = 0;
            return;
        }
        a->enc = gn_alloc(b.size - 1);
        if (!a->enc) {
            enif_release_binary(&b);
            out->ok = 0;
            return;
        }
        memcpy(a->enc, b.data + 1, b.size - 1);
        a->len = b.size - 1;
        a->atom = atom;
        out->atoms_count++;
        enif_release_binary(&b);
    }
    gn_put_bytes(out, a->enc, a->len);
}

/* ------------------------------------------------------------------------ */
/* Integers                                                                  */

/* An integer of 64 bits or fewer: SMALL_INTEGER_EXT for 0..255,
 * INTEGER_EXT for 32-bit signed, else SMALL_BIG_EXT with the fewest
 * bytes. `neg` and `mag` are its sign and magnitude. */
static void gn_put_int(gn_etf_out *out, int neg, uint64_t mag)
{
    unsigned char *w = gn_etf_reserve(out, 11);
    if (!w)
        return;
    if (!neg && mag < 256) {
        w[0] = GN_SMALL_INTEGER_EXT;
        w[1] = (unsigned char)mag;
        out->len += 2;
    } else if (neg ? mag <= ((uint64_t)1 << 31) : mag < ((uint64_t)1 << 31)) {
        w[0] = GN_INTEGER_EXT;
        gn_be_put(w + 1, (uint32_t)(neg ? -(int64_t)mag : (int64_t)mag), 4);
        out->len += 5;
    } else {
        int n = 0;
        w[0] = GN_SMALL_BIG_EXT;
        w[2] = (unsigned char)neg;
        for (uint64_t m = mag; m; m >>= 8)
            w[3 + n++] = (unsigned char)(m & 0xFF);
        w[1] = (unsigned char)n;
        out->len += 3 + (size_t)n;
    }
}

/* ------------------------------------------------------------------------ */
/* Lists                                                                     */

/* Whether a list is STRING_EXT material, as the VM decides: proper, of
 * bytes (integers 0..255), at most GN_STRING_MAX long. Sets *len to its
 * length, or to its cells when it is not a string (counted through its
 * last cell). */
static int gn_list_is_string(ErlNifEnv *env, ERL_NIF_TERM t, size_t *len)
{
    ERL_NIF_TERM head;
    int string = 1;
    unsigned u;
    *len = 0;
    while (enif_get_list_cell(env, t, &head, &t)) {
        (*len)++;
        if (string && (*len > GN_STRING_MAX || !enif_get_uint(env, head, &u) || u > 255))
            string = 0;
    }
    return string && enif_is_empty_list(env, t);
}

static void gn_encode_at(ErlNifEnv *env, ERL_NIF_TERM t, gn_etf_out *out, int depth);

static void gn_put_list(ErlNifEnv *env, ERL_NIF_TERM t, gn_etf_out *out, int depth)
{
    size_t len;
    ERL_NIF_TERM head;
    unsigned u;
    if (gn_list_is_string(env, t, &len)) {
        unsigned char *w = gn_etf_reserve(out, 3 + len);
        if (!w)
            return;
        w[0] = GN_STRING_EXT;
        gn_be_put(w + 1, len, 2);
        for (size_t i = 0; enif_get_list_cell(env, t, &head, &t); i++) {
            enif_get_uint(env, head, &u);
            w[3 + i] = (unsigned char)u;
        }
        out->len += 3 + len;
        return;
    }
    if (len > UINT32_MAX) {
        gn_put_by_vm(env, t, out);
        return;
    }
    unsigned char *w = gn_etf_reserve(out, 5);
    if (!w)
        return;
    w[0] = GN_LIST_EXT;
    gn_be_put(w + 1, len, 4);
    out->len += 5;
    while (out->ok && enif_get_list_cell(env, t, &head, &t))
        gn_encode_at(env, head, out, depth + 1);
    gn_encode_at(env, t, out, depth + 1); /* the tail: [] for a proper list */
}

/* ------------------------------------------------------------------------ */
/* Any term                                                                  */

static void gn_encode_at(ErlNifEnv *env, ERL_NIF_TERM t, gn_etf_out *out, int depth)
{
    if (!out->ok)
        return;
    if (depth > GN_ENCODE_DEPTH) {
        gn_put_by_vm(env, t, out);
        return;
    }
    switch (enif_term_type(env, t)) {
    case ERL_NIF_TERM_TYPE_ATOM:
        gn_put_atom(env, t, out);
        return;
    case ERL_NIF_TERM_TYPE_INTEGER: {
        ErlNifSInt64 i;
        ErlNifUInt64 u;
        if (enif_get_int64(env, t, &i))
            gn_put_int(out, i < 0, i < 0 ? (uint64_t)0 - (uint64_t)i : (uint64_t)i);
        else if (enif_get_uint64(env, t, &u))
            gn_put_int(out, 0, u);
        else
            gn_put_by_vm(env, t, out);
        return;
    }
    case ERL_NIF_TERM_TYPE_FLOAT: {
        double d;
        uint64_t bits;
        unsigned char *w = gn_etf_reserve(out, 9);
        if (!w)
            return;
        enif_get_double(env, t, &d);
        memcpy(&bits, &d, sizeof(bits));
        w[0] = GN_NEW_FLOAT_EXT;
        gn_be_put(w + 1, bits, 8);
        out->len += 9;
        return;
    }
    case ERL_NIF_TERM_TYPE_BITSTRING: {
        ErlNifBinary b;
        unsigned char *w;
        if (!enif_inspect_binary(env, t, &b) || b.size > UINT32_MAX) {
            gn_put_by_vm(env, t, out); /* a bitstring */
            return;
        }
        if (!(w = gn_etf_reserve(out, 5 + b.size)))
            return;
        w[0] = GN_BINARY_EXT;
        gn_be_put(w + 1, b.size, 4);
        memcpy(w + 5, b.data, b.size);
        out->len += 5 + b.size;
        return;
    }
    case ERL_NIF_TERM_TYPE_TUPLE: {
        const ERL_NIF_TERM *elems;
        int arity;
        unsigned char *w = gn_etf_reserve(out, 5);
        if (!w)
            return;
        enif_get_tuple(env, t, &arity, &elems);
        if (arity < 256) {
            w[0] = GN_SMALL_TUPLE_EXT;
            w[1] = (unsigned char)arity;
            out->len += 2;
        } else {
            w[0] = GN_LARGE_TUPLE_EXT;
            gn_be_put(w + 1, (uint64_t)arity, 4);
            out->len += 5;
        }
        for (int i = 0; i < arity && out->ok; i++)
            gn_encode_at(env, elems[i], out, depth + 1);
        return;
    }
    case ERL_NIF_TERM_TYPE_LIST:
        if (enif_is_empty_list(env, t)) {
            unsigned char nil = GN_NIL_EXT;
            gn_put_bytes(out, &nil, 1);
        } else {
            gn_put_list(env, t, out, depth);
        }
        return;
    default:
        /* maps (their key order in the encoding is the VM's), pids,
         * references, ports, funs */
        gn_put_by_vm(env, t, out);
        return;
    }
}

int gn_etf_encode(ErlNifEnv *env, ERL_NIF_TERM t, gn_etf_out *out)
{
    gn_encode_at(env, t, out, 0);
    return out->ok;
}
