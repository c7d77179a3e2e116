# The port suite: GenNative.Store on the port backend (a gen_native_port
# program started by GenNative.Port, outside the VM) against what a server
# would otherwise use for the same state, each scenario with its peer in the
# same run; the four figures of issue 5:
#
#   * round trip of one get and of one put from one caller, to a program
#     without a data directory (dir: nil), each call timed alone: median
#     and p99. Peers: a GenServer holding the same entries in a map,
#     answering GenServer.call for get and put; a :dets set holding them
#     in a file (:dets.lookup/2, :dets.insert/2); and, for get, the pipe
#     alone: the same bytes echoed by `cat` through a {:packet, 4} port;
#   * many concurrent callers: 64 processes released together, each doing
#     its own synchronous gets (or puts) one after the other, so the
#     program has up to 64 requests in flight: ops/s. Peer: the same
#     callers against the GenServer holding a map;
#   * durable puts: a program with a data directory and
#     sync: {:interval, 100} (the journal is written before each reply and
#     fsynced every 100 ms), from one writer and from 8 concurrent writers,
#     against :dets.insert/2 into a dets file: ops/s, each side putting for
#     the same time per run. For context the same rows with sync: :always
#     (fdatasync before each reply; writes that arrive together share one);
#   * recovery: start_link of a GenNative.Port whose directory holds 1M
#     entries (it returns once the directory is loaded) plus Store.size/1,
#     from three directories: a snapshot alone (put_many in chunks, then a
#     compaction), a snapshot and a journal (the same chunks, as the
#     program's own compactions left them) and journals alone (one big
#     put_many, the program stopped before its compaction finished). Peer:
#     :dets.open_file/2 of a dets file holding the same 1M entries
#     (bulk-loaded with :dets.init_table/2, closed properly) plus
#     :dets.info(t, :size). A warm-up restart per side, then alternating
#     runs, median of 3.
#
# Entries are {integer, {integer, :v}} throughout, every store a :set. The
# data directories and dets files live in one temporary directory under
# System.tmp_dir!(), removed at the end.
#
# CPU per operation counts the port program's own CPU time
# (/proc/<os_pid>/task/*/schedstat) on GenNative's side, on top of the VM's.
# An A/A row (GenServer.call round trip on both sides) shows the noise
# floor; sync: :always also runs with 64 writers (acks/s); and the
# round-trip latencies are drawn as cumulative distributions in
# port-get-latency-cdf.svg and port-put-latency-cdf.svg.
#
#     MIX_ENV=prod mix gen_native.bench port
#     MIX_ENV=prod mix gen_native.bench port --quick   # 100k entries to recover, short runs

defmodule GenNative.Bench.PortBench.MapServer do
  @moduledoc false
  # The GenServer way: the entries in a map, every get and put a call.
  use GenServer

  @impl true
  def init(entries), do: {:ok, Map.new(entries)}

  @impl true
  def handle_call({:get, key}, _from, map), do: {:reply, Map.get(map, key), map}
  def handle_call({:put, key, value}, _from, map), do: {:reply, :ok, Map.put(map, key, value)}
end

defmodule GenNative.Bench.PortBench do
  @moduledoc false
  alias GenNative.Bench
  alias GenNative.Bench.PortBench.MapServer
  alias GenNative.Store

  # Keys are visited as rem(i * @stride + offset, size): spread over the
  # table, the same sequence on both sides. @stride is prime.
  @stride 7919
  @callers 64
  @writers 8
  @many_writers 64
  @chunk 10_000
  @restarts 3

  @mem_port :gn_bench_port_mem
  @durable_port :gn_bench_port_durable
  @recover_port :gn_bench_port_recover

  def value(i), do: {i, :v}

  def run do
    quick = Bench.quick?()

    config = %{
      # entries in the stores, map and dets tables of the round-trip,
      # concurrency and durable scenarios
      small: if(quick, do: 10_000, else: 100_000),
      # entries to recover
      big: if(quick, do: 100_000, else: 1_000_000),
      # the duration of a durable-put run, per side (the harness's run_ms)
      run_ms: if(quick, do: 80, else: 400)
    }

    root = Path.join(System.tmp_dir!(), "gn_bench_port_#{System.unique_integer([:positive])}")
    File.mkdir_p!(root)
    config = Map.put(config, :root, root)

    IO.write(:stderr, "port: filling the #{Bench.thousands(config.small)}-entry tables ...")
    fixture = fixture(config)
    IO.puts(:stderr, " done")

    [get_vs_call | _] = trips = round_trips(fixture, config)

    scenarios =
      trips ++
        [Bench.a_a(get_vs_call, "GenServer.call to the map server in both columns")] ++
        concurrent(fixture, config) ++
        durable(fixture, config) ++
        [%{name: "recovery", custom: fn -> recovery_rows(config) end}]

    try do
      Bench.run("port", scenarios,
        keep_samples: true,
        peer_label: "peer",
        native_label: "GenNative port",
        method:
          "Each scenario names its peer. Harness-timed rows: warm-up, then alternating runs " <>
            "(ops/s: about #{if quick, do: 80, else: 400} ms each); recovery: see the notes.",
        notes: &notes(&1, config)
      )
      |> plot()
    after
      GenServer.stop(@mem_port)
      GenServer.stop(fixture.server)
      :dets.close(fixture.dets)
      File.rm_rf!(root)
    end
  end

  ## The shared tables: an in-memory program, a map server, a dets file

  defp fixture(config) do
    size = config.small
    entries = Enum.map(0..(size - 1), &{&1, value(&1)})

    {:ok, _} = GenNative.Port.start_link(name: @mem_port, dir: nil)
    {:ok, store} = Store.new(:set, backend: {:port, @mem_port}, name: :bench)
    fill(store, 0..(size - 1))

    {:ok, server} = GenServer.start_link(MapServer, entries)

    file = String.to_charlist(Path.join(config.root, "tables.dets"))
    {:ok, dets} = :dets.open_file(:gn_bench_port_tables, file: file, type: :set)
    :ok = :dets.insert(dets, entries)

    # what Store.get sends for a key (its tag is a reference)
    echo = :erlang.term_to_binary({make_ref(), :get, :bench, size - 1})

    %{store: store, server: server, dets: dets, size: size, echo: echo}
  end

  defp fill(store, range) do
    range
    |> Stream.chunk_every(@chunk)
    |> Enum.each(fn ks -> :ok = Store.put_many(store, Enum.map(ks, &{&1, value(&1)})) end)
  end

  ## 1. Round trip of one get and one put, one caller

  # The port program's CPU time belongs to GenNative's side.
  defp mem_program(_ctx), do: [GenNative.Port.os_pid(@mem_port)]
  defp durable_program(_ctx), do: [GenNative.Port.os_pid(@durable_port)]

  defp round_trips(f, config) do
    for scenario <- round_trip_scenarios(f, config),
        do: Map.put(scenario, :native_os_pids, &mem_program/1)
  end

  defp round_trip_scenarios(f, config) do
    label = "1 caller, set of #{Bench.thousands(config.small)}, program without dir"
    ctx = fn -> f end

    store_get = fn f ->
      k = :rand.uniform(f.size) - 1
      {_, :v} = Store.get(f.store, k)
    end

    store_put = fn f ->
      k = :rand.uniform(f.size) - 1
      :ok = Store.put(f.store, k, value(k))
    end

    [
      %{
        name: "get round trip, #{label} (peer: GenServer.call to a server holding a map)",
        unit: :latency_us,
        setup: ctx,
        peer: fn f ->
          k = :rand.uniform(f.size) - 1
          {_, :v} = GenServer.call(f.server, {:get, k})
        end,
        native: store_get
      },
      %{
        name: "get round trip, #{label} (peer: :dets.lookup/2)",
        unit: :latency_us,
        setup: ctx,
        peer: fn f ->
          k = :rand.uniform(f.size) - 1
          [{_, {_, :v}}] = :dets.lookup(f.dets, k)
        end,
        native: store_get
      },
      %{
        name:
          "get round trip, #{label} (peer: the pipe alone: a request of the same size " <>
            "echoed by `cat` through a {:packet, 4} port owned by the caller)",
        unit: :latency_us,
        setup: ctx,
        peer: fn f ->
          cat = Process.get(:gn_bench_cat) || open_cat()
          true = Port.command(cat, f.echo)

          receive do
            {^cat, {:data, _}} -> :ok
          end
        end,
        native: store_get
      },
      %{
        name: "put round trip, #{label} (peer: GenServer.call to a server holding a map)",
        unit: :latency_us,
        setup: ctx,
        peer: fn f ->
          k = :rand.uniform(f.size) - 1
          :ok = GenServer.call(f.server, {:put, k, value(k)})
        end,
        native: store_put
      },
      %{
        name: "put round trip, #{label} (peer: :dets.insert/2)",
        unit: :latency_us,
        setup: ctx,
        peer: fn f ->
          k = :rand.uniform(f.size) - 1
          :ok = :dets.insert(f.dets, {k, value(k)})
        end,
        native: store_put
      }
    ]
  end

  # A `cat` port owned by the calling process (a fresh one per measured
  # run: it closes when the run's process exits).
  defp open_cat do
    exe = System.find_executable("cat") || raise "the echo row needs cat in PATH"
    cat = Port.open({:spawn_executable, exe}, [:binary, {:packet, 4}])
    Process.put(:gn_bench_cat, cat)
    cat
  end

  ## 2. Many concurrent callers

  defp concurrent(f, config) do
    label = "#{@callers} concurrent callers, set of #{Bench.thousands(config.small)}"
    peer = "(peer: GenServer.call to a server holding a map)"
    ctx = fn -> f end

    each = fn op ->
      fn f, n ->
        elapsed = Bench.concurrently(@callers, fn c -> op.(f, n, c) end)
        {@callers * n, elapsed}
      end
    end

    [
      %{
        name: "get, #{label} #{peer}",
        unit: :ops_per_s,
        native_os_pids: &mem_program/1,
        setup: ctx,
        peer: each.(fn f, n, c -> call_gets(f.server, n, f.size, c) end),
        native: each.(fn f, n, c -> store_gets(f.store, n, f.size, c) end)
      },
      %{
        name: "put, #{label} #{peer}",
        unit: :ops_per_s,
        native_os_pids: &mem_program/1,
        setup: ctx,
        peer: each.(fn f, n, c -> call_puts(f.server, n, f.size, c) end),
        native: each.(fn f, n, c -> store_puts(f.store, n, f.size, c) end)
      }
    ]
  end

  defp key(i, size, offset), do: rem(i * @stride + offset, size)

  defp store_gets(_s, 0, _size, _o), do: :ok

  defp store_gets(s, i, size, o) do
    {_, :v} = Store.get(s, key(i, size, o))
    store_gets(s, i - 1, size, o)
  end

  defp store_puts(_s, 0, _size, _o), do: :ok

  defp store_puts(s, i, size, o) do
    k = key(i, size, o)
    :ok = Store.put(s, k, value(k))
    store_puts(s, i - 1, size, o)
  end

  defp call_gets(_server, 0, _size, _o), do: :ok

  defp call_gets(server, i, size, o) do
    {_, :v} = GenServer.call(server, {:get, key(i, size, o)})
    call_gets(server, i - 1, size, o)
  end

  defp call_puts(_server, 0, _size, _o), do: :ok

  defp call_puts(server, i, size, o) do
    k = key(i, size, o)
    :ok = GenServer.call(server, {:put, k, value(k)})
    call_puts(server, i - 1, size, o)
  end

  ## 3. Durable puts

  # A program with a data directory, its store filled with the same entries
  # as the dets table; a fresh directory per scenario.
  defp durable(f, config) do
    for {sync, counts} <- [
          {{:interval, 100}, [1, @writers]},
          {:always, [1, @writers, @many_writers]}
        ],
        writers <- counts do
      sync_label =
        case sync do
          {:interval, ms} -> "sync: {:interval, #{ms}}"
          :always -> "sync: :always"
        end

      who = if writers == 1, do: "1 writer", else: "#{writers} concurrent writers"

      %{
        name:
          "durable put, #{sync_label}, #{who}, set of #{Bench.thousands(config.small)} " <>
            "(peer: :dets.insert/2)",
        unit: :ops_per_s,
        ops_label: "acks/s",
        native_os_pids: &durable_program/1,
        setup: fn -> durable_setup(f, config, sync) end,
        teardown: &durable_teardown/1,
        peer: fn ctx, _n ->
          for_duration(writers, config.run_ms, fn w, i ->
            k = key(i, ctx.size, w)
            :ok = :dets.insert(ctx.dets, {k, value(k)})
          end)
        end,
        native: fn ctx, _n ->
          for_duration(writers, config.run_ms, fn w, i ->
            k = key(i, ctx.size, w)
            :ok = Store.put(ctx.store, k, value(k))
          end)
        end
      }
    end
  end

  # `writers` processes released together, each putting for `ms` from its
  # release; returns all the puts and the time until the last writer
  # stopped. Both sides run for the same time, not the same number of
  # puts: dets keeps inserts in a write cache that it flushes once it holds
  # 14 kB (or after 3 s), so a run of a few dozen inserts (as many as
  # sync: :always does in a run) would never pay for a flush.
  defp for_duration(writers, ms, put) do
    done = :counters.new(1, [:write_concurrency])

    elapsed =
      Bench.concurrently(writers, fn w ->
        deadline = :erlang.monotonic_time(:millisecond) + ms
        :counters.add(done, 1, put_until(put, w, deadline, 0))
      end)

    {:counters.get(done, 1), elapsed}
  end

  defp put_until(put, w, deadline, i) do
    if :erlang.monotonic_time(:millisecond) >= deadline do
      i
    else
      put.(w, i)
      put_until(put, w, deadline, i + 1)
    end
  end

  defp durable_setup(f, config, sync) do
    dir = Path.join(config.root, "durable_#{System.unique_integer([:positive])}")
    {:ok, _} = GenNative.Port.start_link(name: @durable_port, dir: dir, sync: sync)
    {:ok, store} = Store.new(:set, backend: {:port, @durable_port}, name: :durable)
    fill(store, 0..(f.size - 1))
    :ok = GenNative.Port.sync(@durable_port)
    %{store: store, dets: f.dets, size: f.size, dir: dir}
  end

  defp durable_teardown(ctx) do
    GenServer.stop(@durable_port)
    File.rm_rf!(ctx.dir)
  end

  ## 4. Recovery

  defp recovery_rows(config) do
    n = config.big
    root = config.root

    dets_file = String.to_charlist(Path.join(root, "recovery.dets"))
    {dets_fill, _} = timed(fn -> dets_fill(dets_file, n) end)

    dirs =
      for layout <- [:snapshot, :snapshot_journal, :journal] do
        dir = Path.join(root, "recovery_#{layout}")
        {fill_us, {store, files}} = timed(fn -> port_fill(dir, n, layout) end)
        %{layout: layout, dir: dir, files: files, fill_us: fill_us, store: store}
      end

    handle = %{store: hd(dirs).store, n: n}
    dets_run = fn -> dets_restart(dets_file, n) end
    port_run = fn d -> fn -> port_restart(d.dir, handle) end end

    # warm-up: one run per side (it also warms the page cache for both)
    dets_run.()
    Enum.each(dirs, &port_run.(&1).())

    runs =
      for i <- 1..@restarts do
        sides = [{:dets, dets_run} | Enum.map(dirs, &{&1.layout, port_run.(&1)})]
        sides = if rem(i, 2) == 1, do: sides, else: Enum.reverse(sides)
        Map.new(sides, fn {side, run} -> {side, run.()} end)
      end

    # the restarts must not have changed the directories (no compaction on
    # load), but for the unfinished snapshot.tmp the first one removed, and
    # the few bytes a program appends to the journal it reopened (a sync
    # mark for what it read: the journal counts as synced from then on)
    for d <- dirs, not same_files?(List.keydelete(d.files, "snapshot.tmp", 0), files(d.dir)) do
      raise "recovery: #{d.dir} changed across restarts: #{inspect(d.files)} -> " <>
              inspect(files(d.dir))
    end

    median = fn side ->
      runs |> Enum.map(& &1[side]) |> Enum.sort() |> Enum.at(div(@restarts, 2))
    end

    dets_ms = median.(:dets) / 1000

    Process.put(:recovery, %{
      dirs: dirs,
      dets_fill_us: dets_fill,
      dets_bytes: File.stat!(dets_file).size,
      runs: runs
    })

    for d <- dirs do
      ("recovery, #{Bench.thousands(n)} entries, #{layout_label(d)} " <>
         "(peer: :dets.open_file/2 + :dets.info(t, :size))")
      |> Bench.row(
        "ms, start_link + Store.size/1, median of #{@restarts} paired runs",
        :latency_us,
        dets_ms,
        median.(d.layout) / 1000
      )
      |> Bench.with_spread(
        Enum.map(runs, fn run -> run.dets / 1000 end),
        Enum.map(runs, fn run -> run[d.layout] / 1000 end)
      )
    end
  end

  # How a directory was filled and what it held: the row's label.
  defp layout_label(%{layout: layout, files: files}) do
    journals = Enum.filter(files, fn {name, _} -> String.starts_with?(name, "journal.") end)
    journal_bytes = journals |> Enum.map(&elem(&1, 1)) |> Enum.sum()
    plural = if length(journals) == 1, do: "", else: "s"

    held =
      case List.keyfind(files, "snapshot.gns", 0) do
        nil ->
          "journal#{plural} alone (#{mib(journal_bytes)} MiB)"

        {_, bytes} when journal_bytes < 1024 ->
          "snapshot (#{mib(bytes)} MiB), empty journal"

        {_, bytes} ->
          "snapshot (#{mib(bytes)} MiB) + journal#{plural} (#{mib(journal_bytes)} MiB)"
      end

    how =
      case layout do
        :snapshot -> "put_many chunks + compact"
        :snapshot_journal -> "put_many chunks"
        :journal -> "one put_many, stopped at once"
      end

    "#{how}: #{held}"
  end

  defp mib(bytes), do: :erlang.float_to_binary(bytes / 1_048_576, decimals: 1)

  defp timed(fun) do
    t0 = :erlang.monotonic_time()
    result = fun.()
    {:erlang.convert_time_unit(:erlang.monotonic_time() - t0, :native, :microsecond), result}
  end

  # The same files, each the same size or (a journal) grown by a few marks.
  defp same_files?(before, now) do
    Enum.map(before, &elem(&1, 0)) == Enum.map(now, &elem(&1, 0)) and
      Enum.all?(Enum.zip(before, now), fn {{name, b}, {_, a}} ->
        a == b or (String.starts_with?(name, "journal.") and a > b and a - b <= 4096)
      end)
  end

  # The data files of a directory and their sizes, sorted.
  defp files(dir) do
    dir
    |> File.ls!()
    |> Enum.reject(&(&1 == "LOCK"))
    |> Enum.map(&{&1, File.stat!(Path.join(dir, &1)).size})
    |> Enum.sort()
  end

  # :dets.init_table/2 (a bulk load, much faster than inserts) in chunks.
  defp dets_fill(file, n) do
    {:ok, t} = :dets.open_file(:gn_bench_port_recovery, file: file, type: :set)

    input = fn input, from ->
      fn
        :read when from >= n ->
          :end_of_input

        :read ->
          to = min(from + @chunk, n)
          {Enum.map(from..(to - 1), &{&1, value(&1)}), input.(input, to)}

        :close ->
          :ok
      end
    end

    :ok = :dets.init_table(t, input.(input, 0))
    :ok = :dets.close(t)
  end

  # Fills a fresh directory with n entries and stops the program cleanly
  # (its journal is flushed and fsynced at exit); returns the files left.
  #
  #   * :snapshot - put_many in chunks, then a compaction (the program's
  #     compact request, which GenNative.Port does not expose: it is sent
  #     with GenNative.Port.request/4), so the journal is empty;
  #   * :snapshot_journal - put_many in chunks; the program compacts on its
  #     own once the journal passes 4 MiB and twice the snapshot, and that
  #     compaction is let finish, so a snapshot and the journal written
  #     since are left;
  #   * :journal - a single put_many of all n entries, one journal record,
  #     and the program stopped at once: the compaction that record starts
  #     is written in slices and does not finish, and a program stopped
  #     before it finishes leaves only journals (the unfinished
  #     snapshot.tmp is removed at the next start).
  defp port_fill(dir, n, layout) do
    {:ok, pid} = GenNative.Port.start_link(name: @recover_port, dir: dir, sync: {:interval, 100})
    {:ok, store} = Store.new(:set, backend: {:port, @recover_port}, name: :recovery)

    # the entries are built in a short-lived process, freed with it
    task =
      Task.async(fn ->
        case layout do
          :journal ->
            :ok = Store.put_many(store, Enum.map(0..(n - 1), &{&1, value(&1)}))

          _ ->
            fill(store, 0..(n - 1))
            :ok = GenNative.Port.sync(@recover_port)
        end
      end)

    Task.await(task, :infinity)

    case layout do
      :snapshot ->
        :ok = GenNative.Port.compact(@recover_port)

      :snapshot_journal ->
        await_compaction(dir)

      :journal ->
        :ok
    end

    GenServer.stop(pid)
    {store, files(dir)}
  end

  defp await_compaction(dir, tries \\ 3000) do
    cond do
      not File.exists?(Path.join(dir, "snapshot.tmp")) ->
        :ok

      tries == 0 ->
        raise "recovery: the compaction in #{dir} does not finish"

      true ->
        Process.sleep(10)
        await_compaction(dir, tries - 1)
    end
  end

  defp port_restart(dir, %{store: store, n: n}) do
    t0 = :erlang.monotonic_time()
    {:ok, pid} = GenNative.Port.start_link(name: @recover_port, dir: dir, sync: {:interval, 100})
    ^n = Store.size(store)
    elapsed = :erlang.monotonic_time() - t0
    # one spot check, untimed
    {_, :v} = Store.get(store, n - 1)
    GenServer.stop(pid)
    :erlang.convert_time_unit(elapsed, :native, :microsecond)
  end

  defp dets_restart(file, n) do
    t0 = :erlang.monotonic_time()
    {:ok, t} = :dets.open_file(:gn_bench_port_recovery, file: file, type: :set)
    ^n = :dets.info(t, :size)
    elapsed = :erlang.monotonic_time() - t0
    [{_, {_, :v}}] = :dets.lookup(t, n - 1)
    :ok = :dets.close(t)
    :erlang.convert_time_unit(elapsed, :native, :microsecond)
  end

  ## Plots

  # The round trips' latency distributions: one plot for gets, one for puts,
  # GenNative's port store against each peer (its own samples from the
  # first row of each kind).
  defp plot(rows) do
    trips = Enum.filter(rows, &(Map.has_key?(&1, :samples) and &1.scenario =~ "round trip"))

    for {op, file} <- [{"get", "port-get-latency-cdf.svg"}, {"put", "port-put-latency-cdf.svg"}] do
      of_op = Enum.filter(trips, &String.starts_with?(&1.scenario, "#{op} round trip"))

      series =
        case of_op do
          [] ->
            []

          [first | _] ->
            [%{label: "GenNative port store", samples: first.samples.native}] ++
              Enum.map(of_op, &%{label: peer_label(&1.scenario), samples: &1.samples.peer})
        end

      Bench.write_cdf(
        file,
        "Port store: #{op} round trip, 1 caller, latency distribution",
        "latency (us, log scale)",
        "fraction of operations within",
        series
      )
    end

    rows
  end

  defp peer_label(scenario) do
    case Regex.run(~r/\(peer: ([^)]*)/, scenario) do
      [_, "the pipe alone" <> _] -> "the pipe alone (cat echo)"
      [_, peer] -> peer
      nil -> "peer"
    end
  end

  ## Notes and goals

  defp notes(rows, config) do
    pick = fn pred, field ->
      rows |> Enum.filter(&pred.(&1)) |> Enum.map(&Map.fetch!(&1, field))
    end

    has = fn text -> &(&1.scenario =~ text) end

    fmt = fn values ->
      Enum.map_join(values, ", ", &:erlang.float_to_binary(&1 / 1, decimals: 2))
    end

    thousands = fn values -> Enum.map_join(values, ", ", &Bench.thousands(round(&1))) end
    verdict = fn ok -> if ok, do: "met", else: "NOT met" end

    # every round-trip row measures the port side again, alongside its peer
    medians =
      pick.(
        &(&1.scenario =~ "round trip" and &1.metric =~ "median" and
            not String.starts_with?(&1.scenario, "A/A")),
        :native
      )

    concurrent = pick.(has.("concurrent callers"), :native)

    interval =
      pick.(&(&1.scenario =~ "durable put, sync: {:interval" and &1.unit == :ops_per_s), :ratio)

    recovery = pick.(has.("recovery,"), :native)
    r = Process.get(:recovery, %{dirs: [], dets_fill_us: 0, dets_bytes: 0, runs: []})

    fills =
      Enum.map_join(r.dirs, "; ", fn d ->
        "#{d.layout}: #{ms(d.fill_us)} ms, files #{inspect(d.files)}"
      end)

    all_runs =
      Enum.map_join([:dets | Enum.map(r.dirs, & &1.layout)], "; ", fn side ->
        "#{side}: " <> Enum.map_join(r.runs, ", ", &ms(&1[side])) <> " ms"
      end)

    quick_note =
      if Bench.quick?(),
        do: " (GN_BENCH_QUICK=1: #{Bench.thousands(config.big)} entries, not 1,000,000)",
        else: ""

    """
    Goals (issue 5):

    * round trip of one get / one put, median under 30 us: #{verdict.(medians != [] and Enum.all?(medians, &(&1 < 30)))} (#{fmt.(medians)} us, the port side of each round-trip row)
    * #{@callers} concurrent callers, 200k ops/s or more: #{verdict.(concurrent != [] and Enum.all?(concurrent, &(&1 >= 200_000)))} (#{thousands.(concurrent)} ops/s)
    * durable puts with sync: {:interval, 100}, 10x :dets or better: #{verdict.(interval != [] and Enum.all?(interval, &(&1 >= 10)))} (#{fmt.(interval)})
    * recovery with 1M entries on disk under 2 s#{quick_note}: #{verdict.(recovery != [] and Enum.all?(recovery, &(&1 < 2000)))} (#{fmt.(recovery)} ms)

    How each side was run:

    * Every port row goes through GenNative.Store's public API on a port store (`backend: {:port, name}`): the caller sends its request to the port and receives the reply relayed by the GenNative.Port process. #{:erlang.system_info(:schedulers_online)} schedulers online; the program competes with them for the same cores.
    * round trip: one process, each operation timed alone, a random key among #{Bench.thousands(config.small)} (all present; put replaces the value). The map server and the dets table hold the same entries; dets reads and writes through its own process and the OS page cache. The `cat` row sends the same bytes through the same kind of pipe and {:packet, 4} port to a program that echoes them and sleeps in between, with no relay. A round trip through a pipe wakes a sleeping thread twice, once in the program and once in the VM; on a virtual machine whose vCPUs halt when idle, each wake-up costs tens of microseconds when the cores are otherwise idle, and a few when they are busy, so these rows are lower on a loaded machine than on a quiet one. gen_native_port polls without blocking for 200 us after a request before it sleeps, which spares a caller's next request that wake-up; `cat` does not.
    * concurrent callers: 64 processes released together, each doing the same number of synchronous operations on keys rem(i * #{@stride} + caller, size); throughput is all operations over the time until the last caller finishes.
    * durable puts: a fresh data directory per row, its store filled with the same #{Bench.thousands(config.small)} entries as the dets table; the journal grows and compacts itself during the runs as it would in use. Each writer puts for #{config.run_ms} ms per run on both sides (the same time, not the same number of puts: dets buffers inserts in a write cache flushed every 14 kB, which a short run would never pay for); ops/s is all puts over the time until the last writer stops. :dets.insert/2 writes through the dets process into the file without any fsync (dets syncs on close, :dets.sync/1 or its auto_save, every 3 minutes by default), so the :dets column is a weaker guarantee than either sync policy. #{tmp_fs()}
    * recovery: three data directories, each filled by a program with sync: {:interval, 100} and stopped cleanly (journal flushed and fsynced): (a) put_many in chunks of #{Bench.thousands(@chunk)}, then a compaction (the program's `compact` request), leaving a snapshot and an empty journal; (b) the same chunks, with the compactions the program starts by itself (journal over 4 MiB and over twice the snapshot) let finish, leaving a snapshot and the journal written since; (c) one put_many of all entries, one journal record, and the program stopped at once: the compaction that record starts (when the journal passes 4 MiB) is written in slices and has not finished, so journals alone are left (the unfinished snapshot.tmp is removed at the next start). The row labels say what each directory held. A restart is start_link (it returns once the directory is loaded) plus Store.size/1; the dets side is :dets.open_file/2 of a file closed properly, plus :dets.info(t, :size). One warm-up restart per side, then #{@restarts} alternating. All files were just written, so both sides read from a warm page cache. The program reads and replays everything into memory; dets only opens its file (a properly closed dets file is not scanned; its entries stay on disk until looked up). Fill times (not compared): dets #{ms(r.dets_fill_us)} ms (#{Bench.thousands(r.dets_bytes)} bytes, :dets.init_table/2 in chunks of #{Bench.thousands(@chunk)}); port #{fills}. Every run: #{all_runs}.
    """
  end

  defp ms(us), do: :erlang.float_to_binary(us / 1000, decimals: 1)

  defp tmp_fs do
    case System.cmd("df", ["-PT", System.tmp_dir!()], stderr_to_stdout: true) do
      {out, 0} ->
        case out |> String.split("\n", trim: true) |> List.last() |> String.split() do
          [dev, type | _] ->
            "Data directories and dets files on #{type} (#{dev}), under #{System.tmp_dir!()}."

          _ ->
            ""
        end

      _ ->
        ""
    end
  rescue
    _ -> ""
  end
end

GenNative.Bench.PortBench.run()
