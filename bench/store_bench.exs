# The store suite: GenNative.Store against what a server would otherwise use
# for the same state, each scenario with its peer in the same run:
#
#   * get and put from one process: an ETS table of the same type
#     (both :public, filled with the same entries);
#   * reads from 8 concurrent readers: a GenServer holding the same entries
#     in a map and answering each read by call (and, for context, an ETS set
#     with read_concurrency);
#   * an ordered set of 1M entries: insert and delete against an ETS
#     ordered_set, timed in batches of 1000 operations and divided; rank and
#     at, which ETS can only answer in O(n) (:ets.select_count/2 with a key
#     guard, :ets.slot/2), timed one operation at a time on the ETS side;
#   * large state: a GenNative server holding 1M entries in a store, serving
#     10k update calls, against the same GenNative server holding them in a
#     map in its state: median, p99 and maximum call latency;
#   * memory per entry against ETS for the same 1M entries:
#     info(store).memory (what the store accounts) and the growth of
#     :erlang.memory(:total) (what the VM sees) against the ETS table, and
#     the memory left behind by inserting and deleting fresh keys.
#
# Entries are {integer, {integer, :v}} throughout.
#
#     bin/bench store
#     GN_BENCH_QUICK=1 bin/bench store      # 100k instead of 1M entries
#     MIX_ENV=prod mix gen_native.bench store

defmodule GenNative.Bench.Store.PeerReader do
  @moduledoc false
  # The GenServer way: the entries in a map, every read a call.
  use GenServer

  @impl true
  def init(entries), do: {:ok, Map.new(entries)}

  @impl true
  def handle_call({:get, key}, _from, map), do: {:reply, Map.get(map, key), map}
end

defmodule GenNative.Bench.Store.MapServer do
  @moduledoc false
  # Large state in the process heap: 1M entries in a map.
  use GenNative

  @impl true
  def init(n) do
    map = Map.new(0..(n - 1), &{&1, GenNative.Bench.Store.value(&1)})
    :erlang.garbage_collect()
    {:ok, map}
  end

  @impl true
  def handle_call({:put, key, value}, _from, map), do: {:reply, :ok, Map.put(map, key, value)}
  def handle_call(:heap_words, _from, map), do: {:reply, heap_words(), map}

  defp heap_words, do: elem(Process.info(self(), :total_heap_size), 1)
end

defmodule GenNative.Bench.Store.StoreServer do
  @moduledoc false
  # The same server with its state in a GenNative.Store: the state is a
  # reference, the entries live in C.
  use GenNative
  alias GenNative.Store

  @impl true
  def init(n) do
    {:ok, store} = Store.new(:set)

    0..(n - 1)
    |> Stream.chunk_every(10_000)
    |> Enum.each(fn keys ->
      :ok = Store.put_many(store, Enum.map(keys, &{&1, GenNative.Bench.Store.value(&1)}))
    end)

    :erlang.garbage_collect()
    {:ok, store}
  end

  @impl true
  def handle_call({:put, key, value}, _from, store),
    do: {:reply, Store.put(store, key, value), store}

  def handle_call(:heap_words, _from, store), do: {:reply, heap_words(), store}

  defp heap_words, do: elem(Process.info(self(), :total_heap_size), 1)
end

defmodule GenNative.Bench.Store do
  @moduledoc false
  alias GenNative.Bench
  alias GenNative.Bench.Store.{MapServer, PeerReader, StoreServer}
  alias GenNative.Store

  # Keys are visited as rem(i * @stride, size): spread over the table, the
  # same sequence on both sides. @stride is prime and divides no size used.
  @stride 7919
  @batch 1000
  @readers 8

  def value(i), do: {i, :v}

  def run do
    quick = Bench.quick?()

    config = %{
      # entries in the tables of the get/put and reader scenarios
      small: if(quick, do: 10_000, else: 100_000),
      # entries in the ordered set, large-state and memory scenarios
      big: if(quick, do: 100_000, else: 1_000_000),
      # measured runs of batches of @batch operations (insert, delete)
      batches: if(quick, do: 20, else: 100),
      batch_runs: if(quick, do: 3, else: 5),
      # rank and at: batches on the store side, single O(n) operations on ETS
      rank_batches: if(quick, do: 100, else: 500),
      ets_scans: if(quick, do: 10, else: 20),
      # large state: update calls per run, runs per side
      calls: 10_000,
      # insert+delete pairs for the memory growth row
      churn: if(quick, do: 150_000, else: 1_500_000),
      call_runs: if(quick, do: 2, else: 3)
    }

    IO.write(:stderr, "store: building the #{Bench.thousands(config.big)}-entry ordered sets ...")
    ordered = ordered_fixture(config.big)
    IO.puts(:stderr, " done")

    [get_set | _] = get_put_set = get_put(:set, config)

    scenarios =
      get_put_set ++
        get_put(:ordered_set, config) ++
        [Bench.a_a(get_set, "ETS in both columns")] ++
        readers(config) ++
        ordered_scenarios(ordered, config) ++
        [large_state(config), memory(ordered, config), snapshot_restore(ordered)]

    try do
      Bench.run("store", scenarios,
        peer_label: "peer",
        native_label: "GenNative.Store",
        method:
          "Each scenario names its peer. Harness-timed rows: warm-up, then alternating runs " <>
            "(ops/s: about #{if quick, do: 80, else: 400} ms each); see the notes for the others.",
        notes: &notes(&1, config)
      )
    after
      :ets.delete(ordered.ets)
      Store.delete(ordered.store)
    end
  end

  ## get and put, one process

  defp get_put(type, config) do
    size = config.small
    label = "#{type}, #{Bench.thousands(size)} entries, 1 process"

    setup = fn ->
      entries = Enum.map(0..(size - 1), &{&1, value(&1)})
      ets = :ets.new(:store_bench, [type, :public])
      true = :ets.insert(ets, entries)
      {:ok, store} = Store.new(type, access: :public)
      :ok = Store.put_many(store, entries)
      %{ets: ets, store: store, size: size}
    end

    teardown = fn ctx ->
      :ets.delete(ctx.ets)
      Store.delete(ctx.store)
    end

    [
      %{
        name: "get, #{label} (peer: ETS #{type} lookup)",
        unit: :ops_per_s,
        setup: setup,
        teardown: teardown,
        peer: fn ctx, n -> ets_get(ctx.ets, n, ctx.size) end,
        native: fn ctx, n -> store_get(ctx.store, n, ctx.size) end
      },
      %{
        name: "put (replace), #{label} (peer: ETS #{type} insert)",
        unit: :ops_per_s,
        setup: setup,
        teardown: teardown,
        peer: fn ctx, n -> ets_put(ctx.ets, n, ctx.size) end,
        native: fn ctx, n -> store_put(ctx.store, n, ctx.size) end
      }
    ]
  end

  # The time `timed` takes over a batch of keys, per key; `undo` then puts
  # the table back as it was, untimed.
  defp time_per_key(keys, timed, undo) do
    t0 = :erlang.monotonic_time()
    timed.(keys)
    elapsed = :erlang.monotonic_time() - t0
    undo.(keys)
    div(elapsed, @batch)
  end

  defp ets_get(t, n, size), do: ets_get(t, n, size, n)
  defp ets_get(_t, 0, _size, ops), do: ops

  defp ets_get(t, i, size, ops) do
    [_] = :ets.lookup(t, rem(i * @stride, size))
    ets_get(t, i - 1, size, ops)
  end

  defp store_get(s, n, size), do: store_get(s, n, size, n)
  defp store_get(_s, 0, _size, ops), do: ops

  defp store_get(s, i, size, ops) do
    {_, :v} = Store.get(s, rem(i * @stride, size))
    store_get(s, i - 1, size, ops)
  end

  defp ets_put(t, n, size), do: ets_put(t, n, size, n)
  defp ets_put(_t, 0, _size, ops), do: ops

  defp ets_put(t, i, size, ops) do
    k = rem(i * @stride, size)
    true = :ets.insert(t, {k, value(k)})
    ets_put(t, i - 1, size, ops)
  end

  defp store_put(s, n, size), do: store_put(s, n, size, n)
  defp store_put(_s, 0, _size, ops), do: ops

  defp store_put(s, i, size, ops) do
    k = rem(i * @stride, size)
    :ok = Store.put(s, k, value(k))
    store_put(s, i - 1, size, ops)
  end

  ## 8 concurrent readers

  defp readers(config) do
    size = config.small
    label = "#{@readers} concurrent readers, set, #{Bench.thousands(size)} entries"

    setup = fn ->
      entries = Enum.map(0..(size - 1), &{&1, value(&1)})
      {:ok, store} = Store.new(:set)
      :ok = Store.put_many(store, entries)
      {:ok, server} = GenServer.start_link(PeerReader, entries)
      ets = :ets.new(:store_bench, [:set, :public, read_concurrency: true])
      true = :ets.insert(ets, entries)
      %{store: store, server: server, ets: ets, size: size}
    end

    teardown = fn ctx ->
      GenServer.stop(ctx.server)
      :ets.delete(ctx.ets)
      Store.delete(ctx.store)
    end

    native = fn ctx, n ->
      elapsed = Bench.concurrently(@readers, fn r -> store_get(ctx.store, n, ctx.size, r) end)
      {@readers * n, elapsed}
    end

    [
      %{
        name: "get, #{label} (peer: GenServer.call to a server holding a map)",
        unit: :ops_per_s,
        setup: setup,
        teardown: teardown,
        peer: fn ctx, n ->
          elapsed = Bench.concurrently(@readers, fn r -> call_get(ctx.server, n, ctx.size, r) end)
          {@readers * n, elapsed}
        end,
        native: native
      },
      %{
        name: "get, #{label} (peer: ETS lookup, read_concurrency: true)",
        unit: :ops_per_s,
        setup: setup,
        teardown: teardown,
        peer: fn ctx, n ->
          elapsed = Bench.concurrently(@readers, fn r -> ets_get(ctx.ets, n, ctx.size, r) end)
          {@readers * n, elapsed}
        end,
        native: native
      }
    ]
  end

  defp call_get(_server, 0, _size, r), do: r

  defp call_get(server, i, size, r) do
    {_, :v} = GenServer.call(server, {:get, rem(i * @stride, size)})
    call_get(server, i - 1, size, r)
  end

  ## Ordered set of 1M entries

  # Both tables hold the even keys 2, 4, ..., 2n, so that odd keys are free
  # for inserts. Memory is measured here, before any churn.
  defp ordered_fixture(n) do
    {store, vm_store} = filled_store(:ordered_set, 1..n, &(2 * &1))
    {ets, vm_ets} = filled_ets(:ordered_set, 1..n, &(2 * &1))

    %{
      n: n,
      store: store,
      ets: ets,
      memory: %{
        store_info: Store.info(store).memory,
        store_vm: vm_store,
        ets_info: :ets.info(ets, :memory) * :erlang.system_info(:wordsize),
        ets_vm: vm_ets
      }
    }
  end

  # A :public table owned by the calling process, holding {key.(i), value(i)}
  # for i in `range`, and the growth of :erlang.memory(:total) in bytes
  # that filling it caused.
  defp filled_store(type, range, key) do
    vm_growth(
      fn ->
        {:ok, store} = Store.new(type, access: :public)
        store
      end,
      fn store, entries ->
        :ok = Store.put_many(store, entries)
      end,
      range,
      key
    )
  end

  defp filled_ets(type, range, key) do
    vm_growth(
      fn -> :ets.new(:store_bench, [type, :public]) end,
      fn ets, entries ->
        true = :ets.insert(ets, entries)
      end,
      range,
      key
    )
  end

  # The entries are built and inserted by a short-lived process, so that
  # they are freed with it before the memory is read again.
  defp vm_growth(create, insert, range, key) do
    before = settled_memory()
    table = create.()

    {pid, ref} =
      spawn_monitor(fn ->
        range
        |> Stream.chunk_every(10_000)
        |> Enum.each(fn is -> insert.(table, Enum.map(is, &{key.(&1), value(&1)})) end)
      end)

    receive do
      {:DOWN, ^ref, :process, ^pid, :normal} -> :ok
      {:DOWN, ^ref, :process, ^pid, reason} -> raise "filling failed: #{inspect(reason)}"
    end

    {table, settled_memory() - before}
  end

  defp ordered_scenarios(fixture, config) do
    n = fixture.n
    label = "ordered_set, #{Bench.thousands(n)} entries"
    per_op = "per op, batches of #{@batch}"
    ctx = fn -> fixture end

    [
      %{
        name: "insert, #{label}, #{per_op} (peer: ETS ordered_set insert)",
        unit: :latency_us,
        timing: :self,
        size: config.batches,
        runs: config.batch_runs,
        setup: ctx,
        peer: fn f ->
          time_per_key(fresh_keys(n), &ets_insert_all(f.ets, &1), &ets_delete_all(f.ets, &1))
        end,
        native: fn f ->
          time_per_key(
            fresh_keys(n),
            &store_insert_all(f.store, &1),
            &store_delete_all(f.store, &1)
          )
        end
      },
      %{
        name: "delete, #{label}, #{per_op} (peer: ETS ordered_set delete)",
        unit: :latency_us,
        timing: :self,
        size: config.batches,
        runs: config.batch_runs,
        setup: ctx,
        peer: fn f ->
          time_per_key(present_keys(n), &ets_delete_all(f.ets, &1), &ets_insert_all(f.ets, &1))
        end,
        native: fn f ->
          time_per_key(
            present_keys(n),
            &store_delete_all(f.store, &1),
            &store_insert_all(f.store, &1)
          )
        end
      },
      %{
        name: "rank, #{label} (peer: ETS select_count with a key guard, O(n))",
        custom: fn -> rank_at(:rank, fixture, config) end
      },
      %{
        name: "at, #{label}, random index (peer: :ets.slot/2, O(n))",
        custom: fn -> rank_at(:at, fixture, config) end
      }
    ]
  end

  # @batch distinct odd keys (absent) or even keys (present), at random.
  defp fresh_keys(n), do: random_keys(n, &(2 * &1 - 1))
  defp present_keys(n), do: random_keys(n, &(2 * &1))

  defp random_keys(n, to_key) do
    Stream.repeatedly(fn -> to_key.(:rand.uniform(n)) end)
    |> Stream.uniq()
    |> Enum.take(@batch)
  end

  defp ets_insert_all(_t, []), do: :ok

  defp ets_insert_all(t, [k | ks]) do
    true = :ets.insert(t, {k, value(k)})
    ets_insert_all(t, ks)
  end

  defp ets_delete_all(_t, []), do: :ok

  defp ets_delete_all(t, [k | ks]) do
    true = :ets.delete(t, k)
    ets_delete_all(t, ks)
  end

  defp store_insert_all(_s, []), do: :ok

  defp store_insert_all(s, [k | ks]) do
    :ok = Store.put(s, k, value(k))
    store_insert_all(s, ks)
  end

  defp store_delete_all(_s, []), do: :ok

  defp store_delete_all(s, [k | ks]) do
    :ok = Store.delete(s, k)
    store_delete_all(s, ks)
  end

  # The store side: batches of @batch random operations, each batch's time
  # divided by @batch. The ETS side: single operations (each takes
  # milliseconds), fewer of them. Both from a fresh process, in
  # config.ets_scans rounds that alternate the sides (one ETS operation and
  # rank_batches / ets_scans store batches a round): each round is a pair
  # for the ratio spread.
  defp rank_at(op, f, config) do
    n = f.n

    {native_op, peer_op} =
      case op do
        :rank ->
          {fn -> {:ok, _} = Store.rank(f.store, 2 * :rand.uniform(n)) end,
           fn ->
             k = 2 * :rand.uniform(n)
             :ets.select_count(f.ets, [{{:"$1", :_}, [{:<, :"$1", k}], [true]}])
           end}

        :at ->
          {fn -> {:ok, _} = Store.at(f.store, :rand.uniform(n) - 1) end,
           fn -> [_] = :ets.slot(f.ets, :rand.uniform(n) - 1) end}
      end

    per_round = max(1, div(config.rank_batches, config.ets_scans))

    native_round = fn ->
      isolated(fn ->
        for _ <- 1..per_round do
          t0 = :erlang.monotonic_time()
          Bench.repeat(@batch, native_op)
          div(:erlang.monotonic_time() - t0, @batch)
        end
      end)
    end

    peer_round = fn ->
      isolated(fn ->
        t0 = :erlang.monotonic_time()
        peer_op.()
        [:erlang.monotonic_time() - t0]
      end)
    end

    rounds =
      for i <- 1..config.ets_scans do
        if rem(i, 2) == 1 do
          peer = peer_round.()
          {peer, native_round.()}
        else
          native = native_round.()
          {peer_round.(), native}
        end
      end

    native = rounds |> Enum.flat_map(&elem(&1, 1)) |> Bench.stats()
    peer = rounds |> Enum.flat_map(&elem(&1, 0)) |> Bench.stats()
    per_round_stat = fn side, key -> Enum.map(rounds, &Bench.stats(elem(&1, side))[key]) end

    name = "#{op}, ordered_set, #{Bench.thousands(n)} entries"

    peer_name =
      if op == :rank,
        do: "ETS select_count with a key guard, O(n)",
        else: ":ets.slot/2 at a random index, O(n)"

    samples =
      "#{native.count} batches of #{@batch} / #{peer.count} single ETS ops, " <>
        "#{config.ets_scans} paired rounds"

    for {key, metric} <- [
          median: "median latency per op (us), #{samples}",
          p99: "p99 latency per op (us)"
        ] do
      "#{name} (peer: #{peer_name})"
      |> Bench.row(metric, :latency_us, peer[key], native[key])
      |> Bench.with_spread(per_round_stat.(0, key), per_round_stat.(1, key))
    end
  end

  defp isolated(fun) do
    task = Task.async(fun)
    Task.await(task, :infinity)
  end

  ## Large state

  # snapshot/1 + restore/2 against :ets.tab2file/2 + :ets.file2tab/1, on
  # the same entries, both through a file in the same directory: the
  # snapshot is written and read back with File so that both sides pay for
  # the disk. One run per side after a warm-up; then 3 pairs of runs.
  defp snapshot_restore(ordered) do
    %{name: "snapshot + restore", custom: fn -> snapshot_restore_rows(ordered) end}
  end

  defp snapshot_restore_rows(ordered) do
    dir = Path.join(System.tmp_dir!(), "gn_bench_snap_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    ets_file = String.to_charlist(Path.join(dir, "t.ets"))
    snap_file = Path.join(dir, "s.snap")
    n = Store.size(ordered.store)

    ets_run = fn ->
      {t, :ok} = :timer.tc(fn -> :ets.tab2file(ordered.ets, ets_file) end)
      {t2, {:ok, copy}} = :timer.tc(fn -> :ets.file2tab(ets_file) end)
      :ets.delete(copy)
      t + t2
    end

    store_run = fn ->
      {t, :ok} = :timer.tc(fn -> File.write!(snap_file, Store.snapshot(ordered.store)) end)
      {t2, {:ok, copy}} = :timer.tc(fn -> Store.restore(File.read!(snap_file)) end)
      ^n = Store.size(copy)
      Store.delete(copy)
      t + t2
    end

    try do
      ets_run.()
      store_run.()

      # three pairs, alternating which side goes first
      pairs =
        for i <- 1..3 do
          if rem(i, 2) == 1 do
            ets = ets_run.()
            {ets, store_run.()}
          else
            store = store_run.()
            {ets_run.(), store}
          end
        end

      [
        Bench.paired_row(
          "snapshot + restore, #{Bench.thousands(n)} entries (tab2file + file2tab)",
          "ms, median of 3 paired runs",
          :latency_us,
          Enum.map(pairs, &(elem(&1, 0) / 1000)),
          Enum.map(pairs, &(elem(&1, 1) / 1000))
        )
      ]
    after
      File.rm_rf!(dir)
    end
  end

  defp large_state(config) do
    %{
      name: "large state",
      custom: fn -> large_state_rows(config) end
    }
  end

  defp large_state_rows(config) do
    n = config.big
    {:ok, map_server} = GenNative.start_link(MapServer, n)
    {:ok, store_server} = GenNative.start_link(StoreServer, n)

    try do
      # A discarded warm-up run per side, then alternating measured runs.
      Enum.each([map_server, store_server], &update_calls(&1, n, 1000))

      runs =
        for i <- 1..config.call_runs do
          order = if rem(i, 2) == 1, do: [:peer, :native], else: [:native, :peer]
          servers = %{peer: map_server, native: store_server}
          Map.new(order, fn side -> {side, update_calls(servers[side], n, config.calls)} end)
        end

      peer = runs |> Enum.flat_map(& &1.peer) |> Bench.stats()
      native = runs |> Enum.flat_map(& &1.native) |> Bench.stats()

      heap = fn pid -> GenNative.call(pid, :heap_words) * :erlang.system_info(:wordsize) end
      Process.put(:large_state_heaps, {heap.(map_server), heap.(store_server)})

      name =
        "large state: #{Bench.thousands(config.calls)} update calls to a GenNative server " <>
          "holding #{Bench.thousands(n)} entries (peer: the same server with a map in its state)"

      of = "#{peer.count} calls in #{config.call_runs} run#{if config.call_runs > 1, do: "s"}"

      per_run = fn side, key -> Enum.map(runs, &Bench.stats(&1[side])[key]) end

      for {key, metric} <- [
            median: "median call latency (us), #{of}",
            p99: "p99 call latency (us)",
            max: "max call latency (us)"
          ] do
        name
        |> Bench.row(metric, :latency_us, peer[key], native[key])
        |> Bench.with_spread(per_run.(:peer, key), per_run.(:native, key))
      end
    after
      GenNative.stop(map_server)
      GenNative.stop(store_server)
    end
  end

  # `calls` update calls to random existing keys from a fresh process, each
  # timed alone; returns the latencies in native units.
  defp update_calls(server, n, calls) do
    isolated(fn ->
      for j <- 1..calls do
        k = :rand.uniform(n) - 1
        t0 = :erlang.monotonic_time()
        :ok = GenNative.call(server, {:put, k, {k, j}}, :infinity)
        :erlang.monotonic_time() - t0
      end
    end)
  end

  ## Memory

  defp memory(ordered, config) do
    %{name: "memory per entry", custom: fn -> memory_rows(ordered, config) end}
  end

  defp memory_rows(ordered, config) do
    n = config.big

    {store, vm_store} = filled_store(:set, 0..(n - 1), & &1)
    {ets, vm_ets} = filled_ets(:set, 0..(n - 1), & &1)

    set = %{
      store_info: Store.info(store).memory,
      store_vm: vm_store,
      ets_info: :ets.info(ets, :memory) * :erlang.system_info(:wordsize),
      ets_vm: vm_ets
    }

    :ets.delete(ets)
    Store.delete(store)

    per = fn bytes -> bytes / n end
    label = fn type -> "memory per entry, #{type}, #{Bench.thousands(n)} x {int, {int, :v}}" end

    Enum.flat_map([{:set, set}, {:ordered_set, ordered.memory}], fn {type, m} ->
      [
        Bench.row(
          "#{label.(type)} (peer: ETS #{type})",
          "bytes, info(store).memory vs :ets.info(t, :memory) x wordsize",
          :bytes,
          per.(m.ets_info),
          per.(m.store_info)
        ),
        Bench.row(
          "#{label.(type)} (peer: ETS #{type})",
          "bytes, growth of :erlang.memory(:total) while filling",
          :bytes,
          per.(m.ets_vm),
          per.(m.store_vm)
        )
      ]
    end) ++ churn_rows(ordered, config)
  end

  # Inserting and deleting fresh keys leaves a table's size unchanged; its
  # memory should not grow either. Measured on the ordered fixture (n
  # entries) with config.churn insert+delete pairs of absent keys
  # {i, "player"} (boxed keys, which a store also keeps as terms in its key
  # arena; removed ones stay there as garbage until they outnumber the live
  # keys and the arena is compacted: 1.5 x n pairs go past that point).
  defp churn_rows(f, config) do
    pairs = config.churn
    words = :erlang.system_info(:wordsize)

    growth = fn insert, delete, info ->
      before = {settled_memory(), info.()}
      isolated(fn -> churn(pairs, insert, delete) end)
      {settled_memory() - elem(before, 0), info.() - elem(before, 1)}
    end

    {ets, ets_info} =
      growth.(
        &:ets.insert(f.ets, {&1, value(0)}),
        &:ets.delete(f.ets, &1),
        fn -> :ets.info(f.ets, :memory) * words end
      )

    {store, store_info} =
      growth.(
        &Store.put(f.store, &1, value(0)),
        &Store.delete(f.store, &1),
        fn -> Store.info(f.store).memory end
      )

    name =
      "memory growth per insert+delete pair, ordered_set of #{Bench.thousands(f.n)} " <>
        "(peer: ETS ordered_set)"

    # Both sides near zero make no ratio.
    no_ratio = fn row ->
      if abs(row.native) < 1 or abs(row.peer) < 1, do: %{row | ratio: nil}, else: row
    end

    Enum.map(
      [
        Bench.row(
          name,
          "bytes, :erlang.memory(:total), #{Bench.thousands(pairs)} pairs of {i, \"player\"} keys",
          :bytes,
          ets / pairs,
          store / pairs
        ),
        Bench.row(
          name,
          "bytes, info(store).memory vs :ets.info(t, :memory) x wordsize",
          :bytes,
          ets_info / pairs,
          store_info / pairs
        )
      ],
      no_ratio
    )
  end

  defp churn(0, _insert, _delete), do: :ok

  defp churn(i, insert, delete) do
    key = {i, "player"}
    insert.(key)
    delete.(key)
    churn(i - 1, insert, delete)
  end

  # :erlang.memory(:total) once it stops moving: a deleted store is freed by
  # a background thread, and a scenario's stores may still be going.
  defp settled_memory(previous \\ nil, tries \\ 100) do
    :erlang.garbage_collect()
    now = :erlang.memory(:total)

    if tries == 0 or (previous != nil and abs(now - previous) < 256 * 1024) do
      now
    else
      Process.sleep(20)
      settled_memory(now, tries - 1)
    end
  end

  ## Notes and goals

  defp notes(rows, config) do
    ratio = fn prefix, metric ->
      rows
      |> Enum.filter(&(String.starts_with?(&1.scenario, prefix) and &1.metric =~ metric))
      |> Enum.map(& &1.ratio)
    end

    native = fn prefix, metric ->
      rows
      |> Enum.filter(&(String.starts_with?(&1.scenario, prefix) and &1.metric =~ metric))
      |> Enum.map(& &1.native)
    end

    fmt = fn values ->
      Enum.map_join(values, ", ", &:erlang.float_to_binary(&1 / 1, decimals: 2))
    end

    verdict = fn ok -> if ok, do: "met", else: "NOT met" end

    get_put =
      ratio.("get, set,", "ops/s") ++
        ratio.("put (replace), set,", "ops/s") ++
        ratio.("get, ordered_set,", "ops/s") ++ ratio.("put (replace), ordered_set,", "ops/s")

    readers_vs_call =
      rows
      |> Enum.filter(&(&1.scenario =~ "concurrent readers" and &1.scenario =~ "GenServer.call"))
      |> Enum.map(& &1.ratio)

    medians =
      for op <- ["insert", "delete", "rank", "at"],
          v <- native.("#{op}, ordered_set", "median"),
          do: v

    max_ratio = ratio.("large state", "max call")

    mem =
      rows
      |> Enum.filter(&String.starts_with?(&1.scenario, "memory per entry"))
      |> Enum.map(& &1.ratio)

    {map_heap, store_heap} = Process.get(:large_state_heaps, {0, 0})

    """
    Goals (issue 4):

    * get and put within 1.5x of ETS (ratio >= 0.67): #{verdict.(Enum.all?(get_put, &(&1 >= 1 / 1.5)))} (#{fmt.(get_put)})
    * #{@readers} readers, 10x a GenServer call or better: #{verdict.(Enum.all?(readers_vs_call, &(&1 >= 10)))} (#{fmt.(readers_vs_call)})
    * ordered set of #{Bench.thousands(config.big)}: median under 1 us per insert, delete, rank, at: #{verdict.(Enum.all?(medians, &(&1 < 1)))} (#{fmt.(medians)} us)
    * large state: max call latency 10x lower or better: #{verdict.(Enum.all?(max_ratio, &(&1 >= 10)))} (#{fmt.(max_ratio)})
    * memory per entry no more than ETS: #{verdict.(Enum.all?(mem, &(&1 >= 1)))} (#{fmt.(mem)})

    How each side was run:

    * get/put: keys visited as rem(i * #{@stride}, size), every key present; put replaces the value. Both tables :public, filled with the same entries; GenNative.Store through its public API (argument checks included).
    * readers: #{@readers} processes released together, each doing the same number of reads; throughput is all reads over the time until the last reader finishes. #{:erlang.system_info(:schedulers_online)} schedulers online.
    * insert/delete: a batch is #{@batch} distinct random keys (absent odd keys for insert, present even keys for delete), timed together and divided by #{@batch}; the batch is undone untimed, so the tables keep their size. #{config.batches} batches per run.
    * rank/at: #{config.rank_batches} batches of #{@batch} random operations on the store; #{config.ets_scans} single operations on ETS, which has no O(log n) rank or index.
    * large state: one caller, each call timed alone, key at random, value replaced; both servers are GenNative servers (same mailbox), built with the entries and garbage collected once in init/1. Heap after the runs: map server #{Bench.thousands(map_heap)} bytes, store server #{Bench.thousands(store_heap)} bytes.
    * memory: "info" compares what each side accounts (the store's info(store).memory; ETS words x wordsize); "growth" is :erlang.memory(:total) after filling minus before (the filling process's garbage freed), which also counts allocator overhead. The growth rows insert and delete #{Bench.thousands(config.churn)} fresh {i, "player"} keys, one pair at a time, in the #{Bench.thousands(config.big)}-entry ordered set: its size ends where it started, and its memory should stay bounded (a store compacts its key arena once removed keys outnumber live ones).
    * snapshot/restore vs :ets.tab2file/file2tab: see the "snapshot + restore" row (goal: 3x or better). The store's side is snapshot/1 + File.write!/2, then File.read!/1 + restore/2; restore checks the CRC and decodes every key and value.
    """
  end
end

GenNative.Bench.Store.run()
