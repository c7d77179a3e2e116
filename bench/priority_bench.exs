# The priority suite: one call made behind a backlog of 100,000 queued casts.
#
# Each repetition suspends the server (:sys.suspend/1), queues the casts,
# resumes it (:sys.resume/1 returns once it runs again), then times one call
# from issue to reply: on GenNative with `priority: :high`, on GenServer a
# plain call, which waits for the whole backlog. Untimed, a normal call then
# waits for the rest of the backlog, and the counter is checked: every cast
# must have been handled, exactly once.
#
# An A/A row runs the ~0 us/cast scenario with a plain GenServer call on
# both sides (the noise floor), and the latencies of every timed call are
# drawn as cumulative distributions in priority-latency-cdf.svg.
#
#     mix gen_native.bench priority
#     GN_BENCH_QUICK=1 bin/bench priority

defmodule GenNative.Bench.Priority.Work do
  @moduledoc false
  # Busy-waits `ns` nanoseconds (in native time units), without sleeping.
  def spin(0), do: :ok

  def spin(ns) do
    spin_until(:erlang.monotonic_time() + ns)
  end

  defp spin_until(deadline) do
    if :erlang.monotonic_time() < deadline, do: spin_until(deadline), else: :ok
  end

  def native_ns(us), do: :erlang.convert_time_unit(us * 1000, :nanosecond, :native)
end

defmodule GenNative.Bench.Priority.PeerServer do
  @moduledoc false
  use GenServer
  alias GenNative.Bench.Priority.Work

  @impl true
  def init(work), do: {:ok, {0, work}}

  # The reply carries how many casts were handled before the call.
  @impl true
  def handle_call(:count, _from, {count, _} = state), do: {:reply, count, state}

  @impl true
  def handle_cast(:work, {count, work}) do
    Work.spin(work)
    {:noreply, {count + 1, work}}
  end
end

defmodule GenNative.Bench.Priority.NativeServer do
  @moduledoc false
  use GenNative
  alias GenNative.Bench.Priority.Work

  @impl true
  def init(work), do: {:ok, {0, work}}

  @impl true
  def handle_call(:count, _from, {count, _} = state), do: {:reply, count, state}

  @impl true
  def handle_cast(:work, {count, work}) do
    Work.spin(work)
    {:noreply, {count + 1, work}}
  end
end

defmodule GenNative.Bench.Priority do
  @moduledoc false
  alias GenNative.Bench.Priority.{NativeServer, PeerServer, Work}

  @backlog 100_000

  # How many casts each side had handled before its timed call was
  # answered, per scenario: {scenario, side} => [count]
  @ahead :gn_bench_priority_ahead

  def scenarios do
    :ets.new(@ahead, [:named_table, :public, :bag])
    scenarios = Enum.map(specs(), fn {name, work_us, opts} -> scenario(name, work_us, opts) end)
    [first | _] = scenarios
    scenarios ++ [GenNative.Bench.a_a(first, "a plain GenServer call in both columns")]
  end

  # The cumulative distribution of each side's timed calls, per scenario.
  def plot(rows) do
    series =
      for %{samples: samples} = row <- rows,
          not String.starts_with?(row.scenario, "A/A"),
          {side, label} <- [peer: "GenServer call", native: "GenNative call, priority: :high"] do
        %{
          label: "#{label}, #{String.replace(row.scenario, "call behind 100k casts, ", "")}",
          samples: Map.fetch!(samples, side)
        }
      end

    GenNative.Bench.write_cdf(
      "priority-latency-cdf.svg",
      "A call behind 100,000 queued casts: latency distribution",
      "latency from issue to reply (us, log scale)",
      "fraction of calls answered within",
      series
    )
  end

  defp specs do
    quick = GenNative.Bench.quick?()

    [
      # 20 timed calls per side (4 quick): 5 per run (2 quick), after one
      # warm-up run.
      {"call behind 100k casts, ~0 us/cast", 0,
       size: if(quick, do: 2, else: 5), runs: if(quick, do: 2, else: 4), warmup: 2},
      # The backlog now takes about a second to handle: 10 timed calls per
      # side (2 quick) after one warm-up call.
      {"call behind 100k casts, 10 us/cast", 10,
       size: if(quick, do: 1, else: 5), runs: 2, warmup: 1}
    ]
  end

  def notes do
    rows =
      for {name, _, _} <- specs() do
        [name, ahead(name, :peer), ahead(name, :native)]
      end

    header = [
      "scenario",
      "GenServer: casts handled before the reply",
      "GenNative: casts handled before the reply"
    ]

    """
    The server is suspended while the #{GenNative.Bench.thousands(@backlog)} casts are \
    queued and resumed right before the timed call. GenServer: a plain call; GenNative: \
    `GenNative.call(server, request, :infinity, priority: :high)`. Casts handled before \
    the reply, median [min, max] over the warm-up and timed calls:

    #{GenNative.Bench.table([header | rows], [:left, :right, :right])}
    """
  end

  defp ahead(name, side) do
    counts = @ahead |> :ets.lookup({name, side}) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
    n = length(counts)
    "#{Enum.at(counts, div(n, 2))} [#{List.first(counts)}, #{List.last(counts)}]"
  end

  defp scenario(name, work_us, opts) do
    work = Work.native_ns(work_us)

    Map.merge(
      %{
        name: name,
        unit: :latency_us,
        timing: :self,
        setup: fn -> setup(work) end,
        teardown: &teardown/1,
        peer: fn %{peer: pid} ->
          behind_backlog(name, :peer, GenServer, pid, fn ->
            GenServer.call(pid, :count, :infinity)
          end)
        end,
        native: fn %{native: pid} ->
          behind_backlog(name, :native, GenNative, pid, fn ->
            GenNative.call(pid, :count, :infinity, priority: :high)
          end)
        end
      },
      Map.new(opts)
    )
  end

  # Returns the time from issuing `call` to its reply, in native units.
  defp behind_backlog(name, side, mod, pid, call) do
    before = mod.call(pid, :count, :infinity)
    :ok = :sys.suspend(pid)
    fill(mod, pid, @backlog)
    :ok = :sys.resume(pid)

    t0 = :erlang.monotonic_time()
    count = call.()
    t1 = :erlang.monotonic_time()

    :ets.insert(@ahead, {{name, side}, count - before})

    # Untimed: wait for the rest of the backlog, and check it was all handled.
    handled = mod.call(pid, :count, :infinity) - before

    if handled != @backlog do
      raise "#{inspect(mod)} server handled #{handled} casts, expected #{@backlog}"
    end

    t1 - t0
  end

  defp fill(_mod, _pid, 0), do: :ok

  defp fill(mod, pid, n) do
    :ok = mod.cast(pid, :work)
    fill(mod, pid, n - 1)
  end

  defp setup(work) do
    {:ok, peer} = GenServer.start_link(PeerServer, work)
    {:ok, native} = GenNative.start_link(NativeServer, work)
    %{peer: peer, native: native}
  end

  defp teardown(%{peer: peer, native: native}) do
    :ok = GenServer.stop(peer)
    :ok = GenNative.stop(native)
  end
end

GenNative.Bench.run("priority", GenNative.Bench.Priority.scenarios(),
  keep_samples: true,
  method:
    "Each side: one warm-up run, then the stated number of timed calls in runs " <>
      "alternating with the other side; each call is timed by itself, from issue to reply.",
  notes: &GenNative.Bench.Priority.notes/0
)
|> GenNative.Bench.Priority.plot()
