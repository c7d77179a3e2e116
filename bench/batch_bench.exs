# The batch suite: end-to-end casts handled per second by a counter server
# that takes its casts one by one with handle_cast/2 (GenServer) or together
# with handle_batch/2 (GenNative, default batch_size: 64). Every request
# does the same work on both sides: add its increment to the counter.
#
# The peer is GenServer in both of its settings, measured in the same
# alternating runs as GenNative: its default (on-heap) message queue and
# `spawn_opt: [message_queue_data: :off_heap]`; each scenario gives a row
# against each and one against the better of the two in each run. The A/A
# row (a plain GenServer in both columns) shows the noise floor.
#
#     mix gen_native.bench batch
#     GN_BENCH_QUICK=1 bin/bench batch

defmodule GenNative.Bench.Batch.PeerCounter do
  @moduledoc false
  use GenServer

  @impl true
  def init(count), do: {:ok, count}

  @impl true
  def handle_call(:get, _from, count), do: {:reply, count, count}

  @impl true
  def handle_cast({:add, n}, count), do: {:noreply, count + n}
end

defmodule GenNative.Bench.Batch.NativeCounter do
  @moduledoc false
  use GenNative

  @impl true
  def init(count), do: {:ok, count}

  @impl true
  def handle_call(:get, _from, count), do: {:reply, count, count}

  # A cast to an idle server still arrives here, one by one.
  @impl true
  def handle_cast({:add, n}, count), do: {:noreply, count + n}

  @impl GenNative
  def handle_batch(requests, count), do: {:noreply, add_all(requests, count)}

  defp add_all([{:add, n} | rest], count), do: add_all(rest, count + n)
  defp add_all([], count), do: count
end

defmodule GenNative.Bench.Batch do
  @moduledoc false
  alias GenNative.Bench
  alias GenNative.Bench.Batch.{NativeCounter, PeerCounter}

  def scenarios do
    [four, one] = Enum.map([4, 1], &cast_throughput/1)
    a_a = Bench.a_a(four, "GenServer in both columns")
    # the A/A row has one GenServer per column, each with its own counter
    a_a = %{a_a | native: fn ctx, n -> four.peer.(%{ctx | peer: ctx.alt_peer_a_a}, n) end}
    [four, one, a_a]
  end

  # End to end, as in the mailbox suite: each producer sends n casts, then
  # one call, which the server answers after all of that producer's casts;
  # the clock stops when the last producer's call returns, so every cast
  # has been handled, not just queued.
  defp cast_throughput(producers) do
    run = fn {mod, pid}, n ->
      GenNative.Bench.checked(mod, pid, producers * n, fn ->
        Bench.concurrently(producers, fn _ ->
          GenNative.Bench.repeat(n, fn -> mod.cast(pid, {:add, 1}) end)
          mod.call(pid, :get, :infinity)
        end)
      end)
    end

    %{
      name: "casts handled/s, #{producers} producer#{if producers > 1, do: "s"}",
      unit: :ops_per_s,
      setup: &setup/0,
      teardown: &teardown/1,
      peer: fn ctx, n -> run.(ctx.peer, n) end,
      peer_name: "GenServer",
      alt_peer: fn ctx, n -> run.(ctx.alt_peer, n) end,
      alt_peer_name: "GenServer, message_queue_data: :off_heap",
      native: fn ctx, n -> run.(ctx.native, n) end
    }
  end

  defp setup do
    {:ok, peer} = GenServer.start_link(PeerCounter, 0)

    {:ok, off_heap} =
      GenServer.start_link(PeerCounter, 0, spawn_opt: [message_queue_data: :off_heap])

    {:message_queue_data, :off_heap} = Process.info(off_heap, :message_queue_data)
    {:ok, second} = GenServer.start_link(PeerCounter, 0)
    {:ok, native} = GenNative.start_link(NativeCounter, 0)

    %{
      peer: {GenServer, peer},
      alt_peer: {GenServer, off_heap},
      alt_peer_a_a: {GenServer, second},
      native: {GenNative, native}
    }
  end

  defp teardown(ctx) do
    for {GenServer, pid} <- [ctx.peer, ctx.alt_peer, ctx.alt_peer_a_a],
        do: :ok = GenServer.stop(pid)

    :ok = GenNative.stop(elem(ctx.native, 1))
  end
end

GenNative.Bench.run("batch", GenNative.Bench.Batch.scenarios(),
  notes:
    "GenServer (default, and with message_queue_data: :off_heap): handle_cast/2, " <>
      "one cast at a time. GenNative: handle_batch/2, " <>
      "batch_size: 64 (default). Each cast adds 1 to a counter; each run checks " <>
      "that the counter grew by exactly the number of casts sent.\n"
)
