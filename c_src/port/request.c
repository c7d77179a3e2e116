/*
 * Decoding a request frame and reading its arguments (request.h).
 */
#include <string.h>

#include "keyenc.h"
#include "reply.h"
#include "request.h"

int gn_request_decode(gn_buf *out, const unsigned char *frame, size_t len, gn_request *r)
{
    r->op[0] = 0;
    r->name_len = 0;
    r->has_name = 0;
    r->frame = frame;
    r->frame_len = len;
    r->queued = 0;
    gn_etf e = {frame, len, 0};
    uint32_t arity;
    if (len < 1 || frame[0] != 131) {
        gn_event_bad_request(out, "not external term format");
        return -1;
    }
    e.at = 1;
    if (gn_etf_tuple(&e, &arity) || arity < 2) {
        gn_event_bad_request(out, "not a tuple {Tag, Op, ...}");
        return -1;
    }
    if (gn_etf_skip(&e, &r->tag) || r->tag.len > 65534) {
        gn_event_bad_request(out, "unreadable tag");
        return -1;
    }
    size_t oplen;
    char op[1024];
    if (gn_etf_atom(&e, op, &oplen) || oplen >= sizeof r->op)
        r->op[0] = 0;
    else {
        memcpy(r->op, op, oplen);
        r->op[oplen] = 0;
    }
    if (arity >= 3) {
        gn_etf probe = e;
        if (gn_etf_atom(&probe, r->name, &r->name_len) == 0)
            r->has_name = 1;
        if (gn_etf_skip(&e, NULL)) {
            r->op[0] = 0;
        }
    }
    r->args = e;
    r->nargs = arity >= 3 ? arity - 3 : 0;
    if (arity < 3)
        r->op[0] = 0;
    return 0;
}

int gn_arg_key(gn_request *r, const gn_pstore *s, gn_buf *enc, gn_slice *raw)
{
    size_t at = r->args.at;
    enc->len = 0;
    if (gn_etf_skip(&r->args, raw) < 0)
        return -1;
    size_t ix = at;
    if (gn_key_encode(r->args.buf, r->args.len, &ix, enc, gn_pstore_key_mode(s)))
        return -1;
    return 0;
}

int gn_arg_value(gn_request *r, gn_slice *raw)
{
    return gn_etf_skip(&r->args, raw);
}

int gn_arg_int(gn_request *r, int64_t *v)
{
    return gn_etf_int64(&r->args, v);
}

int gn_arg_limit(gn_request *r, uint64_t *v)
{
    if (gn_etf_is_atom(&r->args, "infinity")) {
        char name[1024];
        size_t len;
        gn_etf_atom(&r->args, name, &len);
        *v = UINT64_MAX;
        return 0;
    }
    int64_t i;
    if (gn_arg_int(r, &i) || i < 0)
        return -1;
    *v = (uint64_t)i;
    return 0;
}

int gn_arg_cap(gn_request *r, uint64_t *cap)
{
    uint64_t v;
    if (gn_arg_limit(r, &v) || v == 0)
        return -1;
    *cap = v == UINT64_MAX ? 0 : v;
    return 0;
}
