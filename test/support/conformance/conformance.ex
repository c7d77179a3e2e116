defmodule Conformance do
  @moduledoc false
  # Runs the same scenario against `use GenServer` and `use GenNative` and
  # checks that the two results are equal once the differences that are
  # meant to exist have been normalised away (see `normalize/1`).
  #
  # A scenario is a function `fn gen, mod -> result end`: `gen` is the client
  # module (`GenServer` or `GenNative`) and `mod` the server module built with
  # `use gen`. `conform/2` returns the *raw* GenServer result so that every
  # test also pattern-matches the concrete value GenServer gives; a test can
  # therefore not pass by both sides being equally wrong.

  import ExUnit.Assertions

  @impls [GenServer, GenNative]

  @doc "The client modules, reference implementation first."
  def impls, do: @impls

  @doc """
  Defines `Name.GenServer` (`use GenServer`) and `Name.GenNative`
  (`use GenNative`) from one body, and aliases `Name` in the caller.

  Inside the body `@gen` is the client module of the implementation, so a
  body writes `@gen.reply(from, r)` and works on both sides.
  """
  defmacro defserver(name, use_opts \\ [], do: body) do
    base = Module.concat(__CALLER__.module, Macro.expand(name, __CALLER__))

    modules =
      for gen <- @impls do
        quote do
          defmodule unquote(Module.concat(base, gen)) do
            use unquote(gen), unquote(use_opts)
            @gen unquote(gen)
            @doc false
            def __gen__, do: @gen
            unquote(body)
          end
        end
      end

    quote do
      unquote_splicing(modules)
      alias unquote(base), warn: false
    end
  end

  @doc """
  Runs `scenario.(gen, Module.concat(base, gen))` for each implementation and
  asserts the normalised results are equal. Returns the GenServer result.
  """
  def conform(base, scenario) when is_atom(base) and is_function(scenario, 2) do
    compare(for gen <- @impls, do: {gen, fn -> scenario.(gen, Module.concat(base, gen)) end})
  end

  @doc """
  Like `conform/2`, for interoperability: runs `scenario.(client, server_mod)`
  for every pairing of client module and server implementation. The
  reference is GenServer calling a `use GenServer` server.
  """
  def conform_matrix(base, scenario) when is_atom(base) and is_function(scenario, 2) do
    compare(
      for server <- @impls, client <- @impls do
        {{client, server}, fn -> scenario.(client, Module.concat(base, server)) end}
      end
    )
  end

  defp compare([{ref_label, ref_fun} | others]) do
    expected = run_side(ref_fun)

    expected =
      case expected do
        {:ok, value} ->
          value

        {kind, reason, stack} ->
          :erlang.raise(kind, reason, stack)
      end

    expected_n = normalize(expected)

    for {label, fun} <- others do
      got =
        case run_side(fun) do
          {:ok, value} -> value
          {kind, reason, _stack} -> {:scenario_crashed, kind, reason}
        end

      got_n = normalize(got)

      unless got_n == expected_n do
        raise ExUnit.AssertionError,
          message:
            "#{inspect(label)} differs from #{inspect(ref_label)} " <>
              "(normalised results; left is #{inspect(label)})" <>
              first_difference(got_n, expected_n),
          left: got_n,
          right: expected_n,
          expr: :conform
      end
    end

    expected
  end

  # Long results are truncated in the diff; point at where they part.
  defp first_difference(left, right) when is_list(left) and is_list(right) do
    case Enum.find_index(Enum.zip(left, right), fn {l, r} -> l != r end) do
      nil ->
        "\nlengths differ: #{length(left)} vs #{length(right)}"

      i ->
        "\nfirst difference at index #{i}: #{inspect(Enum.at(left, i))} vs #{inspect(Enum.at(right, i))}"
    end
  end

  defp first_difference(left, right)
       when is_tuple(left) and is_tuple(right) and tuple_size(left) == tuple_size(right) do
    left
    |> Tuple.to_list()
    |> Enum.zip(Tuple.to_list(right))
    |> Enum.with_index()
    |> Enum.find_value("", fn
      {{l, r}, i} when l != r -> "\nelement #{i} differs" <> first_difference(l, r)
      _ -> nil
    end)
  end

  defp first_difference(_left, _right), do: ""

  # Each side starts from a clean test process: no messages, not trapping
  # exits, and the servers it started are killed afterwards.
  defp run_side(fun) do
    Process.put(:conformance_started, [])

    try do
      {:ok, fun.()}
    catch
      kind, reason -> {kind, reason, __STACKTRACE__}
    after
      cleanup()
    end
  end

  defp cleanup do
    for pid <- Process.get(:conformance_started, []), Process.alive?(pid) do
      Process.unlink(pid)
      ref = Process.monitor(pid)
      Process.exit(pid, :kill)
      receive do: ({:DOWN, ^ref, _, _, _} -> :ok)
    end

    Process.put(:conformance_started, [])
    Process.flag(:trap_exit, false)
    flush()
    :ok
  end

  @doc """
  Starts `mod` with `gen.start/3` (or `start_link/3` when `link: true` is in
  `opts`) and has it killed at the end of the scenario side. Returns the
  start result unchanged.
  """
  def start(gen, mod, arg, opts \\ []) do
    {link?, opts} = Keyword.pop(opts, :link, false)
    result = if link?, do: gen.start_link(mod, arg, opts), else: gen.start(mod, arg, opts)
    with {:ok, pid} <- result, do: track(pid)
    result
  end

  @doc "Like `start/4` but expects `{:ok, pid}` and returns the pid."
  def start!(gen, mod, arg, opts \\ []) do
    {:ok, pid} = start(gen, mod, arg, opts)
    pid
  end

  @doc "Registers a process to be killed when the scenario side ends."
  def track(pid) when is_pid(pid) do
    Process.put(:conformance_started, [pid | Process.get(:conformance_started, [])])
    pid
  end

  @doc "Evaluates `expr` and tags how it ended: `{:ok, v}`, `{:exit, r}`, `{:raise, e}`, `{:throw, v}`."
  defmacro outcome(expr) do
    quote do
      try do
        {:ok, unquote(expr)}
      rescue
        e -> {:raise, e}
      catch
        :exit, reason -> {:exit, reason}
        :throw, value -> {:throw, value}
      end
    end
  end

  @doc "A fresh atom name, the same shape on both sides (normalised by `normalize/1`)."
  def unique_name, do: :"conf_#{System.unique_integer([:positive])}"

  @doc "A `Scripted` request that runs `fun.(from_or_nil, state)` in the server."
  def run(fun), do: {:run, fun}

  @doc "Starts a `Scripted` server whose init/1 returns `{:ok, state}`."
  def scripted_server(gen, mod, state \\ :s0) do
    start!(gen, mod, {self(), fn -> {:ok, state} end})
  end

  @doc """
  Servers that do not exist: a dead pid, and unregistered local, global,
  via and `{name, node()}` names, in that order.
  """
  def missing_servers do
    dead = spawn(fn -> :ok end)
    await_exit(dead)

    [
      dead,
      unique_name(),
      nil,
      {:global, unique_name()},
      {:via, :global, unique_name()},
      {unique_name(), node()}
    ]
  end

  @doc """
  Waits for a process to exit and returns its exit reason. Takes a pid (for
  a process that cannot have exited yet) or the ref of a monitor set up
  before the exit was triggered.
  """
  def await_exit(pid_or_ref, timeout \\ 5_000)

  def await_exit(pid, timeout) when is_pid(pid), do: await_exit(Process.monitor(pid), timeout)

  def await_exit(ref, timeout) when is_reference(ref) do
    receive do
      {:DOWN, ^ref, :process, _pid, reason} -> reason
    after
      timeout -> flunk("monitored process did not exit within #{timeout} ms")
    end
  end

  @doc """
  Called inside a process: reports that process's exit as
  `{:down, pid, reason}` to `owner`. Returns once the monitor is in place, so
  even an exit right after (an `init/1` failure) is seen.
  """
  def watch_self(owner) do
    me = self()

    watcher =
      spawn(fn ->
        ref = Process.monitor(me)
        send(me, {:conformance_watching, self()})

        receive do
          {:DOWN, ^ref, :process, ^me, reason} -> send(owner, {:down, me, reason})
        end
      end)

    receive do: ({:conformance_watching, ^watcher} -> :ok)
  end

  @doc "Polls `fun` until it returns a truthy value (or `timeout` ms pass); returns the last value."
  def eventually(fun, timeout \\ 2_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_eventually(fun, deadline)
  end

  defp do_eventually(fun, deadline) do
    value = fun.()

    cond do
      value -> value
      System.monotonic_time(:millisecond) >= deadline -> value
      true -> Process.sleep(5) && do_eventually(fun, deadline)
    end
  end

  @doc "The current function of `pid`, once it has been hibernated (or whatever it is after 2 s)."
  def await_hibernated(pid) do
    eventually(fn ->
      case Process.info(pid, :current_function) do
        {:current_function, {:erlang, :hibernate, 3}} = cf -> cf
        _ -> false
      end
    end) || Process.info(pid, :current_function)
  end

  @doc "Removes and returns every message in the caller's mailbox."
  def flush(acc \\ []) do
    receive do
      msg -> flush([msg | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  @doc """
  Receives the next message matching `pattern`, or `:none` after `timeout`
  ms (default: 1 s, scaled by `GenNative.TestHelpers.wait_ms/1`). A timeout
  here is a semantic wait ("nothing arrives"), not a timing assertion.
  """
  defmacro next(pattern, timeout \\ nil) do
    timeout = timeout || quote(do: GenNative.TestHelpers.wait_ms(1_000))

    quote do
      receive do
        unquote(pattern) = msg -> msg
      after
        unquote(timeout) -> :none
      end
    end
  end

  @doc """
  Maps a result to a form where only real behavioural differences remain:

    * `{GenNative, fun, args}` location tuples become `{GenServer, fun, args}`;
    * `X.GenNative` server modules become `X.GenServer` (also inside text);
    * pids, refs and `conf_N` names become `{:pid, n}`, `{:ref, n}`,
      `{:name, n}`, numbered in order of first appearance, so that "the same
      pid in two places" is still checked;
    * stack traces become `:stacktrace` (frames legitimately differ);
    * in text: pids, refs, names, timestamps and stack-frame lines.
  """
  def normalize(term) do
    {term, _seen} = norm(term, %{})
    term
  end

  defp norm(pid, seen) when is_pid(pid), do: numbered(:pid, pid, seen)
  defp norm(ref, seen) when is_reference(ref), do: numbered(:ref, ref, seen)
  defp norm(port, seen) when is_port(port), do: {:port, seen}

  # A closure's environment holds `gen` and the server module of its side.
  defp norm(fun, seen) when is_function(fun) do
    info = Function.info(fun)
    {{:fun, info[:module], info[:name], info[:arity]}, seen}
  end

  defp norm(atom, seen) when is_atom(atom) do
    string = Atom.to_string(atom)

    cond do
      string =~ ~r/^conf_\d+$/ -> numbered(:name, atom, seen)
      string =~ ~r/^Elixir\..+\.GenNative$/ -> {server_module(string), seen}
      true -> {atom, seen}
    end
  end

  defp norm({GenNative, fun, args}, seen) when is_atom(fun) and is_list(args) do
    {args, seen} = norm(args, seen)
    {{GenServer, fun, args}, seen}
  end

  defp norm(tuple, seen) when is_tuple(tuple) do
    {list, seen} = norm_list(Tuple.to_list(tuple), seen)
    {List.to_tuple(list), seen}
  end

  defp norm(binary, seen) when is_binary(binary) do
    if String.valid?(binary), do: {norm_text(binary), seen}, else: {binary, seen}
  end

  defp norm(list, seen) when is_list(list) do
    cond do
      stacktrace?(list) ->
        {:stacktrace, seen}

      list != [] and List.ascii_printable?(list) ->
        {String.to_charlist(norm_text(List.to_string(list))), seen}

      true ->
        norm_list(list, seen)
    end
  end

  defp norm(%{} = map, seen) do
    {pairs, seen} =
      map
      |> Map.to_list()
      |> Enum.sort()
      |> Enum.map_reduce(seen, fn {k, v}, seen ->
        {k, seen} = norm(k, seen)
        {v, seen} = norm(v, seen)
        {{k, v}, seen}
      end)

    {Map.new(pairs), seen}
  end

  defp norm(other, seen), do: {other, seen}

  # Handles improper lists such as the `[:alias | ref]` call tags.
  defp norm_list([], seen), do: {[], seen}

  defp norm_list([head | tail], seen) do
    {head, seen} = norm(head, seen)
    {tail, seen} = if is_list(tail), do: norm_list(tail, seen), else: norm(tail, seen)
    {[head | tail], seen}
  end

  defp numbered(kind, value, seen) do
    case seen do
      %{^value => tag} ->
        {tag, seen}

      _ ->
        n = Enum.count(seen, fn {_, {k, _}} -> k == kind end) + 1
        {{kind, n}, Map.put(seen, value, {kind, n})}
    end
  end

  defp server_module(string) do
    string |> String.replace_suffix(".GenNative", ".GenServer") |> String.to_atom()
  end

  defp stacktrace?([_ | _] = list) do
    Enum.all?(list, fn
      {m, f, a, loc} when is_atom(m) and is_atom(f) and (is_integer(a) or is_list(a)) ->
        is_list(loc)

      _ ->
        false
    end)
  end

  defp stacktrace?(_), do: false

  # A stack frame as Exception.format_stacktrace prints it, e.g.
  #     (stdlib 4.2) gen_server.erl:1149: :gen_server.try_handle_call/4
  #     test/x_test.exs:12: anonymous fn/2 in X."test y"/1
  @frame ~r/^ {4}(?:\([a-z_]+(?: [\w.\-]+)?\) )?(?:[^\s:]+:\d+: )?(?:\S.*\/\d+|\(file\)|\(module\))[ \t]*(?:\n|$)/m

  @doc false
  def norm_text(text) do
    text
    |> String.replace(@frame, "")
    |> String.replace(~r/\d{2}:\d{2}:\d{2}\.\d{3} /, "")
    |> String.replace(~r/#PID<\d+\.\d+\.\d+>/, "#PID<>")
    |> String.replace(~r/<\d+\.\d+\.\d+>/, "<pid>")
    |> String.replace(~r/#Reference<[\d.]+>/, "#Reference<>")
    |> String.replace(~r/#Ref<[\d.]+>/, "#Ref<>")
    |> String.replace(~r/\bconf_\d+\b/, "conf_N")
    |> String.replace(~r/(?<=[A-Za-z0-9_])\.GenNative\b/, ".GenServer")
  end
end
