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

  Without `make` on PATH it raises, naming what to install; when `make` fails
  it checks for a C compiler, `erl_nif.h`, `ei.h`, `libei.a` and `uv.h` and
  names the package that provides each one missing.
  """
  use Mix.Task.Compiler

  @install """
  Install the build tools, Erlang's headers, libuv and libraft:

    Debian/Ubuntu: sudo apt-get install build-essential erlang-dev libuv1-dev libraft-dev pkg-config
    macOS:         xcode-select --install && brew install libuv (libraft: build it from source)\
  """

  @impl true
  def run(_args) do
    make = find_make!()
    env = make_env()

    case make(make, env, []) do
      0 ->
        {:ok, []}

      status ->
        Mix.raise("""
        `make` failed with exit status #{status} while building gen_native's C code \
        (the compiler's output is above).
        #{diagnose(env)}\
        """)
    end
  end

  @impl true
  def clean do
    # Nothing was built without make, so there is nothing to clean.
    if make = System.find_executable("make"), do: make(make, make_env(), ["clean"])
    :ok
  end

  defp find_make! do
    System.find_executable("make") ||
      Mix.raise("""
      gen_native builds its C code with `make`, which is not on PATH.
      #{@install}
      """)
  end

  defp make_env do
    erts = Path.join([:code.root_dir(), "erts-#{:erlang.system_info(:version)}", "include"])
    # Debian ships erl_interface in erlang-dev: without it, a path that does
    # not exist, so that make fails and diagnose/1 names the package.
    ei =
      case :code.lib_dir(:erl_interface) do
        {:error, _} -> Path.join([:code.root_dir(), "lib", "erl_interface"])
        dir -> dir
      end

    [
      {"MIX_APP_PATH", Mix.Project.app_path()},
      {"ERTS_INCLUDE_DIR", System.get_env("ERTS_INCLUDE_DIR", erts)},
      {"ERL_EI_INCLUDE_DIR", System.get_env("ERL_EI_INCLUDE_DIR", Path.join(ei, "include"))},
      {"ERL_EI_LIBDIR", System.get_env("ERL_EI_LIBDIR", Path.join(ei, "lib"))}
    ]
  end

  defp make(make, env, targets) do
    root = Path.dirname(__ENV__.file)
    jobs = "-j#{System.schedulers_online()}"
    args = ["--no-print-directory", "-C", root, jobs | targets]

    {_, status} =
      System.cmd(make, args, env: env, into: IO.stream(:stdio, :line), stderr_to_stdout: true)

    status
  end

  # After a failed make: what is missing, and which package provides it. The
  # usual causes are a missing C compiler, Erlang's headers (Debian ships
  # them apart, in erlang-dev) and libuv's headers.
  defp diagnose(env) do
    env = Map.new(env)
    macos? = match?({:unix, :darwin}, :os.type())

    missing =
      [
        compiler_missing(macos?),
        file_missing(env["ERTS_INCLUDE_DIR"], "erl_nif.h", "erlang-dev", macos?),
        file_missing(env["ERL_EI_INCLUDE_DIR"], "ei.h", "erlang-dev", macos?),
        file_missing(env["ERL_EI_LIBDIR"], "libei.a", "erlang-dev", macos?),
        uv_missing(macos?),
        raft_missing(macos?)
      ]
      |> Enum.reject(&is_nil/1)

    case missing do
      [] ->
        "The C compiler, Erlang's headers (erl_nif.h, ei.h), libuv's uv.h and libraft were all found, " <>
          "so the error above is most likely in the code itself.\n"

      missing ->
        "Likely missing:\n" <>
          Enum.map_join(missing, "", &"  - #{&1}\n") <> "\n" <> @install <> "\n"
    end
  end

  defp compiler do
    (System.get_env("CC") || "cc") |> String.split() |> List.first("cc")
  end

  defp compiler_missing(macos?) do
    unless System.find_executable(compiler()) do
      "no C compiler: `#{compiler()}` is not on PATH " <>
        if(macos?,
          do: "(Xcode command line tools: xcode-select --install)",
          else: "(Debian: build-essential)"
        )
    end
  end

  defp file_missing(dir, file, package, macos?) do
    unless File.exists?(Path.join(dir || "", file)) do
      "#{file} not found in #{dir} " <>
        if(macos?,
          do: "(Erlang's headers: reinstall Erlang, e.g. brew install erlang)",
          else: "(Debian: #{package})"
        )
    end
  end

  # uv.h may be anywhere on the compiler's include path: ask the compiler,
  # with Homebrew's libuv prefix on macOS as the Makefile adds it. Not
  # checked without a compiler (reported already).
  defp uv_missing(macos?) do
    cc = System.find_executable(compiler())

    cond do
      cc == nil or uv_found?(cc, macos?) -> nil
      macos? -> "uv.h not found (libuv: brew install libuv)"
      true -> "uv.h not found (Debian: libuv1-dev)"
    end
  end

  defp raft_missing(macos?) do
    found? =
      System.find_executable("pkg-config") != nil and
        match?({_, 0}, System.cmd("pkg-config", ["--exists", "raft"], stderr_to_stdout: true))

    cond do
      found? -> nil
      macos? -> "libraft not found by pkg-config (raft.pc: build libraft from source)"
      true -> "libraft not found by pkg-config (Debian: libraft-dev pkg-config)"
    end
  end

  defp uv_found?(cc, macos?) do
    dir = Path.join(Mix.Project.app_path(), "obj")
    probe = Path.join(dir, "uv_probe.c")
    File.mkdir_p!(dir)
    File.write!(probe, "#include <uv.h>\n")

    brew =
      for prefix <- ["/opt/homebrew/opt/libuv", "/usr/local/opt/libuv"],
          macos? and File.dir?(prefix),
          do: "-I#{prefix}/include"

    {_, status} = System.cmd(cc, brew ++ ["-E", "-o", "/dev/null", probe], stderr_to_stdout: true)
    File.rm(probe)
    status == 0
  end
end
