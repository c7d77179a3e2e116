defmodule Conformance.CastInfoTest do
  use Conformance.Case, async: true

  @moduletag :capture_log

  # Delivers `{:run, fun}` through cast or as a plain message.
  defp deliver(:cast, gen, pid, fun), do: gen.cast(pid, run(fun))
  defp deliver(:info, _gen, pid, fun), do: send(pid, run(fun)) && :ok

  describe "cast/2" do
    test "returns :ok and runs handle_cast/2" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)
          res = gen.cast(pid, run(fn s -> {:noreply, {:cast, s}} end))
          {res, gen.call(pid, :state)}
        end)

      assert result == {:ok, {:cast, :s0}}
    end

    test "returns :ok for dead pids, unknown names and unreachable nodes" do
      result =
        conform(Scripted, fn gen, _mod ->
          for server <- missing_servers() ++ [{unique_name(), @absent}] do
            gen.cast(server, :hello)
          end
        end)

      assert result == List.duplicate(:ok, 7)
    end

    test "sends {:\"$gen_cast\", request} to a plain process, by pid and by name" do
      result =
        conform(Scripted, fn gen, _mod ->
          name = unique_name()
          global = unique_name()
          Process.register(self(), name)
          :yes = :global.register_name(global, self())

          res =
            for server <- [
                  self(),
                  name,
                  {name, node()},
                  {:global, global},
                  {:via, :global, global}
                ] do
              gen.cast(server, {:req, server})
            end

          Process.unregister(name)
          :global.unregister_name(global)
          {res, flush()}
        end)

      assert {[:ok, :ok, :ok, :ok, :ok],
              [
                {:"$gen_cast", {:req, pid}},
                {:"$gen_cast", {:req, name}},
                {:"$gen_cast", {:req, {name, node}}},
                {:"$gen_cast", {:req, {:global, global}}},
                {:"$gen_cast", {:req, {:via, :global, global}}}
              ]} = result

      assert is_pid(pid) and is_atom(name) and node == node() and is_atom(global)
    end

    test "the default handle_cast/2 raises and stops the server" do
      result =
        conform(Defaults, fn gen, mod ->
          pid = start!(gen, mod, :s0)
          ref = Process.monitor(pid)
          {gen.cast(pid, :hello), await_exit(ref)}
        end)

      assert {:ok, {%RuntimeError{message: message}, [_ | _]}} = result

      assert message =~
               ~r/^attempted to cast GenServer #PID<.*> but no handle_cast\/2 clause was provided$/
    end
  end

  describe "handle_info/2" do
    test "plain messages reach handle_info/2" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)
          send(pid, :plain)
          send(pid, {:tuple, 1})
          {next({:info, :plain, _}), next({:info, {:tuple, 1}, _})}
        end)

      assert result == {{:info, :plain, :s0}, {:info, {:tuple, 1}, :s0}}
    end

    test "the default handle_info/2 keeps the server running" do
      result =
        conform(Defaults, fn gen, mod ->
          pid = start!(gen, mod, :s0)
          send(pid, :unexpected)
          {:sys.get_state(pid), Process.alive?(pid)}
        end)

      assert result == {:s0, true}
    end

    test "{:EXIT, pid, reason} from a linked process arrives when trapping exits" do
      result =
        conform(Scripted, fn gen, mod ->
          owner = self()

          init = fn ->
            Process.flag(:trap_exit, true)
            linked = spawn_link(fn -> receive do: (:go -> exit(:linked_exit)) end)
            send(owner, {:linked, linked})
            {:ok, :s0}
          end

          pid = start!(gen, mod, {owner, init})
          {:linked, linked} = next({:linked, _})
          send(linked, :go)
          {:info, {:EXIT, from, reason}, state} = next({:info, {:EXIT, _, _}, _})
          {from == linked, reason, state, Process.alive?(pid)}
        end)

      assert result == {true, :linked_exit, :s0, true}
    end
  end

  describe "return values of handle_cast/2 and handle_info/2" do
    for via <- [:cast, :info] do
      @via via

      test "#{via}: {:noreply, state, timeout} delivers :timeout" do
        result =
          conform(Scripted, fn gen, mod ->
            pid = scripted_server(gen, mod)
            :ok = deliver(@via, gen, pid, fn s -> {:noreply, {:timed, s}, 10} end)
            next({:info, :timeout, _})
          end)

        assert result == {:info, :timeout, {:timed, :s0}}
      end

      test "#{via}: {:noreply, state, :hibernate} hibernates" do
        result =
          conform(Scripted, fn gen, mod ->
            pid = scripted_server(gen, mod)
            :ok = deliver(@via, gen, pid, fn s -> {:noreply, {:hib, s}, :hibernate} end)
            {await_hibernated(pid), gen.call(pid, :state)}
          end)

        assert result == {{:current_function, {:erlang, :hibernate, 3}}, {:hib, :s0}}
      end

      test "#{via}: {:noreply, state, {:continue, arg}} runs handle_continue/2" do
        result =
          conform(Scripted, fn gen, mod ->
            pid = scripted_server(gen, mod)
            :ok = deliver(@via, gen, pid, fn s -> {:noreply, {:c, s}, {:continue, :next}} end)
            {next({:continue, :next, _}), gen.call(pid, :state)}
          end)

        assert result == {{:continue, :next, {:c, :s0}}, {:c, :s0}}
      end

      test "#{via}: {:stop, reason, state} runs terminate/2 and exits with reason" do
        result =
          conform(Scripted, fn gen, mod ->
            for reason <- [:normal, {:shutdown, :done}, :custom] do
              pid = scripted_server(gen, mod)
              ref = Process.monitor(pid)
              :ok = deliver(@via, gen, pid, fn s -> {:stop, reason, {:last, s}} end)
              {next({:terminate, _, _}), await_exit(ref)}
            end
          end)

        assert result == [
                 {{:terminate, :normal, {:last, :s0}}, :normal},
                 {{:terminate, {:shutdown, :done}, {:last, :s0}}, {:shutdown, :done}},
                 {{:terminate, :custom, {:last, :s0}}, :custom}
               ]
      end

      test "#{via}: a throw is taken as the return value" do
        result =
          conform(Scripted, fn gen, mod ->
            pid = scripted_server(gen, mod)
            ref = Process.monitor(pid)
            :ok = deliver(@via, gen, pid, fn s -> throw({:noreply, {:thrown, s}}) end)
            state = gen.call(pid, :state)
            :ok = deliver(@via, gen, pid, fn s -> throw({:stop, :thrown_stop, s}) end)
            {state, next({:terminate, _, _}), await_exit(ref)}
          end)

        assert result ==
                 {{:thrown, :s0}, {:terminate, :thrown_stop, {:thrown, :s0}}, :thrown_stop}
      end

      test "#{via}: a raise, an exit and a bad return stop the server through terminate/2" do
        result =
          conform(Scripted, fn gen, mod ->
            for fun <- [
                  fn _ -> raise ArgumentError, "bad" end,
                  fn _ -> exit(:cast_exit) end,
                  fn _ -> {:reply, :no_reply_in_cast, :s} end
                ] do
              pid = scripted_server(gen, mod)
              ref = Process.monitor(pid)
              :ok = deliver(@via, gen, pid, fun)
              {next({:terminate, _, _}), await_exit(ref)}
            end
          end)

        assert [
                 {{:terminate, {%ArgumentError{message: "bad"}, [_ | _]}, :s0},
                  {%ArgumentError{message: "bad"}, [_ | _]}},
                 {{:terminate, :cast_exit, :s0}, :cast_exit},
                 {{:terminate, {:bad_return_value, {:reply, :no_reply_in_cast, :s}}, :s0},
                  {:bad_return_value, {:reply, :no_reply_in_cast, :s}}}
               ] = result
      end
    end
  end

  describe "abcast/2,3" do
    test "returns :abcast whatever the nodes and names" do
      result =
        conform(Recorder, fn gen, mod ->
          name = unique_name()
          start!(gen, mod, [], name: name)

          {gen.abcast(name, :a), gen.abcast([node()], name, :b), gen.abcast([@absent], name, :c),
           gen.abcast([], name, :d), gen.call(name, :log)}
        end)

      assert result == {:abcast, :abcast, :abcast, :abcast, [{:cast, :a}, {:cast, :b}]}
    end
  end
end
