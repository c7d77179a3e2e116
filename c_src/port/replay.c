/*
 * Loading the data directory (gn_port_load): the snapshot's and journals'
 * records replayed into the stores, then the `ready` event, or the fatal
 * load error.
 */
#include <stdio.h>
#include <string.h>

#include "diag.h"
#include "dispatch.h"
#include "reply.h"
#include "state.h"

static void apply_entry(gn_port *p, gn_pstore *s, const unsigned char *k, size_t kl,
                        const unsigned char *v, size_t vl, int64_t expires, int64_t now)
{
    size_t ix = 0;
    p->key.len = 0;
    if (gn_key_encode(k, kl, &ix, &p->key, gn_pstore_key_mode(s)) || ix != kl)
        return; /* cannot happen: it was checked when it was written */
    if (expires && expires <= now) {
        gn_pstore_delete(s, p->key.data, p->key.len);
        return;
    }
    int created;
    gn_pstore_put(s, p->key.data, p->key.len, k, kl, v, vl, expires, &created);
}

void gn_replay_record(gn_port *p, const gn_record *r)
{
    int64_t now = gn_now_ms();
    gn_pstore *s = gn_stores_find(&p->stores, r->name, r->name_len);
    switch (r->op) {
    case GN_REC_OPEN:
        if (!s)
            gn_stores_add(&p->stores, gn_pstore_new(r->name, r->name_len, r->ordered, r->max_size));
        return;
    case GN_REC_RESTORE:
        if (s)
            gn_store_drop(p, s);
        s = gn_pstore_new(r->name, r->name_len, r->ordered, r->max_size);
        gn_stores_add(&p->stores, s);
        break;
    case GN_REC_DROP:
        if (s)
            gn_store_drop(p, s);
        return;
    default:
        break;
    }
    if (!s)
        return; /* a write to a store dropped later */
    if (r->op == GN_REC_CLEAR) {
        gn_pstore_clear(s);
    } else if (r->op == GN_REC_PUT) {
        apply_entry(p, s, r->key, r->key_len, r->val, r->val_len, r->expires, now);
    } else if (r->op == GN_REC_DEL) {
        size_t ix = 0;
        p->key.len = 0;
        if (!gn_key_encode(r->key, r->key_len, &ix, &p->key, gn_pstore_key_mode(s)))
            gn_pstore_delete(s, p->key.data, p->key.len);
    } else if (r->op == GN_REC_MANY || r->op == GN_REC_RESTORE) {
        gn_entry_iter it = {r->entries, r->entries + r->entries_len};
        const unsigned char *k, *v;
        size_t kl, vl;
        int64_t expires;
        while (gn_entry_next(&it, &k, &kl, &v, &vl, &expires) == 0)
            apply_entry(p, s, k, kl, v, vl, expires, now);
    }
    while (gn_garbage_step(100000))
        ; /* replay frees as it goes */
}

/* The fatal load event: {error, {Kind, Path}}, {error, {corrupt_journal,
 * Path, {From, To}}} or {error, {io_error, Text}}. */
static void event_load_error(gn_port *p, const gn_load_error *e)
{
    const char *text = e->kind && strcmp(e->kind, "io_error") ? e->path : e->text;
    const char *kind = e->kind ? e->kind : "io_error";
    size_t m = gn_error_begin(&p->out, NULL, 0);
    if (!strcmp(kind, "corrupt_journal")) {
        gn_enc_tuple(&p->out, 3);
        gn_enc_atom(&p->out, kind);
        gn_enc_string(&p->out, text);
        gn_enc_tuple(&p->out, 2);
        gn_enc_int(&p->out, (int64_t)e->from);
        gn_enc_int(&p->out, (int64_t)e->to);
    } else {
        gn_enc_tuple(&p->out, 2);
        gn_enc_atom(&p->out, kind);
        gn_enc_string(&p->out, text);
    }
    gn_frame_end(&p->out, m);
    if (!strcmp(kind, "corrupt_journal"))
        gn_diag("%s: %s: bytes %llu to %llu are damaged, before synced data: not loaded", kind,
                text, (unsigned long long)e->from, (unsigned long long)e->to);
    else
        gn_diag("%s: %s: not loaded", kind, text);
}

static void apply_record(void *ctx, const gn_record *r)
{
    gn_replay_record(ctx, r);
}

int gn_port_load(gn_port *p)
{
    uint64_t dropped = 0;
    if (p->dir) {
        gn_load_error err;
        p->replaying = 1;
        p->d = gn_durable_open(p->dir, p->sync, apply_record, p, &dropped, &err);
        p->replaying = 0;
        if (!p->d) {
            event_load_error(p, &err);
            return -1;
        }
        if (dropped) {
            char text[200];
            snprintf(
                text, sizeof text,
                "dropped %llu bytes of a torn journal tail (after the last synced offset) in %s",
                (unsigned long long)dropped, p->dir);
            gn_event_log(&p->out, "warning", text);
        }
    }
    uint64_t entries = 0;
    size_t b;
    for (gn_pstore *s = gn_stores_first(&p->stores, &b); s; s = gn_stores_next(&p->stores, &b, s))
        entries += gn_pstore_size(s);
    size_t m = gn_frame_begin(&p->out, NULL, 0);
    gn_enc_tuple(&p->out, 2);
    gn_enc_atom(&p->out, "ready");
    gn_enc_map(&p->out, 3);
    gn_enc_atom(&p->out, "stores");
    gn_enc_int(&p->out, (int64_t)p->stores.count);
    gn_enc_atom(&p->out, "entries");
    gn_enc_int(&p->out, (int64_t)entries);
    gn_enc_atom(&p->out, "dropped_bytes");
    gn_enc_int(&p->out, (int64_t)dropped);
    gn_frame_end(&p->out, m);
    return 0;
}
