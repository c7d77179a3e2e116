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

  For `:latency_us` the functions take `ctx` and perform **one** operation; the
  harness times each call separately and reports the median and p99 over all
  measured runs.

  For `:ops_per_s` the functions take `ctx` and a size `n` chosen by the
  harness (calibrated so that a run lasts about `run_ms`) and return either the
  number of operations done, in which case the whole call is timed, or
  `{ops, elapsed}` with `elapsed` in native time units, for functions that time
  only part of their work (see `concurrently/2`). The harness reports the
  median over runs.

  ## Spread of the ratio

  The last column, "ratio spread (min..max)", shows how much the ratio moved
  between paired runs: run `i` of the peer against run `i` of GenNative (the
  two are measured back to back), each ratio oriented as the row's, then the
  smallest and largest of them. For a latency row, each run's own median or
  p99 is used. Custom rows have no paired runs and show "n/a" there. An A/A
  scenario (the same thing on both sides) shows the noise floor: a ratio
  inside its spread is no evidence of a difference.

  Every measured run executes in a fresh process, so mailboxes and heaps do not
  carry over between runs or sides.

  ## Options

    * `:peer_label` - the peer's column header (default `"GenServer"`)
    * `:native_label` - GenNative's column header (default `"GenNative"`)
    * `:runs` - measured runs per side (default 9, 3 with `GN_BENCH_QUICK=1`)
    * `:run_ms` - target duration of one run (default 400, 80 with
      `GN_BENCH_QUICK=1`)
    * `:results_dir` - where `<suite>.md` is written (default
      `$GN_BENCH_RESULTS_DIR`, or `bench/results`)
    * `:method` - replaces the sentence describing how each side was run
    * `:notes` - text, or a function returning text once the scenarios have
      run (of no argument, or of one: the rows), printed after the table

  ## Custom scenarios

  A scenario `%{name: name, custom: fun}` runs `fun.()` once, which measures
  both sides itself and returns its rows, each built with `row/5`, in the
  same table: for measurements that are neither a per-operation latency nor
  a throughput (a maximum latency, bytes per entry), or whose two sides need
  different sample counts. `stats/1` summarises latency samples the way the
  harness does.

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
          optional(:runs) => pos_integer()
        }
  @type row :: %{
          scenario: String.t(),
          metric: String.t(),
          unit: unit(),
          peer: float() | nil,
          native: float(),
          ratio: float() | nil,
          spread: {float(), float()} | nil
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
      runs: if(quick, do: 3, else: 9),
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
    check_options!(scenario)
    IO.write(:stderr, "#{suite}: #{name} ...")

    ctx = if setup = scenario[:setup], do: setup.(), else: nil
    unit = if scenario[:timing] == :self, do: :self_timed_us, else: unit

    try do
      sides = %{peer: scenario.peer, native: scenario.native}
      target = :erlang.convert_time_unit(Keyword.fetch!(opts, :run_ms), :millisecond, :native)

      {size, warmup} =
        case scenario[:size] do
          nil ->
            # Calibrate both sides and use the smaller size for both: the
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

      runs =
        for i <- 1..n_runs do
          order = if rem(i, 2) == 1, do: [:peer, :native], else: [:native, :peer]
          Map.new(order, fn side -> {side, measure(unit, sides[side], ctx, size)} end)
        end

      IO.puts(:stderr, " done")
      unit = if unit == :self_timed_us, do: :latency_us, else: unit
      samples = if scenario[:size], do: size * n_runs
      opts = Keyword.put(opts, :runs, n_runs)
      rows(name, unit, Enum.map(runs, & &1.peer), Enum.map(runs, & &1.native), opts, samples)
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
    {_ops, elapsed, _samples} = measure(unit, fun, ctx, size)

    cond do
      size >= @max_size -> size
      elapsed * 4 < target -> calibrate(unit, fun, ctx, target, size * 2)
      true -> max(1, min(@max_size, div(size * target, max(elapsed, 1))))
    end
  end

  # Returns {ops, elapsed_native, samples_or_nil} from a fresh process.
  defp measure(:latency_us, fun, ctx, size) do
    isolated([min_heap_size: @latency_heap_words], fn ->
      samples = time_each(fun, ctx, size, [])
      {size, Enum.sum(samples), samples}
    end)
  end

  defp measure(:self_timed_us, fun, ctx, size) do
    isolated([min_heap_size: @latency_heap_words], fn ->
      samples = self_timed(fun, ctx, size, [])
      {size, Enum.sum(samples), samples}
    end)
  end

  defp measure(:ops_per_s, fun, ctx, size) do
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

  defp rows(name, :latency_us, peer_runs, native_runs, _opts, samples) do
    peer = latency_stats(peer_runs)
    native = latency_stats(native_runs)
    of = if samples, do: ", #{samples} samples", else: ""
    per_run = fn runs, key -> Enum.map(runs, &(latency_stats([&1]) |> Map.fetch!(key))) end

    for {key, label} <- [median: "median latency (us)", p99: "p99 latency (us)"] do
      name
      |> row(label <> of, :latency_us, peer[key], native[key])
      |> with_spread(per_run.(peer_runs, key), per_run.(native_runs, key))
    end
  end

  defp rows(name, :ops_per_s, peer_runs, native_runs, opts, _samples) do
    label = "ops/s, median of #{Keyword.fetch!(opts, :runs)} runs"

    row =
      name
      |> row(label, :ops_per_s, throughput(peer_runs), throughput(native_runs))
      |> with_spread(
        Enum.map(peer_runs, &run_throughput/1),
        Enum.map(native_runs, &run_throughput/1)
      )

    [row]
  end

  # The smallest and largest ratio of paired runs (run i of each side, which
  # ran back to back), each oriented as the row's ratio.
  defp with_spread(row, peer_values, native_values) do
    ratios = Enum.zip_with(peer_values, native_values, &ratio_of(row.unit, &1, &2))
    %{row | spread: Enum.min_max(ratios)}
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
      spread: nil
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
      |> Enum.flat_map(fn {_ops, _elapsed, samples} -> samples end)
      |> Enum.sort()
      |> List.to_tuple()

    %{
      median: microseconds(median(sorted)),
      p99: microseconds(percentile(sorted, 0.99))
    }
  end

  defp run_throughput({ops, elapsed, _}), do: ops / seconds(max(elapsed, 1))

  defp throughput(runs) do
    runs
    |> Enum.map(&run_throughput/1)
    |> Enum.sort()
    |> List.to_tuple()
    |> median()
  end

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
      "ratio spread (min..max)"
    ]

    body =
      for r <- rows do
        [
          r.scenario,
          r.metric,
          format(r.unit, r.peer),
          format(r.unit, r.native),
          ratio(r.ratio),
          spread(Map.get(r, :spread))
        ]
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

    report_header(suite) <>
      """
      #{method} Suite wall time #{:erlang.float_to_binary(wall_s, decimals: 1)} s.

      #{table([header | body], [:left, :left, :right, :right, :right, :right])}
      """ <> notes
  end

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
