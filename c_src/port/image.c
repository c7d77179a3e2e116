/*
 * The program's state as one buffer of records, and back (image.h).
 */
#include "image.h"
#include "dispatch.h"
#include "journal.h"
#include "record.h"
#include "state.h"

void gn_image_write(gn_port *p, gn_buf *out)
{
    int64_t now = gn_now_ms();
    size_t b;
    for (gn_pstore *s = gn_stores_first(&p->stores, &b); s; s = gn_stores_next(&p->stores, &b, s)) {
        gn_journal_open(out, s);
        for (gn_pnode *n = gn_pstore_at(s, 0); n;) {
            const gn_pnode *last = gn_journal_chunk(out, s, n, now);
            n = gn_pstore_after(s, GN_KENC(last), last->kenc_len, 0);
        }
    }
}

/* The next framed record of data[*at, len): 0 and its body parsed into *r,
 * -1 at the end, -2 if malformed. */
static int next_record(const unsigned char *data, size_t len, size_t *at, gn_record *r)
{
    if (*at == len)
        return -1;
    if (len - *at < 8)
        return -2;
    size_t body = (size_t)gn_be_get(data + *at, 4);
    uint32_t crc = (uint32_t)gn_be_get(data + *at + 4, 4);
    if (len - *at - 8 < body || gn_crc32(data + *at + 8, body) != crc ||
        gn_record_parse(data + *at + 8, body, r))
        return -2;
    *at += 8 + body;
    return 0;
}

int gn_image_load(gn_port *p, const unsigned char *data, size_t len)
{
    gn_record r;
    size_t at = 0;
    int rc;
    while ((rc = next_record(data, len, &at, &r)) == 0)
        if (r.op != GN_REC_OPEN && r.op != GN_REC_MANY)
            return -1;
    if (rc == -2)
        return -1;
    size_t b;
    for (gn_pstore *s = gn_stores_first(&p->stores, &b), *next; s; s = next) {
        next = gn_stores_next(&p->stores, &b, s);
        gn_store_drop(p, s);
    }
    at = 0;
    while (next_record(data, len, &at, &r) == 0)
        gn_replay_record(p, &r);
    return 0;
}
