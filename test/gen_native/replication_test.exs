defmodule GenNative.ReplicationTest do
  # Replicated port stores (issue 13): three members, each a port program
  # (its own OS process) on 127.0.0.1, forming a Raft group through
  # libraft. Not async: the members' programs and ports are many, and
  # several tests kill or stop them.
  use ExUnit.Case, async: false

  import GenNative.Test.RaftCluster

  alias GenNative.{Port, Store}
  alias GenNative.Store.ReplicationError

  @moduletag timeout: 120_000

  defp store(m, name \\ :kv, type \\ :set),
    do: %GenNative.Store.PortHandle{port: m.name, name: name} |> tap(fn _ -> type end)

  defp open!(m, name \\ :kv, type \\ :set) do
    {:ok, s} = Store.new(type, backend: {:port, m.name}, name: name)
    s
  end

  test "three members elect one leader; it takes writes, the followers refuse them and name it" do
    members = start(3)
    leader = await_leader(members)
    s = open!(leader)
    assert Store.put(s, :a, 1) == :ok
    assert Store.update_counter(s, :n, 5) == 5
    assert Store.get(s, :a) == 1
    assert Store.to_list(s) |> Enum.sort() == [a: 1, n: 5]

    for f <- members, f.id != leader.id do
      fs = store(f)
      assert Store.put(fs, :b, 2) == {:error, {:not_leader, {leader.id, leader.address}}}

      assert Store.new(:set, backend: {:port, f.name}, name: :other) ==
               {:error, {:not_leader, {leader.id, leader.address}}}

      # linearizable reads (the default) go through the leader
      error = assert_raise ReplicationError, fn -> Store.get(fs, :a) end
      assert error.reason == :not_leader and error.detail == {leader.id, leader.address}
      assert %{state: :follower, leader: {id, _}, members: ms} = Port.raft_status(f.name)
      assert id == leader.id
      assert Enum.map(ms, &elem(&1, 0)) |> Enum.sort() == [1, 2, 3]
    end

    assert Store.get(s, :b) == nil
  end

  test "with reads: :local, every member serves reads from what it has applied" do
    members = start(3, reads: :local)
    leader = await_leader(members)
    s = open!(leader)
    for i <- 1..100, do: :ok = Store.put(s, i, {:v, i})

    for m <- members do
      eventually(fn -> safe_size(store(m)) == 100 end)
      assert Store.get(store(m), 42) == {:v, 42}
    end
  end

  defp safe_size(s) do
    Store.size(s)
  rescue
    ArgumentError -> 0
  end

  test "kill -9 of the leader under writes: a new leader serves, no acknowledged write is lost, none applied twice" do
    members = start(3)
    leader = await_leader(members)
    _ = open!(leader, :counters)
    clients = 4

    # each client increments its own counter on whoever leads, until told
    # to stop; it counts the acknowledged increments and the ones whose
    # outcome it cannot know (leadership lost, a timeout)
    parent = self()

    tasks =
      for c <- 1..clients do
        Task.async(fn -> client_loop(members, c, parent, %{acked: 0, unknown: 0}) end)
      end

    Process.sleep(300)
    t0 = System.monotonic_time(:millisecond)
    kill(leader)
    rest = Enum.reject(members, &(&1.id == leader.id))
    new = await_leader(rest)
    failover = System.monotonic_time(:millisecond) - t0
    assert new.id != leader.id
    Process.sleep(300)
    for t <- tasks, do: send(t.pid, :stop)
    results = Enum.map(tasks, &Task.await(&1, 30_000))

    ns = store(new, :counters)

    for {c, %{acked: acked, unknown: unknown}} <- Enum.with_index(results, 1) do
      value = Store.get(ns, c, 0)
      assert acked > 0
      # every acknowledged increment is there; an unknown one may be
      assert value >= acked and value <= acked + unknown,
             "client #{c}: #{value} applied, #{acked} acknowledged, #{unknown} unknown"
    end

    IO.puts(:stderr, "failover: a new leader #{failover} ms after the kill")
  end

  defp client_loop(members, c, parent, acc) do
    receive do
      :stop -> acc
    after
      0 ->
        m = Enum.find(members, &(alive?(&1) and leader?(&1))) || hd(members)

        acc =
          try do
            case Store.update_counter(store(m, :counters), c, 1) do
              n when is_integer(n) -> %{acc | acked: acc.acked + 1}
              {:error, {:not_leader, _}} -> acc
              {:error, {:leadership_lost, _}} -> %{acc | unknown: acc.unknown + 1}
            end
          catch
            :exit, _ -> %{acc | unknown: acc.unknown + 1}
          end

        _ = parent
        client_loop(members, c, parent, acc)
    end
  end

  defp leader?(m), do: match?(%{state: :leader}, safe_status(m))

  test "a member restarted with its directory catches up, also from a snapshot" do
    members = start(3, snapshot_every: 64)
    leader = await_leader(members)
    s = open!(leader)
    [f | _] = Enum.reject(members, &(&1.id == leader.id))
    for i <- 1..50, do: :ok = Store.put(s, i, i)
    kill(f)
    # far more entries than the snapshot threshold while it is down: the
    # leader's log is truncated behind a snapshot, which f then installs
    for i <- 51..1_000, do: :ok = Store.put(s, i, i)
    start_member(f, snapshot_every: 64, reads: :local)
    eventually(fn -> safe_size(store(f)) == 1_000 end, 20_000)
    assert Store.get(store(f), 999) == 999
    assert Enum.any?(File.ls!(leader.dir), &String.starts_with?(&1, "snapshot-"))
  end

  test "a member added to the group catches up and votes; one removed leaves it" do
    members = start(3)
    leader = await_leader(members)
    s = open!(leader)
    for i <- 1..20, do: :ok = Store.put(s, i, i)
    base = Path.dirname(hd(members).dir)

    new = %{
      id: 4,
      name: :"#{hd(members).name}_4",
      address: "127.0.0.1:#{free_port()}",
      dir: Path.join(base, "m4")
    }

    start_member(new, reads: :local)
    assert Port.add_member(leader.name, 4, new.address) == :ok
    eventually(fn -> safe_size(store(new)) == 20 end)

    assert {4, _, :voter} = List.keyfind(Port.raft_status(leader.name).members, 4, 0)

    assert Port.remove_member(leader.name, 4) == :ok
    assert List.keyfind(Port.raft_status(leader.name).members, 4, 0) == nil
  end

  test "leadership moves on request" do
    members = start(3)
    leader = await_leader(members)
    [target | _] = Enum.reject(members, &(&1.id == leader.id))
    assert Port.transfer_leadership(leader.name, target.id) == :ok
    assert await_leader(members).id == target.id
  end

  test "a stopped minority (SIGSTOP) leaves the majority serving; once resumed it has one history" do
    members = start(3, reads: :local)
    leader = await_leader(members)
    s = open!(leader)
    [f | _] = Enum.reject(members, &(&1.id == leader.id))
    signal(f, "STOP")

    try do
      for i <- 1..100, do: :ok = Store.put(s, i, i)
    after
      signal(f, "CONT")
    end

    eventually(fn -> safe_size(store(f)) == 100 end)
    assert Store.to_list(store(f)) |> Enum.sort() == Store.to_list(s) |> Enum.sort()
  end

  test "a removed member's directory is refused until it is reset" do
    members = start(3)
    leader = await_leader(members)
    s = open!(leader)
    :ok = Store.put(s, :a, 1)
    [f | _] = Enum.reject(members, &(&1.id == leader.id))
    assert Port.remove_member(leader.name, f.id) == :ok
    # it applied its retirement before it was removed
    eventually(fn -> File.exists?(Path.join(f.dir, "RETIRED")) end)
    assert Store.put(store(f), :b, 2) == {:error, :removed_member}
    kill(f)

    assert {:error, reason} =
             start_supervised(
               {Port, name: f.name, dir: f.dir, raft: [id: f.id, address: f.address]},
               restart: :temporary,
               id: :old_dir
             )

    assert inspect(reason) =~ "{:removed_member, #{inspect(f.dir)}}"
    # reset, it joins again as a new member
    :ok = Port.reset_member(f.dir)
    start_member(f, reads: :local)
    assert Port.add_member(leader.name, f.id, f.address) == :ok
    eventually(fn -> safe_size(store(f)) == 1 end)
  end

  test "a stopped leader (SIGSTOP): the majority elects another; the old one, resumed, follows it" do
    members = start(3, reads: :local)
    leader = await_leader(members)
    s = open!(leader)
    :ok = Store.put(s, :before, 1)
    signal(leader, "STOP")
    rest = Enum.reject(members, &(&1.id == leader.id))

    new =
      try do
        new = await_leader(rest)
        ns = store(new)
        for i <- 1..50, do: :ok = Store.put(ns, i, i)
        new
      after
        signal(leader, "CONT")
      end

    eventually(fn ->
      match?(%{state: :follower, leader: {id, _}} when id == new.id, safe_status(leader))
    end)

    eventually(fn -> safe_size(store(leader)) == 51 end)
    assert Store.to_list(store(leader)) |> Enum.sort() == Store.to_list(store(new)) |> Enum.sort()
  end

  test "a write retried under its request id is applied once, also after the leader changed" do
    members = start(3)
    leader = await_leader(members)
    s = open!(leader)
    id = Store.request_id()
    assert Store.with_request_id(id, fn -> Store.update_counter(s, :n, 1) end) == 1
    # the same id again: not applied again; the first reply
    assert Store.with_request_id(id, fn -> Store.update_counter(s, :n, 1) end) == 1
    assert Store.get(s, :n) == 1
    id2 = Store.request_id()
    assert Store.with_request_id(id2, fn -> Store.update_counter(s, :n, 1) end) == 2
    # an older id of the same client
    assert Store.with_request_id(id, fn -> Store.update_counter(s, :n, 1) end) ==
             {:error, :stale_request}

    # the ids are replicated state: the new leader knows them
    kill(leader)
    new = await_leader(Enum.reject(members, &(&1.id == leader.id)))
    assert Store.with_request_id(id2, fn -> Store.update_counter(store(new), :n, 1) end) == 2
    assert Store.get(store(new), :n) == 2
  end

  test "invalid :raft options raise ArgumentError saying what is expected" do
    a = [id: 1, address: "127.0.0.1:1"]
    dir = [dir: Path.join(System.tmp_dir!(), "gn_raft_never_made")]

    for {opts, expected} <- [
          {[raft: [id: 0, address: "127.0.0.1:1"]] ++ dir, "an :id"},
          {[raft: [id: 1, address: "nope"]] ++ dir, "an :address"},
          {[raft: a], "a data directory"},
          {[raft: a ++ [snapshot_every: 0]] ++ dir, "from 1 to 1073741824"},
          {[raft: a ++ [election_timeout: 5]] ++ dir, "from 10 to 600000"},
          {[raft: a ++ [reads: :stale]] ++ dir, ":reads"},
          {[raft: a ++ [members: [{0, "127.0.0.1:2"}]]] ++ dir, "members"},
          {[raft: a ++ [bogus: 1]] ++ dir, "unknown :raft option"},
          {[raft: :yes] ++ dir, "a keyword list"}
        ] do
      e = assert_raise ArgumentError, fn -> Port.start_link([name: :gn_bad_raft] ++ opts) end
      assert e.message =~ expected
    end
  end

  test "TTL expires by the group's clock on every member; clear, put_many, restore and delete replicate" do
    members = start(3, reads: :local)
    leader = await_leader(members)
    s = open!(leader)
    :ok = Store.put(s, :short, 1, ttl: 300)
    :ok = Store.put(s, :long, 2)
    :ok = Store.put_many(s, for(i <- 1..100, do: {i, i}))
    snap = Store.snapshot(s)

    # the leader's sweep tick (every second) purges :short on every member
    for m <- members do
      eventually(
        fn -> safe_size(store(m)) == 101 and Store.get(store(m), :short) == nil end,
        5_000
      )

      assert Store.get(store(m), :long) == 2
    end

    {:ok, copy} = Store.restore(snap, backend: {:port, leader.name}, name: :copy)
    assert Store.size(copy) == 102 or Store.size(copy) == 101
    :ok = Store.clear(s)
    :ok = Store.delete(copy)

    for m <- members do
      eventually(fn -> safe_size(store(m)) == 0 end)
      eventually(fn -> {:copy, :set} not in GenNative.Port.stores(m.name) end)
    end
  end

  test "with_consistency/2 picks a read's consistency per call" do
    members = start(3)
    leader = await_leader(members)
    s = open!(leader)
    :ok = Store.put(s, :a, 1)
    [f | _] = Enum.reject(members, &(&1.id == leader.id))

    # a follower refuses linearizable reads (the members' default) ...
    assert_raise ReplicationError, fn -> Store.get(store(f), :a) end

    # ... and serves local ones from what it has applied
    eventually(fn -> Store.with_consistency(:local, fn -> safe_size(store(f)) end) == 1 end)
    assert Store.with_consistency(:local, fn -> Store.get(store(f), :a) end) == 1
    assert Store.with_consistency(:linearizable, fn -> Store.get(s, :a) end) == 1

    assert_raise ReplicationError, fn ->
      Store.with_consistency(:linearizable, fn -> Store.get(store(f), :a) end)
    end

    # writes are not affected
    assert Store.with_consistency(:local, fn -> Store.put(store(f), :b, 2) end) ==
             {:error, {:not_leader, {leader.id, leader.address}}}
  end
end
