/*
 * External term format, both ways, for the port program.
 *
 * Decoding is bounded: every function takes the buffer's length and fails
 * (-1) rather than read past it, whatever the bytes (ei's decoders trust
 * their input, so requests are never decoded with them). Encoding goes
 * through ei's encoders, straight into a gn_buf.
 */
#ifndef GN_PORT_ETF_H
#define GN_PORT_ETF_H

#include <stdint.h>

#include "buf.h"

#define GN_ETF_MAX_DEPTH 10000

typedef struct gn_slice {
    const unsigned char *data;
    size_t len;
} gn_slice;

/* A read position in a term: all decoders advance `at` on success. */
typedef struct gn_etf {
    const unsigned char *buf;
    size_t len, at;
} gn_etf;

/* Moves past one whole term, checking its structure; `out`, if not NULL,
 * gets its bytes. Compressed terms and atom cache references fail. */
int gn_etf_skip(gn_etf *e, gn_slice *out);
int gn_etf_tuple(gn_etf *e, uint32_t *arity);
/* A proper list's header: *n elements follow, then a tail (NIL for a
 * proper list; check with gn_etf_nil). [] gives *n = 0 and no tail. */
int gn_etf_list(gn_etf *e, uint32_t *n, int *has_tail);
int gn_etf_nil(gn_etf *e);
/* An atom's name in UTF-8, at most 255 characters. */
int gn_etf_atom(gn_etf *e, char name[1024], size_t *len);
int gn_etf_int64(gn_etf *e, int64_t *v);
int gn_etf_binary(gn_etf *e, gn_slice *bin);
/* Whether the next term is the atom `name` (without moving). */
int gn_etf_is_atom(const gn_etf *e, const char *name);

/* Encoding into a gn_buf. */
void gn_enc_version(gn_buf *b);
void gn_enc_atom(gn_buf *b, const char *name);
void gn_enc_atom_len(gn_buf *b, const char *name, size_t len);
void gn_enc_tuple(gn_buf *b, uint32_t arity);
void gn_enc_list(gn_buf *b, uint32_t n); /* n > 0; NIL follows the elements */
void gn_enc_nil(gn_buf *b);
void gn_enc_map(gn_buf *b, uint32_t n);
void gn_enc_int(gn_buf *b, int64_t v);
void gn_enc_binary(gn_buf *b, const void *data, size_t len);
void gn_enc_string(gn_buf *b, const char *text); /* as a binary */

#endif
