/*
 * The table of stores by name: a hash table chained through the stores'
 * next_in_bucket links, doubled as it fills.
 */
#ifndef GN_PORT_STORES_H
#define GN_PORT_STORES_H

#include <stddef.h>

#include "pstore.h"

typedef struct gn_stores {
    gn_pstore **buckets;
    size_t nbuckets, count;
} gn_stores;

gn_pstore *gn_stores_find(const gn_stores *t, const char *name, size_t len);
/* Adds `s`, whose name no store in `t` has. */
void gn_stores_add(gn_stores *t, gn_pstore *s);
void gn_stores_remove(gn_stores *t, gn_pstore *s);

/* Walks every store, in table order: `*bucket` is the walk's state.
 *   for (gn_pstore *s = gn_stores_first(t, &b); s; s = gn_stores_next(t, &b, s))
 * gn_stores_next reads only s->next_in_bucket. */
gn_pstore *gn_stores_first(const gn_stores *t, size_t *bucket);
gn_pstore *gn_stores_next(const gn_stores *t, size_t *bucket, const gn_pstore *s);

/* Frees the table (not the stores). */
void gn_stores_free(gn_stores *t);

#endif
