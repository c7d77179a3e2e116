/*
 * The pid registry. Invariants: each shard's rwlock protects the buckets
 * whose index maps to it; every entry holds one resource reference on its
 * object, dropped when the entry is removed or the registry freed.
 */
#include <string.h>

#include "registry.h"
#include "alloc.h"

#define GN_REG_SHARDS 64
#define GN_REG_BUCKETS (1u << 16)

typedef struct gn_reg_entry {
    struct gn_reg_entry *next;
    ErlNifPid owner;
    void *obj;
} gn_reg_entry;

struct gn_registry {
    ErlNifRWLock *locks[GN_REG_SHARDS];
    gn_reg_entry *buckets[GN_REG_BUCKETS];
    int refs;
};

gn_registry *gn_registry_new(void)
{
    gn_registry *reg = gn_alloc(sizeof(*reg));
    if (!reg)
        return NULL;
    memset(reg, 0, sizeof(*reg));
    reg->refs = 1;
    for (int i = 0; i < GN_REG_SHARDS; i++) {
        if (!(reg->locks[i] = enif_rwlock_create("gn_registry_shard"))) {
            gn_registry_release(reg);
            return NULL;
        }
    }
    return reg;
}

void gn_registry_retain(gn_registry *reg)
{
    reg->refs++;
}

void gn_registry_release(gn_registry *reg)
{
    if (--reg->refs > 0)
        return;
    for (unsigned b = 0; b < GN_REG_BUCKETS; b++) {
        gn_reg_entry *e = reg->buckets[b];
        while (e) {
            gn_reg_entry *next = e->next;
            enif_release_resource(e->obj);
            gn_free(e);
            e = next;
        }
    }
    for (int i = 0; i < GN_REG_SHARDS; i++)
        if (reg->locks[i])
            enif_rwlock_destroy(reg->locks[i]);
    gn_free(reg);
}

uint64_t gn_registry_hash(ERL_NIF_TERM pid_term)
{
    return enif_hash(ERL_NIF_INTERNAL_HASH, pid_term, 0);
}

static inline unsigned gn_bucket_of(uint64_t hash)
{
    return (unsigned)(hash & (GN_REG_BUCKETS - 1));
}

static inline ErlNifRWLock *gn_shard_lock(gn_registry *reg, unsigned bucket)
{
    return reg->locks[bucket & (GN_REG_SHARDS - 1)];
}

/* Call with the bucket's shard locked. */
static gn_reg_entry *gn_bucket_find(gn_registry *reg, unsigned b, const ErlNifPid *pid)
{
    for (gn_reg_entry *e = reg->buckets[b]; e; e = e->next)
        if (enif_compare_pids(&e->owner, pid) == 0)
            return e;
    return NULL;
}

void *gn_registry_lookup(gn_registry *reg, uint64_t hash, const ErlNifPid *pid)
{
    unsigned b = gn_bucket_of(hash);
    ErlNifRWLock *lock = gn_shard_lock(reg, b);
    enif_rwlock_rlock(lock);
    gn_reg_entry *e = gn_bucket_find(reg, b, pid);
    void *obj = e ? e->obj : NULL;
    if (obj)
        enif_keep_resource(obj);
    enif_rwlock_runlock(lock);
    return obj;
}

int gn_registry_insert(gn_registry *reg, uint64_t hash, const ErlNifPid *owner, void *obj)
{
    unsigned b = gn_bucket_of(hash);
    ErlNifRWLock *lock = gn_shard_lock(reg, b);
    gn_reg_entry *entry = gn_alloc(sizeof(*entry));
    if (!entry)
        return 0;
    enif_rwlock_rwlock(lock);
    if (gn_bucket_find(reg, b, owner)) {
        enif_rwlock_rwunlock(lock);
        gn_free(entry);
        return 0;
    }
    entry->owner = *owner;
    entry->obj = obj;
    entry->next = reg->buckets[b];
    reg->buckets[b] = entry;
    enif_keep_resource(obj);
    enif_rwlock_rwunlock(lock);
    return 1;
}

void gn_registry_remove(gn_registry *reg, uint64_t hash, void *obj)
{
    unsigned b = gn_bucket_of(hash);
    ErlNifRWLock *lock = gn_shard_lock(reg, b);
    gn_reg_entry *removed = NULL;
    enif_rwlock_rwlock(lock);
    for (gn_reg_entry **p = &reg->buckets[b]; *p; p = &(*p)->next) {
        if ((*p)->obj == obj) {
            removed = *p;
            *p = removed->next;
            break;
        }
    }
    enif_rwlock_rwunlock(lock);
    if (removed) {
        gn_free(removed);
        enif_release_resource(obj);
    }
}
