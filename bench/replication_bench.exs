# The replication suite (issue 13): GenNative's port program as a member of
# a three-member Raft group (libraft), every member its own OS process on
# 127.0.0.1 with its own data directory, against what it would otherwise
# be, each scenario with its peer in the same run:
#
#   * puts/s with 1, 8 and 64 writers: every writer a process of the bench
#     VM putting into the leader's store (GenNative.Store.put/3 on a
#     {:port, leader} handle) for the same time per run as the peer.
#     Peers: one port program with a data directory and the same sync
#     policy, sync: :always, without replication; and Mnesia: a
#     disc_copies table replicated on three :peer nodes (OTP's :peer, on
#     127.0.0.1, each with its own Mnesia directory), written with
#     :mnesia.sync_transaction/1 by processes running on the first of
#     those nodes (a member of the table). A/A row: the single-node port
#     against itself. One more row measures what snapshots cost: 64
#     writers on a second group with snapshot_every: 100,000 (no snapshot
#     during the runs) against the first (the default threshold, 16,384
#     entries; an entry holds the writes a member read from the VM at
#     once, so with 64 writers a snapshot comes every several 10,000 puts);
#   * commit latency: one writer, each put timed alone, median and p99,
#     against the single-node port (harness-timed, from the bench VM) and
#     against Mnesia (each transaction timed on the peer node that runs
#     it, so the :peer control channel is not in its time; the replicated
#     put is timed on the bench VM around Store.put/3);
#   * failover: a writer puts in a loop into whichever member leads; the
#     leader's program is killed with kill -KILL; the time from just before
#     the kill to the first put acknowledged by another member. The killed
#     member is restarted with its directory and let catch up before the
#     next round; 5 rounds on one group. No peer;
#   * catch-up: a follower killed, 1M entries written to the leader (100
#     put_many of 10,000), the follower restarted with its directory: the
#     time from its start_link until its applied index (raft_status/1)
#     reaches the leader's last index, then its size is checked (the group
#     runs with reads: :local). Once with the default snapshot threshold
#     (16,384 entries: the whole log is sent) and once with snapshot_every:
#     16 (the leader's log is truncated behind a snapshot, which the
#     follower installs). One measurement each. No peer.
#
# Entries are {integer, {integer, :v}} in a :set; the stores and the Mnesia
# table start with the same 100,000 entries. Every group runs with
# election_timeout: 500. CPU per operation counts, on the replicated side,
# the three member programs (/proc/<os_pid>/task/*/schedstat) on top of the
# bench VM; on the peer side the single-node program, or the three peer
# VMs. Everything lives under one temporary directory, removed at the end
# with the programs and the peer nodes (also on failure); the epmd daemon
# the peer nodes need is stopped at the end if this suite started it.
#
#     MIX_ENV=prod mix gen_native.bench replication
#     MIX_ENV=prod mix gen_native.bench replication --quick   # 100k to catch up, short runs

{:module, _, mnesia_writer_beam, _} =
  defmodule GenNative.Bench.ReplicationBench.MnesiaWriter do
    @moduledoc false
    # Runs on a :peer node (its object code is loaded there with
    # :code.load_binary/3): the Mnesia side's writers, next to a replica.

    @stride 7919

    # Fills keys from..to in one transaction.
    def fill(table, from, to) do
      {:atomic, :ok} = :mnesia.sync_transaction(fn -> write_range(table, from, to) end)

      :ok
    end

    defp write_range(_table, from, to) when from > to, do: :ok

    defp write_range(table, from, to) do
      :ok = :mnesia.write({table, from, {from, :v}})
      write_range(table, from + 1, to)
    end

    # `writers` processes released together, each writing for `ms` from its
    # release; returns {transactions, microseconds until the last stopped}.
    def run(table, writers, ms, size) do
      parent = self()
      go = make_ref()

      pids =
        for w <- 1..writers do
          spawn_link(fn ->
            receive do
              ^go -> :ok
            end

            deadline = :erlang.monotonic_time(:millisecond) + ms
            send(parent, {go, loop(table, w, size, deadline, 0)})
          end)
        end

      t0 = :erlang.monotonic_time(:microsecond)
      Enum.each(pids, &send(&1, go))
      ops = collect(go, writers, 0)
      {ops, :erlang.monotonic_time(:microsecond) - t0}
    end

    defp collect(_go, 0, ops), do: ops

    defp collect(go, n, ops) do
      receive do
        {^go, done} -> collect(go, n - 1, ops + done)
      end
    end

    defp loop(table, w, size, deadline, i) do
      if :erlang.monotonic_time(:millisecond) >= deadline do
        i
      else
        k = rem(i * @stride + w, size)
        {:atomic, :ok} = :mnesia.sync_transaction(fn -> :mnesia.write({table, k, {k, :v}}) end)
        loop(table, w, size, deadline, i + 1)
      end
    end

    # One transaction writing key k, timed here: microseconds.
    def one(table, k) do
      t0 = :erlang.monotonic_time(:microsecond)
      {:atomic, :ok} = :mnesia.sync_transaction(fn -> :mnesia.write({table, k, {k, :v}}) end)
      :erlang.monotonic_time(:microsecond) - t0
    end
  end

defmodule GenNative.Bench.ReplicationBench do
  @moduledoc false
  alias GenNative.Bench
  alias GenNative.Bench.ReplicationBench.MnesiaWriter
  alias GenNative.Store
  alias GenNative.Store.PortHandle

  @stride 7919
  @election_ms 500
  @failovers 5
  @single :gn_bench_repl_single
  @store :kv
  @mnesia_table :gn_bench_kv
  # a snapshot threshold no throughput run reaches
  @no_snapshots 100_000

  def value(i), do: {i, :v}

  def run(writer_beam) do
    quick = Bench.quick?()
    root = Path.join(System.tmp_dir!(), "gn_bench_repl_#{System.unique_integer([:positive])}")
    File.mkdir_p!(root)

    config = %{
      root: root,
      size: if(quick, do: 10_000, else: 100_000),
      big: if(quick, do: 100_000, else: 1_000_000),
      run_ms: if(quick, do: 80, else: 400),
      writer_beam: writer_beam,
      load_before: loadavg()
    }

    epmd_before = epmd_running?()
    # an exit signal from a linked process (the members' supervisor, a
    # peer node) must not kill this process before the cleanup
    trap = Process.flag(:trap_exit, true)
    {:ok, sup} = DynamicSupervisor.start_link(strategy: :one_for_one)
    Process.put(:notes, [])

    try do
      IO.write(:stderr, "replication: starting the members and filling the stores ...")
      f = fixture(sup, config)
      IO.puts(:stderr, " done")

      IO.write(:stderr, "replication: starting Mnesia on 3 peer nodes ...")
      mnesia = mnesia_start(config)
      IO.puts(:stderr, if(mnesia.ok, do: " done", else: " failed: #{mnesia.error}"))
      f = Map.put(f, :mnesia, mnesia)

      scenarios =
        throughput(f, config) ++
          latency(f, config) ++
          [
            %{name: "failover", custom: fn -> quiet(fn -> failover_rows(sup, config) end) end},
            %{name: "catch-up", custom: fn -> quiet(fn -> catch_up_rows(sup, config) end) end}
          ]

      Bench.run("replication", scenarios,
        peer_label: "peer",
        native_label: "replicated (3 members)",
        method:
          "Each scenario names its peer. Harness-timed rows: warm-up, then alternating runs " <>
            "(puts/s: about #{config.run_ms} ms each); failover and catch-up: see the notes.",
        notes: &notes(&1, f, config)
      )
    after
      cleanup(sup, Process.get(:mnesia_peers, []), root, epmd_before)
      Process.flag(:trap_exit, trap)
    end
  end

  ## Members of a group

  defp free_port do
    {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1}, reuseaddr: true)
    {:ok, port} = :inet.port(socket)
    :gen_tcp.close(socket)
    port
  end

  # Three members bootstrapping one group, each a GenNative.Port under
  # `sup` (temporary: a killed member stays down until restarted).
  defp start_cluster(sup, root, tag, raft_opts) do
    base = Path.join(root, tag)

    members =
      for id <- 1..3 do
        %{
          id: id,
          name: :"gn_bench_repl_#{tag}_#{id}",
          address: "127.0.0.1:#{free_port()}",
          dir: Path.join(base, "m#{id}"),
          opts: raft_opts
        }
      end

    boot = for m <- members, do: {m.id, m.address}
    members = Enum.map(members, &Map.put(&1, :boot, boot))
    Enum.each(members, &start_member(sup, &1))
    members
  end

  # Starts (or restarts, with its directory) one member; returns once its
  # directory is loaded.
  defp start_member(sup, m) do
    raft =
      [id: m.id, address: m.address, members: m.boot, election_timeout: @election_ms] ++ m.opts

    spec =
      Supervisor.child_spec(
        {GenNative.Port, name: m.name, dir: m.dir, sync: :always, raft: raft},
        restart: :temporary
      )

    {:ok, _} = DynamicSupervisor.start_child(sup, spec)
    m
  end

  # kill -KILL of the member's program; returns once its server is gone.
  defp kill(m) do
    pid = Process.whereis(m.name)
    os_pid = GenNative.Port.os_pid(m.name)
    ref = Process.monitor(pid)
    {_, 0} = System.cmd("kill", ["-KILL", Integer.to_string(os_pid)])

    receive do
      {:DOWN, ^ref, _, _, _} -> :ok
    after
      10_000 -> raise "replication: #{m.name} did not go after kill -KILL"
    end
  end

  defp alive?(m), do: Process.whereis(m.name) != nil

  defp status(m) do
    if alive?(m), do: GenNative.Port.raft_status(m.name)
  catch
    :exit, _ -> nil
  end

  # The member every running member names as leader, once it says it leads.
  defp await_leader(members, timeout \\ 20_000) do
    case GenNative.Port.await_leader(for(m <- members, do: m.name), timeout) do
      {:ok, name} -> Enum.find(members, &(&1.name == name))
      {:error, :timeout} -> raise "replication: no agreed leader after #{timeout} ms"
    end
  end

  # Polls `fun` every few ms until it returns a truthy value; returns it.
  defp poll(fun, what, timeout \\ 120_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    poll(fun, what, deadline, :go)
  end

  defp poll(fun, what, deadline, :go) do
    case fun.() do
      falsy when falsy in [nil, false] ->
        if System.monotonic_time(:millisecond) > deadline,
          do: raise("replication: timed out waiting for #{what}")

        Process.sleep(5)
        poll(fun, what, deadline, :go)

      value ->
        value
    end
  end

  defp handle(m), do: %PortHandle{port: m.name, name: @store}
  defp os_pids(members), do: Enum.map(members, &GenNative.Port.os_pid(&1.name))

  # Members' exits (kill -KILL) are logged as errors by their servers:
  # expected here, kept off the output.
  defp quiet(fun) do
    level = Logger.level()
    Logger.configure(level: :critical)

    try do
      fun.()
    after
      Logger.configure(level: level)
    end
  end

  ## The stores: a group, a single-node port

  defp fixture(sup, config) do
    refused = :counters.new(1, [:write_concurrency])
    group = group(sup, config, "tput", [], refused)

    spec =
      Supervisor.child_spec(
        {GenNative.Port, name: @single, dir: Path.join(config.root, "single"), sync: :always},
        restart: :temporary
      )

    {:ok, _} = DynamicSupervisor.start_child(sup, spec)
    {:ok, ss} = Store.new(:set, backend: {:port, @single}, name: @store)
    fill(ss, config.size, 10_000)
    :ok = GenNative.Port.sync(@single)

    Map.merge(group, %{sup: sup, single: ss, size: config.size})
  end

  # A group whose leader's store holds the suite's entries.
  defp group(sup, config, tag, raft_opts, refused) do
    members = start_cluster(sup, config.root, tag, raft_opts)
    leader = await_leader(members)
    {:ok, _} = Store.new(:set, backend: {:port, leader.name}, name: @store)
    fill_group(members, config.size, 10_000)
    leader = await_leader(members)

    # the member the writers put into: normally the leader throughout;
    # should leadership move, the writers follow it and count the refusals
    current = :atomics.new(1, [])
    :atomics.put(current, 1, leader.id)

    %{
      members: members,
      handles: members |> Enum.map(&handle/1) |> List.to_tuple(),
      current: current,
      refused: refused
    }
  end

  defp stop_group(sup, members) do
    for m <- members,
        pid = Process.whereis(m.name),
        do: DynamicSupervisor.terminate_child(sup, pid)
  end

  # Fills a group's store through whichever member leads: a put_many
  # refused or cut short by a change of leader ({:error, {:not_leader |
  # :leadership_lost, _}}, or the member gone) is sent again to the new
  # leader (the same entries put twice leave the same store). Returns how
  # many chunks were sent again; the notes report them.
  defp fill_group(members, n, chunk) do
    resent =
      in_process(fn ->
        0..(n - 1)
        |> Stream.chunk_every(chunk)
        |> Enum.reduce({await_leader(members), 0}, fn ks, {leader, resent} ->
          put_chunk(members, leader, Enum.map(ks, &{&1, value(&1)}), resent)
        end)
        |> elem(1)
      end)

    Process.put(:resent, Process.get(:resent, 0) + resent)
    resent
  end

  defp put_chunk(_members, _leader, _entries, resent) when resent > 100,
    do: raise("replication: a put_many was refused 100 times")

  defp put_chunk(members, leader, entries, resent) do
    result =
      try do
        Store.put_many(handle(leader), entries)
      catch
        :exit, reason -> {:exit, reason}
      end

    case result do
      :ok -> {leader, resent}
      _ -> put_chunk(members, await_leader(members), entries, resent + 1)
    end
  end

  defp fill(store, n, chunk) do
    in_process(fn ->
      0..(n - 1)
      |> Stream.chunk_every(chunk)
      |> Enum.each(fn ks -> :ok = Store.put_many(store, Enum.map(ks, &{&1, value(&1)})) end)
    end)
  end

  # Runs `fun` in a process of its own (the entries it builds go with it)
  # and returns its result; its failure is raised here, in the suite's
  # process, so that the cleanup runs (an exit signal from a linked task
  # would kill the suite's process before it).
  defp in_process(fun) do
    {pid, ref} = spawn_monitor(fn -> exit({:ok, fun.()}) end)

    receive do
      {:DOWN, ^ref, :process, ^pid, {:ok, result}} ->
        result

      {:DOWN, ^ref, :process, ^pid, reason} ->
        raise "replication: " <> Exception.format_exit(reason)
    end
  end

  defp key(i, size, offset), do: rem(i * @stride + offset, size)

  # A put into the group, through the member believed to lead. A refusal
  # (leadership moved) is counted, the writer moves to the member named
  # and the put is not counted as acknowledged.
  defp replicated_put(f, k) do
    id = :atomics.get(f.current, 1)

    case Store.put(elem(f.handles, id - 1), k, value(k)) do
      :ok ->
        true

      {:error, reason} ->
        :counters.add(f.refused, 1, 1)

        case reason do
          {:not_leader, {new, _}} -> :atomics.put(f.current, 1, new)
          _ -> Process.sleep(10)
        end

        false
    end
  end

  # For the latency rows: until acknowledged (a refusal is counted).
  defp acked_put(f, k) do
    if replicated_put(f, k), do: :ok, else: acked_put(f, k)
  end

  ## 1. Puts/s

  defp throughput(f, config) do
    ctx = fn -> f end
    group = fn _ -> os_pids(f.members) end
    single = fn _ -> [GenNative.Port.os_pid(@single)] end
    size = config.size

    native = fn writers ->
      fn f, _n ->
        for_duration(writers, config.run_ms, fn w, i -> replicated_put(f, key(i, size, w)) end)
      end
    end

    single_puts = fn writers ->
      fn f, _n ->
        for_duration(writers, config.run_ms, fn w, i ->
          k = key(i, size, w)
          :ok = Store.put(f.single, k, value(k))
        end)
      end
    end

    vs_single =
      for writers <- [1, 8, 64] do
        %{
          name:
            "puts, #{who(writers)}, set of #{Bench.thousands(size)} (peer: single-node durable " <>
              "port, sync: :always)",
          unit: :ops_per_s,
          ops_label: "acks/s",
          setup: ctx,
          native_os_pids: group,
          peer_os_pids: single,
          peer: single_puts.(writers),
          native: native.(writers)
        }
      end

    a_a = Bench.a_a(Enum.at(vs_single, 1), "the single-node port in both columns")

    vs_mnesia =
      if f.mnesia.ok do
        for writers <- [1, 8, 64] do
          %{
            name:
              "puts, #{who(writers)}, set of #{Bench.thousands(size)} (peer: Mnesia disc_copies " <>
                "on 3 peer nodes, :mnesia.sync_transaction/1 from writers on one of them)",
            unit: :ops_per_s,
            ops_label: "acks/s",
            setup: ctx,
            native_os_pids: group,
            peer_os_pids: fn _ -> f.mnesia.os_pids end,
            peer: fn _f, _n -> mnesia_run(f.mnesia, writers, config.run_ms, size) end,
            native: native.(writers)
          }
        end
      else
        []
      end

    # the cost of the snapshots: the same 64 writers on a second group
    # that takes none during the runs, against the first
    threshold = %{
      name:
        "puts, 64 concurrent writers, set of #{Bench.thousands(size)}: a group with " <>
          "snapshot_every: #{Bench.thousands(@no_snapshots)} (peer: the same group with " <>
          "the default snapshot threshold, 16,384 entries)",
      unit: :ops_per_s,
      ops_label: "acks/s",
      setup: fn ->
        g = group(f.sup, config, "tput_nosnap", [snapshot_every: @no_snapshots], f.refused)
        %{default: f, other: g}
      end,
      teardown: fn ctx -> stop_group(f.sup, ctx.other.members) end,
      native_os_pids: fn ctx -> os_pids(ctx.other.members) end,
      peer_os_pids: group,
      peer: fn ctx, _n ->
        for_duration(64, config.run_ms, fn w, i ->
          replicated_put(ctx.default, key(i, size, w))
        end)
      end,
      native: fn ctx, _n ->
        for_duration(64, config.run_ms, fn w, i -> replicated_put(ctx.other, key(i, size, w)) end)
      end
    }

    vs_single ++ [a_a, threshold] ++ vs_mnesia
  end

  defp who(1), do: "1 writer"
  defp who(n), do: "#{n} concurrent writers"

  # `writers` processes released together, each putting for `ms` from its
  # release; returns the acknowledged puts and the time until the last
  # writer stopped (as in the port suite).
  defp for_duration(writers, ms, put) do
    done = :counters.new(1, [:write_concurrency])

    elapsed =
      Bench.concurrently(writers, fn w ->
        deadline = :erlang.monotonic_time(:millisecond) + ms
        :counters.add(done, 1, put_until(put, w, deadline, 0, 0))
      end)

    {:counters.get(done, 1), elapsed}
  end

  defp put_until(put, w, deadline, i, acked) do
    if :erlang.monotonic_time(:millisecond) >= deadline do
      acked
    else
      acked = if put.(w, i) == false, do: acked, else: acked + 1
      put_until(put, w, deadline, i + 1, acked)
    end
  end

  ## 2. Commit latency

  defp latency(f, _config) do
    ctx = fn -> f end
    size = f.size

    single = %{
      name:
        "commit latency, 1 writer, each put timed alone (peer: single-node durable port, " <>
          "sync: :always)",
      unit: :latency_us,
      setup: ctx,
      native_os_pids: fn _ -> os_pids(f.members) end,
      peer_os_pids: fn _ -> [GenNative.Port.os_pid(@single)] end,
      peer: fn f ->
        k = :rand.uniform(size) - 1
        :ok = Store.put(f.single, k, value(k))
      end,
      native: fn f ->
        acked_put(f, :rand.uniform(size) - 1)
      end
    }

    mnesia =
      if f.mnesia.ok do
        [
          %{
            name:
              "commit latency, 1 writer, each put timed alone (peer: Mnesia disc_copies on 3 " <>
                "peer nodes, one :mnesia.sync_transaction/1 timed on the node running it)",
            unit: :latency_us,
            timing: :self,
            setup: ctx,
            peer: fn f ->
              k = :rand.uniform(size) - 1
              us = :peer.call(f.mnesia.writer, MnesiaWriter, :one, [@mnesia_table, k])
              :erlang.convert_time_unit(us, :microsecond, :native)
            end,
            native: fn f ->
              k = :rand.uniform(size) - 1
              t0 = :erlang.monotonic_time()
              acked_put(f, k)
              :erlang.monotonic_time() - t0
            end
          }
        ]
      else
        []
      end

    [single | mnesia]
  end

  ## 3. Failover

  defp failover_rows(sup, config) do
    members = start_cluster(sup, config.root, "failover", [])
    leader = await_leader(members)
    {:ok, _} = Store.new(:set, backend: {:port, leader.name}, name: @store)

    rounds = for round <- 1..@failovers, do: failover_round(sup, members, round)
    Process.put(:failover, rounds)
    ms = Enum.map(rounds, & &1.ms)
    {lo, hi} = Enum.min_max(ms)
    median = ms |> Enum.sort() |> Enum.at(div(length(ms), 2))

    stop_group(sup, members)

    [
      Bench.row(
        "failover: kill -KILL of the leader's program while 1 writer puts (3 members, " <>
          "election_timeout: #{@election_ms} ms)",
        "ms from the kill to the first put acknowledged by a new leader, median of " <>
          "#{@failovers} (min #{fmt_ms(lo)}, max #{fmt_ms(hi)})",
        :latency_us,
        nil,
        median
      )
    ]
  end

  defp failover_round(sup, members, round) do
    leader = await_leader(members)
    acks = :ets.new(:gn_bench_failover, [:public, :set])
    parent = self()
    ids = Enum.map(members, & &1.id)

    writer =
      spawn(fn ->
        failover_writer(members, ids, leader.id, leader.id, acks, parent, 0)
      end)

    # the writer is putting into the leader
    poll(fn -> :ets.member(acks, :writing) end, "the failover writer's first put")
    Process.sleep(200)

    t_kill = :erlang.monotonic_time()
    kill(leader)

    {_, id, t_ack} =
      poll(
        fn -> :ets.lookup(acks, :first_new) |> List.first() end,
        "a put acknowledged by a new leader",
        60_000
      )

    send(writer, :stop)

    puts =
      receive do
        {:failover_writer, n} -> n
      after
        30_000 -> raise "replication: the failover writer does not stop"
      end

    ms = :erlang.convert_time_unit(t_ack - t_kill, :native, :microsecond) / 1000
    :ets.delete(acks)

    # the killed member back with its directory, caught up before the next
    # round
    start_member(sup, leader)
    new = await_leader(members)
    target = status(new).last_index

    poll(
      fn -> (st = status(leader)) && st.applied >= target end,
      "the restarted member to catch up"
    )

    IO.write(:stderr, " [failover #{round}: #{fmt_ms(ms)} ms]")
    %{ms: ms, killed: leader.id, new: id, puts: puts}
  end

  # Puts into the member it believes leads; follows a refusal's leader, or
  # tries the next member after 5 ms when none is named or the member is
  # gone. Records the first put acknowledged by a member other than `old`.
  defp failover_writer(members, ids, old, current, acks, parent, puts) do
    receive do
      :stop -> send(parent, {:failover_writer, puts})
    after
      0 ->
        m = Enum.find(members, &(&1.id == current))

        next =
          try do
            case Store.put(handle(m), rem(puts, 1000), value(puts)) do
              :ok ->
                if current != old do
                  :ets.insert_new(acks, {:first_new, current, :erlang.monotonic_time()})
                else
                  :ets.insert(acks, {:writing, true})
                end

                current

              {:error, {:not_leader, {id, _}}} when id != current ->
                id

              {:error, _} ->
                Process.sleep(5)
                next_id(ids, current)
            end
          catch
            :exit, _ ->
              Process.sleep(5)
              next_id(ids, current)
          end

        failover_writer(members, ids, old, next, acks, parent, puts + 1)
    end
  end

  defp next_id(ids, current) do
    case Enum.drop_while(ids, &(&1 != current)) do
      [_, next | _] -> next
      _ -> hd(ids)
    end
  end

  ## 4. Catch-up

  defp catch_up_rows(sup, config) do
    for {tag, every} <- [{"catchup_default", nil}, {"catchup_snap", 16}] do
      catch_up(sup, config, tag, every)
    end
  end

  defp catch_up(sup, config, tag, every) do
    n = config.big
    chunks = 100
    chunk = div(n, chunks)
    opts = [reads: :local] ++ if(every, do: [snapshot_every: every], else: [])
    members = start_cluster(sup, config.root, tag, opts)
    leader = await_leader(members)
    {:ok, _} = Store.new(:set, backend: {:port, leader.name}, name: @store)
    [f | _] = Enum.reject(members, &(&1.id == leader.id))
    # the follower has the store before it goes
    poll(fn -> safe_size(handle(f)) == 0 end, "the store on the follower")
    kill(f)

    {fill_us, resent} = :timer.tc(fn -> fill_group(members, n, chunk) end)
    # leadership may have moved during the fill
    leader = await_leader(members)
    target = status(leader).last_index

    t0 = :erlang.monotonic_time()
    start_member(sup, f)
    t_started = :erlang.monotonic_time()
    poll(fn -> (st = status(f)) && st.applied >= target end, "the follower to catch up")
    t_applied = :erlang.monotonic_time()
    poll(fn -> safe_size(handle(f)) == n end, "the follower's size")
    t_size = :erlang.monotonic_time()

    us = fn t -> :erlang.convert_time_unit(t - t0, :native, :microsecond) end
    snapshots = Enum.count(File.ls!(leader.dir), &String.starts_with?(&1, "snapshot-"))

    info = %{
      every: every,
      fill_ms: fill_us / 1000,
      target: target,
      started_ms: us.(t_started) / 1000,
      applied_ms: us.(t_applied) / 1000,
      size_ms: us.(t_size) / 1000,
      leader_snapshots: snapshots,
      chunk: chunk,
      resent: resent
    }

    Process.put(:catch_up, (Process.get(:catch_up) || []) ++ [info])
    IO.write(:stderr, " [catch-up #{every || "default"}: #{fmt_ms(info.applied_ms)} ms]")

    # this group is done: its programs go, their memory with them
    stop_group(sup, members)

    threshold =
      if every,
        do: "snapshot_every: #{every} (the follower installs a snapshot)",
        else: "the default snapshot threshold, 16,384 (no snapshot: the log is sent)"

    Bench.row(
      "catch-up: a follower killed, #{Bench.thousands(n)} entries written (#{chunks} put_many " <>
        "of #{Bench.thousands(chunk)}), the follower restarted with its directory; #{threshold}",
      "ms from its start_link to applied >= the leader's last index (1 measurement)",
      :latency_us,
      nil,
      info.applied_ms
    )
  end

  defp safe_size(h) do
    Store.size(h)
  rescue
    _ -> nil
  catch
    :exit, _ -> nil
  end

  ## Mnesia on three peer nodes

  defp mnesia_start(config) do
    cookie = ~c"gn_bench_#{System.unique_integer([:positive])}"
    elixir = :code.lib_dir(:elixir, :ebin)

    peers =
      for i <- 1..3 do
        dir = Path.join(config.root, "mnesia#{i}")
        File.mkdir_p!(dir)

        {:ok, peer, node} =
          :peer.start_link(%{
            name: :"gn_bench_mnesia#{i}_#{System.unique_integer([:positive])}",
            host: ~c"127.0.0.1",
            longnames: true,
            connection: :standard_io,
            args: [
              ~c"-setcookie",
              cookie,
              ~c"-mnesia",
              ~c"dir",
              ~c"'#{dir}'",
              ~c"-pa",
              elixir
            ]
          })

        Process.put(:mnesia_peers, [peer | Process.get(:mnesia_peers, [])])
        {peer, node}
      end

    nodes = Enum.map(peers, &elem(&1, 1))
    [{first, _} | _] = peers
    call = fn peer, m, fun, args -> :peer.call(peer, m, fun, args, 60_000) end

    :ok = call.(first, :mnesia, :create_schema, [nodes])
    for {p, _} <- peers, do: :ok = call.(p, :mnesia, :start, [])

    {:atomic, :ok} =
      call.(first, :mnesia, :create_table, [
        @mnesia_table,
        [disc_copies: nodes, attributes: [:k, :v], type: :set]
      ])

    :ok = call.(first, :mnesia, :wait_for_tables, [[@mnesia_table], 30_000])

    for {p, _} <- peers do
      {:module, MnesiaWriter} =
        call.(p, :code, :load_binary, [MnesiaWriter, ~c"nofile", config.writer_beam])
    end

    for from <- 0..(config.size - 1)//10_000 do
      :ok =
        call.(first, MnesiaWriter, :fill, [
          @mnesia_table,
          from,
          min(from + 9_999, config.size - 1)
        ])
    end

    os_pids = for {p, _} <- peers, do: p |> call.(:os, :getpid, []) |> List.to_integer()

    %{ok: true, writer: first, os_pids: os_pids, nodes: nodes}
  rescue
    e -> %{ok: false, error: Exception.message(e)}
  catch
    kind, reason -> %{ok: false, error: Exception.format(kind, reason)}
  end

  defp mnesia_run(mnesia, writers, ms, size) do
    {ops, us} =
      :peer.call(mnesia.writer, MnesiaWriter, :run, [@mnesia_table, writers, ms, size], 60_000)

    {ops, :erlang.convert_time_unit(us, :microsecond, :native)}
  end

  ## Cleanup

  defp epmd_running? do
    case System.find_executable("epmd") do
      nil -> false
      epmd -> match?({_, 0}, System.cmd(epmd, ["-names"], stderr_to_stdout: true))
    end
  end

  defp cleanup(sup, peers, root, epmd_before) do
    for p <- peers do
      try do
        :peer.stop(p)
      catch
        _, _ -> :ok
      end
    end

    quiet(fn -> DynamicSupervisor.stop(sup) end)
    File.rm_rf!(root)

    # the peer nodes started epmd (erl -name does) if none ran: stop it once
    # no node is registered with it
    if not epmd_before and epmd_running?() do
      {names, _} = System.cmd("epmd", ["-names"], stderr_to_stdout: true)

      if not String.contains?(names, "name "),
        do: System.cmd("epmd", ["-kill"], stderr_to_stdout: true)
    end

    :ok
  end

  ## Notes

  # The 1-minute load average (how many threads wanted a CPU, on average),
  # to tell a quiet run from a busy one on the shared machine.
  defp loadavg do
    case File.read("/proc/loadavg") do
      {:ok, text} -> text |> String.split() |> hd()
      _ -> "n/a"
    end
  end

  defp fmt_ms(ms), do: :erlang.float_to_binary(ms / 1, decimals: 1)

  defp notes(rows, f, config) do
    pick = fn pred -> Enum.filter(rows, pred) end
    verdict = fn ok -> if ok, do: "met", else: "NOT met" end

    r64 =
      pick.(&(&1.scenario =~ "puts, 64" and &1.scenario =~ "single-node"))
      |> Enum.map(& &1.native)

    p99 =
      pick.(
        &(&1.scenario =~ "commit latency" and &1.metric =~ "p99" and &1.scenario =~ "single-node")
      )
      |> Enum.map(fn r -> r.native / 1000 end)

    failover = Process.get(:failover, [])
    catch_up = Process.get(:catch_up, [])
    fo_ms = Enum.map(failover, & &1.ms)

    fo_all =
      Enum.map_join(failover, "; ", fn r ->
        "#{fmt_ms(r.ms)} ms (member #{r.killed} killed, #{r.new} took over)"
      end)

    cu_all =
      Enum.map_join(catch_up, "; ", fn c ->
        "#{if c.every, do: "snapshot_every: #{c.every}", else: "the default threshold (16,384)"}: " <>
          "filled in #{fmt_ms(c.fill_ms)} ms (#{Bench.thousands(config.big)} entries in put_many of " <>
          "#{Bench.thousands(c.chunk)}; #{c.resent} of them sent again after the leader " <>
          "changed), leader's last index #{c.target}, " <>
          "#{c.leader_snapshots} snapshot file(s) in the leader's directory; the restarted " <>
          "follower's start_link returned after #{fmt_ms(c.started_ms)} ms, applied reached the " <>
          "last index at #{fmt_ms(c.applied_ms)} ms, its size was #{Bench.thousands(config.big)} " <>
          "at #{fmt_ms(c.size_ms)} ms"
      end)

    mnesia_note =
      if f.mnesia.ok,
        do:
          "Mnesia: three :peer nodes (OTP #{System.otp_release()}, started with -name on 127.0.0.1 and one cookie, each its own Mnesia directory under the suite's temporary directory), one disc_copies table of type set on all three; the writers are processes on the first node, one of the three replicas; a :mnesia.sync_transaction/1 returns once every replica has committed the transaction (into its transaction log, which Mnesia does not fsync per transaction: a weaker guarantee than sync: :always, where each acknowledged put is on disk on a majority of members). The :peer control channel (the nodes' standard I/O) carries only the start and the result of each run; for the latency row each transaction is timed on its node.",
        else: "Mnesia rows skipped: the peer nodes did not start (#{f.mnesia[:error]})."

    refused = :counters.get(f.refused, 1)

    quick_note =
      if Bench.quick?(),
        do: " (GN_BENCH_QUICK=1: #{Bench.thousands(config.big)} entries, not 1,000,000)",
        else: ""

    """
    Goals (issue 13), on this shared 2-vCPU machine:

    * 3-member replicated sync: :always puts with 64 writers >= 20k/s: #{verdict.(r64 != [] and Enum.all?(r64, &(&1 >= 20_000)))} (#{Enum.map_join(r64, ", ", &Bench.thousands(round(&1)))} acks/s)
    * commit p99 < 10 ms: #{verdict.(p99 != [] and Enum.all?(p99, &(&1 < 10)))} (#{Enum.map_join(p99, ", ", &fmt_ms/1)} ms, 1 writer)
    * failover < 2 s: #{verdict.(fo_ms != [] and Enum.all?(fo_ms, &(&1 < 2000)))} (every round: #{Enum.map_join(fo_ms, ", ", &fmt_ms/1)} ms)

    How each side was run:

    * Replicated: three gen_native_port programs, each started by GenNative.Port with its own data directory, sync: :always and raft: [id, address (127.0.0.1, a free port), members, election_timeout: #{@election_ms}] (the default snapshot threshold, 16,384 log entries, for the throughput and latency group; an entry holds every write the leader read from the VM at once); writes are proposed by the leader and acknowledged once committed (on a majority's disks: libraft writes and fsyncs its log) and applied. Every writer is a process of the bench VM calling GenNative.Store.put/3 on the leader's store. The snapshot_every row starts a second group like the first but with snapshot_every: #{Bench.thousands(@no_snapshots)} for that row only, and puts into both in alternating runs; each group's programs count for its own column. Puts refused during the throughput and latency runs because leadership moved: #{refused} (not counted as acknowledged); put_many chunks sent again while filling the groups because leadership moved (fill and catch-up): #{Process.get(:resent, 0)}.
    * Single-node durable port: one gen_native_port program with a data directory and sync: :always (the journal fdatasynced before each reply; writes that arrive together share one), no replication. Both stores hold the same #{Bench.thousands(f.size)} entries to begin with; keys rem(i * #{@stride} + writer, #{Bench.thousands(f.size)}), each writer putting for #{config.run_ms} ms per run; ops/s is all acknowledged puts over the time until the last writer stops.
    * #{mnesia_note}
    * Load average (1 minute) of the machine when the suite started: #{config.load_before}, when it ended: #{loadavg()}, for #{:erlang.system_info(:logical_processors)} vCPUs: above that, other work was queued for the CPUs (the machine is shared), and every figure here, latency most, moves with it.
    * #{:erlang.system_info(:schedulers_online)} schedulers online in the bench VM; every program (and peer node) competes with it for the same 2 vCPUs, so more processes (3 members, 3 peer VMs) means less CPU for each: the replicated and Mnesia sides pay for their replicas on the same machine.
    * CPU us/op: the replicated side counts its three member programs on top of the bench VM, the single-node side its one program, the Mnesia side the three peer VMs (its writers run there); the bench VM counts on every side.
    * Failover: one group; in each of #{@failovers} rounds a writer process puts in a loop into the member it believes leads (it follows a refusal naming the leader; when none is named or the member is gone it tries the next after 5 ms); the leader's program gets kill -KILL (the clock starts just before the `kill` command); the time is that of the first put acknowledged by another member. The killed member is then restarted with its directory and caught up before the next round. Every round: #{fo_all}.
    * Catch-up#{quick_note}: a group with reads: :local; a follower killed after it had the store; the entries written to the leader; the follower restarted with its directory (start_link returns once its own directory is loaded); the time until its raft_status/1 applied index reaches the leader's last index taken before the restart (polled every 5 ms), then until Store.size/1 on the follower gives every entry. #{cu_all}.
    """
  end
end

GenNative.Bench.ReplicationBench.run(mnesia_writer_beam)
