/*
 * The journal records of changes to a store (the layouts are in
 * durable.h), appended to a buffer: the journal's, or a snapshot's being
 * written. A NULL buffer (no data directory, or a replay) records nothing.
 */
#ifndef GN_PORT_JOURNAL_H
#define GN_PORT_JOURNAL_H

#include <stdint.h>

#include "buf.h"
#include "pstore.h"

/* OPEN: the store, its type and cap. */
void gn_journal_open(gn_buf *j, const gn_pstore *s);
/* A record with no fields: GN_REC_CLEAR or GN_REC_DROP. */
void gn_journal_bare(gn_buf *j, const gn_pstore *s, int op);
/* PUT: the entry `n` as it is now. */
void gn_journal_put(gn_buf *j, const gn_pstore *s, const gn_pnode *n);
/* DEL: the key, as its ETF. */
void gn_journal_del(gn_buf *j, const gn_pstore *s, const unsigned char *kraw, size_t len);

/* MANY: up to GN_CHUNK_ENTRIES of s's entries from `n` on, in key order,
 * leaving out those expired at `now`; returns the last entry walked (a
 * snapshot, or a compaction, resumes after it). */
const gn_pnode *gn_journal_chunk(gn_buf *j, const gn_pstore *s, gn_pnode *n, int64_t now);

#endif
