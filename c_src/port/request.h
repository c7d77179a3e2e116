/*
 * A request frame, decoded: {Tag, Op, Store, Args...} (PROTOCOL.md), and
 * its arguments, read one at a time by the ops.
 */
#ifndef GN_PORT_REQUEST_H
#define GN_PORT_REQUEST_H

#include <stdint.h>

#include "buf.h"
#include "etf.h"
#include "pstore.h"

typedef struct gn_request {
    gn_slice tag;
    char op[32]; /* "" if not an atom of under 32 bytes, or no Store */
    char name[1024];
    size_t name_len;
    int has_name; /* the third element is an atom, `name` */
    gn_etf args;  /* at the first argument after the third element */
    uint32_t nargs;
    const unsigned char *frame;
    size_t frame_len;
    int queued; /* it waited behind its store's jobs, and runs now */
} gn_request;

/* Decodes a request frame; 0, or -1 if it has no readable tag (answered
 * with a bad_request event, into `out`). */
int gn_request_decode(gn_buf *out, const unsigned char *frame, size_t len, gn_request *r);

/* The next argument, each 0 or -1 (malformed). */
/* A key: its bytes in `raw`, its encoding for `s` in `enc` (emptied first). */
int gn_arg_key(gn_request *r, const gn_pstore *s, gn_buf *enc, gn_slice *raw);
int gn_arg_value(gn_request *r, gn_slice *raw);
int gn_arg_int(gn_request *r, int64_t *v);
/* A non-negative integer, or infinity (UINT64_MAX). */
int gn_arg_limit(gn_request *r, uint64_t *v);
/* A store's cap: a positive integer, or infinity (0). */
int gn_arg_cap(gn_request *r, uint64_t *cap);

#endif
