/*
 * Dispatch: a request frame goes, through the table of ops, to its
 * handler; a request on a store with jobs waits behind them, and runs
 * from gn_dispatch_step once they are through.
 */
#ifndef GN_PORT_DISPATCH_H
#define GN_PORT_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include "port.h"
#include "pstore.h"

/* Handles one request frame (its reply may come later). */
void gn_dispatch(gn_port *p, const unsigned char *frame, size_t len);

/* Runs the work of the stores with work (their jobs, then their waiting
 * requests) until the deadline. */
void gn_dispatch_step(gn_port *p, uint64_t deadline);

/* Queues the purge of s's expired entries when a request would purge too
 * many itself (the TTL sweep). */
void gn_dispatch_sweep(gn_port *p, gn_pstore *s, int64_t now);

/* Drops a store: unlinks and frees it; the requests that waited behind its
 * jobs go again, now finding no store (or a new one). */
void gn_store_drop(gn_port *p, gn_pstore *s);

/* Frees a store and what waits on it, at the program's end. */
void gn_store_free(gn_port *p, gn_pstore *s);

#endif
