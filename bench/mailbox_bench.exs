# The mailbox suite: the same counter server as a GenServer and as a GenNative
# server, called and cast to through each one's own client API.
#
# Each cast scenario runs three sides in the same alternating runs: a
# GenServer with its default (on-heap) message queue, a GenServer started
# with `spawn_opt: [message_queue_data: :off_heap]` (OTP 25 delivers
# signals to such a process from several senders in parallel), and
# GenNative; it gives a row against each GenServer and one against the
# better of the two in each run, the peer GenNative has to beat. The A/A
# rows run a plain GenServer on both sides: their ratio spread is the noise
# floor of the rows on this machine.
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
      Enum.map([1, 4], &cast_throughput(&1, :both)) ++
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
  # `against` picks the sides: `:both` (GenServer, GenServer with
  # message_queue_data: :off_heap, and GenNative, in the same runs), `:a_a`
  # (a plain GenServer on both sides).
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

    case against do
      :both ->
        %{
          name: name,
          unit: :ops_per_s,
          setup: fn -> setup(alt_peer: true) end,
          teardown: &teardown/1,
          peer: fn ctx, n -> run.(ctx.peer, n) end,
          peer_name: "GenServer",
          alt_peer: fn ctx, n -> run.(ctx.alt_peer, n) end,
          alt_peer_name: "GenServer, message_queue_data: :off_heap",
          native: fn ctx, n -> run.(ctx.native, n) end
        }

      :a_a ->
        %{
          name: "A/A: " <> name <> " (GenServer in both columns)",
          unit: :ops_per_s,
          setup: fn -> setup(native: :gen_server) end,
          teardown: &teardown/1,
          peer: fn ctx, n -> run.(ctx.peer, n) end,
          native: fn ctx, n -> run.(ctx.native, n) end
        }
    end
  end

  # `alt_peer: true` also starts a GenServer with its message queue off the
  # heap; `native: :gen_server` puts a second plain GenServer in
  # GenNative's place, for an A/A comparison.
  defp setup(opts \\ []) do
    {:ok, peer} = GenServer.start_link(PeerCounter, 0)
    {:message_queue_data, :on_heap} = Process.info(peer, :message_queue_data)

    alt_peer =
      if Keyword.get(opts, :alt_peer, false) do
        {:ok, pid} =
          GenServer.start_link(PeerCounter, 0, spawn_opt: [message_queue_data: :off_heap])

        {:message_queue_data, :off_heap} = Process.info(pid, :message_queue_data)
        {GenServer, pid}
      end

    native =
      case Keyword.get(opts, :native, :gen_native) do
        :gen_native ->
          {:ok, pid} = GenNative.start_link(NativeCounter, 0)
          {GenNative, pid}

        :gen_server ->
          {:ok, pid} = GenServer.start_link(PeerCounter, 0)
          {GenServer, pid}
      end

    %{peer: {GenServer, peer}, alt_peer: alt_peer, native: native}
  end

  defp teardown(%{peer: {GenServer, peer}, alt_peer: alt_peer, native: {mod, native}}) do
    :ok = GenServer.stop(peer)
    if alt_peer, do: :ok = GenServer.stop(elem(alt_peer, 1))
    :ok = mod.stop(native)
  end
end

GenNative.Bench.run("mailbox", GenNative.Bench.Mailbox.scenarios())
