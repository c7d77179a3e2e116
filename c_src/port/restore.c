/*
 * restore: a store made from a snapshot binary (GNS2, as the snapshot op
 * sends it). It runs a slice at a time, as a global job (its store does
 * not exist yet): the checksum (phase 0), then the entries, into a store
 * linked under its name only at the end (phase 1). The format is
 * snapshot.h's: its header check, CRC (here in slices) and entry iterator.
 */
#include <string.h>

#include "../snapshot.h"
#include "record.h"
#include "ops.h"
#include "reply.h"
#include "state.h"

typedef struct restore_job {
    gn_job job;
    gn_buf frame;   /* holds the binary from `base` on */
    size_t base;    /* where the binary starts in `frame` */
    size_t bin_len; /* the binary's length */
    size_t at;      /* how far the walk is in the binary */
    int phase;
    uint32_t crc;
    uint64_t left;     /* entries still to read */
    uint32_t recorded; /* entries in the journal record */
    int64_t now;
    gn_pstore *fresh; /* the new store */
    gn_buf record;    /* the journal record being built */
    size_t record_mark;
    uint64_t max_size;
    char name[1024];
    size_t name_len;
} restore_job;

static int restore_step(gn_port *p, gn_pstore *unused, gn_job *job, uint64_t deadline)
{
    (void)unused;
    restore_job *j = (restore_job *)job;
    const unsigned char *b = j->frame.data + j->base;
    size_t n = j->bin_len;
    gn_slice tag = gn_buf_slice(&j->job.tag);
    if (j->phase == 0) {
        size_t body = n - GN_SNAP_TRAILER;
        while (j->at < body && gn_now_ns() < deadline) {
            size_t take = body - j->at < (4u << 20) ? body - j->at : (4u << 20);
            j->crc = gn_crc32_update(j->crc, b + j->at, take);
            j->at += take;
        }
        if (j->at < body)
            return 0;
        if (j->crc != (uint32_t)gn_be_get(b + body, GN_SNAP_TRAILER)) {
            gn_reply_error(&p->out, &tag, "invalid_snapshot");
            return 1;
        }
        j->phase = 1;
        j->at = GN_SNAP_HEADER;
        j->left = gn_be_get(b + 5, 8);
        j->now = gn_now_ms();
        j->fresh = gn_pstore_new(j->name, j->name_len, b[4], j->max_size);
        if (gn_port_journal(p)) {
            gn_rec_begin(&j->record, &j->record_mark, GN_REC_RESTORE, j->name, j->name_len);
            gn_buf_byte(&j->record, b[4]);
            gn_buf_be(&j->record, j->max_size, 8);
            gn_buf_be(&j->record, 0, 4); /* the count, filled in at the end */
        }
    }
    gn_pstore *s = j->fresh;
    gn_snap_iter it = {b + j->at, b + n - GN_SNAP_TRAILER};
    for (uint32_t i = 0; j->left > 0; i++, j->left--) {
        if ((i & 1023) == 1023 && gn_now_ns() >= deadline) {
            j->at = (size_t)(it.at - b);
            return 0;
        }
        gn_snap_frame f;
        if (!gn_snap_next(&it, &f) || f.klen < 2 || f.vlen < 2 || f.key[0] != 131 ||
            f.value[0] != 131)
            goto bad; /* gn_snap_next also refuses a ttl past INT64_MAX */
        const unsigned char *k = f.key, *v = f.value;
        size_t kl = f.klen, vl = f.vlen;
        int64_t ttl = f.ttl;
        gn_etf ke = {k + 1, kl - 1, 0}, ve = {v + 1, vl - 1, 0};
        if (gn_etf_skip(&ke, NULL) || ke.at != ke.len || gn_etf_skip(&ve, NULL) || ve.at != ve.len)
            goto bad;
        size_t ix = 0;
        p->key.len = 0;
        if (gn_key_encode(k + 1, kl - 1, &ix, &p->key, gn_pstore_key_mode(s)))
            goto bad;
        /* a value must be a term the VM can decode, as the NIF store checks
         * with binary_to_term (atoms in UTF-8, no NaN, ...): the key
         * encoder is the one full validator here */
        ix = 0;
        p->val.len = 0;
        if (gn_key_encode(v + 1, vl - 1, &ix, &p->val, GN_KEY_EXACT) || ix != vl - 1)
            goto bad;
        int created;
        int64_t expires = ttl ? j->now + ttl : 0;
        gn_pstore_put(s, p->key.data, p->key.len, k + 1, kl - 1, v + 1, vl - 1, expires, &created);
        if (j->record.data) {
            gn_rec_entry(&j->record, k + 1, kl - 1, v + 1, vl - 1, expires);
            j->recorded++;
        }
    }
    if (!gn_snap_at_end(&it))
        goto bad;
    if (gn_stores_find(&p->stores, j->name, j->name_len)) {
        gn_reply_error(&p->out, &tag, "already_exists"); /* made while this ran */
        return 1;
    }
    if (j->max_size && gn_pstore_size(s) > j->max_size) {
        gn_reply_error(&p->out, &tag, "full");
        return 1;
    }
    gn_stores_add(&p->stores, s);
    j->fresh = NULL;
    gn_buf *jr = gn_port_journal(p);
    if (jr && j->record.data) {
        /* the count follows length (4) | CRC (4) | op (1) | name | ordered | max_size */
        size_t count_at = j->record_mark + 8 + 1 + 2 + j->name_len + 1 + 8;
        gn_be_put(j->record.data + count_at, j->recorded, 4);
        gn_rec_end(&j->record, j->record_mark);
        gn_buf_put(jr, j->record.data, j->record.len);
    }
    gn_reply_atom(&p->out, &tag, "ok");
    return 1;
bad:
    gn_reply_error(&p->out, &tag, "invalid_snapshot");
    return 1;
}

static void restore_release(gn_job *job)
{
    restore_job *j = (restore_job *)job;
    gn_buf_free(&j->frame);
    gn_buf_free(&j->record);
    if (j->fresh)
        gn_pstore_free(j->fresh);
}

void gn_op_restore(gn_port *p, gn_request *r, gn_pstore *unused)
{
    (void)unused;
    gn_slice bin;
    uint64_t cap;
    if (!r->has_name || gn_etf_binary(&r->args, &bin) || gn_arg_cap(r, &cap))
        return gn_reply_badarg(&p->out, &r->tag, "expected a store name, Binary, MaxSize");
    if (gn_stores_find(&p->stores, r->name, r->name_len))
        return gn_reply_error(&p->out, &r->tag, "already_exists");
    if (!gn_snap_check_header(bin.data, bin.len))
        return gn_reply_error(&p->out, &r->tag, "invalid_snapshot");
    restore_job *j = gn_job_new(sizeof *j, restore_step, restore_release);
    gn_buf_put(&j->job.tag, r->tag.data, r->tag.len);
    memcpy(j->name, r->name, r->name_len);
    j->name_len = r->name_len;
    j->max_size = cap;
    j->bin_len = bin.len;
    if (gn_port_take_frame(p, r->args.buf, &j->frame)) /* as put_many does */
        j->base = (size_t)(bin.data - j->frame.data);
    else
        gn_buf_put(&j->frame, bin.data, bin.len);
    if (restore_step(p, NULL, &j->job, gn_now_ns() + GN_SLICE_NS))
        gn_job_free(&j->job);
    else
        gn_jobs_push_global(&p->jobs, &j->job);
}
