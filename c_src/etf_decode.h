/*
 * Decoding the external term format straight into a store's arena: what a
 * restore does for every key and value. enif_binary_to_term decodes into
 * the calling process's environment, from where each term must be copied
 * again into the arena; this decoder builds the common terms (integers,
 * floats, atoms this node knows, binaries, tuples, lists, maps) with the
 * enif_make_* calls, in the environment it is given, once. It first scans
 * the whole encoding, and builds nothing unless every part is one it
 * takes: anything else (pids, references, ports, funs, bitstrings, big
 * integers past 64 bits, atoms the node does not know, terms nested past
 * 64 levels, and anything malformed) is left to enif_binary_to_term, which
 * decides, so that what is accepted, and what comes out, is what
 * binary_to_term/2 gives. It never makes an atom: it looks each one up
 * once (decoding the atom alone with ERL_NIF_BIN2TERM_SAFE) and remembers
 * it.
 *
 * Locking: none; a gn_etf_atoms belongs to one caller.
 */
#ifndef GN_ETF_DECODE_H
#define GN_ETF_DECODE_H

#include <erl_nif.h>
#include <stddef.h>

/* Atoms already looked up, by their encodings (pointing into the bytes
 * being decoded, which must outlive the set). */
typedef struct gn_etf_atoms {
    struct gn_atom_dec *slots;
    size_t cap, count;
} gn_etf_atoms;

void gn_etf_atoms_free(gn_etf_atoms *atoms);

/* Decodes data[0, len), an encoding with its version byte, into *t, built
 * in `env`; a term holding binaries or maps is built in `scratch` (an
 * environment of the caller's, cleared here) and copied into env in one
 * piece, as the VM gives those a heap fragment each otherwise. Returns 1
 * when it decoded all len bytes; 0 when the encoding is one to leave to
 * enif_binary_to_term (see above; nothing was built), or when out of
 * memory. */
int gn_etf_decode(ErlNifEnv *env, ErlNifEnv *scratch, const unsigned char *data, size_t len,
                  ERL_NIF_TERM *t, gn_etf_atoms *atoms);

#endif
