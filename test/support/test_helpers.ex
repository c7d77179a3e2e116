defmodule GenNative.TestHelpers do
  @moduledoc false

  @doc """
  `ms` scaled for the run: 5 times longer under bin/sanitize (which sets
  GN_SANITIZE_RUN), where the code runs several times slower, and 20 times
  under bin/valgrind (GN_VALGRIND_RUN), where the port program does. For waits on
  something that must happen; a wait that must see nothing happen keeps
  its own timeout.
  """
  def wait_ms(ms) do
    cond do
      System.get_env("GN_VALGRIND_RUN") -> 20 * ms
      System.get_env("GN_SANITIZE_RUN") -> 5 * ms
      true -> ms
    end
  end

  @doc """
  The reductions the calling process spends running `fun`: the VM's own
  count of work, which a NIF raises with enif_consume_timeslice (not a
  timing).
  """
  def reductions(fun) do
    {:reductions, before} = Process.info(self(), :reductions)
    fun.()
    {:reductions, later} = Process.info(self(), :reductions)
    later - before
  end

  @doc """
  Polls `fun` every `every` ms (default 1) until it returns a truthy
  value; flunks after `timeout` ms. For waiting on something no message of
  ours can be ordered against (a monitor firing inside a server, a
  supervisor restart).
  """
  def wait_until(fun, timeout \\ 5_000, every \\ 1) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_wait_until(fun, deadline, every)
  end

  defp do_wait_until(fun, deadline, every) do
    cond do
      fun.() ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        ExUnit.Assertions.flunk("condition not met in time")

      true ->
        Process.sleep(every)
        do_wait_until(fun, deadline, every)
    end
  end

  ## long_schedule proofs (see test/gen_native/native_test.exs)

  @doc """
  Runs `fun` in a timeslice of its own (`:erlang.yield/0` before and after),
  so that a long_schedule event of the calling process can only come from
  `fun` (or from the OS preempting the scheduler thread).
  """
  def isolated(fun) do
    :erlang.yield()
    result = fun.()
    :erlang.yield()
    result
  end

  @doc "Runs `n` copies of `fun`, each in its own process; waits; returns their pids."
  def run_all(n, fun) do
    tasks = for _ <- 1..n, do: Task.async(fun)
    Enum.each(tasks, &Task.await(&1, :infinity))
    Enum.map(tasks, & &1.pid)
  end

  @doc """
  `:erlang.memory(kind)` once it stops moving: after a garbage collection,
  it moved less than `delta` bytes in 200 ms (or `tries` times 200 ms
  passed: the reaper may still be freeing what earlier tests deleted).
  """
  def settled_memory(kind, delta, tries) do
    :erlang.garbage_collect()
    before = :erlang.memory(kind)
    Process.sleep(200)
    now = :erlang.memory(kind)

    if abs(now - before) < delta or tries == 0,
      do: now,
      else: settled_memory(kind, delta, tries - 1)
  end

  @doc "Puts back the system monitor `:erlang.system_monitor/2` returned."
  def restore_monitor({pid, opts}), do: :erlang.system_monitor(pid, opts)
  def restore_monitor(:undefined), do: :erlang.system_monitor(:undefined)

  @doc """
  Asserts that one of up to `times` runs of `attempt` saw no long schedule:
  `attempt` returns the long schedules it saw (`[]` for none), and runs
  again until one is clean. A NIF that keeps a scheduler past 1 ms does so
  on every attempt; the OS preempting a scheduler thread on a busy machine,
  which long_schedule reports too, does not.

  `outliers: n` counts an attempt as clean with up to `n` long schedules
  of at most 5 ms each, for scenarios of thousands of calls of a few kinds
  (measured here: a 40 us take has 1 to 7 outliers of 1 to 2 ms per 500
  takes, before this code as after it, with nothing else running; the
  host preempts the VM's vCPUs). A NIF that is slow by its own work is slow
  on every call of its kind, and fails the check.
  """
  def assert_one_clean(times, attempt, opts \\ []) do
    outliers = Keyword.get(opts, :outliers, 0)

    clean? = fn found ->
      length(found) <= outliers and Enum.all?(found, fn {_pid, info} -> info[:timeout] <= 5 end)
    end

    attempts =
      Enum.reduce_while(1..times, [], fn _, acc ->
        found = attempt.()
        if clean?.(found), do: {:halt, [found | acc]}, else: {:cont, [found | acc]}
      end)

    ExUnit.Assertions.assert(
      clean?.(hd(attempts)),
      "long schedules in each of #{times} attempts: " <>
        inspect(Enum.reverse(attempts), pretty: true, limit: 50)
    )
  end

  @doc """
  Runs `scenario` with long_schedule monitoring (1 ms) on; `scenario`
  returns the pids to watch. Returns their `{pid, info}` long schedules.
  """
  def watch_long_schedules(scenario) do
    previous = :erlang.system_monitor(self(), [{:long_schedule, 1}])

    watched =
      try do
        scenario.()
      after
        restore_monitor(previous)
      end

    for {pid, info} <- collect_long_schedules([]), pid in watched, do: {pid, info}
  end

  @doc "The `{pid, info}` of every long_schedule message in the mailbox, newest first."
  def collect_long_schedules(acc \\ []) do
    receive do
      {:monitor, pid, :long_schedule, info} -> collect_long_schedules([{pid, info} | acc])
    after
      0 -> acc
    end
  end
end
