defmodule GenNative.Native do
  # The NIF stubs, and nothing else: argument checking and friendly errors
  # live in the modules that call these (GenNative.Mailbox, GenNative.Server).
  @moduledoc false

  @compile {:autoload, false}
  @on_load :load_nif

  for file <- Path.wildcard(Path.join(__DIR__, "../../c_src/*.[ch]")) do
    @external_resource file
  end

  @doc false
  def load_nif do
    path = :filename.join(:code.priv_dir(:gen_native), ~c"gen_native_nif")
    :erlang.load_nif(path, 0)
  end

  # Specs: arities and results as documented above each NIF in c_src/*.c
  # (the table in c_src/nif.c says which run on dirty schedulers). Every
  # NIF raises badarg for an argument of the wrong shape; a NIF that runs
  # out of memory raises :enomem.

  @typep mailbox :: reference()
  # a waiter: what a blocked sender waits for ({tag, result}) and cancels
  @typep wait_tag :: reference()

  # The mailbox (c_src/mailbox.c). Items and messages have the shapes of
  # GenNative.Mailbox.Protocol.

  @spec mailbox_new(pos_integer() | :infinity, GenNative.Mailbox.overflow(), [
          :queue | :keep | :expire
        ]) :: mailbox() | {:error, :already_exists}
  def mailbox_new(_capacity, _overflow, _flags), do: :erlang.nif_error(:not_loaded)

  # {:ok, dropped}: a priority call evicted under drop_oldest, as it was
  # queued. A large item is copied on a dirty scheduler.
  @spec mailbox_send(pid(), term(), :normal | :high, :cast | :call | :admit) ::
          :ok
          | :send
          | :deadline
          | :busy
          | {:ok, dropped :: term()}
          | :not_native
          | :full
          | :dropped
          | {:wait, wait_tag()}
  def mailbox_send(_pid, _item, _lane, _kind), do: :erlang.nif_error(:not_loaded)

  @spec mailbox_cancel(pid(), wait_tag()) :: :cancelled | :not_found
  def mailbox_cancel(_pid, _tag), do: :erlang.nif_error(:not_loaded)

  # {:more, items}: cut short by its time budget (large items), more to
  # take. A take that cannot copy even one item goes dirty.
  @spec mailbox_take(mailbox(), pos_integer(), non_neg_integer() | :infinity | :high, boolean()) ::
          [term()] | {:more, [term()]}
  def mailbox_take(_mailbox, _max, _upto, _wake), do: :erlang.nif_error(:not_loaded)

  @spec mailbox_watermark(mailbox()) :: non_neg_integer() | :none
  def mailbox_watermark(_mailbox), do: :erlang.nif_error(:not_loaded)

  @spec mailbox_ack(mailbox(), :cast | :expired | non_neg_integer()) :: :ok | :high
  def mailbox_ack(_mailbox, _what), do: :erlang.nif_error(:not_loaded)

  @spec mailbox_high(mailbox()) :: boolean()
  def mailbox_high(_mailbox), do: :erlang.nif_error(:not_loaded)

  @spec mailbox_info(pid()) :: GenNative.Mailbox.info() | :not_native
  def mailbox_info(_pid), do: :erlang.nif_error(:not_loaded)

  # :not_ready: the old owner's exit has not reached the mailbox yet
  @spec mailbox_adopt(mailbox()) :: non_neg_integer() | :not_ready
  def mailbox_adopt(_mailbox), do: :erlang.nif_error(:not_loaded)

  @spec mailbox_discard(mailbox()) :: :ok
  def mailbox_discard(_mailbox), do: :erlang.nif_error(:not_loaded)

  # A test hook: holds the mailbox's lock for `ms` (at most 2000) on a
  # dirty I/O scheduler, sending `notify` :locked, then :unlocking.
  @spec mailbox_hold(mailbox(), non_neg_integer(), pid()) :: :ok
  def mailbox_hold(_mailbox, _ms, _notify), do: :erlang.nif_error(:not_loaded)

  # GenNative.Store (c_src/store.c). Regular NIFs, except the dirty ones
  # further down; a regular one reschedules itself on a dirty scheduler to
  # wait for a busy lock (I/O), or for a key or value over 64 KB, more than
  # 200 expired entries to purge, or the compaction of a big store after a
  # write (CPU). Misuse raises :store_deleted, :not_owner, :not_ordered or
  # :not_integer, which GenNative.Store translates.
  @typep store :: reference()
  @typep max_size :: pos_integer() | :infinity
  @typep entry :: {term(), term()}

  @spec store_new(
          GenNative.Store.type(),
          atom() | nil,
          GenNative.Store.access(),
          GenNative.Store.lifetime(),
          max_size()
        ) :: {:ok, store()} | {:error, :already_exists}
  def store_new(_type, _name, _access, _lifetime, _max), do: :erlang.nif_error(:not_loaded)

  @spec store_whereis(atom()) :: store() | nil
  def store_whereis(_name), do: :erlang.nif_error(:not_loaded)

  # :put answers :ok, :put_new whether it stored; ttl 0: none
  @spec store_put(store(), term(), term(), :put | :put_new, non_neg_integer()) ::
          :ok | boolean() | {:error, :full}
  def store_put(_store, _key, _value, _mode, _ttl), do: :erlang.nif_error(:not_loaded)

  @spec store_get(store(), term()) :: {:ok, term()} | :error
  def store_get(_store, _key), do: :erlang.nif_error(:not_loaded)

  @spec store_delete_key(store(), term()) :: :ok
  def store_delete_key(_store, _key), do: :erlang.nif_error(:not_loaded)

  @spec store_take(store(), term()) :: {:ok, term()} | :error
  def store_take(_store, _key), do: :erlang.nif_error(:not_loaded)

  @spec store_update_counter(store(), term(), integer(), integer()) ::
          integer() | {:error, :full}
  def store_update_counter(_store, _key, _incr, _default), do: :erlang.nif_error(:not_loaded)

  @spec store_size(store()) :: non_neg_integer()
  def store_size(_store), do: :erlang.nif_error(:not_loaded)

  @spec store_info(store()) :: GenNative.Store.nif_info()
  def store_info(_store), do: :erlang.nif_error(:not_loaded)

  @spec store_delete(store()) :: :ok
  def store_delete(_store), do: :erlang.nif_error(:not_loaded)

  # the key is ignored for :first and :last
  @spec store_step(store(), :first | :last | :next | :prev, term()) :: {:ok, entry()} | :error
  def store_step(_store, _which, _key), do: :erlang.nif_error(:not_loaded)

  @spec store_rank(store(), term()) :: {:ok, non_neg_integer()} | :error
  def store_rank(_store, _key), do: :erlang.nif_error(:not_loaded)

  @spec store_at(store(), integer()) :: {:ok, entry()} | :error
  def store_at(_store, _index), do: :erlang.nif_error(:not_loaded)

  @spec store_clear(store()) :: :ok
  def store_clear(_store), do: :erlang.nif_error(:not_loaded)

  # Dirty (CPU): work that grows with the store.

  @spec store_to_list(store()) :: [entry()]
  def store_to_list(_store), do: :erlang.nif_error(:not_loaded)

  # store_range(store, from, to, limit), or a slice:
  # store_range(store, {:index, index}, count, _ignored)
  @spec store_range(store(), term(), term(), non_neg_integer() | :infinity) :: [entry()]
  def store_range(_store, _from, _to, _limit), do: :erlang.nif_error(:not_loaded)

  @spec store_put_many(store(), [entry()]) :: :ok | {:error, :full}
  def store_put_many(_store, _entries), do: :erlang.nif_error(:not_loaded)

  @spec store_snapshot(store()) :: binary()
  def store_snapshot(_store), do: :erlang.nif_error(:not_loaded)

  @spec store_sweep() :: :ok
  def store_sweep, do: :erlang.nif_error(:not_loaded)

  # atoms: :safe, or how many new atoms the restore may make
  @spec store_restore(
          binary(),
          atom() | nil,
          GenNative.Store.access(),
          GenNative.Store.lifetime(),
          max_size(),
          :safe | non_neg_integer()
        ) ::
          {:ok, store()}
          | {:error,
             :invalid_snapshot | :unsafe_snapshot | :system_limit | :already_exists | :full}
  def store_restore(_binary, _name, _access, _lifetime, _max, _atoms),
    do: :erlang.nif_error(:not_loaded)
end
