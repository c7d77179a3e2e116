/*
 * The GNS2 snapshot format, its CRC32 and big-endian helpers: plain C (no
 * erl_nif.h), so that the port program can link snapshot.c as the NIF
 * store does. Nothing here allocates or locks; the one shared state is the
 * CRC table, written once by gn_crc32_init() and only read after.
 *
 * Format (all integers big endian):
 *
 *   "GNS2" | type (1: 0 set, 1 ordered_set) | count (8)
 *   count x ( klen (4) | key ETF | vlen (4) | value ETF | ttl (8) )
 *   CRC32 (4) of everything before it
 *
 * The key and value are external term format encodings, version byte (131)
 * included; ttl is the time to live left in ms when the snapshot was taken,
 * 0 for none (a value past INT64_MAX is malformed). Entries come in the
 * store's key order, but a reader may not rely on it.
 *
 * Writing: size the snapshot (GN_SNAP_HEADER + GN_SNAP_TRAILER +
 * gn_snap_entry_size() for each entry), put the header, each entry, then
 * seal it (gn_snap_seal), or, for a snapshot written in parts, put the CRC
 * of all the parts (gn_crc32_update) with gn_be_put(p, crc, 4).
 *
 * Reading: gn_snap_open() checks the header and the CRC and gives an
 * iterator over the entries; gn_snap_next() frames one entry at a time (the
 * ETF is not checked here); gn_snap_at_end() says whether the entries end
 * where the CRC begins. A reader that checks the CRC itself, in slices, may
 * use gn_snap_check_header() and start an iterator at GN_SNAP_HEADER.
 */
#ifndef GN_SNAPSHOT_H
#define GN_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------------ */
/* Big endian                                                                */

/* Writes the low `bytes` bytes of v at p, most significant first. */
static inline void gn_be_put(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)(v & 0xFF);
}

/* Reads `bytes` bytes at p, most significant first. */
static inline uint64_t gn_be_get(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = (v << 8) | p[i];
    return v;
}

/* ------------------------------------------------------------------------ */
/* CRC32 (IEEE 802.3, as zlib's crc32)                                       */

/* Builds the table. Call once before any other CRC call, and before any
 * other thread may make one: the NIF library does at load, a program at
 * start. */
void gn_crc32_init(void);

/* The CRC of p[0, n) continued from `crc`, the CRC of what came before it
 * (0 for nothing): gn_crc32_update(gn_crc32_update(0, a, n), b, m) is the
 * CRC of a then b. */
uint32_t gn_crc32_update(uint32_t crc, const unsigned char *p, size_t n);

/* The CRC of p[0, n). */
uint32_t gn_crc32(const unsigned char *p, size_t n);

/* ------------------------------------------------------------------------ */
/* GNS2                                                                      */

#define GN_SNAP_MAGIC "GNS2"
#define GN_SNAP_HEADER 13  /* magic, type, count */
#define GN_SNAP_TRAILER 4  /* the CRC */
#define GN_SNAP_FRAMING 16 /* an entry's bytes besides its ETF: klen, vlen, ttl */

/* An entry's bytes, for klen and vlen bytes of key and value ETF. */
static inline size_t gn_snap_entry_size(size_t klen, size_t vlen)
{
    return GN_SNAP_FRAMING + klen + vlen;
}

/* Writes the header (GN_SNAP_HEADER bytes) at p. */
void gn_snap_put_header(unsigned char *p, int ordered, uint64_t count);

/* Writes one entry at p (gn_snap_entry_size(klen, vlen) bytes); returns
 * the byte after it. */
unsigned char *gn_snap_put_entry(unsigned char *p, const unsigned char *key, uint32_t klen,
                                 const unsigned char *value, uint32_t vlen, uint64_t ttl);

/* The same, for a key and value ETF held without their version byte:
 * writes the 131 before each (klen and vlen count it, so the entry takes
 * gn_snap_entry_size(klen, vlen) bytes, and klen, vlen >= 1). */
unsigned char *gn_snap_put_entry_bare(unsigned char *p, const unsigned char *key, uint32_t klen,
                                      const unsigned char *value, uint32_t vlen, uint64_t ttl);

/* Writes the CRC of snap[0, total - GN_SNAP_TRAILER) in its last 4 bytes. */
void gn_snap_seal(unsigned char *snap, size_t total);

/* Whether data[0, len) is long enough for a header and a trailer, starts
 * with the magic and has a known type. Checks no CRC. */
int gn_snap_check_header(const unsigned char *data, size_t len);

/* The entries of a snapshot, from `at` to `end` (where the CRC begins). */
typedef struct gn_snap_iter {
    const unsigned char *at, *end;
} gn_snap_iter;

/* One entry, pointing into the snapshot. */
typedef struct gn_snap_frame {
    const unsigned char *key, *value; /* ETF, version byte included */
    size_t klen, vlen;
    int64_t ttl; /* ms left; 0: none */
} gn_snap_frame;

/* A whole snapshot's header, checked. */
typedef struct gn_snap_info {
    int ordered;
    uint64_t count; /* as the header says; at most what the bytes can hold */
    gn_snap_iter entries;
} gn_snap_info;

/* Checks the header, the CRC, and that `count` entries could fit in the
 * bytes; fills *info. Returns 1 if so, 0 for an invalid snapshot. */
int gn_snap_open(const unsigned char *data, size_t len, gn_snap_info *info);

/* Frames the next entry into *f and moves past it. Returns 1, or 0 when
 * the bytes left do not hold a whole entry (or its ttl is past INT64_MAX):
 * the snapshot is invalid. */
int gn_snap_next(gn_snap_iter *it, gn_snap_frame *f);

/* Whether every entry has been read: the entries end where the CRC
 * begins. */
static inline int gn_snap_at_end(const gn_snap_iter *it)
{
    return it->at == it->end;
}

#endif
