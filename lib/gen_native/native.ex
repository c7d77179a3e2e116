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

  @typep mailbox :: reference()

  @spec mailbox_new(pos_integer() | :infinity, atom(), [:queue | :keep | :expire]) ::
          mailbox() | {:error, :already_exists}
  def mailbox_new(_capacity, _overflow, _flags), do: :erlang.nif_error(:not_loaded)

  @spec mailbox_send(pid(), term(), :normal | :high, :cast | :call | :admit) ::
          :ok
          | :send
          | :deadline
          | {:ok, term()}
          | :not_native
          | :full
          | :dropped
          | {:wait, reference()}
  def mailbox_send(_pid, _item, _lane, _kind), do: :erlang.nif_error(:not_loaded)

  @spec mailbox_cancel(pid(), reference()) :: :cancelled | :not_found
  def mailbox_cancel(_pid, _tag), do: :erlang.nif_error(:not_loaded)

  @spec mailbox_take(mailbox(), pos_integer(), non_neg_integer() | :infinity | :high, boolean()) ::
          [term()] | {:more, [term()]}
  def mailbox_take(_mailbox, _max, _upto, _wake), do: :erlang.nif_error(:not_loaded)

  @spec mailbox_watermark(mailbox()) :: non_neg_integer() | :none
  def mailbox_watermark(_mailbox), do: :erlang.nif_error(:not_loaded)

  @spec mailbox_ack(mailbox(), :cast | :expired | non_neg_integer()) :: :ok | :high
  def mailbox_ack(_mailbox, _what), do: :erlang.nif_error(:not_loaded)

  @spec mailbox_high(mailbox()) :: boolean()
  def mailbox_high(_mailbox), do: :erlang.nif_error(:not_loaded)

  @spec mailbox_info(pid()) :: map() | :not_native
  def mailbox_info(_pid), do: :erlang.nif_error(:not_loaded)

  @spec mailbox_adopt(mailbox()) :: non_neg_integer()
  def mailbox_adopt(_mailbox), do: :erlang.nif_error(:not_loaded)

  @spec mailbox_discard(mailbox()) :: :ok
  def mailbox_discard(_mailbox), do: :erlang.nif_error(:not_loaded)

  # A test hook: holds the mailbox's lock for `ms` (at most 2000) on a
  # dirty I/O scheduler, sending `notify` :locked, then :unlocking.
  @spec mailbox_hold(mailbox(), non_neg_integer(), pid()) :: :ok
  def mailbox_hold(_mailbox, _ms, _notify), do: :erlang.nif_error(:not_loaded)

  # GenNative.Store
  @typep store :: reference()

  def store_new(_type, _name, _access, _lifetime, _max), do: :erlang.nif_error(:not_loaded)
  def store_whereis(_name), do: :erlang.nif_error(:not_loaded)
  def store_put(_store, _key, _value, _mode, _ttl), do: :erlang.nif_error(:not_loaded)
  def store_get(_store, _key), do: :erlang.nif_error(:not_loaded)
  def store_delete_key(_store, _key), do: :erlang.nif_error(:not_loaded)
  def store_take(_store, _key), do: :erlang.nif_error(:not_loaded)
  def store_update_counter(_store, _key, _incr, _default), do: :erlang.nif_error(:not_loaded)
  @spec store_size(store()) :: non_neg_integer()
  def store_size(_store), do: :erlang.nif_error(:not_loaded)
  def store_info(_store), do: :erlang.nif_error(:not_loaded)
  def store_delete(_store), do: :erlang.nif_error(:not_loaded)
  def store_step(_store, _which, _key), do: :erlang.nif_error(:not_loaded)
  def store_rank(_store, _key), do: :erlang.nif_error(:not_loaded)
  def store_at(_store, _index), do: :erlang.nif_error(:not_loaded)
  def store_clear(_store), do: :erlang.nif_error(:not_loaded)
  def store_to_list(_store), do: :erlang.nif_error(:not_loaded)
  def store_range(_store, _from, _to, _limit), do: :erlang.nif_error(:not_loaded)
  def store_put_many(_store, _entries), do: :erlang.nif_error(:not_loaded)
  def store_snapshot(_store), do: :erlang.nif_error(:not_loaded)
  def store_sweep, do: :erlang.nif_error(:not_loaded)

  def store_restore(_binary, _name, _access, _lifetime, _max, _atoms),
    do: :erlang.nif_error(:not_loaded)
end
