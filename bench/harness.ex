defmodule GenNative.Bench do
  @moduledoc """
  A small side-by-side benchmark harness for GenNative.

  It lives in `bench/` and is loaded with `Code.require_file/1` by
  `mix gen_native.bench`; it is not compiled into the package.

  A suite is a `bench/<suite>_bench.exs` file that defines what it measures and
  calls `run/3` with a list of scenarios. Every scenario measures the peer
  (`GenServer`, or whatever the suite compares against) and GenNative in the
  same run: after warm-up, the measured runs alternate between the two sides,
  so background noise on a shared machine hits both alike. Each row reports the
  ratio GenNative/peer oriented so that a value above 1.0 means GenNative is
  better (lower latency, higher throughput).

  ## Scenarios

  A scenario is a map:

    * `:name` - the row label, e.g. `"call throughput, 8 callers"`
    * `:unit` - `:latency_us` or `:ops_per_s`
    * `:setup` - `(-> ctx)`, optional; runs once before the scenario, its
      result is passed to `:peer`, `:native` and `:teardown`
    * `:peer` and `:native` - the measured functions, see below
    * `:teardown` - `(ctx -> any)`, optional; runs once after the scenario
    * `:timing` - `:harness` (default) or `:self`, optional, for
      `:latency_us` only: with `:self` the function times its operation
      itself and returns the elapsed time in native units, for operations
      that need untimed preparation (e.g. filling a mailbox first)
    * `:size` - optional: a fixed number of operations per measured run,
      instead of calibrating to `run_ms`; the warm-up is then one run of
      `:warmup` operations (default `:size`)
    * `:runs` - optional: measured runs per side for this scenario,
      overriding the suite's `:runs`
    * `:alt_peer` and `:alt_peer_name` - optional, for `:ops_per_s`: a
      second peer, measured in the same alternating runs; the scenario then
      gives three rows: against `:peer` (named by `:peer_name`, default the
      peer label), against `:alt_peer`, and against the better of the two
      in each run (GenServer's default and `message_queue_data: :off_heap`
      in the mailbox and batch suites)
    * `:native_os_pids` - optional, `(ctx -> [os_pid])`: OS processes whose
      CPU time belongs to GenNative's side (the port program)
    * `:peer_os_pids` - optional, `(ctx -> [os_pid])`: the same for the
      peer's side, where the peer runs outside the VM too (a port program
      without replication, Mnesia on `:peer` nodes)
    * `:ops_label` - optional, for `:ops_per_s`: what is counted (default
      `"ops/s"`, e.g. `"acks/s"`)

  For `:latency_us` the functions take `ctx` and perform **one** operation; the
  harness times each call separately and reports the median and p99 over all
  measured runs.

  For `:ops_per_s` the functions take `ctx` and a size `n` chosen by the
  harness (calibrated so that a run lasts about `run_ms`) and return either the
  number of operations done, in which case the whole call is timed, or
  `{ops, elapsed}` with `elapsed` in native time units, for functions that time
  only part of their work (see `concurrently/2`). The harness reports the
  median over runs.

  ## Spread, verdict, CPU per operation

  Each row carries, besides the ratio of the medians:

    * the ratio spread: the smallest and largest ratio of paired runs;
    * a verdict computed from the spread (`verdict/3`): a side is better
      only when the whole spread is on its side of 1.0, otherwise "no
      clear difference";
    * CPU time per operation of each side (`cpu_ns/1`: user + system time
      of every thread of the VM from `/proc/<pid>/task/*/schedstat`, plus
      `:native_os_pids` or `:peer_os_pids`), the median over runs, and its ratio peer/native
      with its own spread.

  ## Spread of the ratio

  The column "ratio spread (min..max)" shows how much the ratio moved
  between paired runs: run `i` of the peer against run `i` of GenNative (the
  two are measured back to back), each ratio oriented as the row's, then the
  smallest and largest of them. For a latency row, each run's own median or
  p99 is used. Custom rows built with `paired_row/5`, or given a spread
  with `with_spread/3`, have one too; other custom rows show "n/a" there.
  An A/A scenario (the same thing on both sides, see `a_a/2`) shows the
  noise floor: a ratio inside its spread is no evidence of a difference.

  Every measured run executes in a fresh process, so mailboxes and heaps do not
  carry over between runs or sides.

  ## Options

    * `:peer_label` - the peer's column header (default `"GenServer"`)
    * `:native_label` - GenNative's column header (default `"GenNative"`)
    * `:runs` - measured runs per side (default 10, 4 with `GN_BENCH_QUICK=1`;
      even, so that each side runs first in as many pairs)
    * `:run_ms` - target duration of one run (default 400, 80 with
      `GN_BENCH_QUICK=1`)
    * `:results_dir` - where `<suite>.md` is written (default
      `$GN_BENCH_RESULTS_DIR`, or `bench/results`)
    * `:method` - replaces the sentence describing how each side was run
    * `:notes` - text, or a function returning text once the scenarios have
      run (of no argument, or of one: the rows), printed after the table
    * `:keep_samples` - keep each latency scenario's samples (microseconds)
      in its median row, as `row.samples.peer` and `row.samples.native`,
      for plots (default false)

  ## Custom scenarios

  A scenario `%{name: name, custom: fun}` runs `fun.()` once, which measures
  both sides itself and returns its rows, each built with `row/5`, in the
  same table: for measurements that are neither a per-operation latency nor
  a throughput (a maximum latency, bytes per entry), or whose two sides need
  different sample counts. `stats/1` summarises latency samples the way the
  harness does; `paired_row/5` and `with_spread/3` give a row the spread
  of its paired runs, where the scenario alternates its sides.

  ## Plots

  `write_svg/2` writes a plot made by `GenNative.Bench.SVG` (`bench/svg.ex`)
  next to the tables; with `keep_samples: true` the rows carry the latency
  samples a cumulative distribution needs.

  ## Suites that do not fit `run/3`

  A suite whose measurement is not a per-operation latency or a throughput
  (e.g. a single long overload run reporting memory and counts) can build its
  own rows and use `table/2`, `report_header/2` and `publish/2` for the same
  layout, machine description and results file.
  """

  @type ctx :: term()
  @type unit :: :latency_us | :ops_per_s | :bytes
  @type scenario :: %{
          required(:name) => String.t(),
          required(:unit) => unit(),
          required(:peer) => function(),
          required(:native) => function(),
          optional(:setup) => (() -> ctx()),
          optional(:teardown) => (ctx() -> term()),
          optional(:timing) => :harness | :self,
          optional(:size) => pos_integer(),
          optional(:warmup) => pos_integer(),
          optional(:runs) => pos_integer(),
          optional(:alt_peer) => function(),
          optional(:alt_peer_name) => String.t(),
          optional(:peer_name) => String.t(),
          optional(:native_os_pids) => (ctx() -> [non_neg_integer()]),
          optional(:peer_os_pids) => (ctx() -> [non_neg_integer()]),
          optional(:ops_label) => String.t()
        }
  @type row :: %{
          scenario: String.t(),
          metric: String.t(),
          unit: unit(),
          peer: float() | nil,
          native: float(),
          ratio: float() | nil,
          spread: {float(), float()} | nil,
          cpu:
            %{
              peer: float(),
              native: float(),
              ratio: float() | nil,
              spread: {float(), float()} | nil
            }
            | nil
        }

  # Latency samples are kept in a list for the whole run; a large initial heap
  # keeps garbage collections out of the timed calls.
  @latency_heap_words 1_000_000
  @max_size 1_000_000_000

  @doc """
  Runs `scenarios` as suite `suite`, prints the result table to stdout, writes
  it to `<results_dir>/<suite>.md` and returns the rows.
  """
  @spec run(String.t(), [scenario()], keyword()) :: [row()]
  def run(suite, scenarios, opts \\ []) do
    opts = Keyword.merge(defaults(), opts)
    started = :erlang.monotonic_time()

    rows = Enum.flat_map(scenarios, &run_scenario(suite, &1, opts))

    wall_s = seconds(:erlang.monotonic_time() - started)
    text = report(suite, rows, wall_s, opts)
    publish(suite, text, opts)

    rows
  end

  @doc """
  Prints `text` to stdout and writes it to `<results_dir>/<suite>.md`
  (`results_dir` as for `run/3`).
  """
  @spec publish(String.t(), String.t(), keyword()) :: :ok
  def publish(suite, text, opts \\ []) do
    IO.puts(text)
    dir = Keyword.get(opts, :results_dir, default_results_dir())
    File.mkdir_p!(dir)
    path = Path.join(dir, "#{suite}.md")
    File.write!(path, text)
    IO.puts(:stderr, "#{suite}: table written to #{Path.relative_to_cwd(path)}")
  end

  @doc """
  The heading and machine line every table starts with, for a suite that
  builds its own table.
  """
  @spec report_header(String.t()) :: String.t()
  def report_header(suite) do
    mode = if quick?(), do: " (GN_BENCH_QUICK=1)", else: ""

    """
    ## Benchmark: #{suite}#{mode}

    Machine: #{machine()}; MIX_ENV=#{mix_env()}.
    """
  end

  @doc """
  An A/A copy of `scenario`: the peer's function in both columns, named
  `"A/A: <name>"` (`label` replaces the part in parentheses). Its ratio
  spread is the noise floor of the suite's rows on this machine: a ratio
  inside it is no evidence of a difference. GenNative's extra OS processes
  are dropped (the peer's, `:peer_os_pids`, count on both sides), as is any
  `:alt_peer`.
  """
  @spec a_a(scenario(), String.t()) :: scenario()
  def a_a(scenario, label \\ "the peer in both columns") do
    scenario
    |> Map.drop([:alt_peer, :alt_peer_name, :native_os_pids])
    |> Map.merge(%{name: "A/A: #{scenario.name} (#{label})", native: scenario.peer})
    |> then(fn s ->
      case scenario[:peer_os_pids] do
        nil -> s
        pids -> Map.put(s, :native_os_pids, pids)
      end
    end)
  end

  @doc """
  Writes `svg` (see `GenNative.Bench.SVG`) to `<results_dir>/<file>`,
  results_dir as for `run/3`, and returns the path.
  """
  @spec write_svg(String.t(), iodata()) :: String.t()
  def write_svg(file, svg) do
    dir = default_results_dir()
    File.mkdir_p!(dir)
    path = Path.join(dir, file)
    File.write!(path, svg)
    IO.puts(:stderr, "plot written to #{Path.relative_to_cwd(path)}")
    path
  end

  @doc """
  Writes a latency distribution plot to `<results_dir>/<file>`: one step
  curve per `%{label: label, samples: latencies}` in `series`, on a log
  scale, with the machine as the note. Returns the path.
  """
  @spec write_cdf(String.t(), String.t(), String.t(), String.t(), [map()]) :: String.t()
  def write_cdf(file, title, x_label, y_label, series) do
    svg =
      GenNative.Bench.SVG.plot(%{
        title: title,
        x_label: x_label,
        y_label: y_label,
        x_scale: :log,
        series:
          for s <- series do
            %{label: s.label, points: GenNative.Bench.SVG.cdf(s.samples), style: :step}
          end,
        note: machine()
      })

    write_svg(file, svg)
  end

  @doc """
  Runs `fun.(i)` in `n` new processes (`i` in `1..n`) started together, and
  returns the elapsed time in native units from the moment they are released to
  the moment the last one finishes. Process creation is not timed.

  Raises if a worker exits abnormally.
  """
  @spec concurrently(pos_integer(), (pos_integer() -> term())) :: integer()
  def concurrently(n, fun) when is_integer(n) and n > 0 and is_function(fun, 1) do
    parent = self()
    go = make_ref()

    workers =
      for i <- 1..n do
        spawn_monitor(fn ->
          send(parent, {go, :ready})

          receive do
            ^go -> :ok
          end

          fun.(i)
          send(parent, {go, :done})
        end)
      end

    await(go, :ready, n)
    t0 = :erlang.monotonic_time()
    Enum.each(workers, fn {pid, _} -> send(pid, go) end)
    await(go, :done, n)
    elapsed = :erlang.monotonic_time() - t0

    Enum.each(workers, fn {_, ref} -> Process.demonitor(ref, [:flush]) end)
    elapsed
  end

  @doc """
  Runs `timed` (which returns the elapsed time) and checks, outside the
  timed part, that the counter server `pid` (reading its count with
  `mod.call(pid, :get)`) handled exactly `ops` requests: a lost or
  duplicated request fails the benchmark rather than flatter a side.
  Returns `{ops, elapsed}`.
  """
  def checked(mod, pid, ops, timed) do
    before = mod.call(pid, :get)
    elapsed = timed.()
    handled = mod.call(pid, :get) - before

    if handled != ops do
      raise "#{inspect(mod)} server handled #{handled} requests, expected #{ops}"
    end

    {ops, elapsed}
  end

  @doc "Calls `fun` `n` times."
  def repeat(0, _fun), do: :ok

  def repeat(n, fun) do
    fun.()
    repeat(n - 1, fun)
  end

  @doc """
  Returns `true` when `GN_BENCH_QUICK` asks for a short run.
  """
  @spec quick?() :: boolean()
  def quick?, do: System.get_env("GN_BENCH_QUICK", "") not in ["", "0", "false"]

  @doc """
  Describes the machine: CPU model, cores, OTP and Elixir versions.
  """
  @spec machine() :: String.t()
  def machine do
    cores = :erlang.system_info(:logical_processors)
    online = :erlang.system_info(:schedulers_online)
    otp = :erlang.system_info(:otp_release)
    erts = :erlang.system_info(:version)
    {os_family, os_name} = :os.type()
    arch = :erlang.system_info(:system_architecture)

    "#{cpu_model()}, #{cores} logical cores (#{online} schedulers online), " <>
      "#{os_family}/#{os_name} #{arch}; Erlang/OTP #{otp} (erts #{erts}), " <>
      "Elixir #{System.version()}"
  end

  ## Scenario

  defp defaults do
    quick = quick?()

    [
      peer_label: "GenServer",
      native_label: "GenNative",
      runs: if(quick, do: 4, else: 10),
      run_ms: if(quick, do: 80, else: 400),
      results_dir: default_results_dir()
    ]
  end

  defp default_results_dir do
    case System.get_env("GN_BENCH_RESULTS_DIR", "") do
      "" -> "bench/results"
      dir -> dir
    end
  end

  defp run_scenario(suite, %{name: name, custom: fun}, _opts) when is_function(fun, 0) do
    IO.write(:stderr, "#{suite}: #{name} ...")
    rows = fun.()

    unless is_list(rows) and Enum.all?(rows, &match?(%{scenario: _, metric: _, unit: _}, &1)) do
      raise "custom scenario #{inspect(name)} must return a list of rows built with row/5"
    end

    IO.puts(:stderr, " done")
    rows
  end

  defp run_scenario(suite, %{name: name, unit: unit} = scenario, opts)
       when unit in [:latency_us, :ops_per_s] do
    check_arity!(scenario, :peer)
    check_arity!(scenario, :native)
    if Map.has_key?(scenario, :alt_peer), do: check_arity!(scenario, :alt_peer)
    check_options!(scenario)
    IO.write(:stderr, "#{suite}: #{name} ...")

    ctx = if setup = scenario[:setup], do: setup.(), else: nil
    unit = if scenario[:timing] == :self, do: :self_timed_us, else: unit

    try do
      sides =
        [peer: scenario.peer, alt_peer: scenario[:alt_peer], native: scenario.native]
        |> Enum.reject(fn {_, fun} -> fun == nil end)

      # OS processes whose CPU time counts for a side (GenNative's port
      # program): read before and after each of that side's runs.
      os_pids = %{
        native: os_pids(scenario[:native_os_pids], ctx),
        peer: os_pids(scenario[:peer_os_pids], ctx),
        alt_peer: []
      }

      target = :erlang.convert_time_unit(Keyword.fetch!(opts, :run_ms), :millisecond, :native)

      {size, warmup} =
        case scenario[:size] do
          nil ->
            # Calibrate every side and use the smallest size for all: the
            # runs then do the same work, and a slow side cannot stretch the
            # suite.
            size =
              sides
              |> Enum.map(fn {_, fun} -> calibrate(unit, fun, ctx, target) end)
              |> Enum.min()

            {size, size}

          size ->
            {size, Map.get(scenario, :warmup, size)}
        end

      # One discarded run per side.
      Enum.each(sides, fn {_, fun} -> measure(unit, fun, ctx, warmup) end)

      n_runs = Map.get(scenario, :runs, Keyword.fetch!(opts, :runs))
      order = Keyword.keys(sides)

      runs =
        for i <- 1..n_runs do
          # Alternate the order, so that neither side always runs first.
          order = if rem(i, 2) == 1, do: order, else: Enum.reverse(order)

          Map.new(order, fn side ->
            {side, measure(unit, Keyword.fetch!(sides, side), ctx, size, os_pids[side])}
          end)
        end

      IO.puts(:stderr, " done")
      samples = if scenario[:size], do: size * n_runs

      opts =
        opts
        |> Keyword.put(:runs, n_runs)
        |> Keyword.put(:ops_label, Map.get(scenario, :ops_label, "ops/s"))
        |> Keyword.put(:cpu, unit != :self_timed_us)

      unit = if unit == :self_timed_us, do: :latency_us, else: unit
      side_runs = fn side -> Enum.map(runs, & &1[side]) end

      case scenario[:alt_peer] do
        nil ->
          rows(name, unit, side_runs.(:peer), side_runs.(:native), opts, samples)

        _ ->
          alt_name = Map.fetch!(scenario, :alt_peer_name)
          peer_name = Map.get(scenario, :peer_name, Keyword.fetch!(opts, :peer_label))

          rows(
            "#{name} (peer: #{peer_name})",
            unit,
            side_runs.(:peer),
            side_runs.(:native),
            opts,
            samples
          ) ++
            rows(
              "#{name} (peer: #{alt_name})",
              unit,
              side_runs.(:alt_peer),
              side_runs.(:native),
              opts,
              samples
            ) ++
            better_peer_rows(name, unit, runs, {peer_name, alt_name}, opts, samples)
      end
    after
      if teardown = scenario[:teardown], do: teardown.(ctx)
    end
  end

  defp run_scenario(_suite, scenario, _opts) do
    raise ArgumentError,
          "a scenario needs :name and :unit (:latency_us or :ops_per_s), got: " <>
            inspect(scenario)
  end

  defp check_options!(scenario) do
    if Map.has_key?(scenario, :alt_peer) and
         not (scenario.unit == :ops_per_s and is_binary(scenario[:alt_peer_name])) do
      raise ArgumentError,
            "scenario #{inspect(scenario.name)}: :alt_peer is for unit :ops_per_s and " <>
              "needs :alt_peer_name"
    end

    unless scenario[:timing] in [nil, :harness, :self] and
             (scenario[:timing] != :self or scenario.unit == :latency_us) do
      raise ArgumentError,
            "scenario #{inspect(scenario.name)}: :timing must be :harness or :self, " <>
              "and :self is for unit :latency_us only"
    end

    for key <- [:size, :warmup, :runs], Map.has_key?(scenario, key) do
      unless is_integer(scenario[key]) and scenario[key] > 0 do
        raise ArgumentError,
              "scenario #{inspect(scenario.name)}: #{inspect(key)} must be a positive integer"
      end
    end

    :ok
  end

  defp check_arity!(%{unit: unit} = scenario, side) do
    arity = if unit == :latency_us, do: 1, else: 2

    unless is_function(scenario[side], arity) do
      raise ArgumentError,
            "scenario #{inspect(scenario.name)}: #{inspect(side)} must be a function " <>
              "of arity #{arity} for unit #{inspect(unit)}"
    end
  end

  # Doubles the size until a run takes a quarter of the target, then scales it
  # to the target.
  defp calibrate(unit, fun, ctx, target), do: calibrate(unit, fun, ctx, target, 1)

  defp calibrate(unit, fun, ctx, target, size) do
    {_ops, elapsed, _samples} = measure_run(unit, fun, ctx, size)

    cond do
      size >= @max_size -> size
      elapsed * 4 < target -> calibrate(unit, fun, ctx, target, size * 2)
      true -> max(1, min(@max_size, div(size * target, max(elapsed, 1))))
    end
  end

  # Runs `size` operations from a fresh process; returns
  # %{ops: n, elapsed: native units, samples: latencies or nil,
  #   cpu_ns: CPU time used during the run}.
  #
  # CPU time is that of the whole VM (every thread, user and system time,
  # see cpu_ns/1) plus that of `os_pids` (GenNative's port program), read
  # right before and after the run's process.
  defp measure(unit, fun, ctx, size, os_pids \\ []) do
    # The reads of other processes' CPU stay outside the VM's window: they
    # cost VM CPU time.
    os0 = os_cpu_ns(os_pids)
    vm0 = vm_cpu_ns()
    {ops, elapsed, samples} = measure_run(unit, fun, ctx, size)
    vm1 = vm_cpu_ns()
    os1 = os_cpu_ns(os_pids)
    %{ops: ops, elapsed: elapsed, samples: samples, cpu_ns: vm1 - vm0 + (os1 - os0)}
  end

  defp measure_run(:latency_us, fun, ctx, size) do
    isolated([min_heap_size: @latency_heap_words], fn ->
      samples = time_each(fun, ctx, size, [])
      {size, Enum.sum(samples), samples}
    end)
  end

  defp measure_run(:self_timed_us, fun, ctx, size) do
    isolated([min_heap_size: @latency_heap_words], fn ->
      samples = self_timed(fun, ctx, size, [])
      {size, Enum.sum(samples), samples}
    end)
  end

  defp measure_run(:ops_per_s, fun, ctx, size) do
    isolated([], fn ->
      t0 = :erlang.monotonic_time()
      result = fun.(ctx, size)
      t1 = :erlang.monotonic_time()

      case result do
        {ops, elapsed} when is_integer(ops) and is_integer(elapsed) ->
          {ops, elapsed, nil}

        ops when is_integer(ops) ->
          {ops, t1 - t0, nil}

        other ->
          raise "an :ops_per_s function must return ops or {ops, elapsed}, got #{inspect(other)}"
      end
    end)
  end

  defp os_pids(nil, _ctx), do: []

  defp os_pids(fun, ctx) when is_function(fun, 1) do
    case fun.(ctx) do
      pids when is_list(pids) -> Enum.filter(pids, &is_integer/1)
      pid when is_integer(pid) -> [pid]
      nil -> []
    end
  end

  @doc """
  CPU time used so far, in nanoseconds: the VM's (every thread of the
  process, schedulers, dirty schedulers, NIF threads) plus that of each OS
  process in `os_pids`, user and system time together.

  Read from `/proc/<pid>/task/*/schedstat` (the time each thread spent on a
  CPU, in nanoseconds), through files kept open between calls (a read of
  the VM's ~20 threads costs about 0.4 ms). Where that is missing, the VM
  falls back to `:erlang.statistics(:runtime)` (user time only, in
  milliseconds) and an OS process to `/proc/<pid>/task/*/stat` utime +
  stime (clock ticks). An OS process that has gone counts as 0.
  """
  @spec cpu_ns([non_neg_integer()]) :: non_neg_integer()
  def cpu_ns(os_pids \\ []) do
    vm_cpu_ns() + os_cpu_ns(os_pids)
  end

  @doc """
  Where `cpu_ns/1` reads the VM's CPU time: `:schedstat` or `:runtime`.
  """
  @spec cpu_source() :: :schedstat | :runtime
  def cpu_source do
    case tasks_cpu_ns(System.pid()) do
      {:ok, _} -> :schedstat
      :error -> :runtime
    end
  end

  defp vm_cpu_ns do
    case tasks_cpu_ns(System.pid()) do
      {:ok, ns} ->
        ns

      :error ->
        {user_ms, _} = :erlang.statistics(:runtime)
        user_ms * 1_000_000
    end
  end

  defp os_cpu_ns(os_pids) when is_list(os_pids),
    do: os_pids |> Enum.map(&os_cpu_ns/1) |> Enum.sum()

  defp os_cpu_ns(os_pid) do
    case tasks_cpu_ns(os_pid) do
      {:ok, ns} -> ns
      :error -> stat_cpu_ns(os_pid)
    end
  end

  # The sum of schedstat's first field over the threads of `os_pid`, each
  # thread's file opened once and kept open (in the calling process's
  # dictionary) for later reads.
  defp tasks_cpu_ns(os_pid) do
    key = {__MODULE__, :schedstat, to_string(os_pid)}
    dir = "/proc/#{os_pid}/task"
    open = Process.get(key, %{})

    case File.ls(dir) do
      {:ok, tasks} ->
        fds =
          Map.new(tasks, fn task ->
            {task, Map.get_lazy(open, task, fn -> open_schedstat("#{dir}/#{task}/schedstat") end)}
          end)

        for {task, fd} <- open, not Map.has_key?(fds, task), fd != nil, do: :file.close(fd)
        Process.put(key, fds)

        if fds != %{} and Enum.all?(fds, fn {_, fd} -> fd != nil end) do
          {:ok, fds |> Enum.map(fn {_, fd} -> schedstat_ns(fd) end) |> Enum.sum()}
        else
          :error
        end

      {:error, _} ->
        for {_, fd} <- open, fd != nil, do: :file.close(fd)
        Process.delete(key)
        :error
    end
  end

  defp open_schedstat(path) do
    case :file.open(String.to_charlist(path), [:raw, :read, :binary]) do
      {:ok, fd} -> fd
      {:error, _} -> nil
    end
  end

  # A thread that has exited since reads as nothing.
  defp schedstat_ns(fd) do
    with {:ok, text} <- :file.pread(fd, 0, 128),
         [ns | _] <- :binary.split(text, " "),
         {n, _} <- Integer.parse(ns) do
      n
    else
      _ -> 0
    end
  end

  defp stat_cpu_ns(os_pid) do
    case File.ls("/proc/#{os_pid}/task") do
      {:ok, tasks} -> tasks |> Enum.map(&stat_cpu_ns(os_pid, &1)) |> Enum.sum()
      {:error, _} -> 0
    end
  end

  # utime + stime of one task, in clock ticks of (as good as always) 100 Hz.
  defp stat_cpu_ns(os_pid, task) do
    with {:ok, stat} <- File.read("/proc/#{os_pid}/task/#{task}/stat"),
         [_, rest] <- String.split(stat, ") ", parts: 2),
         fields <- String.split(rest),
         [utime, stime] <- Enum.slice(fields, 11, 2) do
      (String.to_integer(utime) + String.to_integer(stime)) * 10_000_000
    else
      _ -> 0
    end
  end

  defp time_each(_fun, _ctx, 0, acc), do: acc

  defp time_each(fun, ctx, n, acc) do
    t0 = :erlang.monotonic_time()
    fun.(ctx)
    t1 = :erlang.monotonic_time()
    time_each(fun, ctx, n - 1, [t1 - t0 | acc])
  end

  defp self_timed(_fun, _ctx, 0, acc), do: acc

  defp self_timed(fun, ctx, n, acc) do
    case fun.(ctx) do
      elapsed when is_integer(elapsed) and elapsed >= 0 ->
        self_timed(fun, ctx, n - 1, [elapsed | acc])

      other ->
        raise "a :latency_us function with timing: :self must return the elapsed time " <>
                "in native units, got #{inspect(other)}"
    end
  end

  defp isolated(spawn_opts, fun) do
    parent = self()
    tag = make_ref()
    {pid, ref} = :erlang.spawn_opt(fn -> send(parent, {tag, fun.()}) end, [:monitor | spawn_opts])

    receive do
      {^tag, result} ->
        Process.demonitor(ref, [:flush])
        result

      {:DOWN, ^ref, :process, ^pid, reason} ->
        raise "benchmark run crashed: " <> Exception.format_exit(reason)
    end
  end

  defp await(_go, _what, 0), do: :ok

  defp await(go, what, n) do
    receive do
      {^go, ^what} ->
        await(go, what, n - 1)

      {:DOWN, _ref, :process, _pid, reason} when reason != :normal ->
        raise "benchmark worker crashed: " <> Exception.format_exit(reason)
    end
  end

  ## Statistics

  defp rows(name, :latency_us, peer_runs, native_runs, opts, samples) do
    peer = latency_stats(peer_runs)
    native = latency_stats(native_runs)
    of = if samples, do: ", #{samples} samples", else: ""
    per_run = fn runs, key -> Enum.map(runs, &(latency_stats([&1]) |> Map.fetch!(key))) end

    rows =
      for {key, label} <- [median: "median latency (us)", p99: "p99 latency (us)"] do
        name
        |> row(label <> of, :latency_us, peer[key], native[key])
        |> with_spread(per_run.(peer_runs, key), per_run.(native_runs, key))
      end

    # CPU per operation and the samples (for plots) go on the median row.
    [median | rest] = rows

    median =
      median
      |> with_cpu(peer_runs, native_runs, opts)
      |> with_samples(peer_runs, native_runs, opts)

    [median | rest]
  end

  defp rows(name, :ops_per_s, peer_runs, native_runs, opts, _samples) do
    label = "#{Keyword.fetch!(opts, :ops_label)}, median of #{Keyword.fetch!(opts, :runs)} runs"

    row =
      name
      |> row(label, :ops_per_s, throughput(peer_runs), throughput(native_runs))
      |> with_spread(
        Enum.map(peer_runs, &run_throughput/1),
        Enum.map(native_runs, &run_throughput/1)
      )
      |> with_cpu(peer_runs, native_runs, opts)

    [row]
  end

  # Against the better of two peers, run by run: in run i, whichever peer
  # did better in that run.
  defp better_peer_rows(name, :ops_per_s, runs, {peer_name, alt_name}, opts, samples) do
    # keep the label short: "GenServer, message_queue_data: :off_heap" -> "off_heap"
    short = fn label -> label |> String.split([", ", ": :"]) |> List.last() end
    {peer_name, alt_name} = {short.(peer_name), short.(alt_name)}

    best =
      Enum.map(runs, fn run ->
        if run_throughput(run.alt_peer) > run_throughput(run.peer),
          do: run.alt_peer,
          else: run.peer
      end)

    picked_alt = Enum.count(runs, &(run_throughput(&1.alt_peer) > run_throughput(&1.peer)))

    rows(
      "#{name} (peer: the better of the two in each run: #{alt_name} in #{picked_alt} " <>
        "of #{length(runs)}, #{peer_name} in #{length(runs) - picked_alt})",
      :ops_per_s,
      best,
      Enum.map(runs, & &1.native),
      opts,
      samples
    )
  end

  defp better_peer_rows(_name, unit, _runs, _names, _opts, _samples) do
    raise ArgumentError, ":alt_peer is for unit :ops_per_s only, not #{inspect(unit)}"
  end

  @doc """
  Sets the spread of `row` (a custom scenario's) from paired runs: the
  smallest and largest ratio of `peer_values` and `native_values` taken in
  pairs (run i of each side, which ran back to back), each oriented as the
  row's ratio.
  """
  @spec with_spread(row(), [number()], [number()]) :: row()
  def with_spread(row, peer_values, native_values) do
    ratios = Enum.zip_with(peer_values, native_values, &ratio_of(row.unit, &1, &2))
    %{row | spread: Enum.min_max(ratios)}
  end

  # CPU time per operation on each side (microseconds, median over runs),
  # and the ratio peer/native of the medians (above 1.0: GenNative used
  # less CPU per operation) with the spread of the paired runs' ratios.
  defp with_cpu(row, peer_runs, native_runs, opts) do
    if Keyword.get(opts, :cpu, true) do
      per_op = fn run -> run.cpu_ns / max(run.ops, 1) / 1000 end
      peer = Enum.map(peer_runs, per_op)
      native = Enum.map(native_runs, per_op)
      ratios = peer |> Enum.zip_with(native, &cpu_ratio/2) |> Enum.reject(&is_nil/1)
      peer_m = median_of(peer)
      native_m = median_of(native)

      %{
        row
        | cpu: %{
            peer: peer_m,
            native: native_m,
            ratio: cpu_ratio(peer_m, native_m),
            spread: if(ratios == [], do: nil, else: Enum.min_max(ratios))
          }
      }
    else
      row
    end
  end

  # A run whose CPU time rounds to nothing (below the millisecond
  # resolution) makes no ratio.
  defp cpu_ratio(peer, native) when peer > 0 and native > 0, do: peer / native
  defp cpu_ratio(_peer, _native), do: nil

  defp with_samples(row, peer_runs, native_runs, opts) do
    if Keyword.get(opts, :keep_samples, false) do
      to_us = fn runs ->
        Enum.flat_map(runs, fn run -> Enum.map(run.samples, &microseconds/1) end)
      end

      Map.put(row, :samples, %{peer: to_us.(peer_runs), native: to_us.(native_runs)})
    else
      row
    end
  end

  defp median_of(values), do: values |> Enum.sort() |> List.to_tuple() |> median()

  @doc """
  A row for a custom scenario whose sides were measured in pairs (run `i`
  of the peer right before or after run `i` of GenNative): `peer_values`
  and `native_values` are the runs' figures in the same order; the row
  shows the median of each side and the spread of the paired ratios.
  """
  @spec paired_row(String.t(), String.t(), unit(), [number()], [number()]) :: row()
  def paired_row(name, metric, unit, [_ | _] = peer_values, [_ | _] = native_values)
      when length(peer_values) == length(native_values) do
    name
    |> row(metric, unit, median_of(peer_values), median_of(native_values))
    |> with_spread(peer_values, native_values)
  end

  @doc """
  A table row, for a custom scenario: `unit` is `:latency_us` (peer and
  native in microseconds), `:ops_per_s` or `:bytes` (lower is better);
  `peer` may be `nil` when there is nothing to compare with, and the ratio
  is then shown as "n/a".
  """
  @spec row(String.t(), String.t(), unit(), number() | nil, number()) :: row()
  def row(name, metric, unit, peer, native) when unit in [:latency_us, :ops_per_s, :bytes] do
    ratio = if peer == nil, do: nil, else: ratio_of(unit, peer, native)

    %{
      scenario: name,
      metric: metric,
      unit: unit,
      peer: peer,
      native: native,
      ratio: ratio,
      spread: nil,
      cpu: nil
    }
  end

  defp ratio_of(:ops_per_s, peer, native), do: native / max(peer, 1.0e-9)
  defp ratio_of(_unit, peer, native), do: peer / max(native, 1.0e-9)

  @doc """
  `%{median: us, p99: us, max: us, count: n}` of latency samples given in
  native time units (a non-empty list), with the harness's nearest-rank p99.
  """
  @spec stats([integer()]) :: %{
          median: float(),
          p99: float(),
          max: float(),
          count: pos_integer()
        }
  def stats([_ | _] = samples) do
    sorted = samples |> Enum.sort() |> List.to_tuple()
    n = tuple_size(sorted)

    %{
      median: microseconds(median(sorted)),
      p99: microseconds(percentile(sorted, 0.99)),
      max: microseconds(elem(sorted, n - 1)),
      count: n
    }
  end

  defp latency_stats(runs) do
    sorted =
      runs
      |> Enum.flat_map(& &1.samples)
      |> Enum.sort()
      |> List.to_tuple()

    %{
      median: microseconds(median(sorted)),
      p99: microseconds(percentile(sorted, 0.99))
    }
  end

  defp run_throughput(%{ops: ops, elapsed: elapsed}), do: ops / seconds(max(elapsed, 1))

  defp throughput(runs), do: runs |> Enum.map(&run_throughput/1) |> median_of()

  defp median(sorted) do
    n = tuple_size(sorted)
    mid = div(n, 2)

    if rem(n, 2) == 1,
      do: elem(sorted, mid),
      else: (elem(sorted, mid - 1) + elem(sorted, mid)) / 2
  end

  # Nearest-rank percentile.
  defp percentile(sorted, p) do
    n = tuple_size(sorted)
    elem(sorted, min(n, max(1, ceil(p * n))) - 1)
  end

  defp microseconds(native),
    do: :erlang.convert_time_unit(round(native), :native, :nanosecond) / 1000

  defp seconds(native), do: :erlang.convert_time_unit(native, :native, :microsecond) / 1_000_000

  ## Report

  defp report(suite, rows, wall_s, opts) do
    peer_label = Keyword.fetch!(opts, :peer_label)
    native_label = Keyword.fetch!(opts, :native_label)

    header = [
      "scenario",
      "metric",
      peer_label,
      native_label,
      "#{native_label}/#{peer_label} (>1 = #{native_label} better)",
      "ratio spread (min..max)",
      "verdict",
      "CPU us/op #{peer_label}",
      "CPU us/op #{native_label}",
      "CPU ratio (>1 = #{native_label} uses less) [min..max]"
    ]

    body =
      for r <- rows do
        [
          r.scenario,
          r.metric,
          format(r.unit, r.peer),
          format(r.unit, r.native),
          ratio(r.ratio),
          spread(Map.get(r, :spread)),
          verdict(r, peer_label, native_label)
        ] ++ cpu_cells(Map.get(r, :cpu))
      end

    method =
      Keyword.get_lazy(opts, :method, fn ->
        "Each side: warm-up, then #{opts[:runs]} runs of about #{opts[:run_ms]} ms, " <>
          "alternating with the other side."
      end)

    notes =
      case Keyword.get(opts, :notes) do
        nil -> ""
        fun when is_function(fun, 0) -> "\n" <> fun.()
        fun when is_function(fun, 1) -> "\n" <> fun.(rows)
        text -> "\n" <> text
      end

    aligns = [:left, :left, :right, :right, :right, :right, :left, :right, :right, :right]

    report_header(suite) <>
      """
      #{method} Suite wall time #{:erlang.float_to_binary(wall_s, decimals: 1)} s.

      #{table([header | body], aligns)}

      #{legend()}
      """ <> notes
  end

  @doc """
  The verdict of a row: `"<native> better"` or `"<peer> better"` when every
  paired run's ratio is on the same side of 1.0, `"no clear difference"`
  when the spread touches or crosses 1.0, `"n/a"` without a ratio. A row
  without paired runs (a single measurement) gets the side its ratio
  favours, marked "(1 measurement)". An A/A row (its scenario starts with
  "A/A") is expected to show no difference; when its spread is off 1.0 the
  verdict says that the noise went beyond the spread.
  """
  @spec verdict(row(), String.t(), String.t()) :: String.t()
  def verdict(row, peer_label \\ "peer", native_label \\ "GenNative")

  def verdict(%{ratio: nil}, _peer, _native), do: "n/a"

  # Both columns run the same thing: any verdict but "no clear difference"
  # says the session's noise is larger than the spread of its pairs.
  def verdict(%{scenario: "A/A" <> _, spread: {lo, hi}}, _peer, _native) do
    if lo > 1.0 or hi < 1.0,
      do: "A/A off 1.0: noise beyond the spread",
      else: "A/A: no clear difference (as expected)"
  end

  def verdict(%{spread: {lo, hi}}, peer, native) do
    cond do
      lo > 1.0 -> "#{native} better"
      hi < 1.0 -> "#{peer} better"
      true -> "no clear difference"
    end
  end

  def verdict(%{ratio: r}, peer, native) do
    cond do
      r > 1.0 -> "#{native} better (1 measurement)"
      r < 1.0 -> "#{peer} better (1 measurement)"
      true -> "same (1 measurement)"
    end
  end

  @doc "The legend printed under every table made by `run/3`."
  @spec legend() :: String.t()
  def legend do
    "Ratio spread: smallest and largest ratio of the paired runs (run i of each side, " <>
      "back to back). Verdict: a side is better only when its whole spread is on that " <>
      "side of 1.0; a spread that touches or crosses 1.0 is no clear difference; an A/A " <>
      "row whose spread is off 1.0 shows noise beyond what the pairs capture. " <>
      "CPU us/op: CPU time (user + system) of every thread of the VM, " <>
      "#{cpu_source_text()}, plus GenNative's port program where there is one, over each run, " <>
      "divided by its operations; median of the runs (on a latency scenario's median row " <>
      "only; n/a where a run's work is not only the operations timed)."
  end

  defp cpu_source_text do
    case cpu_source() do
      :schedstat -> "from /proc/<pid>/task/*/schedstat"
      :runtime -> "here from :erlang.statistics(:runtime), user time only (no schedstat)"
    end
  end

  defp cpu_cells(nil), do: ["n/a", "n/a", "n/a"]

  defp cpu_cells(%{peer: peer, native: native, ratio: r, spread: sp}) do
    ratio_text =
      case sp do
        nil -> ratio(r)
        _ -> "#{ratio(r)} [#{spread(sp)}]"
      end

    [cpu_us(peer), cpu_us(native), ratio_text]
  end

  defp cpu_us(us) when us >= 100, do: :erlang.float_to_binary(us / 1, decimals: 0)
  defp cpu_us(us) when us >= 1, do: :erlang.float_to_binary(us / 1, decimals: 2)
  defp cpu_us(us), do: :erlang.float_to_binary(us / 1, decimals: 3)

  defp mix_env do
    if List.keymember?(Application.started_applications(), :mix, 0),
      do: Mix.env(),
      else: System.get_env("MIX_ENV", "n/a")
  end

  @doc """
  Formats `[header | rows]` (lists of strings) as a Markdown table, each
  column aligned `:left` or `:right` as given in `aligns`.
  """
  @spec table([[String.t()]], [:left | :right]) :: String.t()
  def table([header | body] = lines, aligns) do
    widths =
      lines
      |> Enum.zip_with(& &1)
      |> Enum.map(fn column -> column |> Enum.map(&String.length/1) |> Enum.max() end)

    line = fn cells ->
      [cells, widths, aligns]
      |> Enum.zip()
      |> Enum.map(fn
        {cell, w, :left} -> String.pad_trailing(cell, w)
        {cell, w, :right} -> String.pad_leading(cell, w)
      end)
      |> then(&("| " <> Enum.join(&1, " | ") <> " |"))
    end

    rule =
      widths
      |> Enum.zip(aligns)
      |> Enum.map(fn
        {w, :left} -> String.duplicate("-", w)
        {w, :right} -> String.duplicate("-", w - 1) <> ":"
      end)
      |> then(&("| " <> Enum.join(&1, " | ") <> " |"))

    Enum.map_join([line.(header), rule | Enum.map(body, line)], "\n", & &1)
  end

  defp format(_unit, nil), do: "n/a"
  defp format(:latency_us, us), do: :erlang.float_to_binary(us / 1, decimals: 2)
  defp format(:ops_per_s, ops), do: ops |> round() |> thousands()
  defp format(:bytes, bytes), do: :erlang.float_to_binary(bytes / 1, decimals: 1)

  defp ratio(nil), do: "n/a"
  defp ratio(r), do: :erlang.float_to_binary(r / 1, decimals: 2)

  defp spread(nil), do: "n/a"
  defp spread({min, max}), do: ratio(min) <> ".." <> ratio(max)

  @doc false
  def thousands(n) when n < 0, do: "-" <> thousands(-n)

  def thousands(n) do
    n
    |> Integer.to_string()
    |> String.reverse()
    |> String.to_charlist()
    |> Enum.chunk_every(3)
    |> Enum.join(",")
    |> String.reverse()
  end

  defp cpu_model do
    with {:ok, info} <- File.read("/proc/cpuinfo"),
         [_, model] <- Regex.run(~r/^(?:model name|Hardware|cpu model)\s*:\s*(.+)$/m, info) do
      String.trim(model)
    else
      _ -> "unknown CPU"
    end
  end
end
