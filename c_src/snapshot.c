/*
 * The GNS2 snapshot format and its CRC32 (see snapshot.h for the layout):
 * plain C, shared by the NIF store (store_snapshot_nif.c) and the port
 * program (c_src/port/: stream.c, restore.c, and record.c for the CRC of
 * its journal records).
 *
 * Locking: none. The CRC table is filled by gn_crc32_init() before any
 * reader exists (at library load, at the port program's start) and never
 * written again; everything
 * else works on the caller's bytes.
 */
#include <string.h>

#include "snapshot.h"

/* ------------------------------------------------------------------------ */
/* CRC32 (IEEE), slicing by 4                                                */

/* gn_crc_table[k] carries a byte through k more zero bytes, so that four
 * bytes take four lookups at once; [0] is the classic byte-wise table. */
static uint32_t gn_crc_table[4][256];

void gn_crc32_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        gn_crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 4; t++)
            gn_crc_table[t][i] =
                (gn_crc_table[t - 1][i] >> 8) ^ gn_crc_table[0][gn_crc_table[t - 1][i] & 0xFF];
}

uint32_t gn_crc32_update(uint32_t crc, const unsigned char *p, size_t n)
{
    const uint32_t(*t)[256] = gn_crc_table;
    uint32_t c = ~crc;
    while (n >= 4) {
        c ^= (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        c = t[3][c & 0xFF] ^ t[2][(c >> 8) & 0xFF] ^ t[1][(c >> 16) & 0xFF] ^ t[0][c >> 24];
        p += 4;
        n -= 4;
    }
    while (n--)
        c = t[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return ~c;
}

uint32_t gn_crc32(const unsigned char *p, size_t n)
{
    return gn_crc32_update(0, p, n);
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                   */

void gn_snap_put_header(unsigned char *p, int ordered, uint64_t count)
{
    memcpy(p, GN_SNAP_MAGIC, 4);
    p[4] = (unsigned char)ordered;
    gn_be_put(p + 5, count, 8);
}

unsigned char *gn_snap_put_entry(unsigned char *p, const unsigned char *key, uint32_t klen,
                                 const unsigned char *value, uint32_t vlen, uint64_t ttl)
{
    gn_be_put(p, klen, 4);
    memcpy(p + 4, key, klen);
    p += 4 + klen;
    gn_be_put(p, vlen, 4);
    memcpy(p + 4, value, vlen);
    p += 4 + vlen;
    gn_be_put(p, ttl, 8);
    return p + 8;
}

unsigned char *gn_snap_put_entry_bare(unsigned char *p, const unsigned char *key, uint32_t klen,
                                      const unsigned char *value, uint32_t vlen, uint64_t ttl)
{
    gn_be_put(p, klen, 4);
    p[4] = 131;
    memcpy(p + 5, key, klen - 1);
    p += 4 + klen;
    gn_be_put(p, vlen, 4);
    p[4] = 131;
    memcpy(p + 5, value, vlen - 1);
    p += 4 + vlen;
    gn_be_put(p, ttl, 8);
    return p + 8;
}

void gn_snap_seal(unsigned char *snap, size_t total)
{
    gn_be_put(snap + total - GN_SNAP_TRAILER, gn_crc32(snap, total - GN_SNAP_TRAILER), 4);
}

/* ------------------------------------------------------------------------ */
/* Reading                                                                   */

int gn_snap_check_header(const unsigned char *data, size_t len)
{
    return len >= GN_SNAP_HEADER + GN_SNAP_TRAILER && memcmp(data, GN_SNAP_MAGIC, 4) == 0 &&
           data[4] <= 1;
}

int gn_snap_open(const unsigned char *data, size_t len, gn_snap_info *info)
{
    if (!gn_snap_check_header(data, len) ||
        gn_crc32(data, len - GN_SNAP_TRAILER) !=
            (uint32_t)gn_be_get(data + len - GN_SNAP_TRAILER, 4))
        return 0;
    info->ordered = data[4];
    info->count = gn_be_get(data + 5, 8);
    info->entries.at = data + GN_SNAP_HEADER;
    info->entries.end = data + len - GN_SNAP_TRAILER;
    /* count comes from the bytes: an entry takes at least GN_SNAP_FRAMING */
    return info->count <= (uint64_t)(info->entries.end - info->entries.at) / GN_SNAP_FRAMING;
}

int gn_snap_next(gn_snap_iter *it, gn_snap_frame *f)
{
    const unsigned char *r = it->at, *end = it->end;
    if (end - r < 4 || (f->klen = gn_be_get(r, 4), (size_t)(end - r - 4) < f->klen))
        return 0;
    f->key = r + 4;
    r += 4 + f->klen;
    if (end - r < 4 || (f->vlen = gn_be_get(r, 4), (size_t)(end - r - 4) < f->vlen))
        return 0;
    f->value = r + 4;
    r += 4 + f->vlen;
    if (end - r < 8 || (f->ttl = (int64_t)gn_be_get(r, 8)) < 0)
        return 0;
    it->at = r + 8;
    return 1;
}
