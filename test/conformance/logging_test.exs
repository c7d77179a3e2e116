defmodule Conformance.LoggingTest do
  # Not async: a log capture sees every process's log events.
  use Conformance.Case, async: false

  import ExUnit.CaptureLog

  defserver Crashy do
    @impl true
    def init(state), do: {:ok, state}

    @impl true
    def handle_call(:raise, _from, _state), do: raise("boom in call")
    def handle_call(:bad_return, _from, _state), do: :bogus
    def handle_call({:stop, reason}, _from, state), do: {:stop, reason, :stopping, state}

    @impl true
    def handle_cast(:raise, _state), do: raise(ArgumentError, "boom in cast")
    def handle_cast({:exit, reason}, _state), do: exit(reason)

    @impl true
    def handle_info({:stop, reason}, state), do: {:stop, reason, state}
  end

  defserver Formatted do
    @impl true
    def init(state), do: {:ok, state}

    @impl true
    def handle_cast(:crash, state), do: {:stop, :crashed, state}

    @impl true
    def format_status(:terminate, [_pdict, state]), do: {:redacted, map_size(state)}

    def format_status(:normal, [_pdict, state]),
      do: [data: [{'State', {:redacted, map_size(state)}}]]
  end

  defserver Formatted1 do
    @impl true
    def init(state), do: {:ok, state}

    @impl true
    def handle_cast(:crash, state), do: {:stop, :crashed, state}

    def format_status(status), do: %{status | state: {:redacted1, map_size(status.state)}}
  end

  # Runs `fun` with a fresh server, waits for the server to exit (if it does)
  # and for Logger to print, and returns the captured log normalised.
  defp log_of(gen, mod, state, fun, opts \\ []) do
    capture_log(fn ->
      pid = start!(gen, mod, state, opts)
      ref = Process.monitor(pid)
      fun.(pid)

      receive do
        {:DOWN, ^ref, _, _, _} -> :ok
      after
        200 -> :ok
      end

      Logger.flush()
    end)
    |> Conformance.norm_text()
  end

  defp error_lines(log) do
    log |> String.split("\n", trim: true)
  end

  test "a raise in handle_call/3 logs the GenServer crash report" do
    result =
      conform(Crashy, fn gen, mod ->
        log_of(gen, mod, %{some: :state}, fn pid -> outcome(gen.call(pid, :raise)) end)
        |> error_lines()
      end)

    assert [
             "[error] GenServer #PID<> terminating",
             "** (RuntimeError) boom in call",
             "Last message (from #PID<>): :raise",
             "State: %{some: :state}",
             "Client #PID<> is alive"
           ] = result
  end

  test "a raise in handle_cast/2 logs the crash report with the last message" do
    result =
      conform(Crashy, fn gen, mod ->
        log_of(gen, mod, :s0, fn pid -> gen.cast(pid, :raise) end) |> error_lines()
      end)

    assert result == [
             "[error] GenServer #PID<> terminating",
             "** (ArgumentError) boom in cast",
             "Last message: {:\"$gen_cast\", :raise}",
             "State: :s0"
           ]
  end

  test "a named server's report names it" do
    result =
      conform(Crashy, fn gen, mod ->
        name = unique_name()

        log_of(gen, mod, :s0, fn _pid -> gen.cast(name, {:exit, :custom_reason}) end, name: name)
        |> error_lines()
      end)

    assert result == [
             "[error] GenServer :conf_N terminating",
             "** (stop) :custom_reason",
             "Last message: {:\"$gen_cast\", {:exit, :custom_reason}}",
             "State: :s0"
           ]
  end

  test "a bad return value is logged with the reason" do
    result =
      conform(Crashy, fn gen, mod ->
        log_of(gen, mod, :s0, fn pid -> outcome(gen.call(pid, :bad_return)) end) |> error_lines()
      end)

    assert [
             "[error] GenServer #PID<> terminating",
             "** (stop) bad return value: :bogus",
             "Last message (from #PID<>): :bad_return",
             "State: :s0",
             "Client #PID<> is alive"
           ] = result
  end

  test "stop/2 with an abnormal reason is logged" do
    result =
      conform(Crashy, fn gen, mod ->
        log_of(gen, mod, :s0, fn pid -> gen.stop(pid, :abnormal) end) |> error_lines()
      end)

    assert [
             "[error] GenServer #PID<> terminating",
             "** (stop) :abnormal",
             "Last message: []",
             "State: :s0"
           ] = result
  end

  test ":normal, :shutdown and {:shutdown, _} log nothing" do
    result =
      conform(Crashy, fn gen, mod ->
        for reason <- [:normal, :shutdown, {:shutdown, :bye}] do
          {log_of(gen, mod, :s0, fn pid -> gen.call(pid, {:stop, reason}) end),
           log_of(gen, mod, :s0, fn pid -> send(pid, {:stop, reason}) end),
           log_of(gen, mod, :s0, fn pid -> gen.stop(pid, reason) end)}
        end
      end)

    assert result == List.duplicate({"", "", ""}, 3)
  end

  test "init failures, :kill and untrapped exit signals log no GenServer report" do
    result =
      conform(Scripted, fn gen, mod ->
        for init <- [fn -> raise "init" end, fn -> {:stop, :no} end, fn -> exit(:init_exit) end] do
          capture_log(fn ->
            {:error, _} = start(gen, mod, {self(), init})
            Logger.flush()
          end)
        end ++
          for signal <- [:kill, :some_signal] do
            log_of(gen, mod, {self(), fn -> {:ok, :s0} end}, &Process.exit(&1, signal))
          end
      end)

    assert result == ["", "", "", "", ""]
  end

  test "format_status/2 is applied to the state in the report" do
    result =
      conform(Formatted, fn gen, mod ->
        log_of(gen, mod, %{secret: 1, other: 2}, &gen.cast(&1, :crash)) |> error_lines()
      end)

    assert result == [
             "[error] GenServer #PID<> terminating",
             "** (stop) :crashed",
             "Last message: {:\"$gen_cast\", :crash}",
             "State: {:redacted, 2}"
           ]
  end

  test "format_status/1 is applied to the state in the report" do
    result =
      conform(Formatted1, fn gen, mod ->
        log_of(gen, mod, %{secret: 1}, &gen.cast(&1, :crash)) |> error_lines()
      end)

    assert result == [
             "[error] GenServer #PID<> terminating",
             "** (stop) :crashed",
             "Last message: {:\"$gen_cast\", :crash}",
             "State: {:redacted1, 1}"
           ]
  end

  test "the default handle_info/2 logs the unexpected message and keeps running" do
    result =
      conform(Defaults, fn gen, mod ->
        name = unique_name()

        log =
          capture_log(fn ->
            pid = start!(gen, mod, :s0)
            send(pid, {:unexpected, 1})
            :s0 = :sys.get_state(pid)
            named = start!(gen, mod, :s0, name: name)
            send(named, :unexpected_too)
            :s0 = :sys.get_state(named)
            Logger.flush()
          end)

        Conformance.norm_text(log) |> error_lines()
      end)

    assert result == [
             "[error] Conformance.Defaults.GenServer #PID<> received unexpected message in handle_info/2: {:unexpected, 1}",
             "[error] Conformance.Defaults.GenServer :conf_N received unexpected message in handle_info/2: :unexpected_too"
           ]
  end
end
