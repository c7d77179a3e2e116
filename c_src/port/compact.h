/*
 * Compaction: a fuzzy snapshot of every store, written a slice at a time
 * as a global job while writes go on (durable.h says why that is safe).
 */
#ifndef GN_PORT_COMPACT_H
#define GN_PORT_COMPACT_H

#include "port.h"

/* Starts a compaction unless one runs (it answers every waiter): the
 * `compact` op, a journal grown too big, or one that had to wait
 * (p->compact_pending). */
void gn_compact_start(gn_port *p);

#endif
