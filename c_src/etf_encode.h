/*
 * Encoding terms in the external term format into one growing buffer, byte
 * for byte as term_to_binary/1 does (OTP 25, minor version 1): what a
 * store's snapshot writes for every key and value. enif_term_to_binary
 * allocates a binary per term; for a million entries that is two million
 * allocations, most of a snapshot's time. This encoder writes the common
 * terms itself (integers, floats, atoms, binaries, tuples, lists) and asks
 * enif_term_to_binary only for the rest (maps, pids, references, ports,
 * funs, bitstrings, integers past 64 bits, terms nested past 64 levels),
 * whose encodings it copies in. An atom's encoding is asked for once per
 * atom and remembered.
 *
 * Locking: none; a gn_etf_out belongs to one caller.
 */
#ifndef GN_ETF_ENCODE_H
#define GN_ETF_ENCODE_H

#include <erl_nif.h>
#include <stddef.h>

/* The buffer: a binary, grown by doubling; `len` bytes written. */
typedef struct gn_etf_out {
    ErlNifBinary bin;
    size_t len;
    int ok;                    /* 0 once out of memory: everything after is dropped */
    struct gn_atom_enc *atoms; /* remembered atom encodings */
    size_t atoms_cap, atoms_count;
} gn_etf_out;

/* Starts a buffer of `cap` bytes; 0 when out of memory. */
int gn_etf_out_init(gn_etf_out *out, size_t cap);

/* Room for `n` more bytes at out->bin.data + out->len; NULL when out of
 * memory (and out->ok is 0). The caller writes them and adds n to len. */
unsigned char *gn_etf_reserve(gn_etf_out *out, size_t n);

/* Appends t's encoding, without the version byte (a snapshot writes the
 * 131 itself). Returns out->ok. */
int gn_etf_encode(ErlNifEnv *env, ERL_NIF_TERM t, gn_etf_out *out);

/* Frees the atom cache; the binary is the caller's (enif_make_binary, or
 * enif_release_binary). */
void gn_etf_out_done(gn_etf_out *out);

#endif
