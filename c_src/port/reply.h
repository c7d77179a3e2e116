/*
 * Frames to the VM (PROTOCOL.md): replies to a request, tagged with the
 * request's tag, and untagged events. Every function appends whole frames
 * to `out`, the program's output buffer.
 */
#ifndef GN_PORT_REPLY_H
#define GN_PORT_REPLY_H

#include <stdint.h>

#include "buf.h"
#include "etf.h"
#include "pstore.h"

/* A frame, open: its length (4) | tag length (2) | tag | the term's version
 * byte. The term follows; gn_frame_end fills in the length. A tag of length
 * 0 makes an event. Returns the mark to pass to gn_frame_end. */
size_t gn_frame_begin(gn_buf *out, const unsigned char *tag, size_t tag_len);
void gn_frame_end(gn_buf *out, size_t mark);
/* Begins a frame {error, Reason}: the reason follows. */
size_t gn_error_begin(gn_buf *out, const unsigned char *tag, size_t tag_len);

void gn_reply_atom(gn_buf *out, const gn_slice *tag, const char *atom);
void gn_reply_int(gn_buf *out, const gn_slice *tag, int64_t v);
/* {error, Reason} */
void gn_reply_error(gn_buf *out, const gn_slice *tag, const char *reason);
/* {error, {Kind, Text}}: a reply (badarg) or, with no tag, an event
 * (bad_request, the fatal journal errors). */
void gn_error_text(gn_buf *out, const gn_slice *tag, const char *kind, const char *text);
void gn_reply_badarg(gn_buf *out, const gn_slice *tag, const char *why);
/* {ok, Value}, {ok, {Key, Value}} (`entry`) or error when `n` is NULL */
void gn_reply_found(gn_buf *out, const gn_slice *tag, const gn_pnode *n, int entry);
/* An entry as the term {Key, Value}, into any buffer. */
void gn_enc_entry(gn_buf *b, const gn_pnode *n);

/* Events: {log, Level, Text} and {error, {bad_request, Text}}; both go to
 * stderr too. */
void gn_event_log(gn_buf *out, const char *level, const char *text);
void gn_event_bad_request(gn_buf *out, const char *why);

/* Tags of requests answered later, all at once: tag length (2) | tag, ... */
void gn_tags_add(gn_buf *tags, const gn_slice *tag);
/* Answers each with ok, or {error, `error`} when it is not NULL, and
 * empties `tags`. */
void gn_tags_reply(gn_buf *out, gn_buf *tags, const char *error);

/* A tag kept in a buffer, as a slice. */
static inline gn_slice gn_buf_slice(const gn_buf *b)
{
    gn_slice s = {b->data, b->len};
    return s;
}

#endif
