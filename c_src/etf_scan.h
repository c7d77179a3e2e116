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

/* Writes to out (cap bytes, at least len) a copy of the encoding
 * data[0, len) in which every atom this node does not know is replaced by a
 * placeholder: the 2-tuple {Marker, <<Text in UTF-8>>}, where marker[0,
 * marker_len) is the encoding (without the version byte) of a term no
 * snapshot holds (a fresh reference); where only an atom may stand (the node
 * of a pid, port or reference, a fun's module or function) by ''. A copy
 * shorter than len is padded with zeros to len bytes; *used is its length
 * before the padding. Atoms that may be unknown (enif_make_existing_atom_len
 * in `env`; OTP 25 looks up Latin-1 text only, so an atom beyond Latin-1
 * counts as unknown: an upper bound) are added to `unknown`.
 *
 * Returns 1 when the copy is written; 2 when it takes more than cap bytes
 * (*used says how many: call again with a buffer that large); 0 if the
 * encoding's structure is broken or an atom's text is not one the VM takes
 * (over 255 characters, bad UTF-8), or when out of memory. Only after 1 is
 * `out` meaningful.
 *
 * Decoding the copy (flags 0) over max(len, *used) bytes creates no atom; it
 * fails when decoding the original would, for any reason but its atoms: a
 * placeholder is the same for the same atom, and differs from every other
 * placeholder and every term of the snapshot, so a map's keys stay distinct.
 * (The one exception: two pids, ports or references as keys of one map that
 * differ only by unknown node names become equal; such a snapshot is refused,
 * a valid encoding refused, never an invalid one let through. A fun's
 * encoding carries its own byte size, which the copy keeps: the padding keeps
 * that size within the buffer, and the decoder skips it.) A compressed
 * encoding is refused: snapshots never hold one. */
int gn_etf_neutralize(ErlNifEnv *env, const unsigned char *data, size_t len,
                      const unsigned char *marker, size_t marker_len, unsigned char *out,
                      size_t cap, size_t *used, gn_atom_set *unknown);

#endif
