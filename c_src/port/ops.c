/*
 * The ops answered at once: on a store (put, get, counters, navigation,
 * info) and global (sync, stop, stores, encode_key).
 */
#include <string.h>

#include "journal.h"
#include "keyenc.h"
#include "ops.h"
#include "reply.h"
#include "state.h"

static void put(gn_port *p, gn_request *r, gn_pstore *s, int only_new)
{
    gn_slice key, val;
    int64_t ttl;
    if (gn_arg_key(r, s, &p->key, &key) || gn_arg_value(r, &val) || gn_arg_int(r, &ttl) || ttl < 0)
        return gn_reply_badarg(&p->out, &r->tag, "expected Key, Value, TtlMs");
    gn_pnode *n = gn_pstore_find(s, p->key.data, p->key.len);
    if (n && only_new)
        return gn_reply_atom(&p->out, &r->tag, "false");
    if (!n && gn_pstore_full(s, 1))
        return gn_reply_error(&p->out, &r->tag, "full");
    int created;
    n = gn_pstore_put(s, p->key.data, p->key.len, key.data, key.len, val.data, val.len,
                      ttl ? gn_now_ms() + ttl : 0, &created);
    gn_journal_put(gn_port_journal(p), s, n);
    gn_reply_atom(&p->out, &r->tag, only_new ? "true" : "ok");
}

void gn_op_put(gn_port *p, gn_request *r, gn_pstore *s)
{
    put(p, r, s, 0);
}

void gn_op_put_new(gn_port *p, gn_request *r, gn_pstore *s)
{
    put(p, r, s, 1);
}

static void get(gn_port *p, gn_request *r, gn_pstore *s, int take)
{
    gn_slice key;
    if (gn_arg_key(r, s, &p->key, &key))
        return gn_reply_badarg(&p->out, &r->tag, "expected Key");
    gn_pnode *n = gn_pstore_find(s, p->key.data, p->key.len);
    gn_reply_found(&p->out, &r->tag, n, 0);
    if (n && take) {
        gn_journal_del(gn_port_journal(p), s, GN_KRAW(n), n->kraw_len);
        gn_pstore_delete(s, p->key.data, p->key.len);
    }
}

void gn_op_get(gn_port *p, gn_request *r, gn_pstore *s)
{
    get(p, r, s, 0);
}

void gn_op_take(gn_port *p, gn_request *r, gn_pstore *s)
{
    get(p, r, s, 1);
}

void gn_op_delete_key(gn_port *p, gn_request *r, gn_pstore *s)
{
    gn_slice key;
    if (gn_arg_key(r, s, &p->key, &key))
        return gn_reply_badarg(&p->out, &r->tag, "expected Key");
    if (gn_pstore_delete(s, p->key.data, p->key.len))
        gn_journal_del(gn_port_journal(p), s, key.data, key.len);
    gn_reply_atom(&p->out, &r->tag, "ok");
}

void gn_op_update_counter(gn_port *p, gn_request *r, gn_pstore *s)
{
    gn_slice key;
    int64_t incr, dflt, cur, next;
    if (gn_arg_key(r, s, &p->key, &key) || gn_arg_int(r, &incr) || gn_arg_int(r, &dflt))
        return gn_reply_badarg(&p->out, &r->tag, "expected Key, Incr, Default (64-bit integers)");
    gn_pnode *n = gn_pstore_find(s, p->key.data, p->key.len);
    if (n) {
        gn_etf v = {GN_VAL(n), n->val_len, 0};
        if (gn_etf_int64(&v, &cur) || v.at != v.len)
            return gn_reply_error(&p->out, &r->tag, "not_integer");
    } else {
        if (gn_pstore_full(s, 1))
            return gn_reply_error(&p->out, &r->tag, "full");
        cur = dflt;
    }
    if (__builtin_add_overflow(cur, incr, &next))
        return gn_reply_error(&p->out, &r->tag, "not_integer");
    p->val.len = 0;
    gn_enc_int(&p->val, next);
    if (n) {
        gn_pstore_set_value(s, n, p->val.data, p->val.len, n->expires);
    } else {
        int created;
        n = gn_pstore_put(s, p->key.data, p->key.len, key.data, key.len, p->val.data, p->val.len, 0,
                          &created);
    }
    gn_journal_put(gn_port_journal(p), s, n);
    gn_reply_int(&p->out, &r->tag, next);
}

void gn_op_size(gn_port *p, gn_request *r, gn_pstore *s)
{
    gn_reply_int(&p->out, &r->tag, (int64_t)gn_pstore_size(s));
}

void gn_op_clear(gn_port *p, gn_request *r, gn_pstore *s)
{
    gn_pstore_clear(s);
    gn_journal_bare(gn_port_journal(p), s, GN_REC_CLEAR);
    gn_reply_atom(&p->out, &r->tag, "ok");
}

void gn_op_info(gn_port *p, gn_request *r, gn_pstore *s)
{
    size_t m = gn_frame_begin(&p->out, r->tag.data, r->tag.len);
    gn_enc_map(&p->out, 4);
    gn_enc_atom(&p->out, "type");
    gn_enc_atom(&p->out, s->ordered ? "ordered_set" : "set");
    gn_enc_atom(&p->out, "size");
    gn_enc_int(&p->out, (int64_t)gn_pstore_size(s));
    gn_enc_atom(&p->out, "memory");
    gn_enc_int(&p->out, (int64_t)s->memory);
    gn_enc_atom(&p->out, "max_size");
    if (s->max_size)
        gn_enc_int(&p->out, (int64_t)s->max_size);
    else
        gn_enc_atom(&p->out, "infinity");
    gn_frame_end(&p->out, m);
}

void gn_op_step(gn_port *p, gn_request *r, gn_pstore *s)
{
    char dir[1024];
    size_t dlen;
    gn_slice key;
    if (gn_etf_atom(&r->args, dir, &dlen) || dlen > 5)
        return gn_reply_badarg(&p->out, &r->tag, "expected first, last, next or prev");
    dir[dlen] = 0;
    gn_pnode *n;
    if (!strcmp(dir, "first") || !strcmp(dir, "last")) {
        if (gn_etf_skip(&r->args, NULL))
            return gn_reply_badarg(&p->out, &r->tag, "expected a key");
        /* in an empty store, both are NULL (the last is at SIZE_MAX) */
        n = gn_pstore_at(s, dir[0] == 'f' ? 0 : gn_pstore_size(s) - 1);
    } else if (!strcmp(dir, "next") || !strcmp(dir, "prev")) {
        if (gn_arg_key(r, s, &p->key, &key))
            return gn_reply_badarg(&p->out, &r->tag, "expected a key");
        n = dir[0] == 'n' ? gn_pstore_after(s, p->key.data, p->key.len, 0)
                          : gn_pstore_before(s, p->key.data, p->key.len, 0);
    } else {
        return gn_reply_badarg(&p->out, &r->tag, "expected first, last, next or prev");
    }
    gn_reply_found(&p->out, &r->tag, n, 1);
}

void gn_op_rank(gn_port *p, gn_request *r, gn_pstore *s)
{
    gn_slice key;
    if (gn_arg_key(r, s, &p->key, &key))
        return gn_reply_badarg(&p->out, &r->tag, "expected Key");
    size_t m = gn_frame_begin(&p->out, r->tag.data, r->tag.len);
    if (gn_pstore_find(s, p->key.data, p->key.len)) {
        gn_enc_tuple(&p->out, 2);
        gn_enc_atom(&p->out, "ok");
        gn_enc_int(&p->out, (int64_t)gn_pstore_rank(s, p->key.data, p->key.len));
    } else {
        gn_enc_atom(&p->out, "error");
    }
    gn_frame_end(&p->out, m);
}

void gn_op_at(gn_port *p, gn_request *r, gn_pstore *s)
{
    int64_t i;
    if (gn_arg_int(r, &i))
        return gn_reply_badarg(&p->out, &r->tag, "expected Index (a 64-bit integer)");
    int64_t size = (int64_t)gn_pstore_size(s);
    if (i < 0)
        i += size;
    gn_reply_found(&p->out, &r->tag, i >= 0 ? gn_pstore_at(s, (size_t)i) : NULL, 1);
}

/* ------------------------------------------------------------------------ */
/* Global ops                                                                */

void gn_op_sync(gn_port *p, gn_request *r, gn_pstore *s)
{
    (void)s;
    /* an fdatasync in flight may fail: the answer waits for it (a second
     * one now could succeed on pages the first found bad) */
    if (p->d && gn_durable_sync_inflight(p->d))
        return gn_tags_add(&p->sync_waiters, &r->tag);
    if (p->d && (gn_durable_commit(p->d) || gn_durable_sync_now(p->d)))
        return; /* the journal failed: no answer, the program stops */
    gn_reply_atom(&p->out, &r->tag, "ok");
}

void gn_op_stop(gn_port *p, gn_request *r, gn_pstore *s)
{
    (void)r;
    (void)s;
    p->stopping = 1; /* main.c ends the program as at the end of input */
}

void gn_op_stores(gn_port *p, gn_request *r, gn_pstore *s)
{
    size_t m = gn_frame_begin(&p->out, r->tag.data, r->tag.len);
    if (p->stores.count)
        gn_enc_list(&p->out, (uint32_t)p->stores.count);
    size_t b;
    for (s = gn_stores_first(&p->stores, &b); s; s = gn_stores_next(&p->stores, &b, s)) {
        gn_enc_tuple(&p->out, 2);
        gn_enc_atom_len(&p->out, s->name, s->name_len);
        gn_enc_atom(&p->out, s->ordered ? "ordered_set" : "set");
    }
    gn_enc_nil(&p->out);
    gn_frame_end(&p->out, m);
}

void gn_op_encode_key(gn_port *p, gn_request *r, gn_pstore *s)
{
    (void)s;
    char mode[1024];
    size_t mlen;
    gn_slice raw;
    size_t at = r->args.at;
    if (r->nargs != 2 || gn_etf_skip(&r->args, &raw) || gn_etf_atom(&r->args, mode, &mlen) ||
        mlen > 5)
        return gn_reply_badarg(&p->out, &r->tag, "expected encode_key, _, Key, eq | exact");
    mode[mlen] = 0;
    p->key.len = 0;
    if ((strcmp(mode, "eq") && strcmp(mode, "exact")) ||
        gn_key_encode(r->args.buf, r->args.len, &at, &p->key,
                      mode[1] == 'q' ? GN_KEY_EQ : GN_KEY_EXACT))
        return gn_reply_badarg(&p->out, &r->tag, "expected encode_key, _, Key, eq | exact");
    size_t m = gn_frame_begin(&p->out, r->tag.data, r->tag.len);
    gn_enc_binary(&p->out, p->key.data, p->key.len);
    gn_frame_end(&p->out, m);
}
