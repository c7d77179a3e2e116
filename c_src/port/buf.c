/*
 * Growing a gn_buf (buf.h): the one allocation every encoder, reply and
 * journal record goes through.
 */
#include <stdio.h>
#include <stdlib.h>

#include "buf.h"

void gn_buf_reserve(gn_buf *b, size_t more)
{
    if (b->cap - b->len >= more)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < more)
        cap *= 2;
    unsigned char *d = realloc(b->data, cap);
    if (!d) {
        fprintf(stderr, "gen_native_port: out of memory (%zu bytes)\n", cap);
        abort();
    }
    b->data = d;
    b->cap = cap;
}
