# The enqueue suite: what a cast costs the sender, part by part.
#
# Every row has the same peer: `GenServer.cast/2` to a suspended GenServer
# (one `send/2` of {:"$gen_cast", request}, nothing handling it), and puts
# beside it one part of GenNative's send path, timed alone the same way:
#
#   * the NIF entry: `mailbox_high/1`, a NIF that only reads a resource and
#     an atomic (the floor of any NIF call);
#   * the send NIF of an unbounded message-mode mailbox: the target's
#     lookup (a per-thread cache before the registry) and counting, no send;
#   * `GenNative.cast/2` to a suspended GenNative server: that NIF and the
#     `send/2` it tells the caller to make;
#   * the send NIF of a queue-mode mailbox (`handle_batch/2` servers and
#     the others that keep casts in C): the lock, the copy into the
#     mailbox's chunk and the push, for an atom and for a small tuple;
#   * the owner's side of a message-mode cast: `mailbox_ack(ref, :cast)`.
#
# Each run gets a fresh target, so queues do not carry over; a ratio below
# 1.0 means the part costs more than the whole of GenServer's cast.
#
#     bin/bench enqueue

defmodule GenNative.Bench.Enqueue.Sink do
  @moduledoc false
  use GenServer

  @impl true
  def init(state), do: {:ok, state}

  @impl true
  def handle_cast(_request, state), do: {:noreply, state}
end

defmodule GenNative.Bench.Enqueue.NativeSink do
  @moduledoc false
  use GenNative

  @impl true
  def init(state), do: {:ok, state}

  @impl true
  def handle_cast(_request, state), do: {:noreply, state}
end

defmodule GenNative.Bench.Enqueue do
  @moduledoc false
  alias GenNative.Bench
  alias GenNative.Bench.Enqueue.{NativeSink, Sink}
  alias GenNative.Native

  def scenarios do
    [
      part("NIF entry: mailbox_high/1 (a resource and an atomic read)", &own_mailbox/1, fn ref ->
        Native.mailbox_high(ref)
      end),
      part(
        "send NIF, unbounded message mode: target lookup and counting, no send",
        &message_mode_owner/1,
        fn pid -> Native.mailbox_send(pid, :inc, :normal, :cast) end
      ),
      part(
        "GenNative.cast/2 to a suspended server: the NIF and send/2",
        &suspended_native/1,
        fn pid ->
          GenNative.cast(pid, :inc)
        end
      ),
      part(
        "send NIF, queue mode, an atom: lock, copy into the chunk, push",
        &queue_mode_owner/1,
        fn pid -> Native.mailbox_send(pid, :inc, :normal, :cast) end
      ),
      part(
        ~s(send NIF, queue mode, {1, "abc", [:a]}: the same with a 3-cell copy),
        &queue_mode_owner/1,
        fn pid -> Native.mailbox_send(pid, {1, "abc", [:a]}, :normal, :cast) end
      ),
      part("owner side: mailbox_ack(ref, :cast)", &own_mailbox/1, fn ref ->
        Native.mailbox_ack(ref, :cast)
      end)
    ]
  end

  # A scenario: the peer casts with GenServer.cast to a fresh suspended
  # GenServer; the native side runs `op` on a fresh target made by `target`
  # (which takes a function to run with it and cleans up after). Only the
  # loop is timed.
  defp part(name, target, op) do
    %{
      name: name,
      unit: :ops_per_s,
      peer: fn _ctx, n ->
        suspended_peer(fn pid -> timed(n, fn -> GenServer.cast(pid, :inc) end) end)
      end,
      native: fn _ctx, n -> target.(fn t -> timed(n, fn -> op.(t) end) end) end
    }
  end

  defp timed(n, fun) do
    t0 = System.monotonic_time()
    Bench.repeat(n, fun)
    {n, System.monotonic_time() - t0}
  end

  defp suspended_peer(fun) do
    {:ok, pid} = GenServer.start(Sink, nil)
    :ok = :sys.suspend(pid)
    result = fun.(pid)
    Process.exit(pid, :kill)
    result
  end

  defp suspended_native(fun) do
    {:ok, pid} = GenNative.start(NativeSink, nil)
    :ok = :sys.suspend(pid)
    result = fun.(pid)
    Process.exit(pid, :kill)
    result
  end

  # A process owning a fresh mailbox (flags as mailbox_new/3 takes them)
  # and never handling anything.
  defp owner(flags, fun) do
    me = self()

    pid =
      spawn(fn ->
        send(me, {:owned, Native.mailbox_new(:infinity, :reject, flags)})
        Process.sleep(:infinity)
      end)

    receive do
      {:owned, ref} when is_reference(ref) -> :ok
    end

    result = fun.(pid)
    Process.exit(pid, :kill)
    result
  end

  defp message_mode_owner(fun), do: owner([], fun)
  defp queue_mode_owner(fun), do: owner([:queue], fun)

  # A mailbox owned by the caller: for the owner-side NIFs. It closes when
  # the measuring process (a fresh one each run) exits.
  defp own_mailbox(fun), do: fun.(Native.mailbox_new(:infinity, :reject, []))

  def run do
    Bench.run("enqueue", scenarios(),
      peer_label: "GenServer.cast",
      native_label: "the part",
      method:
        "Each row times one part of GenNative's cast path alone, beside GenServer.cast/2 to a " <>
          "suspended GenServer (one send/2), in alternating runs with a fresh target each run. " <>
          "A ratio below 1.0: the part alone costs more than GenServer's whole cast."
    )
  end
end

GenNative.Bench.Enqueue.run()
