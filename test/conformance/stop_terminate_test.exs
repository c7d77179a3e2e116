defmodule Conformance.StopTerminateTest do
  use Conformance.Case, async: true

  @moduletag :capture_log

  defserver Terminator do
    @impl true
    def init(mode), do: {:ok, mode}

    @impl true
    def terminate(_reason, :raise_in_terminate), do: raise("terminate failed")
    def terminate(_reason, :slow_terminate), do: Process.sleep(:infinity)
    def terminate(_reason, _mode), do: :any_value
  end

  defp server(gen, mod, init \\ fn -> {:ok, :s0} end, opts \\ []) do
    start!(gen, mod, {self(), init}, opts)
  end

  defp trapping do
    fn ->
      Process.flag(:trap_exit, true)
      {:ok, :s0}
    end
  end

  # Starts the server from a separate parent process, linked to it, and
  # returns {parent, server}. The parent exits with the reason it is sent.
  defp start_under_parent(gen, mod, init) do
    owner = self()

    parent =
      spawn(fn ->
        {:ok, pid} = gen.start_link(mod, {owner, init})
        send(owner, {:started, self(), pid})
        receive do: ({:exit_with, reason} -> exit(reason))
      end)

    {:started, ^parent, pid} = next({:started, ^parent, _})
    track(pid)
    {parent, pid}
  end

  describe "stop/1,2,3" do
    test "returns :ok and terminate/2 gets the reason, also when not trapping exits" do
      result =
        conform(Scripted, fn gen, mod ->
          for args <- [[], [:normal], [:shutdown], [{:shutdown, :bye}], [:custom, 5_000]] do
            pid = server(gen, mod)
            ref = Process.monitor(pid)
            res = apply(gen, :stop, [pid | args])
            {res, next({:terminate, _, _}), await_exit(ref)}
          end
        end)

      assert result == [
               {:ok, {:terminate, :normal, :s0}, :normal},
               {:ok, {:terminate, :normal, :s0}, :normal},
               {:ok, {:terminate, :shutdown, :s0}, :shutdown},
               {:ok, {:terminate, {:shutdown, :bye}, :s0}, {:shutdown, :bye}},
               {:ok, {:terminate, :custom, :s0}, :custom}
             ]
    end

    test "stops servers by name" do
      result =
        conform(Scripted, fn gen, mod ->
          for name <- [unique_name(), {:global, unique_name()}, {:via, :global, unique_name()}] do
            pid = server(gen, mod, fn -> {:ok, :s0} end, name: name)
            ref = Process.monitor(pid)
            {gen.stop(name), await_exit(ref), gen.whereis(name)}
          end
        end)

      assert result == List.duplicate({:ok, :normal, nil}, 3)
    end

    test "a dead or unknown server exits {:noproc, location}" do
      result =
        conform(Scripted, fn gen, _mod ->
          dead = spawn(fn -> :ok end)
          await_exit(dead)

          for server <- [dead, unique_name(), nil, {:global, unique_name()}] do
            outcome(gen.stop(server))
          end ++ [outcome(gen.stop(dead, :shutdown, 100))]
        end)

      assert [
               {:exit, {:noproc, {GenServer, :stop, [dead, :normal, :infinity]}}},
               {:exit, {:noproc, {GenServer, :stop, [name, :normal, :infinity]}}},
               {:exit, {:noproc, {GenServer, :stop, [nil, :normal, :infinity]}}},
               {:exit, {:noproc, {GenServer, :stop, [{:global, _}, :normal, :infinity]}}},
               {:exit, {:noproc, {GenServer, :stop, [dead, :shutdown, 100]}}}
             ] = result

      assert is_pid(dead) and is_atom(name)
    end

    test "stopping yourself exits {:calling_self, location}" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod)

          from_server =
            gen.call(pid, {:run, fn _, s -> {:reply, outcome(gen.stop(self(), :normal)), s} end})

          {from_server, outcome(gen.stop(self(), :normal, 100)), Process.alive?(pid)}
        end)

      assert {{:exit, {:calling_self, {GenServer, :stop, [server, :normal, :infinity]}}},
              {:exit, {:calling_self, {GenServer, :stop, [caller, :normal, 100]}}}, true} = result

      assert is_pid(server) and is_pid(caller)
    end

    test "a terminate/2 slower than the timeout: {:timeout, location}" do
      result =
        conform(Terminator, fn gen, mod ->
          pid = start!(gen, mod, :slow_terminate)
          # The server is left in terminate/2; only the stop request gives up.
          {outcome(gen.stop(pid, :normal, 50)), Process.alive?(pid), pid}
        end)

      assert {{:exit, {:timeout, {GenServer, :stop, [pid, :normal, 50]}}}, true, pid} = result
    end

    test "a raise in terminate/2 makes stop exit with the crash reason" do
      result =
        conform(Terminator, fn gen, mod ->
          pid = start!(gen, mod, :raise_in_terminate)
          ref = Process.monitor(pid)
          {outcome(gen.stop(pid, :normal)), await_exit(ref)}
        end)

      assert {{:exit,
               {{%RuntimeError{message: "terminate failed"}, [_ | _]},
                {GenServer, :stop, [_pid, :normal, :infinity]}}},
              {%RuntimeError{message: "terminate failed"}, [_ | _]}} = result
    end
  end

  describe "when terminate/2 runs" do
    test "the parent's exit runs terminate/2 when trapping exits" do
      result =
        conform(Scripted, fn gen, mod ->
          {parent, pid} = start_under_parent(gen, mod, trapping())
          ref = Process.monitor(pid)
          send(parent, {:exit_with, :shutdown})
          {next({:terminate, _, _}), await_exit(ref)}
        end)

      assert result == {{:terminate, :shutdown, :s0}, :shutdown}
    end

    test "the parent's exit does not run terminate/2 when not trapping exits" do
      result =
        conform(Scripted, fn gen, mod ->
          {parent, pid} = start_under_parent(gen, mod, fn -> {:ok, :s0} end)
          ref = Process.monitor(pid)
          send(parent, {:exit_with, :shutdown})
          {await_exit(ref), next({:terminate, _, _}, 100)}
        end)

      assert result == {:shutdown, :none}
    end

    test "an exit signal from a non-parent reaches handle_info/2 when trapping" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod, trapping())
          Process.exit(pid, :shutdown)
          {next({:info, {:EXIT, _, _}, _}), Process.alive?(pid), next({:terminate, _, _}, 100)}
        end)

      assert {{:info, {:EXIT, from, :shutdown}, :s0}, true, :none} = result
      assert is_pid(from)
    end

    test "an untrapped exit signal and :kill skip terminate/2" do
      result =
        conform(Scripted, fn gen, mod ->
          for {init, reason} <- [
                {fn -> {:ok, :s0} end, :boom},
                {fn -> {:ok, :s0} end, :kill},
                {trapping(), :kill}
              ] do
            pid = server(gen, mod, init)
            ref = Process.monitor(pid)
            Process.exit(pid, reason)
            {await_exit(ref), next({:terminate, _, _}, 100)}
          end
        end)

      assert result == [{:boom, :none}, {:killed, :none}, {:killed, :none}]
    end

    test "terminate/2's return value does not change the exit reason" do
      result =
        conform(Terminator, fn gen, mod ->
          pid = start!(gen, mod, :ok)
          ref = Process.monitor(pid)
          :ok = gen.stop(pid, {:shutdown, :reason})
          await_exit(ref)
        end)

      assert result == {:shutdown, :reason}
    end

    test "a supervisor's shutdown runs terminate/2 for a trapping child" do
      result =
        conform(Scripted, fn _gen, mod ->
          {:ok, sup} =
            Supervisor.start_link([{mod, {self(), trapping()}}], strategy: :one_for_one)

          track(sup)
          [{_, pid, _, _}] = Supervisor.which_children(sup)
          ref = Process.monitor(pid)
          :ok = Supervisor.stop(sup)
          {next({:terminate, _, _}), await_exit(ref)}
        end)

      assert result == {{:terminate, :shutdown, :s0}, :shutdown}
    end
  end
end
