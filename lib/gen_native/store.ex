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

  ## Scheduling

  No call on a `:nif` store keeps a normal scheduler for more than about a
  millisecond. Functions whose work grows with the store (`to_list/1`, `range/4`,
  `slice/3`, `put_many/2`, `snapshot/1`, `restore/2`) run on dirty
  schedulers; `clear/1` and `delete/1` hand the entries to a background
  thread in O(1). The others are O(log n) and move themselves to a dirty
  scheduler when they would wait or work longer: when the store's lock is
  busy (held by a writer, or by such a walk), when the key or the value
  they copy is large (over about 64 KB of terms, or a binary key that
  size: a 10,000-element list, a big binary key), when many entries have
  expired since the last purge (over 200, for the functions that read the
  whole store: `size/1`, `info/1`, `first/1`, `last/1`, `next/2`,
  `prev/2`, `rank/2`, `at/2`), or when a write leaves a big store holding
  more garbage than live data (see "Memory"): it is compacted, in O(n),
  before the write returns. What they copy on a normal scheduler is
  charged to the caller's timeslice.

  Each function's documentation gives its cost on a `:nif` store of n
  entries. A call on a port store is a round trip to its program: the
  caller waits for the reply in a `receive`, holding no scheduler.

  ## Memory

  For a `:nif` store, `info/1`'s `:memory` is what it holds as the VM counts it (within
  about 10% of what `:erlang.memory/0` sees): its entries, their terms,
  the off-heap binaries they reference, and the terms overwritten or
  removed but not yet reclaimed. Those are reclaimed once they outweigh
  the live ones (plus 64 KB), so a store holds at most about twice its
  live data, however it is written to.

  ## Backends

  A store lives in the VM (the `:nif` backend, the default, described
  above) or in a port program, an OS process outside the VM started by
  `GenNative.Port` (the `{:port, port_name}` backend):

      {:ok, _} = GenNative.Port.start_link(name: :durable, dir: "/var/lib/app/stores")
      {:ok, users} = GenNative.Store.new(:set, backend: {:port, :durable}, name: :users)
      :ok = GenNative.Store.put(users, 42, %{name: "ada"})

  Every function of this module takes a store of either backend and gives
  the same results and raises the same exceptions, except:

    * a port store is named (`:name` is required) and has neither owner nor
      access rules: any process writes it, and it lives until `delete/1`
      (or, without a data directory, until its program stops). `new/2`
      with the name of an existing port store of the same type reopens it.
      `:access` and `:lifetime` are for the `:nif` backend only.
    * every call on a port store is a round trip to the program: it exits,
      as `GenServer.call/3` does, when the program dies before answering
      (`{{:port_exited, status}, {GenNative.Store, fun, args}}`), when no
      program runs (`{:noproc, ...}`) or after the port's request timeout
      (`{:timeout, ...}`); see `GenNative.Port`.
    * a request to a port store (keys and values included) is at most
      64 MiB once encoded; a bigger one raises `ArgumentError`.
    * `whereis/1` finds `:nif` stores only; `GenNative.Port.stores/1` lists
      a program's stores.
  """

  import Bitwise

  alias GenNative.Native
  alias GenNative.Store.PortHandle

  @doc """
  A fresh request id for `with_request_id/2`: `{client, seq}`, where
  `client` is drawn once per process (a random 62-bit integer) and `seq`
  counts up.
  """
  @spec request_id() :: {pos_integer(), pos_integer()}
  def request_id do
    client =
      Process.get(:"$gn_client") ||
        tap(:rand.uniform(1 <<< 62), &Process.put(:"$gn_client", &1))

    seq = (Process.get(:"$gn_seq") || 0) + 1
    Process.put(:"$gn_seq", seq)
    {client, seq}
  end

  @doc """
  Runs `fun`, which makes one write on a store of a replicated
  `GenNative.Port`, under the request id `id` (`request_id/0`). The group
  keeps each client's last id and the reply it got, in its replicated
  state: when the outcome of a write is unknown
  (`{:error, {:leadership_lost, leader}}`, a timeout), retrying it under
  the same id, on whichever member leads now, applies it once; the retry
  gets the first reply. A client's id is kept for 10 minutes (of the
  group's clock) after its last request; an id older than the client's
  last gets `{:error, :stale_request}`. Stores of other programs ignore it.
  """
  @spec with_request_id({pos_integer(), pos_integer()}, (() -> result)) :: result when result: var
  def with_request_id({client, seq} = id, fun)
      when is_integer(client) and client > 0 and client < 1 <<< 63 and is_integer(seq) and
             seq > 0 and seq < 1 <<< 63 and is_function(fun, 0),
      do: with_process_key(:"$gn_request_id", id, fun)

  @doc """
  Runs `fun` with the reads it makes on stores of replicated
  `GenNative.Port` programs served with `consistency`:
  `:linearizable` (through the leader, after an entry of its own is
  committed: sees every acknowledged write) or `:local` (from what the
  member has applied, at once; may be stale). Without it, a member's
  `reads:` option decides (`:linearizable` by default). Stores of other
  programs ignore it. See guides/replication.md.
  """
  @spec with_consistency(:linearizable | :local, (() -> result)) :: result when result: var
  def with_consistency(consistency, fun)
      when consistency in [:linearizable, :local] and is_function(fun, 0),
      do: with_process_key(:"$gn_consistency", consistency, fun)

  # Runs fun with `key` set to `value` in the process dictionary (where
  # GenNative.Port.request/4 reads it), then puts back what was there.
  defp with_process_key(key, value, fun) do
    previous = Process.put(key, value)

    try do
      fun.()
    after
      if previous, do: Process.put(key, previous), else: Process.delete(key)
    end
  end

  # What a replicated program answers a request it cannot serve (see
  # guides/replication.md): a write returns it; a read raises it.
  @replication_errors [:not_leader, :leadership_lost, :raft]
  @writes [:new, :put, :put_new, :delete, :take, :update_counter, :clear, :put_many, :restore]

  @opaque t :: reference() | PortHandle.t()
  @type type :: :set | :ordered_set
  @type key :: term()
  @type value :: term()
  @type access :: :protected | :public
  @type lifetime :: :owner | :named

  @typedoc """
  What `info/1` returns for a `:nif` store. `owner` is `nil` for a
  `:named` store whose owner exited, `name` `nil` for an unnamed store.
  """
  @type nif_info :: %{
          type: type(),
          size: non_neg_integer(),
          memory: non_neg_integer(),
          owner: pid() | nil,
          name: atom() | nil,
          access: access(),
          lifetime: lifetime()
        }

  @typedoc """
  What `info/1` returns for a port store: the keys of `t:nif_info/0`, with
  `owner: nil`, `access: :public` and `lifetime: :named` always, plus the
  store's `backend` and `max_size`. `memory` is what the program counts
  for the store.
  """
  @type port_info :: %{
          type: type(),
          size: non_neg_integer(),
          memory: non_neg_integer(),
          owner: nil,
          name: atom(),
          access: :public,
          lifetime: :named,
          backend: {:port, GenNative.Port.name()},
          max_size: pos_integer() | :infinity
        }

  @type info :: nif_info() | port_info()

  @doc """
  Creates a store owned by the calling process. Returns `{:ok, store}`.

  ## Options

    * `:backend` - `:nif` (default: the store lives in the VM) or
      `{:port, port_name}`: the store lives in the program of the
      `GenNative.Port` named `port_name`, which creates it, or reopens the
      store of that name as it is, with its entries and the `:max_size` it
      was created with (`{:error, :already_exists}` if it is of the other
      type). A port store needs a `:name` and takes no `:access` or
      `:lifetime`.
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

  Cost: O(1), and O(named stores) with a `:name` (the names are a list). A
  regular NIF; adopting a `:named` store whose lock is busy waits for it on
  a dirty scheduler.
  """
  @spec new(type(), keyword()) :: {:ok, t()} | {:error, :already_exists}
  def new(type, opts \\ []) do
    unless type in [:set, :ordered_set] do
      raise ArgumentError,
            "expected the store type to be :set or :ordered_set, got: #{inspect(type)}"
    end

    case options!(opts) do
      {:nif, name, access, lifetime, max} ->
        Native.store_new(type, name, access, lifetime, max)

      {{:port, port}, name, _access, _lifetime, max} ->
        store = %PortHandle{port: port, name: name}

        case port(store, {:open, name, type, max}, :new, [type, opts]) do
          :ok -> {:ok, store}
          {:error, {:wrong_type, _}} -> {:error, :already_exists}
          {:error, {reason, _}} = error when reason in @replication_errors -> error
        end
    end
  end

  @doc """
  A binary holding every entry of the store, for `restore/2`. Entries
  that have expired are left out.

  Cost: O(n), on a dirty scheduler, holding the store's read lock throughout
  (writers wait for it on a dirty scheduler); every expired entry is purged
  first.
  """
  @spec snapshot(t()) :: binary()
  def snapshot(%PortHandle{name: n} = store),
    do: port(store, {:snapshot, n}, :snapshot, [store], :binary)

  def snapshot(store), do: call(store, &Native.store_snapshot/1)

  @doc """
  Builds a new store, owned by the caller, from a `snapshot/1` binary, with
  the options of `new/2` (the type is the snapshot's) and `:safe`. A
  truncated, corrupted or foreign binary gives `{:error, :invalid_snapshot}`:
  no store is created. A name in use gives `{:error, :already_exists}`.

  ## Atoms

  The whole snapshot is checked before anything is made from it: a snapshot
  that is rejected, for any reason, creates no atom. A snapshot that is
  accepted creates the atoms its keys and values hold, as
  `:ets.file2tab/1` and `:erlang.binary_to_term/1` do; atoms are never
  garbage collected, so restore untrusted snapshots with `safe: true`. A
  snapshot that would take the atom table within 5% of its limit
  (`:erlang.system_info(:atom_limit)`) gives `{:error, :system_limit}`
  instead of exhausting it.

  One known limit of that check: a map whose keys include two pids, ports
  or references that differ only by the name of a node this node does not
  know yet is refused with `{:error, :invalid_snapshot}`, although
  `:erlang.binary_to_term/1` would take it. Maps keyed by atoms the node
  does not know yet (a struct whose module is not loaded) are restored.

  ## Options

  Those of `new/2`, and:

    * `:safe` - `true` refuses, as `:erlang.binary_to_term(binary, [:safe])`
      does, a snapshot holding atoms this node does not know yet, or
      external funs it does not have: `{:error, :unsafe_snapshot}`, and
      nothing is created. Default `false`. A port store (the
      `{:port, name}` backend) makes no atom when it is restored: its
      program keeps the entries encoded.

  Cost: O(n) for a snapshot of n entries in key order, as `snapshot/1` makes
  them (O(n log n) otherwise), on a dirty scheduler.
  """
  @spec restore(binary(), keyword()) ::
          {:ok, t()}
          | {:error,
             :invalid_snapshot | :unsafe_snapshot | :system_limit | :already_exists | :full}
  def restore(binary, opts \\ [])

  def restore(binary, opts) when is_binary(binary) do
    {safe, opts} = safe!(opts)

    case options!(opts) do
      {:nif, name, access, lifetime, max} ->
        Native.store_restore(binary, name, access, lifetime, max, atoms_allowed(safe))

      {{:port, port}, name, _access, _lifetime, max} ->
        store = %PortHandle{port: port, name: name}

        case GenNative.Port.request(port, {:restore, name, binary, max}, :single, {
               __MODULE__,
               :restore,
               [binary, opts]
             }) do
          :ok ->
            {:ok, store}

          {:error, reason} when reason in [:invalid_snapshot, :already_exists, :full] ->
            {:error, reason}

          {:error, {reason, _}} = error when reason in @replication_errors ->
            error

          {:error, reason} ->
            port_error(reason, store, :restore)
        end
    end
  end

  def restore(binary, _opts) do
    raise ArgumentError,
          "expected a snapshot (a binary made by GenNative.Store.snapshot/1), got: " <>
            inspect(binary)
  end

  defp safe!(opts) do
    keyword!(opts, "store options")

    case Keyword.pop(opts, :safe, false) do
      {safe, rest} when is_boolean(safe) ->
        {safe, rest}

      {other, _} ->
        raise ArgumentError,
              "invalid value for restore option :safe, expected a boolean, got: #{inspect(other)}"
    end
  end

  # How many new atoms a trusted restore may make: all but 5% of what the
  # atom table has left.
  defp atoms_allowed(true), do: :safe

  defp atoms_allowed(false) do
    limit = :erlang.system_info(:atom_limit)
    max(limit - div(limit, 20) - :erlang.system_info(:atom_count), 0)
  end

  # A proper list of {atom, term}; an improper one raises too.
  defp keyword!(opts, what) do
    unless is_list(opts) and Keyword.keyword?(opts) do
      raise ArgumentError, "expected the #{what} to be a keyword list, got: #{inspect(opts)}"
    end
  end

  defp options!(opts) do
    keyword!(opts, "store options")

    backend = Keyword.get(opts, :backend, :nif)
    name = Keyword.get(opts, :name)
    access = Keyword.get(opts, :access, :protected)
    lifetime = Keyword.get(opts, :lifetime, :owner)
    max = Keyword.get(opts, :max_size, :infinity)

    for {key, _} <- opts, key not in [:name, :access, :lifetime, :max_size, :backend] do
      raise ArgumentError,
            "unknown store option #{inspect(key)}, expected :name, :access, :lifetime, :max_size or :backend"
    end

    check!(
      backend == :nif or
        match?({:port, port} when is_atom(port) and port not in [nil, true, false], backend),
      :backend,
      backend,
      ":nif or {:port, name} (the name of a GenNative.Port)"
    )

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

    if backend != :nif do
      port_options!(opts, name)
    end

    # a cap no store can reach is no cap
    max = if is_integer(max) and max >= 1 <<< 62, do: :infinity, else: max
    {backend, name, access, lifetime, max}
  end

  defp port_options!(opts, name) do
    cond do
      name == nil ->
        raise ArgumentError,
              "a port store needs a :name (the stores of a GenNative.Port are named)"

      Keyword.has_key?(opts, :access) ->
        raise ArgumentError,
              "store option :access is for the :nif backend only: any process writes a port store"

      Keyword.has_key?(opts, :lifetime) ->
        raise ArgumentError,
              "store option :lifetime is for the :nif backend only: a port store lives until delete/1"

      true ->
        :ok
    end
  end

  defp check!(true, _opt, _value, _expected), do: :ok

  defp check!(false, opt, value, expected) do
    raise ArgumentError,
          "invalid value for store option #{inspect(opt)}, expected #{expected}, got: #{inspect(value)}"
  end

  @doc """
  The `:nif` store registered as `name`, or `nil`. Port stores are not
  registered here: `GenNative.Port.stores/1` lists them.

  Cost: O(named stores) (the names are a list, under a mutex of their own:
  no store's lock is taken). A regular NIF.
  """
  @spec whereis(atom()) :: t() | nil
  def whereis(name) when is_atom(name), do: Native.store_whereis(name)

  def whereis(name) do
    raise ArgumentError, "expected a store name (an atom), got: #{inspect(name)}"
  end

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

  Cost: O(1) on a `:set` (a hash table), O(log n) on an `:ordered_set`
  (one descent of its tree). A regular NIF, which moves to a dirty scheduler when the
  key and the value take over 64 KB of work (binaries in the key count in
  full; binaries in the value are shared, not copied), or to wait for a busy
  lock. It purges up to 16 expired entries on the way. A write that leaves
  the store holding more garbage than live data (see "Memory") compacts
  it, in O(n): in place for a store of up to 4,096 entries and 128 KB of
  terms, on a dirty scheduler for a bigger one (where a big `:set`'s hash
  table grows too).
  """
  @spec put(t(), key(), value(), keyword()) :: :ok | {:error, :full}
  def put(store, key, value, opts \\ [])

  # the hot paths call the NIF directly; errors are translated in rescue
  def put(store, key, value, []) when is_reference(store) do
    Native.store_put(store, key, value, :put, 0)
  rescue
    e -> translate(e, store, &put(&1, key, value, []))
  end

  def put(%PortHandle{name: n} = store, key, value, opts) do
    ttl = ttl!(opts)
    port(store, {:put, n, key, value, ttl}, :put, [store, key, value, opts])
  end

  def put(store, key, value, opts) do
    ttl = ttl!(opts)
    call(store, &Native.store_put(&1, key, value, :put, ttl))
  end

  defp ttl!([]), do: 0

  defp ttl!(opts) when is_list(opts) do
    keyword!(opts, "put options")

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

  Cost: as `put/4`.
  """
  @spec put_new(t(), key(), value(), keyword()) :: boolean() | {:error, :full}
  def put_new(store, key, value, opts \\ [])

  def put_new(%PortHandle{name: n} = store, key, value, opts) do
    ttl = ttl!(opts)
    port(store, {:put_new, n, key, value, ttl}, :put_new, [store, key, value, opts])
  end

  def put_new(store, key, value, opts) do
    ttl = ttl!(opts)
    call(store, &Native.store_put(&1, key, value, :put_new, ttl))
  end

  @doc """
  The value under `key`, or `default`.

  Cost: O(1) on a `:set` (a hash table), O(log n) on an
  `:ordered_set`. A regular NIF, which moves to a dirty scheduler when the
  key and the value it copies out take over 64 KB of work (binaries in the
  value are shared, not copied), or to wait for a busy lock.
  """
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

  def get(%PortHandle{name: n} = store, key, default) do
    case port(store, {:get, n, key}, :get, [store, key, default]) do
      {:ok, value} -> value
      :error -> default
    end
  end

  def get(store, _key, _default), do: call(store, & &1)

  @doc """
  `{:ok, value}` or `:error`.

  Cost: as `get/3`.
  """
  @spec fetch(t(), key()) :: {:ok, value()} | :error
  def fetch(store, key) when is_reference(store) do
    Native.store_get(store, key)
  rescue
    e -> translate(e, store, &fetch(&1, key))
  end

  def fetch(%PortHandle{name: n} = store, key),
    do: port(store, {:get, n, key}, :fetch, [store, key])

  def fetch(store, _key), do: call(store, & &1)

  @doc """
  Whether `key` is in the store.

  Cost: as `fetch/2`, which it calls: the value is copied out too.
  """
  @spec member?(t(), key()) :: boolean()
  def member?(%PortHandle{name: n} = store, key),
    do: port(store, {:get, n, key}, :member?, [store, key]) != :error

  def member?(store, key), do: fetch(store, key) != :error

  @doc """
  Removes `key`; `:ok` whether or not it was there.

  Cost: O(log n). A regular NIF, which moves to a dirty scheduler for a key
  over 64 KB, or to wait for a busy lock; it purges up to 16 expired entries
  on the way, and compacts the store as `put/4` does.
  """
  @spec delete(t(), key()) :: :ok
  def delete(%PortHandle{name: n} = store, key),
    do: port(store, {:delete_key, n, key}, :delete, [store, key])

  def delete(store, key), do: call(store, &Native.store_delete_key(&1, key))

  @doc """
  Removes `key` and returns its value: `{:ok, value}` or `:error`.

  Cost: O(log n). A regular NIF, which moves to a dirty scheduler when the
  key and the value it copies out take over 64 KB of work, or to wait for a
  busy lock; it purges up to 16 expired entries on the way, and compacts the
  store as `put/4` does.
  """
  @spec take(t(), key()) :: {:ok, value()} | :error
  def take(%PortHandle{name: n} = store, key),
    do: port(store, {:take, n, key}, :take, [store, key])

  def take(store, key), do: call(store, &Native.store_take(&1, key))

  @doc """
  Adds `incr` to the integer under `key` (starting from `default` when the
  key is absent) and returns the new value, atomically. Raises
  `ArgumentError` if the value is not an integer (64-bit).

  Cost: O(log n). A regular NIF, which moves to a dirty scheduler for a key
  over 64 KB, or to wait for a busy lock, and compacts the store as `put/4`
  does (a bignum leaves its old value as garbage).
  """
  @spec update_counter(t(), key(), integer(), integer()) :: integer() | {:error, :full}
  def update_counter(store, key, incr, default \\ 0)

  def update_counter(store, key, incr, default)
      when is_integer(incr) and is_integer(default) do
    unless incr >= -(1 <<< 63) and incr < 1 <<< 63 do
      raise ArgumentError, "the increment does not fit 64 bits: #{incr}"
    end

    case store do
      %PortHandle{name: n} ->
        port(store, {:update_counter, n, key, incr, default}, :update_counter, [
          store,
          key,
          incr,
          default
        ])

      _ ->
        call(store, &Native.store_update_counter(&1, key, incr, default))
    end
  end

  def update_counter(_store, _key, incr, default) do
    raise ArgumentError,
          "expected an integer increment and default, got: #{inspect(incr)} and #{inspect(default)}"
  end

  @doc """
  How many entries the store holds.

  Cost: O(1) (the store counts its entries), after purging what
  has expired. A regular NIF, which moves to a dirty scheduler when over 200
  expired entries wait to be purged, or to wait for a busy lock.
  """
  @spec size(t()) :: non_neg_integer()
  def size(%PortHandle{name: n} = store), do: port(store, {:size, n}, :size, [store])
  def size(store), do: call(store, &Native.store_size/1)

  @doc """
  Removes every entry.

  Cost: O(1): a background thread frees the entries. A regular NIF, which
  waits for a busy lock on a dirty scheduler.
  """
  @spec clear(t()) :: :ok
  def clear(%PortHandle{name: n} = store), do: port(store, {:clear, n}, :clear, [store])
  def clear(store), do: call(store, &Native.store_clear/1)

  @doc """
  Every `{key, value}`, in key order for an `:ordered_set`; for a `:set`, in
  no particular order, though always the same for the same entries.

  Cost: O(n), on a dirty scheduler, holding the store's read lock throughout
  (writers wait for it on a dirty scheduler); every expired entry is purged
  first.
  """
  @spec to_list(t()) :: [{key(), value()}]
  def to_list(%PortHandle{name: n} = store),
    do: port(store, {:to_list, n}, :to_list, [store], :list)

  def to_list(store), do: call(store, &Native.store_to_list/1)

  @doc """
  Stores every `{key, value}` of `entries`. `{:error, :full}`, with nothing
  stored, if the new keys would take the store past `:max_size`.

  Cost: O(m log(n + m)) for m entries, and O(m log m) more to count the new
  keys when they could take the store past `:max_size`. A dirty NIF, holding
  the store's write lock throughout; it purges every expired entry first.
  """
  @spec put_many(t(), [{key(), value()}]) :: :ok | {:error, :full}
  def put_many(store, entries) do
    unless entries?(entries) do
      raise ArgumentError,
            "expected a proper list of {key, value} tuples, got: #{inspect(entries, limit: 10)}"
    end

    case store do
      %PortHandle{name: n} -> port(store, {:put_many, n, entries}, :put_many, [store, entries])
      _ -> call(store, &Native.store_put_many(&1, entries))
    end
  end

  defp entries?([{_, _} | rest]), do: entries?(rest)
  defp entries?([]), do: true
  defp entries?(_), do: false

  @doc """
  Deletes the store and frees what it holds. Only the owner may delete a
  `:protected` store (any process deletes a port store); every later use of
  it raises `ArgumentError`.

  Cost: O(1): a background thread frees the entries; and O(named stores) to
  unregister a named one. A regular NIF, which waits for a busy lock on a
  dirty scheduler.
  """
  @spec delete(t()) :: :ok
  def delete(%PortHandle{name: n} = store), do: port(store, {:delete, n}, :delete, [store])
  def delete(store), do: call(store, &Native.store_delete/1)

  @doc """
  `%{type, size, memory, owner, name, access, lifetime}`; `memory` is the
  bytes the store holds, as the VM counts them (see "Memory" in the module
  docs); `owner` is `nil` for a `:named` store whose owner exited.

  For a port store: `owner: nil`, `access: :public`, `lifetime: :named`
  (it lives until `delete/1`), and also `backend: {:port, port_name}` and
  `max_size`.

  Cost: as `size/1`.
  """
  @spec info(t()) :: info()
  def info(%PortHandle{port: p, name: n} = store) do
    store
    |> port({:info, n}, :info, [store])
    |> Map.merge(%{owner: nil, name: n, access: :public, lifetime: :named, backend: {:port, p}})
  end

  def info(store), do: call(store, &Native.store_info/1)

  @doc """
  The smallest entry of an `:ordered_set`: `{:ok, {key, value}}` or `:error`.

  Cost: O(log n), after purging what has expired, as `size/1`. A regular
  NIF, which moves to a dirty scheduler when the entry it copies out is over
  64 KB, or to wait for a busy lock.
  """
  @spec first(t()) :: {:ok, {key(), value()}} | :error
  def first(%PortHandle{name: n} = store),
    do: port(store, {:step, n, :first, nil}, :first, [store])

  def first(store), do: ordered(store, :first, &Native.store_step(&1, :first, nil))

  @doc """
  The largest entry of an `:ordered_set`.

  Cost: as `first/1`.
  """
  @spec last(t()) :: {:ok, {key(), value()}} | :error
  def last(%PortHandle{name: n} = store), do: port(store, {:step, n, :last, nil}, :last, [store])
  def last(store), do: ordered(store, :last, &Native.store_step(&1, :last, nil))

  @doc """
  The entry after `key` (which need not be in the store).

  Cost: O(log n), after purging what has expired, as `size/1`. A regular
  NIF, which moves to a dirty scheduler when the key and the entry it copies
  out take over 64 KB of work, or to wait for a busy lock.
  """
  @spec next(t(), key()) :: {:ok, {key(), value()}} | :error
  def next(%PortHandle{name: n} = store, key),
    do: port(store, {:step, n, :next, key}, :next, [store, key])

  def next(store, key), do: ordered(store, :next, &Native.store_step(&1, :next, key))

  @doc """
  The entry before `key` (which need not be in the store).

  Cost: as `next/2`.
  """
  @spec prev(t(), key()) :: {:ok, {key(), value()}} | :error
  def prev(%PortHandle{name: n} = store, key),
    do: port(store, {:step, n, :prev, key}, :prev, [store, key])

  def prev(store, key), do: ordered(store, :prev, &Native.store_step(&1, :prev, key))

  @doc """
  The entries with keys from `from` to `to` inclusive, in order, at most `limit`.

  Cost: O(log n + k) for the k entries returned, on a dirty scheduler,
  holding the store's read lock; every expired entry is purged first.
  """
  @spec range(t(), key(), key(), non_neg_integer() | :infinity) :: [{key(), value()}]
  def range(store, from, to, limit \\ :infinity)

  def range(%PortHandle{name: n} = store, from, to, limit)
      when limit == :infinity or (is_integer(limit) and limit >= 0) do
    port(store, {:range, n, from, to, clamp(limit)}, :range, [store, from, to, limit], :list)
  end

  def range(store, from, to, limit)
      when limit == :infinity or (is_integer(limit) and limit >= 0) do
    ordered(store, :range, &Native.store_range(&1, from, to, clamp(limit)))
  end

  def range(_store, _from, _to, limit) do
    raise ArgumentError,
          "expected the limit to be a non-negative integer or :infinity, got: #{inspect(limit)}"
  end

  @doc """
  The 0-based position of `key` in an `:ordered_set`: `{:ok, index}` or `:error`.

  Cost: O(log n), after purging what has expired, as `size/1`; nothing is
  copied out. A regular NIF, which moves to a dirty scheduler for a key over
  64 KB, or to wait for a busy lock.
  """
  @spec rank(t(), key()) :: {:ok, non_neg_integer()} | :error
  def rank(%PortHandle{name: n} = store, key),
    do: port(store, {:rank, n, key}, :rank, [store, key])

  def rank(store, key), do: ordered(store, :rank, &Native.store_rank(&1, key))

  @doc """
  The entry at `index` (0-based; negative counts from the end) of an
  `:ordered_set`: `{:ok, {key, value}}` or `:error`.

  Cost: O(log n) (by the subtree sizes), after purging what has expired, as
  `size/1`. A regular NIF, which moves to a dirty scheduler when the entry
  it copies out is over 64 KB, or to wait for a busy lock.
  """
  @spec at(t(), integer()) :: {:ok, {key(), value()}} | :error
  def at(%PortHandle{name: n} = store, index) when is_integer(index) do
    if abs(index) < 1 <<< 62 do
      port(store, {:at, n, index}, :at, [store, index])
    else
      # beyond any store's size; still checks that it is an ordered store
      _ = port(store, {:at, n, 0}, :at, [store, index])
      :error
    end
  end

  def at(store, index) when is_integer(index) and abs(index) < 1 <<< 62,
    do: ordered(store, :at, &Native.store_at(&1, index))

  def at(store, index) when is_integer(index) do
    # beyond any store's size; still checks that it is an ordered store
    _ = ordered(store, :at, &Native.store_at(&1, 0))
    :error
  end

  def at(_store, index) do
    raise ArgumentError, "expected the index to be an integer, got: #{inspect(index)}"
  end

  @doc """
  Up to `count` entries from `index` on (negative counts from the end).

  Cost: O(log n + count): it skips to `index` by the subtree sizes. On a
  dirty scheduler, holding the store's read lock; every expired entry is
  purged first.
  """
  @spec slice(t(), integer(), non_neg_integer()) :: [{key(), value()}]
  def slice(store, index, count) when is_integer(index) and is_integer(count) and count >= 0 do
    clamped = max(min(index, 1 <<< 62), -(1 <<< 62))

    case store do
      %PortHandle{name: n} ->
        port(store, {:slice, n, clamped, clamp(count)}, :slice, [store, index, count], :list)

      _ ->
        ordered(
          store,
          :slice,
          &Native.store_range(&1, {:index, clamped}, clamp(count), :infinity)
        )
    end
  end

  def slice(_store, index, count) do
    raise ArgumentError,
          "expected an integer index and a non-negative integer count, got: " <>
            "#{inspect(index)} and #{inspect(count)}"
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

  # Turns what the NIFs raise into ArgumentErrors that say what is wrong.
  # (A NIF that needs more time reschedules itself on a dirty scheduler:
  # nothing is raised for this module to retry.)
  defp translate(%ArgumentError{}, store, _retry) do
    raise ArgumentError, "not a GenNative.Store, or an invalid argument: #{inspect(store)}"
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

  ## The port backend

  # One request to the program holding a port store. Its errors become the
  # exceptions the :nif backend raises; {:error, :full} is a result.
  defp port(%PortHandle{port: p} = store, request, fun, args, kind \\ :single) do
    case GenNative.Port.request(p, request, kind, {__MODULE__, fun, args}) do
      {:error, {reason, detail}} = error when reason in @replication_errors ->
        if fun in @writes,
          do: error,
          else:
            raise(GenNative.Store.ReplicationError, reason: reason, detail: detail, store: store)

      {:error, reason} = error when reason in [:removed_member, :stale_request] ->
        if fun in @writes,
          do: error,
          else: raise(GenNative.Store.ReplicationError, reason: reason, store: store)

      {:error, reason} when reason != :full and not is_tuple(reason) ->
        port_error(reason, store, fun)

      {:error, {:badarg, _} = reason} ->
        port_error(reason, store, fun)

      reply ->
        reply
    end
  end

  defp port_error(:no_store, store, _fun) do
    raise ArgumentError, "the store #{inspect(store)} has been deleted"
  end

  defp port_error(:not_ordered, _store, fun) do
    raise ArgumentError, "GenNative.Store.#{fun} needs an :ordered_set, this store is a :set"
  end

  defp port_error(:not_integer, _store, _fun) do
    raise ArgumentError, "the value is not an integer (or would not fit 64 bits)"
  end

  defp port_error(:frame_too_large, _store, fun) do
    raise ArgumentError,
          "GenNative.Store.#{fun}: the request is larger than a port program takes (64 MiB)"
  end

  defp port_error({:badarg, text}, store, fun) do
    raise ArgumentError,
          "GenNative.Store.#{fun}: an invalid argument for #{inspect(store)}: #{text}"
  end

  defp port_error(reason, store, fun) do
    raise "GenNative.Store.#{fun}: unexpected error from the program of #{inspect(store)}: " <>
            inspect(reason)
  end
end
