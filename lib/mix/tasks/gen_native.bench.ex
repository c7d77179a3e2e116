defmodule Mix.Tasks.GenNative.Bench do
  @shortdoc "Runs the GenServer vs GenNative benchmarks in bench/"

  @moduledoc """
  Runs the side-by-side benchmark suites in `bench/`, each comparing GenNative
  with the module it replaces in the same run, and prints one table per suite.

      mix gen_native.bench              # every bench/*_bench.exs
      mix gen_native.bench mailbox      # bench/mailbox_bench.exs only

  The suites: `mailbox`, `batch`, `priority`, `overload`, `store`, `port`,
  `enqueue` and `replication` (replicated port stores: three-member groups
  of port programs on 127.0.0.1, against a single-node port and Mnesia
  `disc_copies` on three `:peer` nodes; the peer nodes need `epmd`, which
  they start if none runs and the suite stops at the end when no other
  node uses it).

  A suite is named by the file's base name without `_bench.exs`, or given as a
  path. Each table is also written as Markdown to `bench/results/<suite>.md`
  (or `$GN_BENCH_RESULTS_DIR`), with a description of the machine it ran on;
  the overload, priority and port suites also draw their plots there as SVG
  files (`GenNative.Bench.SVG`, no plotting package needed).

  Run it as `bin/bench`, which checks the system packages and builds with
  `MIX_ENV=prod`, so that the NIF is compiled without debug flags.

  ## Options

    * `--quick` - short runs (about 15 seconds per suite) to check that the
      suites work; the numbers are only indicative. Same as `GN_BENCH_QUICK=1`.

  The suites, their harness (`bench/harness.ex`) and the plotting module
  (`bench/svg.ex`) are loaded from the repository; they are not part of the compiled package.
  """

  use Mix.Task

  @bench_dir "bench"
  @harness "bench/harness.ex"
  @plots "bench/svg.ex"

  @impl Mix.Task
  def run(args) do
    {opts, names} = OptionParser.parse!(args, strict: [quick: :boolean])

    if opts[:quick], do: System.put_env("GN_BENCH_QUICK", "1")

    files = suites!(names)

    if Mix.env() != :prod do
      Mix.shell().info(
        "note: MIX_ENV=#{Mix.env()}; bin/bench runs the benchmarks with MIX_ENV=prod"
      )
    end

    Mix.Task.run("compile")
    Mix.Task.run("app.start")

    Code.require_file(@harness)
    Code.require_file(@plots)
    Enum.each(files, &Code.require_file/1)
  end

  defp suites!(names) do
    available = Path.wildcard(Path.join(@bench_dir, "*_bench.exs"))

    if available == [] or not File.regular?(@harness) or not File.regular?(@plots) do
      Mix.raise(
        "no benchmark suites in #{@bench_dir}/; run mix gen_native.bench " <>
          "from the root of the gen_native repository"
      )
    end

    case names do
      [] -> available
      names -> names |> Enum.map(&suite_file!(&1, available)) |> Enum.uniq()
    end
  end

  defp suite_file!(name, available) do
    file =
      if File.regular?(name),
        do: Path.relative_to_cwd(Path.expand(name)),
        else: Path.join(@bench_dir, "#{name}_bench.exs")

    if File.regular?(file) do
      file
    else
      known = Enum.map_join(available, ", ", &Path.basename(&1, "_bench.exs"))
      Mix.raise("unknown benchmark suite #{inspect(name)}; available suites: #{known}")
    end
  end
end
