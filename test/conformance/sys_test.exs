defmodule Conformance.SysTest do
  use Conformance.Case, async: true

  import ExUnit.CaptureIO

  @moduletag :capture_log

  defserver StatusTwo do
    @impl true
    def init(state), do: {:ok, state}

    @impl true
    def handle_call(:state, _from, state), do: {:reply, state, state}

    @impl true
    def format_status(reason, [pdict, state]) do
      [data: [{'State', {:formatted2, reason, Keyword.has_key?(pdict, :"$initial_call"), state}}]]
    end
  end

  defserver StatusOne do
    @impl true
    def init(state), do: {:ok, state}

    @impl true
    def handle_call(:state, _from, state), do: {:reply, state, state}

    # format_status/1 (OTP 25) is not declared by Elixir 1.14's GenServer.
    def format_status(status), do: Map.update!(status, :state, &{:formatted1, &1})
  end

  defp server(gen, mod, state \\ :s0, opts \\ []) do
    start!(gen, mod, {self(), fn -> {:ok, state} end}, opts)
  end

  # GenNative may keep its own bookkeeping in the process dictionary under
  # "$gn..." keys; that is the one known internal difference in get_status.
  defp user_pdict(pdict) do
    pdict
    |> Enum.reject(fn {key, _} ->
      (is_atom(key) or is_binary(key)) and String.starts_with?(to_string(key), "$gn")
    end)
    |> Enum.sort()
  end

  defp status(pid) do
    {:status, _pid, module, [pdict, sys_state, parent, debug, misc]} = :sys.get_status(pid)
    {module, user_pdict(pdict), sys_state, parent, debug, misc}
  end

  describe "get_state/replace_state" do
    test "see and change the callback module's state, also while suspended" do
      result =
        conform(Scripted, fn gen, mod ->
          name = unique_name()
          pid = server(gen, mod, %{count: 1}, name: name)
          got = :sys.get_state(pid)
          by_name = :sys.get_state(name)
          replaced = :sys.replace_state(pid, &%{&1 | count: &1.count + 1})
          :ok = :sys.suspend(pid)
          suspended = :sys.get_state(pid)
          replaced_suspended = :sys.replace_state(name, &Map.put(&1, :while, :suspended))
          :ok = :sys.resume(pid)
          {got, by_name, replaced, suspended, replaced_suspended, gen.call(pid, :state)}
        end)

      assert result ==
               {%{count: 1}, %{count: 1}, %{count: 2}, %{count: 2},
                %{count: 2, while: :suspended}, %{count: 2, while: :suspended}}
    end

    test "a failing replace function raises and leaves the state unchanged" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod)
          {outcome(:sys.replace_state(pid, fn _ -> raise "nope" end)), gen.call(pid, :state)}
        end)

      assert {{:raise,
               %ErlangError{
                 original:
                   {:callback_failed, {:gen_server, :system_replace_state},
                    {:error, %RuntimeError{message: "nope"}}}
               }}, :s0} = result
    end
  end

  describe "get_status" do
    test "running server, started with start/3 and with start_link/3" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod, {:user, :state})
          lpid = server(gen, mod, {:user, :state}, link: true)
          {pid, status(pid), lpid, status(lpid), self()}
        end)

      assert {pid, {{:module, :gen_server}, pdict, :running, pid, [], misc}, lpid,
              {{:module, :gen_server}, lpdict, :running, test_pid, [], lmisc}, test_pid} = result

      assert pdict == lpdict
      assert pdict[:"$initial_call"] == {Scripted.GenServer, :init, 1}
      assert pdict[:"$ancestors"] == [test_pid]
      assert pdict[:conf_owner] == test_pid

      server = :erlang.pid_to_list(pid)

      assert misc == [
               header: 'Status for generic server ' ++ server,
               data: [{'Status', :running}, {'Parent', pid}, {'Logged events', []}],
               data: [{'State', {:user, :state}}]
             ]

      assert [
               header: _,
               data: [{'Status', :running}, {'Parent', ^test_pid}, {'Logged events', []}],
               data: [{'State', {:user, :state}}]
             ] = lmisc

      assert is_pid(lpid)
    end

    test "suspended, registered server with debug options" do
      result =
        conform(Scripted, fn gen, mod ->
          name = unique_name()
          pid = server(gen, mod, :s0, name: name, debug: [:statistics])
          :ok = :sys.suspend(pid)
          {_module, _pdict, sys_state, _parent, debug, misc} = status(name)
          :ok = :sys.resume(pid)
          {sys_state, Keyword.keys(debug), misc[:header]}
        end)

      assert {:suspended, [:statistics], header} = result
      assert List.to_string(header) =~ ~r/^Status for generic server conf_\d+$/
    end

    test "format_status/2 is applied" do
      result =
        conform(StatusTwo, fn gen, mod ->
          pid = start!(gen, mod, :raw)
          {_module, _pdict, _sys_state, _parent, _debug, misc} = status(pid)
          {Keyword.get_values(misc, :data) |> List.last(), gen.call(pid, :state)}
        end)

      assert result == {[{'State', {:formatted2, :normal, true, :raw}}], :raw}
    end

    test "format_status/1 is applied" do
      result =
        conform(StatusOne, fn gen, mod ->
          pid = start!(gen, mod, :raw)
          {_module, _pdict, _sys_state, _parent, _debug, misc} = status(pid)
          {Keyword.get_values(misc, :data) |> List.last(), gen.call(pid, :state)}
        end)

      assert result == {[{'State', {:formatted1, :raw}}], :raw}
    end
  end

  describe "suspend/resume" do
    test "calls time out while suspended and are served after resume; late replies never land" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod)
          suspend = :sys.suspend(pid)
          timed_out = outcome(gen.call(pid, :state, 50))
          :ok = gen.cast(pid, {:run, fn s -> {:noreply, {:cast_while_suspended, s}} end})
          resume = :sys.resume(pid)
          {suspend, timed_out, resume, gen.call(pid, :state), flush()}
        end)

      assert {:ok, {:exit, {:timeout, {GenServer, :call, [_pid, :state, 50]}}}, :ok,
              {:cast_while_suspended, :s0}, []} = result
    end
  end

  describe "change_code" do
    test "code_change/3 results while suspended" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod)
          :ok = :sys.suspend(pid)
          ok = :sys.change_code(pid, mod, :v1, fn old, s -> {:ok, {:upgraded, old, s}} end)
          after_ok = :sys.get_state(pid)
          error = :sys.change_code(pid, mod, :v2, fn _, _ -> {:error, :refused} end)
          after_error = :sys.get_state(pid)
          raised = :sys.change_code(pid, mod, :v3, fn _, _ -> raise "bad upgrade" end)
          after_raise = :sys.get_state(pid)
          down = :sys.change_code(pid, mod, {:down, :v0}, fn old, s -> {:ok, {old, s}} end)
          :ok = :sys.resume(pid)
          {ok, after_ok, error, after_error, raised, after_raise, down, gen.call(pid, :state)}
        end)

      upgraded = {:upgraded, :v1, :s0}

      assert {:ok, ^upgraded, {:error, {:error, :refused}}, ^upgraded,
              {:error, {:EXIT, {%RuntimeError{message: "bad upgrade"}, [_ | _]}}}, ^upgraded, :ok,
              {{:down, :v0}, ^upgraded}} = result
    end
  end

  describe "trace, log and statistics" do
    test ":sys.trace prints gen_server's *DBG* lines" do
      result =
        conform(Scripted, fn gen, mod ->
          owner = self()

          output =
            capture_io(fn ->
              pid = server(gen, mod, 0)
              :ok = :sys.trace(pid, true)
              0 = gen.call(pid, :state)
              :ok = gen.cast(pid, {:run, fn s -> {:noreply, s + 1} end})
              send(pid, :plain)
              {:info, :plain, 1} = next({:info, :plain, _})
              1 = gen.call(pid, {:run, fn _, s -> {:reply, s, s + 1} end})
              :ok = :sys.trace(pid, false)
              # Synchronous: everything traced above has been printed.
              2 = gen.call(pid, :state)
              send(owner, {:server, pid})
            end)

          {:server, pid} = next({:server, _})
          {pid, output}
        end)

      {pid, output} = result
      server = :erlang.pid_to_list(pid) |> List.to_string()

      lines =
        output
        |> String.replace(server, "SERVER")
        |> String.replace(~r/<\d+\.\d+\.\d+>/, "<pid>")
        |> String.split("\n", trim: true)

      assert [
               "*DBG* SERVER got call state from <pid>",
               "*DBG* SERVER sent 0 to <pid>, new state 0",
               "*DBG* SERVER got cast {run,#Fun<Elixir.Conformance.SysTest." <> _,
               "*DBG* SERVER new state 1",
               "*DBG* SERVER got plain",
               "*DBG* SERVER new state 1",
               "*DBG* SERVER got call {run,#Fun<Elixir.Conformance.SysTest." <> _,
               "*DBG* SERVER sent 1 to <pid>, new state 2"
             ] = lines
    end

    test ":sys.log and :sys.statistics see every request" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod, :s0)
          :ok = :sys.log(pid, true)
          :ok = :sys.statistics(pid, true)
          :s0 = gen.call(pid, :state)
          :ok = gen.cast(pid, :a_cast)
          send(pid, :a_message)
          :s0 = gen.call(pid, :state)
          {:ok, events} = :sys.log(pid, :get)
          {:ok, stats} = :sys.statistics(pid, :get)
          {events, Keyword.take(stats, [:messages_in, :messages_out]), flush()}
        end)

      assert {[
                {:in, {:"$gen_call", from, :state}},
                {:out, :s0, from, :s0},
                {:in, {:"$gen_cast", :a_cast}},
                {:noreply, :s0},
                {:in, :a_message},
                {:noreply, :s0},
                {:in, {:"$gen_call", from2, :state}},
                {:out, :s0, from2, :s0}
              ], [messages_in: 4, messages_out: 2], [_, _]} = result
    end
  end
end
