/*
 * Canonical key encodings: a key (an external-term-format term) becomes a
 * byte string such that memcmp order is Erlang term order, and two keys
 * get the same bytes exactly when they are the same key:
 *
 *   GN_KEY_EQ     equal under == (an ordered_set's keys: 1 and 1.0 are one)
 *   GN_KEY_EXACT  equal under =:= (a set's keys: 1 and 1.0 are two)
 *
 * The store compares keys with memcmp only.
 */
#ifndef GN_PORT_KEYENC_H
#define GN_PORT_KEYENC_H

#include "buf.h"

enum { GN_KEY_EQ = 0, GN_KEY_EXACT = 1 };

/* Appends the encoding of the term at buf[*index] (external term format,
 * without the 131 version byte) to `out` and moves *index past the term.
 * Returns 0, or -1 for a malformed or truncated term (`out` may then hold
 * a partial encoding: the caller discards it). Never reads outside
 * buf[0, len). */
int gn_key_encode(const unsigned char *buf, size_t len, size_t *index, gn_buf *out, int mode);

#endif
