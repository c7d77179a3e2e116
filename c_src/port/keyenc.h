/*
 * Canonical key encodings: a key (an external-term-format term) becomes a
 * byte string such that memcmp order is Erlang term order, and two keys
 * get the same bytes exactly when they are the same key:
 *
 *   GN_KEY_EQ     equal under == (an ordered_set's keys: 1 and 1.0 are one)
 *   GN_KEY_EXACT  equal under =:= (a set's keys: 1 and 1.0 are two)
 *
 * In both modes 0.0 and -0.0 are one key (as in OTP 25's ETS tables). A
 * GN_KEY_EXACT encoding is ordered as the VM orders map keys (term order,
 * but all integers before all floats), not by `<`.
 *
 * The store compares keys with memcmp only. The layout is described at the
 * top of keyenc.c.
 */
#ifndef GN_PORT_KEYENC_H
#define GN_PORT_KEYENC_H

#include "buf.h"

enum { GN_KEY_EQ = 0, GN_KEY_EXACT = 1 };

/* Appends the encoding of the term at buf[*index] (external term format,
 * without the 131 version byte) to `out` and moves *index past the term.
 * Returns 0, or -1 for a malformed, truncated or unsupported term, or one
 * nested deeper than 10,000 open containers (`out` may then hold a partial
 * encoding: the caller discards it). Never reads outside buf[0, len).
 * Thread-safe: its scratch memory (a stack, map reordering) is per thread
 * and kept between calls. */
int gn_key_encode(const unsigned char *buf, size_t len, size_t *index, gn_buf *out, int mode);

/* Orders two encodings: memcmp, then the shorter first. */
static inline int gn_key_cmp(const unsigned char *a, size_t alen, const unsigned char *b,
                             size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c ? c : (alen > blen) - (alen < blen);
}

#endif
