/*
 * The stores' name registry: atom -> store, VM-wide, in the shared state
 * (gn_store_shared), so that an upgraded library keeps its named stores.
 *
 * Locking: shared->names_lock protects the registry; these functions take
 * it themselves. Never call them with a store lock held: the names lock is
 * never held with one.
 */
#ifndef GN_STORE_NAMES_H
#define GN_STORE_NAMES_H

#include "store_impl.h"

typedef struct gn_name gn_name;

/* An entry to register a store with, allocated before anything that
 * cannot be undone; NULL when out of memory. */
gn_name *gn_name_new(void);
/* Frees an entry that was not registered. */
void gn_name_free(gn_name *entry);

/* Registers `s` as `name` with `entry` (which it then owns), keeping a
 * resource reference to `s`. Returns 0, and keeps nothing, if the name is
 * taken. */
int gn_name_register(gn_store_shared *sh, gn_name *entry, ERL_NIF_TERM name, gn_store *s);

/* Returns the store registered as `name` with a reference, or NULL. */
gn_store *gn_name_lookup(gn_store_shared *sh, ERL_NIF_TERM name);

/* Drops `s`'s name, if it has one, and the registry's reference (which may
 * be the last: call it last). */
void gn_name_remove(gn_store *s);

/* Empties the registry, dropping its references (the last library
 * instance's unload). */
void gn_names_release(gn_store_shared *sh);

#endif
