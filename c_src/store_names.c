/*
 * The stores' name registry (see store_names.h). Few stores are named: a
 * list will do.
 *
 * Locking: shared->names_lock protects the list, and is held only inside
 * these functions, never with a store lock held. An entry holds a resource
 * reference to its store, released outside the lock.
 */
#include "store_names.h"

struct gn_name {
    struct gn_name *next;
    ERL_NIF_TERM name;
    gn_store *store; /* holds a resource reference */
};

gn_name *gn_name_new(void)
{
    return gn_alloc(sizeof(gn_name));
}

void gn_name_free(gn_name *entry)
{
    gn_free(entry);
}

int gn_name_register(gn_store_shared *sh, gn_name *entry, ERL_NIF_TERM name, gn_store *s)
{
    enif_mutex_lock(sh->names_lock);
    for (gn_name *n = sh->names; n; n = n->next)
        if (enif_is_identical(n->name, name)) {
            enif_mutex_unlock(sh->names_lock);
            return 0;
        }
    entry->name = name;
    entry->store = s;
    entry->next = sh->names;
    sh->names = entry;
    enif_keep_resource(s);
    enif_mutex_unlock(sh->names_lock);
    return 1;
}

/* Returns the store registered as `name` with a reference, or NULL. */
gn_store *gn_name_lookup(gn_store_shared *sh, ERL_NIF_TERM name)
{
    gn_store *s = NULL;
    enif_mutex_lock(sh->names_lock);
    for (gn_name *n = sh->names; n; n = n->next)
        if (enif_is_identical(n->name, name)) {
            s = n->store;
            enif_keep_resource(s);
            break;
        }
    enif_mutex_unlock(sh->names_lock);
    return s;
}

void gn_name_remove(gn_store *s)
{
    gn_store_shared *sh = s->shared;
    gn_name *removed = NULL;
    enif_mutex_lock(sh->names_lock);
    for (gn_name **p = &sh->names; *p; p = &(*p)->next)
        if ((*p)->store == s) {
            removed = *p;
            *p = removed->next;
            break;
        }
    enif_mutex_unlock(sh->names_lock);
    if (removed) {
        gn_free(removed);
        enif_release_resource(s);
    }
}

void gn_names_release(gn_store_shared *sh)
{
    enif_mutex_lock(sh->names_lock);
    gn_name *n = sh->names;
    sh->names = NULL;
    enif_mutex_unlock(sh->names_lock);
    while (n) {
        gn_name *next = n->next;
        enif_release_resource(n->store);
        gn_free(n);
        n = next;
    }
}
