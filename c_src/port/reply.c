/*
 * Frames to the VM: replies and events (reply.h), each framed as
 * PROTOCOL.md says and appended to the output buffer.
 */
#include "diag.h"
#include "reply.h"

size_t gn_frame_begin(gn_buf *out, const unsigned char *tag, size_t tag_len)
{
    size_t mark = out->len;
    gn_buf_be(out, 0, 4);
    gn_buf_be(out, tag_len ? tag_len + 1 : 0, 2);
    if (tag_len) {
        gn_buf_byte(out, 131);
        gn_buf_put(out, tag, tag_len);
    }
    gn_enc_version(out);
    return mark;
}

void gn_frame_end(gn_buf *out, size_t mark)
{
    gn_be_put(out->data + mark, out->len - mark - 4, 4);
}

size_t gn_error_begin(gn_buf *out, const unsigned char *tag, size_t tag_len)
{
    size_t m = gn_frame_begin(out, tag, tag_len);
    gn_enc_tuple(out, 2);
    gn_enc_atom(out, "error");
    return m;
}

void gn_reply_atom(gn_buf *out, const gn_slice *tag, const char *atom)
{
    size_t m = gn_frame_begin(out, tag->data, tag->len);
    gn_enc_atom(out, atom);
    gn_frame_end(out, m);
}

void gn_reply_int(gn_buf *out, const gn_slice *tag, int64_t v)
{
    size_t m = gn_frame_begin(out, tag->data, tag->len);
    gn_enc_int(out, v);
    gn_frame_end(out, m);
}

void gn_reply_error(gn_buf *out, const gn_slice *tag, const char *reason)
{
    size_t m = gn_error_begin(out, tag->data, tag->len);
    gn_enc_atom(out, reason);
    gn_frame_end(out, m);
}

void gn_error_text(gn_buf *out, const gn_slice *tag, const char *kind, const char *text)
{
    size_t m = gn_error_begin(out, tag ? tag->data : NULL, tag ? tag->len : 0);
    gn_enc_tuple(out, 2);
    gn_enc_atom(out, kind);
    gn_enc_string(out, text);
    gn_frame_end(out, m);
}

void gn_reply_badarg(gn_buf *out, const gn_slice *tag, const char *why)
{
    gn_error_text(out, tag, "badarg", why);
}

void gn_enc_entry(gn_buf *b, const gn_pnode *n)
{
    gn_enc_tuple(b, 2);
    gn_buf_put(b, GN_KRAW(n), n->kraw_len);
    gn_buf_put(b, GN_VAL(n), n->val_len);
}

void gn_reply_found(gn_buf *out, const gn_slice *tag, const gn_pnode *n, int entry)
{
    size_t m = gn_frame_begin(out, tag->data, tag->len);
    if (!n) {
        gn_enc_atom(out, "error");
    } else {
        gn_enc_tuple(out, 2);
        gn_enc_atom(out, "ok");
        if (entry)
            gn_enc_entry(out, n);
        else
            gn_buf_put(out, GN_VAL(n), n->val_len);
    }
    gn_frame_end(out, m);
}

void gn_event_log(gn_buf *out, const char *level, const char *text)
{
    size_t m = gn_frame_begin(out, NULL, 0);
    gn_enc_tuple(out, 3);
    gn_enc_atom(out, "log");
    gn_enc_atom(out, level);
    gn_enc_string(out, text);
    gn_frame_end(out, m);
    gn_diag("%s", text);
}

void gn_event_bad_request(gn_buf *out, const char *why)
{
    gn_error_text(out, NULL, "bad_request", why);
    gn_diag("bad request: %s", why);
}

void gn_tags_add(gn_buf *tags, const gn_slice *tag)
{
    gn_buf_be(tags, tag->len, 2);
    gn_buf_put(tags, tag->data, tag->len);
}

void gn_tags_reply(gn_buf *out, gn_buf *tags, const char *error)
{
    for (size_t at = 0; at + 2 <= tags->len;) {
        gn_slice tag = {tags->data + at + 2, (size_t)gn_be_get(tags->data + at, 2)};
        if (error)
            gn_reply_error(out, &tag, error);
        else
            gn_reply_atom(out, &tag, "ok");
        at += 2 + tag.len;
    }
    tags->len = 0;
}
