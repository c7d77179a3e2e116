/*
 * The request handlers, each named after its op (PROTOCOL.md). A store op
 * gets its store (existing, with no jobs ahead of the request); a global op
 * gets NULL (but an open that waited behind its store's jobs gets that
 * store). dispatch.c's table says which is which.
 */
#ifndef GN_PORT_OPS_H
#define GN_PORT_OPS_H

#include "port.h"
#include "pstore.h"
#include "request.h"

typedef void gn_op_fn(gn_port *p, gn_request *r, gn_pstore *s);

/* ops.c: store ops answered at once */
gn_op_fn gn_op_put, gn_op_put_new, gn_op_get, gn_op_take, gn_op_delete_key, gn_op_update_counter,
    gn_op_size, gn_op_clear, gn_op_info, gn_op_step, gn_op_rank, gn_op_at;
/* ops.c: global ops */
gn_op_fn gn_op_sync, gn_op_stop, gn_op_stores, gn_op_encode_key;
/* stream.c: replies in parts */
gn_op_fn gn_op_to_list, gn_op_range, gn_op_slice, gn_op_snapshot;
/* put_many.c, restore.c, compact.c */
gn_op_fn gn_op_put_many, gn_op_restore, gn_op_compact;
/* dispatch.c: the ops that make and drop stores */
gn_op_fn gn_op_open, gn_op_delete;

#endif
