defmodule GenNative.Examples.Counter do
  @moduledoc """
  The smallest useful server: an integer that clients increment with casts
  and read with calls.
  """
  use GenNative

  ## Client API

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []) do
    {initial, opts} = Keyword.pop(opts, :initial, 0)
    GenNative.start_link(__MODULE__, initial, opts)
  end

  @spec increment(GenServer.server(), integer()) :: :ok
  def increment(server, by \\ 1), do: GenNative.cast(server, {:add, by})

  @spec decrement(GenServer.server(), integer()) :: :ok
  def decrement(server, by \\ 1), do: GenNative.cast(server, {:add, -by})

  @spec value(GenServer.server()) :: integer()
  def value(server), do: GenNative.call(server, :value)

  @doc "Sets the counter back to zero and returns the value it had."
  @spec reset(GenServer.server()) :: integer()
  def reset(server), do: GenNative.call(server, :reset)

  ## Callbacks

  @impl true
  def init(initial) when is_integer(initial), do: {:ok, initial}
  def init(other), do: {:stop, {:invalid_initial, other}}

  @impl true
  def handle_cast({:add, by}, count), do: {:noreply, count + by}

  @impl true
  def handle_call(:value, _from, count), do: {:reply, count, count}
  def handle_call(:reset, _from, count), do: {:reply, count, 0}
end

defmodule GenNative.Examples.CounterTest do
  use ExUnit.Case, async: true

  alias GenNative.Examples.Counter

  describe "start_link/1" do
    test "starts at zero by default" do
      {:ok, pid} = Counter.start_link()
      assert Counter.value(pid) == 0
    end

    test "starts at the given initial value" do
      {:ok, pid} = Counter.start_link(initial: 41)
      assert Counter.value(pid) == 41
    end

    test "registers the given name", %{test: test} do
      name = :"#{test}"
      {:ok, pid} = Counter.start_link(name: name)
      assert GenNative.whereis(name) == pid
      Counter.increment(name)
      assert Counter.value(name) == 1
      assert {:error, {:already_started, ^pid}} = Counter.start_link(name: name)
    end

    test "refuses an initial value that is not an integer" do
      assert GenNative.start(Counter, :ten) == {:error, {:invalid_initial, :ten}}
    end

    test "runs under a supervisor through the injected child_spec/1" do
      assert Counter.child_spec(initial: 3) == %{
               id: Counter,
               start: {Counter, :start_link, [[initial: 3]]}
             }

      pid = start_supervised!({Counter, initial: 3})
      assert Counter.value(pid) == 3
    end
  end

  describe "increment/2 and decrement/2" do
    test "casts are applied in the order one client sent them" do
      {:ok, pid} = Counter.start_link()

      assert Counter.increment(pid) == :ok
      assert Counter.increment(pid, 10) == :ok
      assert Counter.decrement(pid, 4) == :ok

      assert Counter.value(pid) == 7
    end

    test "a cast to a dead counter still returns :ok" do
      {:ok, pid} = GenNative.start(Counter, 0)
      :ok = GenNative.stop(pid)
      assert Counter.increment(pid) == :ok
    end

    test "no update is lost under many concurrent clients" do
      {:ok, pid} = Counter.start_link()

      1..50
      |> Enum.map(fn _ ->
        Task.async(fn ->
          for _ <- 1..200, do: Counter.increment(pid)
          # A call after the casts returns only once this client's casts are applied.
          Counter.value(pid)
        end)
      end)
      |> Task.await_many()

      assert Counter.value(pid) == 50 * 200
    end
  end

  describe "reset/1" do
    test "returns the old value and starts again from zero" do
      {:ok, pid} = Counter.start_link(initial: 5)
      Counter.increment(pid, 2)

      assert Counter.reset(pid) == 7
      assert Counter.value(pid) == 0
    end
  end

  describe ":sys" do
    test "sees and replaces the counter itself" do
      {:ok, pid} = Counter.start_link(initial: 9)
      assert :sys.get_state(pid) == 9

      :sys.replace_state(pid, &(&1 * 2))
      assert Counter.value(pid) == 18
    end

    test "sees every cast the same client sent before" do
      {:ok, pid} = Counter.start_link()

      for _ <- 1..1_000, do: Counter.increment(pid)

      # A system message is handled after the casts sent before it, which is
      # what makes :sys.get_state/1 a sync point in tests.
      assert :sys.get_state(pid) == 1_000
    end
  end

  describe "value/1" do
    test "exits with :noproc once the counter has stopped" do
      {:ok, pid} = Counter.start_link()
      :ok = GenNative.stop(pid)

      assert catch_exit(Counter.value(pid)) ==
               {:noproc, {GenNative, :call, [pid, :value, 5000]}}
    end
  end
end
