defmodule GenNative.Examples.Cache do
  @moduledoc """
  A cache that survives its server's crash: a GenNative server owning a
  `:set` `GenNative.Store` with `lifetime: :named`.

  The server writes (puts and deletes go through it, so they are
  serialised); clients read the store directly with `get/3`, without a
  message. When the server crashes its supervisor restarts it, and the new
  `init/1` calls `GenNative.Store.new/2` with the same name, which adopts
  the orphaned store: the entries are still there.

  Entries may expire: `put(cache, key, value, ttl: ms)`. An expired entry
  is never returned, and the store reclaims its memory on its own.

  A `:named` store outlives its server, including a normal stop; `destroy/1`
  deletes it.
  """
  use GenNative
  alias GenNative.Store

  @type cache :: atom()

  ## Client API

  @doc "Starts a cache registered as `name`; its store has the same name."
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    name = Keyword.fetch!(opts, :name)
    GenNative.start_link(__MODULE__, name, name: name)
  end

  @doc """
  Stores `value` under `key`.

  ## Options

    * `:ttl` - milliseconds after which the entry expires.
  """
  @spec put(cache(), term(), term(), keyword()) :: :ok
  def put(cache, key, value, opts \\ []) do
    ttl = Keyword.get(opts, :ttl)

    unless ttl == nil or (is_integer(ttl) and ttl > 0) do
      raise ArgumentError, "expected :ttl to be a positive integer (ms), got: #{inspect(ttl)}"
    end

    GenNative.call(cache, {:put, key, value, ttl})
  end

  @doc "Removes `key`."
  @spec delete(cache(), term()) :: :ok
  def delete(cache, key), do: GenNative.call(cache, {:delete, key})

  @doc "The value under `key`, or `default`; read from the store, no message."
  @spec get(cache(), term(), term()) :: term()
  def get(cache, key, default \\ nil), do: Store.get(store!(cache), key, default)

  @doc "How many live entries the cache holds."
  @spec size(cache()) :: non_neg_integer()
  def size(cache), do: Store.size(store!(cache))

  @doc "Deletes the cache's store; call it once the cache server is stopped."
  @spec destroy(cache()) :: :ok
  def destroy(cache) do
    case Store.whereis(cache) do
      nil -> :ok
      store -> Store.delete(store)
    end
  end

  @doc "Whether this build of `GenNative.Store` supports `ttl:`."
  @spec ttl_supported?() :: boolean()
  def ttl_supported? do
    Code.ensure_loaded?(Store) and function_exported?(Store, :put, 4)
  end

  defp store!(cache) do
    Store.whereis(cache) || raise ArgumentError, "no cache named #{inspect(cache)}"
  end

  ## Callbacks

  @impl true
  def init(name) do
    # Creates the store, or adopts it after a crash with its data intact.
    {:ok, store} = Store.new(:set, name: name, lifetime: :named)
    {:ok, store}
  end

  @impl true
  def handle_call({:put, key, value, nil}, _from, store),
    do: {:reply, Store.put(store, key, value), store}

  def handle_call({:put, key, value, ttl}, _from, store) do
    if ttl_supported?() do
      # Called through apply/3: this file also compiles against a
      # GenNative.Store without put/4.
      {:reply, apply(Store, :put, [store, key, value, [ttl: ttl]]), store}
    else
      {:reply, {:error, :ttl_unsupported}, store}
    end
  end

  def handle_call({:delete, key}, _from, store), do: {:reply, Store.delete(store, key), store}
end

defmodule GenNative.Examples.CacheTest do
  use ExUnit.Case, async: true

  alias GenNative.Examples.Cache
  alias GenNative.Store

  setup %{test: test} do
    cache = :"cache #{System.unique_integer([:positive])} #{test}"
    # The store outlives the server: delete it once the test is over.
    on_exit(fn -> Cache.destroy(cache) end)
    %{cache: cache}
  end

  defp start_cache(cache) do
    {:ok, sup} =
      Supervisor.start_link([{Cache, name: cache}], strategy: :one_for_one, max_restarts: 10)

    # The supervisor is linked to the test process and goes down with it,
    # taking the server along; the setup's on_exit, which runs after this
    # one, then deletes the orphaned store.
    on_exit(fn ->
      ref = Process.monitor(sup)
      assert_receive {:DOWN, ^ref, :process, ^sup, _}, 5_000
    end)

    sup
  end

  # Kills the cache server and waits for its supervisor to start a new one.
  defp crash(cache) do
    old = Process.whereis(cache)
    ref = Process.monitor(old)
    Process.exit(old, :kill)
    assert_receive {:DOWN, ^ref, :process, ^old, :killed}
    wait_for_restart(cache, old, 100)
  end

  defp wait_for_restart(cache, old, 0),
    do: flunk("#{inspect(cache)} was not restarted (#{inspect(old)})")

  defp wait_for_restart(cache, old, tries) do
    case Process.whereis(cache) do
      pid when is_pid(pid) and pid != old ->
        # A call proves init/1 has finished.
        :ok = Cache.delete(cache, :__no_such_key__)
        pid

      _ ->
        Process.sleep(10)
        wait_for_restart(cache, old, tries - 1)
    end
  end

  describe "get/3, put/4, delete/2" do
    test "reads what the server wrote", %{cache: cache} do
      start_cache(cache)

      assert Cache.get(cache, :a) == nil
      assert Cache.get(cache, :a, :default) == :default
      :ok = Cache.put(cache, :a, 1)
      :ok = Cache.put(cache, {:user, 7}, %{name: "ana"})
      assert Cache.get(cache, :a) == 1
      assert Cache.get(cache, {:user, 7}) == %{name: "ana"}
      assert Cache.size(cache) == 2

      :ok = Cache.delete(cache, :a)
      assert Cache.get(cache, :a) == nil
      assert Cache.size(cache) == 1
    end

    test "reads do not go through the server: they answer while it is suspended",
         %{cache: cache} do
      start_cache(cache)
      :ok = Cache.put(cache, :a, 1)
      :ok = :sys.suspend(cache)

      try do
        assert Cache.get(cache, :a) == 1
      after
        :sys.resume(cache)
      end
    end

    test "rejects a bad ttl", %{cache: cache} do
      start_cache(cache)
      assert_raise ArgumentError, ~r/:ttl/, fn -> Cache.put(cache, :a, 1, ttl: 0) end
      assert_raise ArgumentError, ~r/:ttl/, fn -> Cache.put(cache, :a, 1, ttl: :soon) end
    end
  end

  describe "surviving a crash" do
    test "the restarted server adopts the store and finds the data intact", %{cache: cache} do
      start_cache(cache)
      old = Process.whereis(cache)
      entries = for i <- 1..1000, do: {i, {:value, i}}
      Enum.each(entries, fn {k, v} -> :ok = Cache.put(cache, k, v) end)
      store = Store.whereis(cache)

      new = crash(cache)

      assert new != old
      # The same store, now owned by the new server, which can write it.
      assert Store.whereis(cache) == store
      assert Store.info(store).owner == new
      assert Cache.size(cache) == 1000
      assert Enum.all?(entries, fn {k, v} -> Cache.get(cache, k) == v end)

      :ok = Cache.put(cache, :after, :crash)
      assert Cache.get(cache, :after) == :crash
    end

    test "readers keep reading while the server is down and restarting", %{cache: cache} do
      start_cache(cache)
      :ok = Cache.put(cache, :k, :v)
      parent = self()

      spawn_link(fn ->
        reads = Stream.repeatedly(fn -> Cache.get(cache, :k) end) |> Enum.take(20_000)
        send(parent, {:reads, Enum.uniq(reads)})
      end)

      for _ <- 1..3, do: crash(cache)
      assert_receive {:reads, [:v]}, 10_000
    end

    test "survives repeated crashes", %{cache: cache} do
      start_cache(cache)

      for i <- 1..5 do
        :ok = Cache.put(cache, i, i)
        crash(cache)
      end

      assert for(i <- 1..5, do: Cache.get(cache, i)) == [1, 2, 3, 4, 5]
    end
  end

  describe "ttl" do
    unless Cache.ttl_supported?() do
      @describetag skip: "GenNative.Store.put/4 (ttl:) is not available in this build"
    end

    test "an expired entry is never returned", %{cache: cache} do
      start_cache(cache)
      :ok = Cache.put(cache, :forever, 2)
      t0 = System.monotonic_time(:millisecond)
      :ok = Cache.put(cache, :short, 1, ttl: 50)
      assert Cache.get(cache, :short) == 1

      # Not before its time; once it has expired, no later read returns it.
      assert poll_until_gone(cache, :short, t0) >= 50

      for _ <- 1..1000, do: assert(Cache.get(cache, :short) == nil)
      assert Cache.size(cache) == 1
      assert Cache.get(cache, :forever) == 2
    end

    test "a put without ttl replaces an expiring entry with a lasting one", %{cache: cache} do
      start_cache(cache)
      :ok = Cache.put(cache, :k, :first, ttl: 30)
      :ok = Cache.put(cache, :k, :second)
      Process.sleep(60)
      assert Cache.get(cache, :k) == :second
    end

    test "expiry carries over a crash", %{cache: cache} do
      start_cache(cache)
      :ok = Cache.put(cache, :short, 1, ttl: 100)
      :ok = Cache.put(cache, :long, 2, ttl: 60_000)
      crash(cache)
      assert Cache.get(cache, :long) == 2
      Process.sleep(150)
      assert Cache.get(cache, :short) == nil
      assert Cache.get(cache, :long) == 2
    end
  end

  # Reads `key` until it is gone; returns how many ms after `t0` that was.
  defp poll_until_gone(cache, key, t0) do
    case Cache.get(cache, key) do
      nil ->
        System.monotonic_time(:millisecond) - t0

      _ ->
        if System.monotonic_time(:millisecond) - t0 > 5_000, do: flunk("#{key} never expired")
        poll_until_gone(cache, key, t0)
    end
  end
end
