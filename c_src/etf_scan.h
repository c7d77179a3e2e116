/*
 * Checking an external term format encoding without making its atoms: what
 * restore needs to reject a bad snapshot before it creates any atom.
 */
#ifndef GN_ETF_SCAN_H
#define GN_ETF_SCAN_H

#include <erl_nif.h>
#include <stddef.h>

/* The atoms an encoding names that this node does not know yet, each
 * counted once (a set of their texts, pointing into the encodings, which
 * must outlive it). */
typedef struct gn_atom_set {
    struct gn_atom_slot *slots;
    size_t cap, count;
} gn_atom_set;

void gn_atom_set_free(gn_atom_set *set);

/* Writes to out (at least len bytes) a copy of the encoding data[0, len)
 * with every atom this node does not know replaced by '' (which every node
 * knows), padded with
 * zeros to len bytes; *used is the copy's length before the padding.
 * Atoms that may be unknown (enif_make_existing_atom_len in `env`; OTP 25
 * looks up Latin-1 text only, so an atom beyond Latin-1 counts as unknown:
 * an upper bound) are added to `unknown`. Returns 0 if the encoding's structure is broken or an
 * atom's text is not one the VM takes (over 255 characters, bad UTF-8), or when out of memory; then
 * `out` is garbage.
 *
 * Decoding the copy (flags 0) creates no atom; it fails when decoding the
 * original would, for any reason but its atoms, and also when a map holds
 * two unknown atom keys (or one and ''), which both become '': a valid
 * encoding refused, never an invalid one let through. (A fun's
 * encoding carries its own byte size, which the copy keeps: the padding
 * keeps that size within the buffer, and the decoder skips it.) A
 * compressed encoding is refused: snapshots never hold one. */
int gn_etf_neutralize(ErlNifEnv *env, const unsigned char *data, size_t len, unsigned char *out,
                      size_t *used, gn_atom_set *unknown);

#endif
