defmodule GenNative.Examples.Dispatcher do
  @moduledoc """
  A notification dispatcher. Processes subscribe to topics; publishers
  `notify/3` with a cast, so publishing never waits on the dispatcher; every
  live subscriber of the topic receives `{:notification, topic, payload}`.

  The dispatcher monitors each subscriber once, whatever the number of its
  topics, and forgets a subscriber as soon as it goes down.
  """
  use GenNative

  ## Client API

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []), do: GenNative.start_link(__MODULE__, :ok, opts)

  @doc "Subscribes `pid` to `topic`. Subscribing twice is the same as once."
  @spec subscribe(GenServer.server(), term(), pid()) :: :ok
  def subscribe(server, topic, pid \\ self()),
    do: GenNative.call(server, {:subscribe, topic, pid})

  @spec unsubscribe(GenServer.server(), term(), pid()) :: :ok
  def unsubscribe(server, topic, pid \\ self()),
    do: GenNative.call(server, {:unsubscribe, topic, pid})

  @spec notify(GenServer.server(), term(), term()) :: :ok
  def notify(server, topic, payload), do: GenNative.cast(server, {:notify, topic, payload})

  @spec subscribers(GenServer.server(), term()) :: [pid()]
  def subscribers(server, topic), do: GenNative.call(server, {:subscribers, topic})

  @doc "The number of processes the dispatcher currently monitors."
  @spec monitored(GenServer.server()) :: non_neg_integer()
  def monitored(server), do: GenNative.call(server, :monitored)

  ## Callbacks

  @impl true
  def init(:ok), do: {:ok, %{topics: %{}, monitors: %{}}}

  @impl true
  def handle_call({:subscribe, topic, pid}, _from, state) do
    state =
      state
      |> ensure_monitor(pid)
      |> update_in([:topics, Access.key(topic, MapSet.new())], &MapSet.put(&1, pid))

    {:reply, :ok, state}
  end

  def handle_call({:unsubscribe, topic, pid}, _from, state) do
    state = update_in(state, [:topics, Access.key(topic, MapSet.new())], &MapSet.delete(&1, pid))
    {:reply, :ok, maybe_demonitor(state, pid)}
  end

  def handle_call({:subscribers, topic}, _from, state) do
    {:reply, state.topics |> Map.get(topic, MapSet.new()) |> Enum.sort(), state}
  end

  def handle_call(:monitored, _from, state), do: {:reply, map_size(state.monitors), state}

  @impl true
  def handle_cast({:notify, topic, payload}, state) do
    for pid <- Map.get(state.topics, topic, []), do: send(pid, {:notification, topic, payload})
    {:noreply, state}
  end

  @impl true
  def handle_info({:DOWN, ref, :process, pid, _reason}, state) do
    case state.monitors do
      %{^pid => ^ref} ->
        topics = Map.new(state.topics, fn {topic, pids} -> {topic, MapSet.delete(pids, pid)} end)
        {:noreply, %{state | topics: topics, monitors: Map.delete(state.monitors, pid)}}

      _ ->
        {:noreply, state}
    end
  end

  defp ensure_monitor(state, pid) do
    if Map.has_key?(state.monitors, pid),
      do: state,
      else: put_in(state.monitors[pid], Process.monitor(pid))
  end

  defp maybe_demonitor(state, pid) do
    if Enum.any?(state.topics, fn {_topic, pids} -> pid in pids end) do
      state
    else
      {ref, monitors} = Map.pop(state.monitors, pid)
      if ref, do: Process.demonitor(ref, [:flush])
      %{state | monitors: monitors}
    end
  end
end

defmodule GenNative.Examples.DispatcherTest do
  use ExUnit.Case, async: true

  import GenNative.TestHelpers

  alias GenNative.Examples.Dispatcher

  setup do
    %{dispatcher: start_supervised!(Dispatcher)}
  end

  # A subscriber that forwards what it receives to the test process, tagged
  # with its own pid, until told to stop.
  defp spawn_subscriber(dispatcher, topics) do
    test = self()

    pid =
      spawn(fn ->
        receive do
          :subscribe -> :ok
        end

        for topic <- topics, do: Dispatcher.subscribe(dispatcher, topic)
        send(test, {:subscribed, self()})
        forward(test)
      end)

    send(pid, :subscribe)
    assert_receive {:subscribed, ^pid}, 5000
    pid
  end

  defp forward(test) do
    receive do
      :stop -> :ok
      message -> send(test, {self(), message}) && forward(test)
    end
  end

  # The dispatcher learns of a death through its own monitor, which no message
  # of ours can be ordered against, so wait until it has acted on it.

  describe "notify/3" do
    test "reaches every subscriber of the topic and no one else", %{dispatcher: d} do
      a = spawn_subscriber(d, [:orders])
      b = spawn_subscriber(d, [:orders, :invoices])
      c = spawn_subscriber(d, [:invoices])

      assert Dispatcher.notify(d, :orders, %{id: 1}) == :ok

      assert_receive {^a, {:notification, :orders, %{id: 1}}}
      assert_receive {^b, {:notification, :orders, %{id: 1}}}

      # The dispatcher handles one publisher's casts in order, so once the
      # second notification arrived the first one was already dispatched.
      Dispatcher.notify(d, :invoices, :done)
      assert_receive {^c, {:notification, :invoices, :done}}
      refute_received {^c, {:notification, :orders, _}}
    end

    test "keeps one publisher's notifications in order", %{dispatcher: d} do
      a = spawn_subscriber(d, [:ticks])

      for n <- 1..100, do: Dispatcher.notify(d, :ticks, n)

      for n <- 1..100 do
        assert_receive {^a, {:notification, :ticks, ^n}}
      end
    end

    test "to a topic nobody subscribed to is a no-op", %{dispatcher: d} do
      assert Dispatcher.notify(d, :nobody, :hello) == :ok
      assert Dispatcher.subscribers(d, :nobody) == []
    end

    test "returns :ok even when the dispatcher is gone" do
      {:ok, d} = GenNative.start(Dispatcher, :ok)
      :ok = GenNative.stop(d)
      assert Dispatcher.notify(d, :orders, :lost) == :ok
    end
  end

  describe "subscribe/3 and unsubscribe/3" do
    test "subscribing twice delivers once", %{dispatcher: d} do
      :ok = Dispatcher.subscribe(d, :orders)
      :ok = Dispatcher.subscribe(d, :orders)

      Dispatcher.notify(d, :orders, 1)
      Dispatcher.notify(d, :orders, 2)
      assert_receive {:notification, :orders, 2}
      assert_received {:notification, :orders, 1}
      refute_received {:notification, :orders, _}
    end

    test "an unsubscribed process gets nothing more", %{dispatcher: d} do
      :ok = Dispatcher.subscribe(d, :orders)
      :ok = Dispatcher.subscribe(d, :probe)
      :ok = Dispatcher.unsubscribe(d, :orders)

      Dispatcher.notify(d, :orders, :missed)
      Dispatcher.notify(d, :probe, :seen)

      assert_receive {:notification, :probe, :seen}
      refute_received {:notification, :orders, _}
      assert Dispatcher.subscribers(d, :orders) == []
    end

    test "a process is monitored once and demonitored with its last topic", %{dispatcher: d} do
      :ok = Dispatcher.subscribe(d, :a)
      :ok = Dispatcher.subscribe(d, :b)
      assert Dispatcher.monitored(d) == 1

      :ok = Dispatcher.unsubscribe(d, :a)
      assert Dispatcher.monitored(d) == 1

      :ok = Dispatcher.unsubscribe(d, :b)
      assert Dispatcher.monitored(d) == 0
    end
  end

  describe "dead subscribers" do
    test "are removed from every topic they had", %{dispatcher: d} do
      alive = spawn_subscriber(d, [:orders])
      doomed = spawn_subscriber(d, [:orders, :invoices])
      assert Dispatcher.subscribers(d, :orders) == Enum.sort([alive, doomed])

      ref = Process.monitor(doomed)
      Process.exit(doomed, :kill)
      assert_receive {:DOWN, ^ref, :process, ^doomed, :killed}

      wait_until(fn -> Dispatcher.monitored(d) == 1 end)
      assert Dispatcher.subscribers(d, :orders) == [alive]
      assert Dispatcher.subscribers(d, :invoices) == []

      Dispatcher.notify(d, :orders, :after)
      assert_receive {^alive, {:notification, :orders, :after}}
    end

    test "that exit normally are removed too", %{dispatcher: d} do
      sub = spawn_subscriber(d, [:orders])
      ref = Process.monitor(sub)
      send(sub, :stop)
      assert_receive {:DOWN, ^ref, :process, ^sub, :normal}

      wait_until(fn -> Dispatcher.monitored(d) == 0 end)
      assert Dispatcher.subscribers(d, :orders) == []
    end

    test "subscribed while already dead are dropped at once", %{dispatcher: d} do
      dead = spawn(fn -> :ok end)
      ref = Process.monitor(dead)
      assert_receive {:DOWN, ^ref, :process, ^dead, _}

      :ok = Dispatcher.subscribe(d, :orders, dead)

      # Monitoring a dead process puts the :DOWN message in the dispatcher's
      # mailbox before it replies, so it is handled before our next call.
      assert Dispatcher.monitored(d) == 0
      assert Dispatcher.subscribers(d, :orders) == []
    end
  end
end
