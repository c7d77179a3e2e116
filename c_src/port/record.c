/*
 * Records (record.h): building their bodies and reading them back. The
 * CRC32 that guards each is snapshot.h's (gn_crc32).
 */
#include <string.h>

#include "record.h"

/* ------------------------------------------------------------------------ */
/* Records                                                                   */

void gn_rec_begin(gn_buf *b, size_t *mark, int op, const char *name, size_t name_len)
{
    *mark = b->len;
    gn_buf_be(b, 0, 8); /* length and CRC, filled in by gn_rec_end */
    gn_buf_byte(b, (unsigned char)op);
    gn_buf_be(b, name_len, 2);
    gn_buf_put(b, name, name_len);
}

void gn_rec_entry(gn_buf *b, const unsigned char *key, size_t key_len, const unsigned char *val,
                  size_t val_len, int64_t expires)
{
    gn_buf_be(b, key_len, 4);
    gn_buf_put(b, key, key_len);
    gn_buf_be(b, val_len, 4);
    gn_buf_put(b, val, val_len);
    gn_buf_be(b, (uint64_t)expires, 8);
}

void gn_rec_end(gn_buf *b, size_t mark)
{
    size_t body = b->len - mark - 8;
    uint32_t crc = gn_crc32(b->data + mark + 8, body);
    gn_be_put(b->data + mark, body, 4);
    gn_be_put(b->data + mark + 4, crc, 4);
}

int gn_entry_next(gn_entry_iter *it, const unsigned char **key, size_t *key_len,
                  const unsigned char **val, size_t *val_len, int64_t *expires)
{
    size_t left = (size_t)(it->end - it->at);
    if (left < 4)
        return -1;
    size_t kl = (size_t)gn_be_get(it->at, 4);
    if (left - 4 < kl || left - 4 - kl < 4)
        return -1;
    size_t vl = (size_t)gn_be_get(it->at + 4 + kl, 4);
    if (left - 8 - kl < vl || left - 8 - kl - vl < 8)
        return -1;
    *key = it->at + 4;
    *key_len = kl;
    *val = it->at + 8 + kl;
    *val_len = vl;
    *expires = (int64_t)gn_be_get(it->at + 8 + kl + vl, 8);
    it->at += 16 + kl + vl;
    return 0;
}

int gn_record_parse(const unsigned char *p, size_t n, gn_record *r)
{
    memset(r, 0, sizeof *r);
    if (n < 3)
        return -1;
    r->op = p[0];
    r->name_len = (size_t)gn_be_get(p + 1, 2);
    if (n - 3 < r->name_len)
        return -1;
    r->name = (const char *)p + 3;
    const unsigned char *f = p + 3 + r->name_len, *end = p + n;
    size_t left = (size_t)(end - f);
    switch (r->op) {
    case GN_REC_OPEN:
        if (left != 9)
            return -1;
        r->ordered = f[0];
        r->max_size = gn_be_get(f + 1, 8);
        return 0;
    case GN_REC_DROP:
    case GN_REC_CLEAR:
        return left == 0 ? 0 : -1;
    case GN_REC_PUT: {
        gn_entry_iter it = {f, end};
        if (gn_entry_next(&it, &r->key, &r->key_len, &r->val, &r->val_len, &r->expires))
            return -1;
        return it.at == end ? 0 : -1;
    }
    case GN_REC_DEL:
        if (left < 4 || left - 4 != gn_be_get(f, 4))
            return -1;
        r->key = f + 4;
        r->key_len = left - 4;
        return 0;
    case GN_REC_RESTORE:
        if (left < 9)
            return -1;
        r->ordered = f[0];
        r->max_size = gn_be_get(f + 1, 8);
        f += 9;
        left -= 9;
        /* fall through */
    case GN_REC_MANY: {
        if (left < 4)
            return -1;
        r->count = (uint32_t)gn_be_get(f, 4);
        r->entries = f + 4;
        r->entries_len = left - 4;
        /* check every entry now: applying never meets a bad one */
        gn_entry_iter it = {r->entries, end};
        const unsigned char *k, *v;
        size_t kl, vl;
        int64_t x;
        for (uint32_t i = 0; i < r->count; i++)
            if (gn_entry_next(&it, &k, &kl, &v, &vl, &x))
                return -1;
        return it.at == end ? 0 : -1;
    }
    case GN_REC_END:
        if (left != 8)
            return -1;
        r->records = gn_be_get(f, 8);
        return 0;
    case GN_REC_SYNC:
        if (left != 16 || r->name_len != 0)
            return -1;
        r->synced = gn_be_get(f, 8);
        r->at = gn_be_get(f + 8, 8);
        return 0;
    default:
        return -1;
    }
}
