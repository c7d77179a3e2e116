/*
 * The whole state of the program as one buffer, and back: what a replicated
 * program (raft.c) hands libraft as its snapshot. The buffer is records of
 * the journal's kind (record.h; framed as in durable.h: body length | CRC |
 * body): each store's OPEN, then its live entries, GN_CHUNK_ENTRIES to a
 * MANY record, in key order. It is written at once, at one point of the
 * log, as Raft needs (a compaction's snapshot, written in slices while
 * writes go on, would not do).
 */
#ifndef GN_PORT_IMAGE_H
#define GN_PORT_IMAGE_H

#include <stddef.h>

#include "buf.h"
#include "port.h"

/* Appends the image of every store to `out`. */
void gn_image_write(gn_port *p, gn_buf *out);

/* Replaces every store with those of the image data[0, len): 0, or -1 if
 * the image is malformed (a record's length or CRC, or its body), and then
 * nothing changed. */
int gn_image_load(gn_port *p, const unsigned char *data, size_t len);

#endif
