/*
 * The table of stores by name (stores.h).
 */
#include <stdlib.h>
#include <string.h>

#include "stores.h"

static size_t name_hash(const char *name, size_t len)
{
    size_t h = 1469598103934665603u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * 1099511628211u;
    return h;
}

gn_pstore *gn_stores_find(const gn_stores *t, const char *name, size_t len)
{
    if (!t->nbuckets)
        return NULL;
    for (gn_pstore *s = t->buckets[name_hash(name, len) & (t->nbuckets - 1)]; s;
         s = s->next_in_bucket)
        if (s->name_len == len && memcmp(s->name, name, len) == 0)
            return s;
    return NULL;
}

void gn_stores_add(gn_stores *t, gn_pstore *s)
{
    if (t->count + 1 > t->nbuckets) {
        size_t nb = t->nbuckets ? 2 * t->nbuckets : 16;
        gn_pstore **b = calloc(nb, sizeof *b);
        if (!b)
            abort();
        for (size_t i = 0; i < t->nbuckets; i++)
            for (gn_pstore *o = t->buckets[i], *next; o; o = next) {
                next = o->next_in_bucket;
                size_t h = name_hash(o->name, o->name_len) & (nb - 1);
                o->next_in_bucket = b[h];
                b[h] = o;
            }
        free(t->buckets);
        t->buckets = b;
        t->nbuckets = nb;
    }
    size_t h = name_hash(s->name, s->name_len) & (t->nbuckets - 1);
    s->next_in_bucket = t->buckets[h];
    t->buckets[h] = s;
    t->count++;
}

void gn_stores_remove(gn_stores *t, gn_pstore *s)
{
    gn_pstore **at = &t->buckets[name_hash(s->name, s->name_len) & (t->nbuckets - 1)];
    while (*at != s)
        at = &(*at)->next_in_bucket;
    *at = s->next_in_bucket;
    t->count--;
}

static gn_pstore *from_bucket(const gn_stores *t, size_t *bucket)
{
    for (; *bucket < t->nbuckets; ++*bucket)
        if (t->buckets[*bucket])
            return t->buckets[*bucket];
    return NULL;
}

gn_pstore *gn_stores_first(const gn_stores *t, size_t *bucket)
{
    *bucket = 0;
    return from_bucket(t, bucket);
}

gn_pstore *gn_stores_next(const gn_stores *t, size_t *bucket, const gn_pstore *s)
{
    if (s->next_in_bucket)
        return s->next_in_bucket;
    ++*bucket;
    return from_bucket(t, bucket);
}

void gn_stores_free(gn_stores *t)
{
    free(t->buckets);
    t->buckets = NULL;
    t->nbuckets = t->count = 0;
}
