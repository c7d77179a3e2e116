defmodule GenNative.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :gen_native,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:gen_native_make] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: [],
      # PropEr (Debian's erlang-proper) is used by test/support only
      xref: [exclude: [:proper]],
      docs: [main: "GenNative"]
    ]
  end

  def application do
    [extra_applications: [:logger], mod: {GenNative.Application, []}]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end

defmodule Mix.Tasks.Compile.GenNativeMake do
  # Lives in mix.exs rather than lib/ because Mix needs a project's own
  # compilers before it compiles the project; a dependency's mix.exs is
  # evaluated the same way, so `mix compile` in a host project builds the C
  # core with no extra step.
  @moduledoc """
  Builds GenNative's C code (the mailbox and store NIF, the port program) by
  running `make` with the include and library paths of the running VM.

  Outputs go to the application's build directory (`priv/` and `obj/` under
  `Mix.Project.app_path/0`), never into the source tree. `make` decides what is
  stale. `mix clean` runs `make clean`.
  """
  use Mix.Task.Compiler

  @impl true
  def run(_args) do
    case make([]) do
      0 ->
        {:ok, []}

      status ->
        Mix.raise("`make` failed with exit status #{status} while building gen_native's C code")
    end
  end

  @impl true
  def clean do
    make(["clean"])
    :ok
  end

  defp make(targets) do
    root = Path.dirname(__ENV__.file)
    app_path = Mix.Project.app_path()
    erts = Path.join([:code.root_dir(), "erts-#{:erlang.system_info(:version)}", "include"])
    ei = :code.lib_dir(:erl_interface)

    env = [
      {"MIX_APP_PATH", app_path},
      {"ERTS_INCLUDE_DIR", System.get_env("ERTS_INCLUDE_DIR", erts)},
      {"ERL_EI_INCLUDE_DIR", System.get_env("ERL_EI_INCLUDE_DIR", Path.join(ei, "include"))},
      {"ERL_EI_LIBDIR", System.get_env("ERL_EI_LIBDIR", Path.join(ei, "lib"))}
    ]

    jobs = "-j#{System.schedulers_online()}"
    args = ["--no-print-directory", "-C", root, jobs | targets]

    {_, status} =
      System.cmd("make", args, env: env, into: IO.stream(:stdio, :line), stderr_to_stdout: true)

    status
  end
end
