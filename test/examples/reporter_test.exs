defmodule GenNative.Examples.Reporter do
  @moduledoc """
  Collects metrics from casts and, every `:interval` milliseconds, sends what
  it gathered since the last report to `:report_to` as
  `{:report, reporter_pid, tick, %{metric => sum}}`.

  The timer is a `Process.send_after/3` re-armed in `handle_info/2`; the first
  one is armed in `handle_continue/2` so `init/1` stays cheap.
  """
  use GenNative

  ## Client API

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    {args, opts} = Keyword.split(opts, [:interval, :report_to])
    GenNative.start_link(__MODULE__, args, opts)
  end

  @spec record(GenServer.server(), term(), number()) :: :ok
  def record(server, metric, value \\ 1), do: GenNative.cast(server, {:record, metric, value})

  @doc "Stops reporting; returns the number of the last report sent."
  @spec pause(GenServer.server()) :: {:ok, non_neg_integer()}
  def pause(server), do: GenNative.call(server, :pause)

  @spec resume(GenServer.server()) :: :ok
  def resume(server), do: GenNative.call(server, :resume)

  @spec stats(GenServer.server()) :: %{tick: non_neg_integer(), pending: map(), paused: boolean()}
  def stats(server), do: GenNative.call(server, :stats)

  ## Callbacks

  @impl true
  def init(args) do
    interval = Keyword.get(args, :interval, 1_000)
    report_to = Keyword.fetch!(args, :report_to)

    if is_integer(interval) and interval > 0 do
      state = %{interval: interval, report_to: report_to, timer: nil, tick: 0, pending: %{}}
      {:ok, state, {:continue, :schedule}}
    else
      {:stop, {:invalid_interval, interval}}
    end
  end

  @impl true
  def handle_continue(:schedule, state), do: {:noreply, schedule(state)}

  @impl true
  def handle_cast({:record, metric, value}, state) do
    {:noreply,
     update_in(state.pending, &Map.update(&1, metric, value, fn sum -> sum + value end))}
  end

  @impl true
  def handle_call(:pause, _from, state) do
    if state.timer, do: Process.cancel_timer(state.timer)
    {:reply, {:ok, state.tick}, %{state | timer: nil}}
  end

  def handle_call(:resume, _from, %{timer: nil} = state), do: {:reply, :ok, schedule(state)}
  def handle_call(:resume, _from, state), do: {:reply, :ok, state}

  def handle_call(:stats, _from, state) do
    {:reply, %{tick: state.tick, pending: state.pending, paused: state.timer == nil}, state}
  end

  @impl true
  # A timer that fired just before pause/1 cancelled it leaves its message
  # behind; a paused reporter ignores it.
  def handle_info(:report, %{timer: nil} = state), do: {:noreply, state}

  def handle_info(:report, state) do
    tick = state.tick + 1
    send(state.report_to, {:report, self(), tick, state.pending})
    {:noreply, schedule(%{state | tick: tick, pending: %{}})}
  end

  defp schedule(state) do
    %{state | timer: Process.send_after(self(), :report, state.interval)}
  end
end

defmodule GenNative.Examples.ReporterTest do
  use ExUnit.Case, async: true

  alias GenNative.Examples.Reporter

  @interval 5

  setup do
    %{reporter: start_supervised!({Reporter, interval: @interval, report_to: self()})}
  end

  # Receives reports, checking that ticks follow each other, until the sums
  # reported add up to `expected`.
  defp collect_until(reporter, expected, tick \\ 0, acc \\ %{}) do
    if acc == expected do
      tick
    else
      next = tick + 1
      assert_receive {:report, ^reporter, ^next, pending}, 1_000
      acc = Map.merge(acc, pending, fn _metric, a, b -> a + b end)
      collect_until(reporter, expected, next, acc)
    end
  end

  describe "periodic reports" do
    test "arrive one after another, numbered from 1", %{reporter: reporter} do
      for tick <- 1..3 do
        assert_receive {:report, ^reporter, ^tick, %{}}, 1_000
      end
    end

    test "carry every recorded value exactly once", %{reporter: reporter} do
      for _ <- 1..10, do: Reporter.record(reporter, :requests)
      Reporter.record(reporter, :errors, 2)
      Reporter.record(reporter, :bytes, 512)
      Reporter.record(reporter, :bytes, 512)

      tick = collect_until(reporter, %{requests: 10, errors: 2, bytes: 1024})

      # Everything was reported, so what is left to report is empty.
      assert %{pending: pending, tick: now} = Reporter.stats(reporter)
      assert pending == %{}
      assert now >= tick
    end

    test "values recorded from many processes all get reported", %{reporter: reporter} do
      1..20
      |> Enum.map(fn _ ->
        Task.async(fn -> for _ <- 1..50, do: Reporter.record(reporter, :hits) end)
      end)
      |> Task.await_many()

      collect_until(reporter, %{hits: 1_000})
    end
  end

  describe "pause/1 and resume/1" do
    test "a paused reporter sends nothing, then resumes with the next tick", %{reporter: reporter} do
      assert_receive {:report, ^reporter, 1, _}, 1_000
      assert {:ok, last} = Reporter.pause(reporter)
      assert %{paused: true, tick: ^last} = Reporter.stats(reporter)

      # A timer message that was already on its way when pause/1 ran.
      send(reporter, :report)
      Reporter.record(reporter, :while_paused)
      assert %{tick: ^last, pending: %{while_paused: 1}} = Reporter.stats(reporter)

      # Drop the reports sent before the pause, then the next is last + 1.
      for tick <- 2..last//1, do: assert_received({:report, ^reporter, ^tick, _})

      assert Reporter.resume(reporter) == :ok
      next = last + 1
      assert_receive {:report, ^reporter, ^next, %{while_paused: 1}}, 1_000
    end

    test "resuming a running reporter changes nothing", %{reporter: reporter} do
      assert Reporter.resume(reporter) == :ok
      assert_receive {:report, ^reporter, 1, _}, 1_000
      assert_receive {:report, ^reporter, 2, _}, 1_000
    end
  end

  describe "start_link/1" do
    test "refuses an interval that is not a positive integer" do
      assert GenNative.start(Reporter, interval: 0, report_to: self()) ==
               {:error, {:invalid_interval, 0}}
    end
  end
end
