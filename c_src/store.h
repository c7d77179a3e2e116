/*
 * The native state store: an off-heap set or ordered set of {Key, Value},
 * written by its owner (or anyone, if public), read by every process.
 *
 * What nif.c needs: load/upgrade/unload and the NIFs (store_nif.c; the
 * walks in key order in store_walk_nif.c, snapshot and restore in
 * store_snapshot_nif.c). The store's own files share store_impl.h.
 */
#ifndef GN_STORE_H
#define GN_STORE_H

#include "gen_native.h"

int gn_store_load(ErlNifEnv *env, gn_priv *priv, ErlNifResourceFlags flags);
void gn_store_upgrade(gn_priv *priv, gn_priv *old);
void gn_store_unload(gn_priv *priv);

ERL_NIF_TERM gn_store_new_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_whereis_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_put_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_get_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_delete_key_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_take_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_update_counter_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_size_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_info_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_delete_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_step_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_rank_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_at_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
/* dirty: work grows with the store */
ERL_NIF_TERM gn_store_to_list_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_range_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_clear_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_sweep_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_snapshot_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_restore_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_store_put_many_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

#endif
