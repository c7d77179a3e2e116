defmodule Conformance.CallTest do
  use Conformance.Case, async: true

  @moduletag :capture_log

  describe "replies" do
    test "{:reply, reply, state}" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)
          reply = gen.call(pid, run(fn _from, s -> {:reply, {:got, s}, :s1} end))
          {reply, gen.call(pid, :state, :infinity)}
        end)

      assert result == {{:got, :s0}, :s1}
    end

    test "from is {caller_pid, tag}" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)
          {caller, _tag} = from = gen.call(pid, run(fn from, s -> {:reply, from, s} end))
          {from, caller == self()}
        end)

      assert {{_caller, [:alias | ref]}, true} = result
      assert is_reference(ref)
    end

    test "{:noreply, state} then reply/2 from another process" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)
          owner = self()

          reply =
            gen.call(
              pid,
              run(fn from, s ->
                spawn(fn -> send(owner, {:reply_returned, gen.reply(from, {:deferred, s})}) end)
                {:noreply, :s1}
              end)
            )

          {reply, next({:reply_returned, _}), gen.call(pid, :state)}
        end)

      assert result == {{:deferred, :s0}, {:reply_returned, :ok}, :s1}
    end

    test "reply/2 inside handle_call/3, then {:noreply, state}" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)

          reply =
            gen.call(
              pid,
              run(fn from, s ->
                :ok = gen.reply(from, :early)
                {:noreply, s}
              end)
            )

          {reply, flush()}
        end)

      assert result == {:early, []}
    end

    test "{:reply, reply, state, timeout | :hibernate | {:continue, arg}}" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)
          timeout = gen.call(pid, run(fn _, s -> {:reply, :with_timeout, s, 10} end))
          timeout_msg = next({:info, :timeout, _})
          hibernate = gen.call(pid, run(fn _, s -> {:reply, :with_hibernate, s, :hibernate} end))
          hibernated = await_hibernated(pid)
          cont = run(fn s -> {:noreply, {:continued, s}} end)

          continue =
            gen.call(pid, run(fn _, s -> {:reply, :with_continue, s, {:continue, cont}} end))

          {timeout, timeout_msg, hibernate, hibernated, continue, gen.call(pid, :state)}
        end)

      assert result ==
               {:with_timeout, {:info, :timeout, :s0}, :with_hibernate,
                {:current_function, {:erlang, :hibernate, 3}}, :with_continue, {:continued, :s0}}
    end

    test "a throw in handle_call/3 is taken as the return value" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)
          reply = gen.call(pid, run(fn _, s -> throw({:reply, :thrown, {:after_throw, s}}) end))
          {reply, gen.call(pid, :state)}
        end)

      assert result == {:thrown, {:after_throw, :s0}}
    end

    test "call by every server form" do
      result =
        conform(Scripted, fn gen, mod ->
          atom = unique_name()
          global = unique_name()
          via = unique_name()
          pid = scripted_server(gen, mod)
          start!(gen, mod, {self(), fn -> {:ok, :atom} end}, name: atom)
          start!(gen, mod, {self(), fn -> {:ok, :global} end}, name: {:global, global})
          start!(gen, mod, {self(), fn -> {:ok, :via} end}, name: {:via, :global, via})

          for server <- [pid, atom, {atom, node()}, {:global, global}, {:via, :global, via}] do
            gen.call(server, :state)
          end
        end)

      assert result == [:s0, :atom, :atom, :global, :via]
    end

    test "call with an :infinity timeout" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)
          gen.call(pid, :state, :infinity)
        end)

      assert result == :s0
    end
  end

  describe "wire format" do
    test "raw {:\"$gen_call\", {pid, tag}, request} with a ref tag and an alias tag" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)
          ref = make_ref()
          send(pid, {:"$gen_call", {self(), ref}, :state})
          by_ref = next({^ref, _})
          alias = :erlang.alias()
          send(pid, {:"$gen_call", {self(), [:alias | alias]}, :state})
          by_alias = next({[:alias | ^alias], _})
          :erlang.unalias(alias)
          {by_ref, by_alias, flush()}
        end)

      assert {{ref, :s0}, {[:alias | alias], :s0}, []} = result
      assert is_reference(ref) and is_reference(alias)
    end

    test "reply/2 answers every tag form, directly and from another process" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)

          direct = fn _from, s -> {:reply, {:direct, s}, s} end

          deferred = fn from, s ->
            spawn(fn -> gen.reply(from, {:deferred, s}) end)
            {:noreply, s}
          end

          for fun <- [direct, deferred] do
            ref = make_ref()
            send(pid, {:"$gen_call", {self(), ref}, run(fun)})
            by_ref = next({^ref, _})
            alias = :erlang.alias()
            send(pid, {:"$gen_call", {self(), [:alias | alias]}, run(fun)})
            by_alias = next({[:alias | ^alias], _})
            # The form gen uses when a tag carries extra data after the alias.
            send(pid, {:"$gen_call", {self(), [[:alias | alias] | :extra]}, run(fun)})
            by_nested = next({[[:alias | ^alias] | :extra], _})
            :erlang.unalias(alias)
            {by_ref, by_alias, by_nested, flush()}
          end
        end)

      assert [
               {{_, {:direct, :s0}}, {[:alias | _], {:direct, :s0}},
                {[[:alias | _] | :extra], {:direct, :s0}}, []},
               {{_, {:deferred, :s0}}, {[:alias | _], {:deferred, :s0}},
                {[[:alias | _] | :extra], {:deferred, :s0}}, []}
             ] = result
    end

    test "call/3 sends the standard request to a plain process and takes the standard reply" do
      result =
        conform(Scripted, fn gen, _mod ->
          owner = self()

          raw =
            spawn(fn ->
              receive do
                {:"$gen_call", {_pid, _tag} = from, _req} = msg ->
                  send(owner, {:raw_got, msg})
                  GenServer.reply(from, :raw_reply)
              end
            end)

          reply = gen.call(raw, :hello)
          {:raw_got, {_, {caller, _}, _} = msg} = next({:raw_got, _})
          {reply, msg, caller == self()}
        end)

      assert {:raw_reply, {:"$gen_call", {_, [:alias | _]}, :hello}, true} = result
    end
  end

  describe "exits" do
    test "timeout exits {:timeout, location} and the late reply never lands" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)
          request = run(fn from, _ -> {:noreply, from} end)
          exit = outcome(gen.call(pid, request, 50))

          :ok =
            gen.cast(
              pid,
              run(fn from ->
                gen.reply(from, :too_late)
                {:noreply, :replied}
              end)
            )

          # The call below is answered after the late reply was sent, by the
          # same process, so a late reply that could land would be here now.
          {exit, gen.call(pid, :state), flush(), pid}
        end)

      assert {{:exit, {:timeout, {GenServer, :call, [pid, request, 50]}}}, :replied, [], pid} =
               result

      assert {:run, fun} = request
      assert is_function(fun, 2)
    end

    test "a non-integer, non-:infinity or negative timeout raises FunctionClauseError" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)

          for timeout <- [:bad, 1.5, -1, nil] do
            case outcome(gen.call(pid, :state, timeout)) do
              {:raise, %FunctionClauseError{} = e} -> {:raise, e.__struct__}
              other -> other
            end
          end
        end)

      assert result == List.duplicate({:raise, FunctionClauseError}, 4)
    end

    test "noproc for a dead pid and unknown names" do
      result =
        conform(Scripted, fn gen, _mod ->
          for server <- missing_servers(), do: outcome(gen.call(server, :ping))
        end)

      assert [
               {:exit, {:noproc, {GenServer, :call, [dead, :ping, 5000]}}},
               {:exit, {:noproc, {GenServer, :call, [atom, :ping, 5000]}}},
               {:exit, {:noproc, {GenServer, :call, [nil, :ping, 5000]}}},
               {:exit, {:noproc, {GenServer, :call, [{:global, _}, :ping, 5000]}}},
               {:exit, {:noproc, {GenServer, :call, [{:via, :global, _}, :ping, 5000]}}},
               {:exit, {:noproc, {GenServer, :call, [{_, node}, :ping, 5000]}}}
             ] = result

      assert is_pid(dead) and is_atom(atom) and node == node()
    end

    test "calling yourself exits {:calling_self, location}, by pid and by name" do
      result =
        conform(Scripted, fn gen, mod ->
          name = unique_name()
          global = unique_name()
          Process.register(self(), name)
          :yes = :global.register_name(global, self())

          from_test =
            for server <- [self(), name, {:global, global}, {:via, :global, global}] do
              outcome(gen.call(server, :ping, 100))
            end

          Process.unregister(name)
          :global.unregister_name(global)
          sname = unique_name()
          start!(gen, mod, {self(), fn -> {:ok, nil} end}, name: sname)

          from_server =
            gen.call(
              sname,
              run(fn _, s ->
                {:reply, {outcome(gen.call(self(), :state)), outcome(gen.call(sname, :state))}, s}
              end)
            )

          {from_test, from_server}
        end)

      assert {[
                {:exit, {:calling_self, {GenServer, :call, [pid, :ping, 100]}}},
                {:exit, {:calling_self, {GenServer, :call, [name, :ping, 100]}}},
                {:exit, {:calling_self, {GenServer, :call, [{:global, global}, :ping, 100]}}},
                {:exit,
                 {:calling_self, {GenServer, :call, [{:via, :global, global}, :ping, 100]}}}
              ],
              {{:exit, {:calling_self, {GenServer, :call, [server, :state, 5000]}}},
               {:exit, {:calling_self, {GenServer, :call, [sname, :state, 5000]}}}}} = result

      assert is_pid(pid) and is_pid(server) and is_atom(name) and is_atom(global) and
               is_atom(sname)
    end

    test "{name, node} on a non-distributed node exits {{:nodedown, node}, location}" do
      result =
        conform(Scripted, fn gen, _mod ->
          name = unique_name()

          {outcome(gen.call({name, @absent}, :ping)),
           outcome(gen.call({name, @absent}, :ping, 100))}
        end)

      assert {{:exit, {{:nodedown, @absent}, {GenServer, :call, [{name, @absent}, :ping, 5000]}}},
              {:exit, {{:nodedown, @absent}, {GenServer, :call, [{name, @absent}, :ping, 100]}}}} =
               result

      assert is_atom(name)
    end

    test "the server killed during the call: {reason, location} with the default 5000" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)

          request =
            run(fn _, s ->
              me = self()
              spawn(fn -> Process.exit(me, :kill) end)
              {:noreply, s}
            end)

          {outcome(gen.call(pid, request)), pid, flush()}
        end)

      assert {{:exit, {:killed, {GenServer, :call, [pid, {:run, _}, 5000]}}}, pid, []} = result
    end

    test "a raise in handle_call/3: {{exception, stacktrace}, location}, terminate/2 runs" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)
          ref = Process.monitor(pid)
          exit = outcome(gen.call(pid, run(fn _, _ -> raise "boom in call" end)))
          {exit, await_exit(ref), next({:terminate, _, _})}
        end)

      assert {{:exit,
               {{%RuntimeError{message: "boom in call"}, [_ | _]}, {GenServer, :call, _loc}}},
              {%RuntimeError{message: "boom in call"}, [_ | _]},
              {:terminate, {%RuntimeError{message: "boom in call"}, [_ | _]}, :s0}} = result
    end

    test "an exit in handle_call/3: {reason, location}, terminate/2 runs" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)
          ref = Process.monitor(pid)
          exit = outcome(gen.call(pid, run(fn _, _ -> exit(:call_exit) end)))
          {exit, await_exit(ref), next({:terminate, _, _})}
        end)

      assert {{:exit, {:call_exit, {GenServer, :call, [_pid, _request, 5000]}}}, :call_exit,
              {:terminate, :call_exit, :s0}} = result
    end

    test "a bad return: server reason and caller reason {:bad_return_value, value}" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)
          ref = Process.monitor(pid)
          exit = outcome(gen.call(pid, run(fn _, _ -> :bogus end)))
          {exit, await_exit(ref), next({:terminate, _, _})}
        end)

      assert {{:exit, {{:bad_return_value, :bogus}, {GenServer, :call, _loc}}},
              {:bad_return_value, :bogus},
              {:terminate, {:bad_return_value, :bogus}, :s0}} = result
    end

    test "the default handle_call/3 raises" do
      result =
        conform(Defaults, fn gen, mod ->
          pid = start!(gen, mod, :s0)
          ref = Process.monitor(pid)
          {outcome(gen.call(pid, :hello)), await_exit(ref)}
        end)

      assert {{:exit,
               {{%RuntimeError{message: message}, _}, {GenServer, :call, [pid, :hello, 5000]}}},
              {%RuntimeError{message: message}, _}} = result

      assert message ==
               "attempted to call GenServer #{inspect(pid)} but no handle_call/3 clause was provided"
    end
  end

  describe "stop from handle_call/3" do
    test "{:stop, reason, reply, state}: terminate/2 runs, then the reply, then the exit" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = scripted_server(gen, mod)
          ref = Process.monitor(pid)
          reply = gen.call(pid, run(fn _, s -> {:stop, :normal, :bye, {:last, s}} end))
          # terminate/2 notified us before replying, so its message is here now.
          {:messages, [first | _]} = Process.info(self(), :messages)
          {reply, first, await_exit(ref)}
        end)

      assert result == {:bye, {:terminate, :normal, {:last, :s0}}, :normal}
    end

    test "{:stop, reason, state}: the caller exits {reason, location}" do
      result =
        conform(Scripted, fn gen, mod ->
          for reason <- [:normal, :shutdown, {:shutdown, :x}, :custom] do
            pid = scripted_server(gen, mod)
            ref = Process.monitor(pid)
            exit = outcome(gen.call(pid, run(fn _, s -> {:stop, reason, s} end)))
            {exit, await_exit(ref), next({:terminate, _, _})}
          end
        end)

      for {{:exit, {reason, {GenServer, :call, [_, _, 5000]}}}, down, terminate} <- result do
        assert down == reason
        assert terminate == {:terminate, reason, :s0}
      end

      assert length(result) == 4
    end
  end

  describe "multi_call/2,3,4 and abcast/2,3" do
    test "multi_call on the local node" do
      result =
        conform(Scripted, fn gen, mod ->
          name = unique_name()
          start!(gen, mod, {self(), fn -> {:ok, :s0} end}, name: name)

          {gen.multi_call(name, :state), gen.multi_call([node()], name, :state),
           gen.multi_call([node()], name, :state, 1000), gen.multi_call(unique_name(), :state)}
        end)

      assert result ==
               {{[{node(), :s0}], []}, {[{node(), :s0}], []}, {[{node(), :s0}], []},
                {[], [node()]}}
    end

    test "multi_call reports unreachable nodes as bad nodes" do
      result =
        conform(Scripted, fn gen, mod ->
          name = unique_name()
          start!(gen, mod, {self(), fn -> {:ok, :s0} end}, name: name)
          gen.multi_call([node(), @absent], name, :state)
        end)

      assert result == {[{node(), :s0}], [@absent]}
    end

    test "multi_call timeout: the node is bad and the late reply never lands" do
      result =
        conform(Scripted, fn gen, mod ->
          name = unique_name()
          pid = start!(gen, mod, {self(), fn -> {:ok, nil} end}, name: name)
          res = gen.multi_call([node()], name, run(fn from, _ -> {:noreply, from} end), 50)

          :ok =
            gen.cast(
              pid,
              run(fn from ->
                gen.reply(from, :too_late)
                {:noreply, :replied}
              end)
            )

          {res, gen.call(pid, :state), Process.sleep(50), flush()}
        end)

      assert result == {{[], [node()]}, :replied, :ok, []}
    end

    test "abcast returns :abcast and delivers to the local node" do
      result =
        conform(Recorder, fn gen, mod ->
          name = unique_name()
          start!(gen, mod, [], name: name)

          {gen.abcast(name, :one), gen.abcast([node(), @absent], name, :two),
           gen.abcast(unique_name(), :nobody), gen.call(name, :log)}
        end)

      assert result == {:abcast, :abcast, :abcast, [{:cast, :one}, {:cast, :two}]}
    end
  end
end
