/*
 * A growable byte buffer, the port program's one container for bytes on
 * their way somewhere: replies, key encodings, journal records; and the
 * big-endian integers the frames and files are made of. buf.c grows it.
 */
#ifndef GN_PORT_BUF_H
#define GN_PORT_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

/* Writes `v` as a big-endian unsigned integer of `bytes` bytes at `p`
 * (to fill in a length or count left open). */
static inline void gn_set_be(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)(v & 0xFF);
}

/* Appends a big-endian unsigned integer of `bytes` bytes. */
static inline void gn_buf_be(gn_buf *b, uint64_t v, int bytes)
{
    gn_buf_room(b, (size_t)bytes);
    gn_set_be(b->data + b->len, v, bytes);
    b->len += (size_t)bytes;
}

static inline uint64_t gn_get_be(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = (v << 8) | p[i];
    return v;
}

static inline void gn_buf_free(gn_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

#endif
