# The mailbox suite: the same counter server as a GenServer and as a GenNative
# server, called and cast to through each one's own client API.
#
# The cast rows are repeated against a GenServer started with
# `spawn_opt: [message_queue_data: :off_heap]` (OTP 25 delivers signals to
# such a process from several senders in parallel), the other GenServer
# setting issue 9 asks the design to be measured against; and as A/A rows,
# a plain GenServer on both sides, whose ratio spread is the noise floor of
# the cast rows on this machine.
#
#     bin/bench mailbox
#     GN_BENCH_QUICK=1 bin/bench mailbox

defmodule GenNative.Bench.Mailbox.PeerCounter do
  @moduledoc false
  use GenServer

  @impl true
  def init(count), do: {:ok, count}

  @impl true
  def handle_call(:inc, _from, count), do: {:reply, count + 1, count + 1}
  def handle_call(:get, _from, count), do: {:reply, count, count}

  @impl true
  def handle_cast(:inc, count), do: {:noreply, count + 1}
end

defmodule GenNative.Bench.Mailbox.NativeCounter do
  @moduledoc false
  use GenNative

  @impl true
  def init(count), do: {:ok, count}

  @impl true
  def handle_call(:inc, _from, count), do: {:reply, count + 1, count + 1}
  def handle_call(:get, _from, count), do: {:reply, count, count}

  @impl true
  def handle_cast(:inc, count), do: {:noreply, count + 1}
end

defmodule GenNative.Bench.Mailbox do
  @moduledoc false
  alias GenNative.Bench
  alias GenNative.Bench.Mailbox.{NativeCounter, PeerCounter}

  # Each side is {client module, server pid}: the client module is GenServer
  # or GenNative, so both sides run the same code through their own API.
  def scenarios do
    [latency()] ++
      Enum.map([1, 8, 64], &call_throughput/1) ++
      Enum.map([1, 4], &cast_throughput(&1, :default)) ++
      Enum.map([1, 4], &cast_throughput(&1, :off_heap)) ++
      Enum.map([1, 4], &cast_throughput(&1, :a_a))
  end

  defp latency do
    %{
      name: "call round trip, 1 caller",
      unit: :latency_us,
      setup: &setup/0,
      teardown: &teardown/1,
      peer: fn %{peer: {mod, pid}} -> mod.call(pid, :inc) end,
      native: fn %{native: {mod, pid}} -> mod.call(pid, :inc) end
    }
  end

  defp call_throughput(callers) do
    run = fn {mod, pid}, n ->
      GenNative.Bench.checked(mod, pid, callers * n, fn ->
        Bench.concurrently(callers, fn _ ->
          GenNative.Bench.repeat(n, fn -> mod.call(pid, :inc) end)
        end)
      end)
    end

    %{
      name: "call throughput, #{callers} caller#{if callers > 1, do: "s"}",
      unit: :ops_per_s,
      setup: &setup/0,
      teardown: &teardown/1,
      peer: fn ctx, n -> run.(ctx.peer, n) end,
      native: fn ctx, n -> run.(ctx.native, n) end
    }
  end

  # End to end: each producer sends n casts, then one call, which the server
  # handles after all of that producer's casts; the clock stops when the last
  # producer's call returns, so every cast has been handled, not just queued.
  #
  # `against` picks the two sides: `:default` (GenServer against GenNative),
  # `:off_heap` (a GenServer with message_queue_data: :off_heap against
  # GenNative), `:a_a` (a plain GenServer on both sides).
  defp cast_throughput(producers, against) do
    run = fn {mod, pid}, n ->
      GenNative.Bench.checked(mod, pid, producers * n, fn ->
        Bench.concurrently(producers, fn _ ->
          GenNative.Bench.repeat(n, fn -> mod.cast(pid, :inc) end)
          mod.call(pid, :get)
        end)
      end)
    end

    name = "cast throughput, #{producers} producer#{if producers > 1, do: "s"}"

    {name, setup} =
      case against do
        :default ->
          {name, &setup/0}

        :off_heap ->
          {name <> " (peer: GenServer with message_queue_data: :off_heap)",
           fn -> setup(peer: :off_heap) end}

        :a_a ->
          {"A/A: " <> name <> " (GenServer in both columns)",
           fn -> setup(native: :gen_server) end}
      end

    %{
      name: name,
      unit: :ops_per_s,
      setup: setup,
      teardown: &teardown/1,
      peer: fn ctx, n -> run.(ctx.peer, n) end,
      native: fn ctx, n -> run.(ctx.native, n) end
    }
  end

  # `peer: :off_heap` starts the peer GenServer with its message queue off
  # the heap; `native: :gen_server` puts a second plain GenServer in
  # GenNative's place, for an A/A comparison.
  defp setup(opts \\ []) do
    peer_opts =
      case Keyword.get(opts, :peer, :default) do
        :default -> []
        :off_heap -> [spawn_opt: [message_queue_data: :off_heap]]
      end

    {:ok, peer} = GenServer.start_link(PeerCounter, 0, peer_opts)
    expected = if peer_opts == [], do: :on_heap, else: :off_heap
    {:message_queue_data, ^expected} = Process.info(peer, :message_queue_data)

    native =
      case Keyword.get(opts, :native, :gen_native) do
        :gen_native ->
          {:ok, pid} = GenNative.start_link(NativeCounter, 0)
          {GenNative, pid}

        :gen_server ->
          {:ok, pid} = GenServer.start_link(PeerCounter, 0)
          {GenServer, pid}
      end

    %{peer: {GenServer, peer}, native: native}
  end

  defp teardown(%{peer: {GenServer, peer}, native: {mod, native}}) do
    :ok = GenServer.stop(peer)
    :ok = mod.stop(native)
  end
end

GenNative.Bench.run("mailbox", GenNative.Bench.Mailbox.scenarios())
