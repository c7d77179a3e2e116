/*
 * Journal records of store changes (journal.h).
 */
#include "journal.h"
#include "record.h"
#include "state.h"

void gn_journal_open(gn_buf *j, const gn_pstore *s)
{
    if (!j)
        return;
    size_t mark;
    gn_rec_begin(j, &mark, GN_REC_OPEN, s->name, s->name_len);
    gn_buf_byte(j, (unsigned char)s->ordered);
    gn_buf_be(j, s->max_size, 8);
    gn_rec_end(j, mark);
}

void gn_journal_bare(gn_buf *j, const gn_pstore *s, int op)
{
    if (!j)
        return;
    size_t mark;
    gn_rec_begin(j, &mark, op, s->name, s->name_len);
    gn_rec_end(j, mark);
}

void gn_journal_put(gn_buf *j, const gn_pstore *s, const gn_pnode *n)
{
    if (!j)
        return;
    size_t mark;
    gn_rec_begin(j, &mark, GN_REC_PUT, s->name, s->name_len);
    gn_rec_entry(j, GN_KRAW(n), n->kraw_len, GN_VAL(n), n->val_len, n->expires);
    gn_rec_end(j, mark);
}

void gn_journal_del(gn_buf *j, const gn_pstore *s, const unsigned char *kraw, size_t len)
{
    if (!j)
        return;
    size_t mark;
    gn_rec_begin(j, &mark, GN_REC_DEL, s->name, s->name_len);
    gn_buf_be(j, len, 4);
    gn_buf_put(j, kraw, len);
    gn_rec_end(j, mark);
}

const gn_pnode *gn_journal_chunk(gn_buf *recs, const gn_pstore *s, gn_pnode *n, int64_t now)
{
    size_t mark, count_at;
    uint32_t count = 0;
    gn_rec_begin(recs, &mark, GN_REC_MANY, s->name, s->name_len);
    count_at = recs->len;
    gn_buf_be(recs, 0, 4);
    const gn_pnode *last = NULL;
    for (; n && count < GN_CHUNK_ENTRIES; n = gn_pstore_after(s, GN_KENC(n), n->kenc_len, 0)) {
        last = n;
        if (n->expires && n->expires <= now)
            continue;
        gn_rec_entry(recs, GN_KRAW(n), n->kraw_len, GN_VAL(n), n->val_len, n->expires);
        count++;
    }
    gn_be_put(recs->data + count_at, count, 4);
    gn_rec_end(recs, mark);
    return last;
}
