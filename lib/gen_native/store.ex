defmodule GenNative.Store do
  @moduledoc """
  An off-heap state store: a set or ordered set of `{key, value}` held in C,
  outside any process heap, written by its owner and read by any process at
  once.

  A server's large state in a `GenNative.Store` does not burden its
  garbage collector, and clients read it directly, without queueing behind
  the server's mailbox. An `:ordered_set` also answers what ETS cannot: the
  rank of a key and the entry at an index, both in O(log n).

      {:ok, board} = GenNative.Store.new(:ordered_set, name: :board)
      :ok = GenNative.Store.put(board, {-120, "ana"}, %{joined: 2024})
      :ok = GenNative.Store.put(board, {-95, "bo"}, %{joined: 2025})
      GenNative.Store.rank(board, {-95, "bo"})   #=> {:ok, 1}
      GenNative.Store.at(board, 0)              #=> {:ok, {{-120, "ana"}, %{joined: 2024}}}

  Any term can be a key or a value; what comes back is `===` to what went
  in. Keys of a `:set` are matched exactly (`=:=`, as in an ETS set: `1`
  and `1.0` are two keys); keys of an `:ordered_set` are ordered by Erlang
  term order and matched with `==` (as in an ETS ordered_set).

  Readers never see a half-applied write (each store has a readers-writer
  lock). A write by another process to a `:protected` store raises
  `ArgumentError` ("not the owner"), and so does any use of a deleted store
  ("deleted").

  Functions whose work grows with the store (`to_list/1`, `range/4`,
  `slice/3`, `put_many/2`) run on dirty schedulers; `clear/1` and
  `delete/1` hand the entries to a background thread in O(1).
  """

  import Bitwise

  alias GenNative.Native

  @opaque t :: reference()
  @type type :: :set | :ordered_set
  @type key :: term()
  @type value :: term()

  @doc """
  Creates a store owned by the calling process. Returns `{:ok, store}`.

  ## Options

    * `:name` - an atom; `whereis/1` then finds the store. A name held by a
      store whose owner is alive gives `{:error, :already_exists}`.
    * `:access` - `:protected` (default: the owner writes, every process
      reads) or `:public` (every process writes too).
    * `:lifetime` - `:owner` (default: freed when the owner exits) or
      `:named` (requires `:name`; kept after the owner exits, until
      `delete/1`). Calling `new/2` with the name of a `:named` store whose
      owner has exited adopts it: the caller becomes its owner and gets
      `{:ok, store}` with the data intact. This is how a server keeps its
      state across a crash and restart.
    * `:max_size` - a positive integer: a put of a new key beyond it returns
      `{:error, :full}`.
  """
  @spec new(type(), keyword()) :: {:ok, t()} | {:error, :already_exists}
  def new(type, opts \\ []) do
    unless type in [:set, :ordered_set] do
      raise ArgumentError,
            "expected the store type to be :set or :ordered_set, got: #{inspect(type)}"
    end

    {name, access, lifetime, max} = options!(opts)
    Native.store_new(type, name, access, lifetime, max)
  end

  @doc """
  A binary holding every entry of the store, for `restore/2`.
  Runs on a dirty scheduler.
  """
  @spec snapshot(t()) :: binary()
  def snapshot(store), do: call(store, &Native.store_snapshot/1)

  @doc """
  Builds a new store, owned by the caller, from a `snapshot/1` binary, with
  the options of `new/2` (the type is the snapshot's). A truncated,
  corrupted or foreign binary gives `{:error, :invalid_snapshot}`: no store
  is created. A name in use gives `{:error, :already_exists}`.
  """
  @spec restore(binary(), keyword()) ::
          {:ok, t()} | {:error, :invalid_snapshot | :already_exists | :full}
  def restore(binary, opts \\ []) when is_binary(binary) do
    {name, access, lifetime, max} = options!(opts)
    Native.store_restore(binary, name, access, lifetime, max)
  end

  defp options!(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError,
            "expected the store options to be a keyword list, got: #{inspect(opts)}"
    end

    name = Keyword.get(opts, :name)
    access = Keyword.get(opts, :access, :protected)
    lifetime = Keyword.get(opts, :lifetime, :owner)
    max = Keyword.get(opts, :max_size, :infinity)

    for {key, _} <- opts, key not in [:name, :access, :lifetime, :max_size] do
      raise ArgumentError,
            "unknown store option #{inspect(key)}, expected :name, :access, :lifetime or :max_size"
    end

    check!(is_nil(name) or (is_atom(name) and name not in [true, false]), :name, name, "an atom")
    check!(access in [:protected, :public], :access, access, ":protected or :public")
    check!(lifetime in [:owner, :named], :lifetime, lifetime, ":owner or :named")

    check!(
      max == :infinity or (is_integer(max) and max > 0),
      :max_size,
      max,
      "a positive integer"
    )

    if lifetime == :named and name == nil do
      raise ArgumentError, "store option lifetime: :named requires a :name"
    end

    # a cap no store can reach is no cap
    max = if is_integer(max) and max >= 1 <<< 62, do: :infinity, else: max
    {name, access, lifetime, max}
  end

  defp check!(true, _opt, _value, _expected), do: :ok

  defp check!(false, opt, value, expected) do
    raise ArgumentError,
          "invalid value for store option #{inspect(opt)}, expected #{expected}, got: #{inspect(value)}"
  end

  @doc "The store registered as `name`, or `nil`."
  @spec whereis(atom()) :: t() | nil
  def whereis(name) when is_atom(name), do: Native.store_whereis(name)

  @doc """
  Stores `value` under `key`, replacing any entry there (key included, as
  ETS does: in an `:ordered_set`, putting `1.0` over `1` leaves `1.0`).
  `{:error, :full}` when the key is new and the store holds `:max_size`
  entries.

  ## Options

    * `:ttl` - milliseconds the entry lives. An expired entry is never
      returned by any function and stops counting in `size/1`; its memory
      is reclaimed at the next write that meets it, or by
      `GenNative.Store.Sweeper` within about a second. A put without `:ttl`
      over an entry with one makes it permanent.
  """
  @spec put(t(), key(), value(), keyword()) :: :ok | {:error, :full}
  def put(store, key, value, opts \\ [])

  # the hot paths call the NIF directly; errors are translated in rescue
  def put(store, key, value, []) when is_reference(store) do
    Native.store_put(store, key, value, :put, 0)
  rescue
    e -> translate(e, store, &put(&1, key, value, []))
  end

  def put(store, key, value, opts) do
    ttl = ttl!(opts)
    call(store, &Native.store_put(&1, key, value, :put, ttl))
  end

  defp ttl!([]), do: 0

  defp ttl!(opts) when is_list(opts) do
    for {key, _} <- opts, key != :ttl do
      raise ArgumentError, "unknown put option #{inspect(key)}, expected :ttl"
    end

    case Keyword.get(opts, :ttl) do
      ttl when is_integer(ttl) and ttl > 0 and ttl < 1 <<< 62 ->
        ttl

      other ->
        raise ArgumentError,
              "invalid value for put option :ttl, expected a positive integer (ms), got: #{inspect(other)}"
    end
  end

  defp ttl!(opts) do
    raise ArgumentError, "expected the put options to be a keyword list, got: #{inspect(opts)}"
  end

  @doc """
  Stores `value` under `key` only if the key is absent: `true` if stored,
  `false` if the key was there.
  """
  @spec put_new(t(), key(), value(), keyword()) :: boolean() | {:error, :full}
  def put_new(store, key, value, opts \\ []) do
    ttl = ttl!(opts)
    call(store, &Native.store_put(&1, key, value, :put_new, ttl))
  end

  @doc "The value under `key`, or `default`."
  @spec get(t(), key(), value()) :: value()
  def get(store, key, default \\ nil)

  def get(store, key, default) when is_reference(store) do
    case Native.store_get(store, key) do
      {:ok, value} -> value
      :error -> default
    end
  rescue
    e -> translate(e, store, &get(&1, key, default))
  end

  def get(store, _key, _default), do: call(store, & &1)

  @doc "`{:ok, value}` or `:error`."
  @spec fetch(t(), key()) :: {:ok, value()} | :error
  def fetch(store, key) when is_reference(store) do
    Native.store_get(store, key)
  rescue
    e -> translate(e, store, &fetch(&1, key))
  end

  def fetch(store, _key), do: call(store, & &1)

  @doc "Whether `key` is in the store."
  @spec member?(t(), key()) :: boolean()
  def member?(store, key), do: fetch(store, key) != :error

  @doc "Removes `key`; `:ok` whether or not it was there."
  @spec delete(t(), key()) :: :ok
  def delete(store, key), do: call(store, &Native.store_delete_key(&1, key))

  @doc "Removes `key` and returns its value: `{:ok, value}` or `:error`."
  @spec take(t(), key()) :: {:ok, value()} | :error
  def take(store, key), do: call(store, &Native.store_take(&1, key))

  @doc """
  Adds `incr` to the integer under `key` (starting from `default` when the
  key is absent) and returns the new value, atomically. Raises
  `ArgumentError` if the value is not an integer (64-bit).
  """
  @spec update_counter(t(), key(), integer(), integer()) :: integer() | {:error, :full}
  def update_counter(store, key, incr, default \\ 0)
      when is_integer(incr) and is_integer(default) do
    unless incr >= -(1 <<< 63) and incr < 1 <<< 63 do
      raise ArgumentError, "the increment does not fit 64 bits: #{incr}"
    end

    call(store, &Native.store_update_counter(&1, key, incr, default))
  end

  @doc "How many entries the store holds."
  @spec size(t()) :: non_neg_integer()
  def size(store), do: call(store, &Native.store_size/1)

  @doc "Removes every entry."
  @spec clear(t()) :: :ok
  def clear(store), do: call(store, &Native.store_clear/1)

  @doc "Every `{key, value}`, in key order for an `:ordered_set`."
  @spec to_list(t()) :: [{key(), value()}]
  def to_list(store), do: call(store, &Native.store_to_list/1)

  @doc """
  Stores every `{key, value}` of `entries`. `{:error, :full}`, with nothing
  stored, if the new keys would take the store past `:max_size`.
  """
  @spec put_many(t(), [{key(), value()}]) :: :ok | {:error, :full}
  def put_many(store, entries) when is_list(entries) do
    unless Enum.all?(entries, &match?({_, _}, &1)) do
      raise ArgumentError, "expected a list of {key, value} tuples"
    end

    call(store, &Native.store_put_many(&1, entries))
  end

  @doc """
  Deletes the store and frees what it holds. Only the owner may delete a
  `:protected` store; every later use of it raises `ArgumentError`.
  """
  @spec delete(t()) :: :ok
  def delete(store), do: call(store, &Native.store_delete/1)

  @doc """
  `%{type, size, memory, owner, name, access, lifetime}`; `memory` is the
  bytes the store holds; `owner` is `nil` for a `:named` store whose owner
  exited.
  """
  @spec info(t()) :: map()
  def info(store), do: call(store, &Native.store_info/1)

  @doc "The smallest entry of an `:ordered_set`: `{:ok, {key, value}}` or `:error`."
  @spec first(t()) :: {:ok, {key(), value()}} | :error
  def first(store), do: ordered(store, :first, &Native.store_step(&1, :first, nil))

  @doc "The largest entry of an `:ordered_set`."
  @spec last(t()) :: {:ok, {key(), value()}} | :error
  def last(store), do: ordered(store, :last, &Native.store_step(&1, :last, nil))

  @doc "The entry after `key` (which need not be in the store)."
  @spec next(t(), key()) :: {:ok, {key(), value()}} | :error
  def next(store, key), do: ordered(store, :next, &Native.store_step(&1, :next, key))

  @doc "The entry before `key` (which need not be in the store)."
  @spec prev(t(), key()) :: {:ok, {key(), value()}} | :error
  def prev(store, key), do: ordered(store, :prev, &Native.store_step(&1, :prev, key))

  @doc "The entries with keys from `from` to `to` inclusive, in order, at most `limit`."
  @spec range(t(), key(), key(), non_neg_integer() | :infinity) :: [{key(), value()}]
  def range(store, from, to, limit \\ :infinity)
      when limit == :infinity or (is_integer(limit) and limit >= 0) do
    ordered(store, :range, &Native.store_range(&1, from, to, clamp(limit)))
  end

  @doc "The 0-based position of `key` in an `:ordered_set`: `{:ok, index}` or `:error`."
  @spec rank(t(), key()) :: {:ok, non_neg_integer()} | :error
  def rank(store, key), do: ordered(store, :rank, &Native.store_rank(&1, key))

  @doc """
  The entry at `index` (0-based; negative counts from the end) of an
  `:ordered_set`: `{:ok, {key, value}}` or `:error`.
  """
  @spec at(t(), integer()) :: {:ok, {key(), value()}} | :error
  def at(store, index) when is_integer(index) and abs(index) < 1 <<< 62,
    do: ordered(store, :at, &Native.store_at(&1, index))

  def at(store, index) when is_integer(index) do
    # beyond any store's size; still checks that it is an ordered store
    _ = ordered(store, :at, &Native.store_at(&1, 0))
    :error
  end

  @doc "Up to `count` entries from `index` on (negative counts from the end)."
  @spec slice(t(), integer(), non_neg_integer()) :: [{key(), value()}]
  def slice(store, index, count) when is_integer(index) and is_integer(count) and count >= 0 do
    index = max(min(index, 1 <<< 62), -(1 <<< 62))
    ordered(store, :slice, &Native.store_range(&1, {:index, index}, clamp(count), :infinity))
  end

  defp clamp(:infinity), do: :infinity
  defp clamp(n), do: min(n, 1 <<< 62)

  ## Errors

  defp ordered(store, fun, op) do
    call(store, op)
  rescue
    e in ErlangError ->
      if e.original == :not_ordered,
        do:
          raise(
            ArgumentError,
            "GenNative.Store.#{fun} needs an :ordered_set, this store is a :set"
          ),
        else: reraise(e, __STACKTRACE__)
  end

  defp call(store, fun) when is_reference(store) do
    fun.(store)
  rescue
    e -> translate(e, store, fun)
  end

  defp call(store, _fun) do
    raise ArgumentError, "expected a GenNative.Store, got: #{inspect(store)}"
  end

  # Turns what the NIFs raise into ArgumentErrors that say what is wrong;
  # `retry` runs the call again after a dirty purge of expired entries.
  defp translate(%ArgumentError{}, store, _retry) do
    raise ArgumentError, "not a GenNative.Store, or an invalid argument: #{inspect(store)}"
  end

  defp translate(%ErlangError{original: :purge}, store, retry) do
    # more expired entries than a regular NIF may purge: on a dirty
    # scheduler, then again
    Native.store_purge(store)
    retry.(store)
  end

  defp translate(%ErlangError{original: :store_deleted}, store, _retry) do
    raise ArgumentError, "the store #{inspect(store)} has been deleted"
  end

  defp translate(%ErlangError{original: :not_owner}, _store, _retry) do
    raise ArgumentError, "not the owner: only the owner writes a :protected store"
  end

  defp translate(%ErlangError{original: :not_integer}, _store, _retry) do
    raise ArgumentError, "the value is not an integer (or would not fit 64 bits)"
  end

  defp translate(e, _store, _retry), do: raise(e)
end
