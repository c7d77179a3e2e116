/*
 * The records of the journal and the snapshot file (their framing and
 * use are described in durable.h): the ops and their fields, building a
 * record body, parsing one. The CRC32 that guards each is snapshot.h's
 * (gn_crc32, gn_crc32_update; buf.h includes it), whose table main()
 * builds at start (gn_crc32_init).
 */
#ifndef GN_PORT_RECORD_H
#define GN_PORT_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

enum {
    GN_REC_OPEN = 'O',    /* ordered (1) | max_size (8) */
    GN_REC_DROP = 'X',    /* */
    GN_REC_CLEAR = 'C',   /* */
    GN_REC_PUT = 'P',     /* entry */
    GN_REC_DEL = 'D',     /* key length (4) | key */
    GN_REC_MANY = 'M',    /* count (4) | entries */
    GN_REC_RESTORE = 'R', /* ordered (1) | max_size (8) | count (4) | entries */
    GN_REC_END = 'E',     /* count of records before it (8); snapshots only */
    GN_REC_SYNC = 'S',    /* synced offset (8) | own offset (8); journals only */
};
/* entry: key length (4) | key ETF | value length (4) | value ETF | expires (8) */

typedef struct gn_record {
    int op;
    const char *name;
    size_t name_len;
    int ordered;
    uint64_t max_size;
    const unsigned char *key, *val;
    size_t key_len, val_len;
    int64_t expires;
    uint32_t count;               /* MANY, RESTORE */
    const unsigned char *entries; /* MANY, RESTORE: `count` entries */
    size_t entries_len;
    uint64_t records;    /* END */
    uint64_t synced, at; /* SYNC */
} gn_record;

/* Reads the next entry of a MANY or RESTORE record; 0, or -1 at the end. */
typedef struct gn_entry_iter {
    const unsigned char *at, *end;
} gn_entry_iter;
int gn_entry_next(gn_entry_iter *it, const unsigned char **key, size_t *key_len,
                  const unsigned char **val, size_t *val_len, int64_t *expires);

/* Record bodies, appended to `b` (framing is added by the writers). */
void gn_rec_begin(gn_buf *b, size_t *mark, int op, const char *name, size_t name_len);
void gn_rec_entry(gn_buf *b, const unsigned char *key, size_t key_len, const unsigned char *val,
                  size_t val_len, int64_t expires);
/* Fills in the length and CRC of the record begun at `mark`. */
void gn_rec_end(gn_buf *b, size_t mark);

/* Parses a record body; 0, or -1 if it is malformed. */
int gn_record_parse(const unsigned char *p, size_t n, gn_record *r);

#endif
