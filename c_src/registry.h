/*
 * The pid registry: which process owns which native object (today, which
 * server owns which mailbox). Sharded and read-mostly: a lookup takes one
 * shard's read lock; inserts and removals (server start and exit) take it
 * for writing.
 */
#ifndef GN_REGISTRY_H
#define GN_REGISTRY_H

#include <erl_nif.h>
#include <stdint.h>

typedef struct gn_registry gn_registry;

gn_registry *gn_registry_new(void);
/* Library instances sharing the registry (load, upgrade, unload only). */
void gn_registry_retain(gn_registry *reg);
void gn_registry_release(gn_registry *reg);

/* The hash to register a pid under: the same for the pid as a term and as
 * an ErlNifPid. */
uint64_t gn_registry_hash(ERL_NIF_TERM pid_term);

/* Adds `obj` (a resource) under `owner`; the registry keeps a resource
 * reference. Returns 0 if the owner has an entry already, or out of memory. */
int gn_registry_insert(gn_registry *reg, uint64_t hash, const ErlNifPid *owner, void *obj);
/* Removes `obj` and drops the registry's reference, if it is there. */
void gn_registry_remove(gn_registry *reg, uint64_t hash, void *obj);
/* The object registered under `pid`, with a resource reference for the
 * caller to release, or NULL. */
void *gn_registry_lookup(gn_registry *reg, uint64_t hash, const ErlNifPid *pid);

#endif
