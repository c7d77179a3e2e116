/*
 * The external term format's simple terms, shared by the walkers over it
 * (etf_scan.c, etf_decode.c): which tags stand for a term of no subterms,
 * and how many bytes such a term takes. Plain C, no state.
 */
#ifndef GN_ETF_H
#define GN_ETF_H

#include <stddef.h>

#include "snapshot.h" /* gn_be_get */

/* Whether p (`left` bytes) starts with a term holding no subterm and no
 * atom (integers, floats, [], strings, binaries, bitstrings); if so, and
 * its header is whole, 1 and the term's bytes in *n (which may be more
 * than `left`: the caller checks). 0 for any other tag, or a cut header. */
static inline int gn_etf_leaf(const unsigned char *p, size_t left, size_t *n)
{
    if (left < 1)
        return 0;
    switch (p[0]) {
    case 97: /* SMALL_INTEGER_EXT */
        *n = 2;
        return 1;
    case 98: /* INTEGER_EXT */
        *n = 5;
        return 1;
    case 99: /* FLOAT_EXT */
        *n = 32;
        return 1;
    case 70: /* NEW_FLOAT_EXT */
        *n = 9;
        return 1;
    case 106: /* NIL_EXT */
        *n = 1;
        return 1;
    case 107: /* STRING_EXT */
        return left >= 3 && (*n = 3 + (size_t)gn_be_get(p + 1, 2), 1);
    case 109: /* BINARY_EXT */
        return left >= 5 && (*n = 5 + (size_t)gn_be_get(p + 1, 4), 1);
    case 77: /* BIT_BINARY_EXT */
        return left >= 6 && (*n = 6 + (size_t)gn_be_get(p + 1, 4), 1);
    case 110: /* SMALL_BIG_EXT */
        return left >= 3 && (*n = 3 + (size_t)p[1], 1);
    case 111: /* LARGE_BIG_EXT */
        return left >= 6 && (*n = 6 + (size_t)gn_be_get(p + 1, 4), 1);
    default:
        return 0;
    }
}

#endif
