/*
 * A growable byte buffer, the port program's one container for bytes on
 * their way somewhere: replies, key encodings, journal records; and
 * appending the big-endian integers the frames and files are made of
 * (snapshot.h's gn_be_put and gn_be_get write and read them in place).
 * buf.c grows it.
 */
#ifndef GN_PORT_BUF_H
#define GN_PORT_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../snapshot.h" /* gn_be_put, gn_be_get */

typedef struct gn_buf {
    unsigned char *data;
    size_t len, cap;
} gn_buf;

/* Makes room for `more` bytes; aborts the program when memory runs out
 * (the VM side sees the exit and restarts it from its data directory). */
void gn_buf_reserve(gn_buf *b, size_t more);

/* The same, inline when the room is there already (the common case). */
static inline void gn_buf_room(gn_buf *b, size_t more)
{
    if (b->cap - b->len < more)
        gn_buf_reserve(b, more);
}

static inline void gn_buf_put(gn_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return;
    gn_buf_room(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static inline void gn_buf_byte(gn_buf *b, unsigned char c)
{
    gn_buf_room(b, 1);
    b->data[b->len++] = c;
}

/* Appends a big-endian unsigned integer of `bytes` bytes (to fill one in
 * at a given place, or read one back: gn_be_put, gn_be_get). */
static inline void gn_buf_be(gn_buf *b, uint64_t v, int bytes)
{
    gn_buf_room(b, (size_t)bytes);
    gn_be_put(b->data + b->len, v, bytes);
    b->len += (size_t)bytes;
}

static inline void gn_buf_free(gn_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

#endif
