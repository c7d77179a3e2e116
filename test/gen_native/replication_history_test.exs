defmodule GenNative.ReplicationHistoryTest do
  # Linearizability of a replicated store under failures (issue 13): a
  # history of at least 10,000 operations (puts, gets and deletes on a few
  # keys, from several clients), during which the leader is killed (kill -9)
  # and restarted on its directory three times, is checked with the
  # key-value register checker in test/support/linearizability.ex.
  #
  # Each client sends its operations to the member it believes leads (it
  # asks the members again after a refusal). Outcomes: a reply is :ok; a
  # refusal by a follower (not_leader, before anything is proposed) is
  # :fail; leadership lost, a timeout or a dead program is :unknown (the
  # write may or may not be applied: the checker lets it take effect at any
  # point after it was sent, or never).
  use ExUnit.Case, async: false

  import GenNative.Test.RaftCluster

  alias GenNative.Store
  alias GenNative.Store.PortHandle
  alias GenNative.Test.Linearizability

  @moduletag timeout: 300_000

  @clients 6
  @keys [:a, :b, :c]
  @ops 10_000
  @kills 3

  test "10,000 operations with leader kills and restarts form a linearizable history" do
    members = start(3)
    leader = await_leader(members)
    {:ok, _} = Store.new(:set, backend: {:port, leader.name}, name: :reg)
    counter = :counters.new(1, [])
    parent = self()

    clients =
      for c <- 1..@clients do
        Task.async(fn -> client(members, c, counter, parent, [], leader) end)
      end

    chaos(members, counter)
    for t <- clients, do: send(t.pid, :stop)
    history = clients |> Enum.flat_map(&Task.await(&1, 60_000))

    completed = Enum.count(history, &(&1.outcome == :ok))
    assert completed >= @ops
    IO.puts(:stderr, "history: #{length(history)} operations, #{completed} completed")
    assert Linearizability.check(history) == :ok
  end

  # Kills the leader @kills times, spaced over the run, and restarts it on
  # its directory each time; returns once @ops operations completed.
  defp chaos(members, counter, kills \\ 0) do
    done = :counters.get(counter, 1)

    cond do
      kills < @kills and done >= div(@ops * (kills + 1), @kills + 2) ->
        victim = await_leader(Enum.filter(members, &alive?/1))
        kill(victim)
        await_leader(Enum.reject(members, &(&1.id == victim.id)))
        start_member(victim)
        chaos(members, counter, kills + 1)

      done >= @ops and kills >= @kills ->
        :ok

      true ->
        Process.sleep(20)
        chaos(members, counter, kills)
    end
  end

  defp client(members, c, counter, parent, acc, target) do
    receive do
      :stop -> acc
    after
      0 ->
        key = Enum.random(@keys)
        n = length(acc)

        {f, value} =
          case :rand.uniform(10) do
            x when x <= 4 -> {:put, {c, n}}
            x when x <= 9 -> {:get, nil}
            _ -> {:delete, nil}
          end

        invoke = System.monotonic_time()
        {outcome, result} = run(target, f, key, value)
        complete = System.monotonic_time()
        if outcome == :ok, do: :counters.add(counter, 1, 1)
        op = Linearizability.op(c, key, f, value, result, invoke, complete, outcome)

        target = if outcome == :ok, do: target, else: find_leader(members, target)
        client(members, c, counter, parent, [op | acc], target)
    end
  end

  defp run(m, f, key, value) do
    s = %PortHandle{port: m.name, name: :reg}

    try do
      case f do
        :put -> write(Store.put(s, key, value))
        :delete -> write(Store.delete(s, key))
        :get -> {:ok, Store.fetch(s, key)}
      end
    rescue
      e in Store.ReplicationError ->
        if e.reason == :not_leader, do: {:fail, nil}, else: {:unknown, nil}
    catch
      :exit, _ -> {:unknown, nil}
    end
  end

  defp write(:ok), do: {:ok, :ok}
  defp write({:error, {:not_leader, _}}), do: {:fail, nil}
  defp write({:error, {:leadership_lost, _}}), do: {:unknown, nil}

  defp find_leader(members, fallback) do
    Enum.find(members, fn m -> alive?(m) and match?(%{state: :leader}, safe_status(m)) end) ||
      (Process.sleep(10) && fallback)
  end
end
