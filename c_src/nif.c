/*
 * GenNative's NIF library: the function table, the atoms, and
 * load/upgrade/unload. Each concern's NIFs live in their own file
 * (mailbox.c, ...); this file only wires them up.
 */
#include "gen_native.h"
#include "mailbox.h"
#include "store.h"

#define GN_DEFINE_ATOM(name) ERL_NIF_TERM gn_am_##name;
GN_ATOMS(GN_DEFINE_ATOM)
#undef GN_DEFINE_ATOM

gn_priv *gn_current;

static void gn_make_atoms(ErlNifEnv *env)
{
    gn_am_gen_cast = enif_make_atom(env, "$gen_cast");
    gn_am_wake = enif_make_atom(env, "$gn_wake");
    gn_am_gn_high = enif_make_atom(env, "$gn_high");
#define GN_MAKE_ATOM(name) gn_am_##name = enif_make_atom(env, #name);
    GN_ATOMS_PLAIN(GN_MAKE_ATOM)
#undef GN_MAKE_ATOM
}

static gn_priv *gn_priv_open(ErlNifEnv *env, gn_registry *shared, ErlNifResourceFlags flags)
{
    gn_priv *priv = gn_alloc(sizeof(*priv));
    if (!priv)
        return NULL;
    priv->abi = GN_ABI_STAMP;
    priv->registry = shared;
    priv->stores = NULL;
    priv->reaper = gn_reaper_start();
    if (!priv->reaper || !gn_mailbox_load(env, priv, flags) || !gn_store_load(env, priv, flags))
        goto fail;
    if (shared)
        gn_registry_retain(shared);
    else if (!(priv->registry = gn_registry_new()))
        goto fail;
    gn_current = priv;
    return priv;

fail:
    gn_store_unload(priv);
    gn_reaper_stop(priv->reaper);
    gn_free(priv);
    return NULL;
}

static int gn_load(ErlNifEnv *env, void **priv_data, ERL_NIF_TERM info)
{
    (void)info;
    gn_make_atoms(env);
    gn_priv *priv = gn_priv_open(env, NULL, ERL_NIF_RT_CREATE);
    if (!priv)
        return 1;
    *priv_data = priv;
    return 0;
}

/* A new version of the library takes over the resource types, so live
 * mailboxes are destroyed by the new code, and shares the old registry so
 * that servers started before the upgrade stay reachable. Only a library
 * of the same layout (GN_ABI) may take over: another is refused. */
static int gn_upgrade(ErlNifEnv *env, void **priv_data, void **old_priv_data, ERL_NIF_TERM info)
{
    (void)info;
    gn_priv *old = *old_priv_data;
    if (!old || old->abi != GN_ABI_STAMP)
        return 1;
    gn_make_atoms(env);
    gn_priv *priv = gn_priv_open(env, old->registry, ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER);
    if (!priv)
        return 1;
    gn_store_upgrade(priv, old);
    *priv_data = priv;
    return 0;
}

static void gn_unload(ErlNifEnv *env, void *priv_data)
{
    (void)env;
    gn_priv *priv = priv_data;
    if (gn_current == priv)
        gn_current = NULL;
    gn_store_unload(priv);
    gn_reaper_stop(priv->reaper);
    gn_registry_release(priv->registry);
    gn_free(priv);
}

/* clang-format off */
static ErlNifFunc gn_funcs[] = {
    /* name,             arity, function,               flags */
    {"mailbox_new",      3,     gn_mailbox_new_nif,     0},
    {"mailbox_send",     4,     gn_mailbox_send_nif,    0},
    {"mailbox_cancel",   2,     gn_mailbox_cancel_nif,  0},
    {"mailbox_take",     4,     gn_mailbox_take_nif,    0},
    {"mailbox_watermark", 1,    gn_mailbox_watermark_nif, 0},
    {"mailbox_ack",      2,     gn_mailbox_ack_nif,     0},
    {"mailbox_high",     1,     gn_mailbox_high_nif,    0},
    {"mailbox_info",     1,     gn_mailbox_info_nif,    0},
    {"mailbox_adopt",    1,     gn_mailbox_adopt_nif,   0},
    {"mailbox_discard",  1,     gn_mailbox_discard_nif, 0},
    {"store_new",        5,     gn_store_new_nif,       0},
    {"store_whereis",    1,     gn_store_whereis_nif,   0},
    {"store_put",        5,     gn_store_put_nif,       0},
    {"store_get",        2,     gn_store_get_nif,       0},
    {"store_delete_key", 2,     gn_store_delete_key_nif, 0},
    {"store_take",       2,     gn_store_take_nif,      0},
    {"store_update_counter", 4, gn_store_update_counter_nif, 0},
    {"store_size",       1,     gn_store_size_nif,      0},
    {"store_info",       1,     gn_store_info_nif,      0},
    {"store_delete",     1,     gn_store_delete_nif,    0},
    {"store_step",       3,     gn_store_step_nif,      0},
    {"store_rank",       2,     gn_store_rank_nif,      0},
    {"store_at",         2,     gn_store_at_nif,        0},
    {"store_clear",      1,     gn_store_clear_nif,     0},
    /* work that grows with the store: dirty */
    {"store_to_list",    1,     gn_store_to_list_nif,   ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"store_range",      4,     gn_store_range_nif,     ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"store_put_many",   2,     gn_store_put_many_nif,  ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"store_snapshot",   1,     gn_store_snapshot_nif,  ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"store_sweep",      0,     gn_store_sweep_nif,     ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"store_restore",    6,     gn_store_restore_nif,   ERL_NIF_DIRTY_JOB_CPU_BOUND},
    /* a test hook */
    {"mailbox_hold",     3,     gn_mailbox_hold_nif,    ERL_NIF_DIRTY_JOB_IO_BOUND},
};
/* clang-format on */

ERL_NIF_INIT(Elixir.GenNative.Native, gn_funcs, gn_load, NULL, gn_upgrade, gn_unload)
