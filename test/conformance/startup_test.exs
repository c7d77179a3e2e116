defmodule Conformance.StartupTest do
  use Conformance.Case, async: true

  @moduletag :capture_log

  defserver WithSpec, restart: :transient, shutdown: 10_000 do
    @impl true
    def init(arg), do: {:ok, arg}

    def start_link(arg), do: @gen.start_link(__MODULE__, arg)
  end

  defserver CustomSpec, id: :custom_id, restart: :temporary do
    @impl true
    def init(arg), do: {:ok, arg}

    def start_link(arg), do: @gen.start_link(__MODULE__, arg)
  end

  defp init_with(fun), do: {self(), fun}

  describe "init/1 return values" do
    test "{:ok, state} from start/3 and start_link/3" do
      result =
        conform(Scripted, fn gen, mod ->
          {:ok, pid} = res = start(gen, mod, init_with(fn -> {:ok, :s0} end))
          {:ok, lpid} = lres = start(gen, mod, init_with(fn -> {:ok, :s1} end), link: true)
          {:links, links} = Process.info(self(), :links)

          {res, :sys.get_state(pid), pid in links, lres, :sys.get_state(lpid), lpid in links}
        end)

      assert {{:ok, pid}, :s0, false, {:ok, lpid}, :s1, true} = result
      assert is_pid(pid) and is_pid(lpid)
    end

    test "{:ok, state, timeout} delivers :timeout to handle_info/2" do
      result =
        conform(Scripted, fn gen, mod ->
          start!(gen, mod, init_with(fn -> {:ok, :s0, 20} end))
          next({:info, :timeout, _})
        end)

      assert result == {:info, :timeout, :s0}
    end

    test "{:ok, state, :hibernate} hibernates before the first message" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = start!(gen, mod, init_with(fn -> {:ok, :s0, :hibernate} end))
          {await_hibernated(pid), gen.call(pid, :state)}
        end)

      assert result == {{:current_function, {:erlang, :hibernate, 3}}, :s0}
    end

    test "{:ok, state, {:continue, arg}} runs handle_continue/2 before the first call" do
      result =
        conform(Scripted, fn gen, mod ->
          cont = {:run, fn s -> {:noreply, {:continued, s}} end}
          pid = start!(gen, mod, init_with(fn -> {:ok, :s0, {:continue, cont}} end))
          gen.call(pid, :state)
        end)

      assert result == {:continued, :s0}
    end

    test "{:ok, state, other} is a bad return value" do
      result =
        conform(Scripted, fn gen, mod ->
          {start(gen, mod, init_with(fn -> {:ok, :s0, :bogus} end)), flush()}
        end)

      assert result == {{:error, {:bad_return_value, {:ok, :s0, :bogus}}}, []}
    end

    test ":ignore returns :ignore, exits :normal, unregisters and skips terminate" do
      result =
        conform(Scripted, fn gen, mod ->
          Process.flag(:trap_exit, true)
          owner = self()
          init = fn -> watch_self(owner) && :ignore end
          name = unique_name()
          res = start(gen, mod, init_with(init), name: name)
          registered = Process.whereis(name)
          {:down, pid, reason} = next({:down, _, _})
          lname = unique_name()
          lres = start(gen, mod, init_with(init), name: lname, link: true)
          lregistered = Process.whereis(lname)
          {:down, lpid, lreason} = next({:down, _, _})
          exit_msg = next({:EXIT, ^lpid, _})

          {{res, registered, reason, is_pid(pid)}, {lres, lregistered, lreason, exit_msg},
           flush()}
        end)

      assert {{:ignore, nil, :normal, true}, {:ignore, nil, :normal, {:EXIT, _, :normal}}, []} =
               result
    end

    test "{:stop, reason} returns {:error, reason}, exits with reason, skips terminate" do
      result =
        conform(Scripted, fn gen, mod ->
          Process.flag(:trap_exit, true)
          owner = self()
          init = fn -> watch_self(owner) && {:stop, :no_way} end
          name = unique_name()
          res = start(gen, mod, init_with(init), name: name)
          registered = Process.whereis(name)
          {:down, _pid, reason} = next({:down, _, _})
          lres = start(gen, mod, init_with(init), link: true)
          {:down, lpid, lreason} = next({:down, _, _})
          exit_msg = next({:EXIT, ^lpid, _})
          {{res, registered, reason}, {lres, lreason, exit_msg}, flush()}
        end)

      assert {{{:error, :no_way}, nil, :no_way},
              {{:error, :no_way}, :no_way, {:EXIT, _, :no_way}}, []} = result
    end

    test "a raise in init returns {:error, {exception, stacktrace}}" do
      result =
        conform(Scripted, fn gen, mod ->
          owner = self()
          res = start(gen, mod, init_with(fn -> watch_self(owner) && raise "init failed" end))
          {:down, _pid, reason} = next({:down, _, _})
          {res, reason, flush()}
        end)

      assert {{:error, {%RuntimeError{message: "init failed"}, [_ | _]}},
              {%RuntimeError{message: "init failed"}, [_ | _]}, []} = result
    end

    test "an exit in init returns {:error, reason}" do
      result =
        conform(Scripted, fn gen, mod ->
          owner = self()
          res = start(gen, mod, init_with(fn -> watch_self(owner) && exit(:init_exit) end))
          {:down, _pid, reason} = next({:down, _, _})
          {res, reason, flush()}
        end)

      assert result == {{:error, :init_exit}, :init_exit, []}
    end

    test "a throw in init is taken as the return value" do
      result =
        conform(Scripted, fn gen, mod ->
          {:ok, pid} = ok = start(gen, mod, init_with(fn -> throw({:ok, :thrown}) end))

          {ok, :sys.get_state(pid), start(gen, mod, init_with(fn -> throw({:stop, :thrown}) end)),
           start(gen, mod, init_with(fn -> throw(:ignore) end)),
           start(gen, mod, init_with(fn -> throw(:bogus) end))}
        end)

      assert {{:ok, _}, :thrown, {:error, :thrown}, :ignore,
              {:error, {:bad_return_value, :bogus}}} = result
    end

    test "any other return value is {:error, {:bad_return_value, value}}" do
      result =
        conform(Scripted, fn gen, mod ->
          for value <- [:bogus, {:ok}, {:ok, :s, :hibernate, :extra}, {:error, :e}] do
            start(gen, mod, init_with(fn -> value end))
          end
        end)

      assert result == [
               {:error, {:bad_return_value, :bogus}},
               {:error, {:bad_return_value, {:ok}}},
               {:error, {:bad_return_value, {:ok, :s, :hibernate, :extra}}},
               {:error, {:bad_return_value, {:error, :e}}}
             ]
    end
  end

  describe "names" do
    test "the name is registered before init/1 runs" do
      result =
        conform(Scripted, fn gen, mod ->
          atom = unique_name()
          global = unique_name()
          via = unique_name()

          seen = fn lookup -> fn -> {:ok, lookup.() == self()} end end

          for {name, lookup} <- [
                {atom, fn -> Process.whereis(atom) end},
                {{:global, global}, fn -> :global.whereis_name(global) end},
                {{:via, :global, via}, fn -> :global.whereis_name(via) end}
              ] do
            pid = start!(gen, mod, init_with(seen.(lookup)), name: name)
            {:sys.get_state(pid), gen.whereis(name) == pid}
          end
        end)

      assert result == [{true, true}, {true, true}, {true, true}]
    end

    test "a taken name gives {:error, {:already_started, pid}}" do
      result =
        conform(Scripted, fn gen, mod ->
          registry = unique_name()
          {:ok, _} = Registry.start_link(keys: :unique, name: registry)

          for name <- [
                unique_name(),
                {:global, unique_name()},
                {:via, :global, unique_name()},
                {:via, Registry, {registry, :key}}
              ] do
            first = start(gen, mod, init_with(fn -> {:ok, 1} end), name: name)
            second = start(gen, mod, init_with(fn -> {:ok, 2} end), name: name)
            {first, second, flush()}
          end
        end)

      for {{:ok, pid}, second, []} <- result do
        assert second == {:error, {:already_started, pid}}
      end

      assert length(result) == 4
    end

    test "name: nil starts an unregistered server" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = start!(gen, mod, init_with(fn -> {:ok, 0} end), name: nil)
          Process.info(pid, :registered_name)
        end)

      assert result == {:registered_name, []}
    end

    test "an invalid name raises ArgumentError" do
      result =
        conform(Scripted, fn gen, mod ->
          for name <- ["string", {:local, :x}, {:global}, {:via, "mod", :x}, 42] do
            outcome(start(gen, mod, init_with(fn -> {:ok, 0} end), name: name))
          end
        end)

      assert [{:raise, %ArgumentError{message: message}} | _] = result
      assert message =~ "expected :name option to be one of the following:"
      assert message =~ ~s(Got: "string")
      assert Enum.all?(result, &match?({:raise, %ArgumentError{}}, &1))
    end

    test "whereis/1 resolves every server form" do
      result =
        conform(Scripted, fn gen, mod ->
          atom = unique_name()
          global = unique_name()
          via = unique_name()
          pid = start!(gen, mod, init_with(fn -> {:ok, 0} end), name: atom)
          gpid = start!(gen, mod, init_with(fn -> {:ok, 0} end), name: {:global, global})
          vpid = start!(gen, mod, init_with(fn -> {:ok, 0} end), name: {:via, :global, via})
          dead = spawn(fn -> :ok end)
          await_exit(dead)
          unknown = unique_name()

          {[pid, gpid, vpid, dead],
           Enum.map(
             [
               pid,
               atom,
               {:global, global},
               {:via, :global, via},
               {atom, node()},
               {atom, @absent},
               dead,
               unknown,
               {:global, unknown},
               {:via, :global, unknown},
               nil
             ],
             &gen.whereis/1
           )}
        end)

      assert {[pid, gpid, vpid, dead], resolved} = result

      assert [^pid, ^pid, ^gpid, ^vpid, ^pid, {atom, @absent}, ^dead, nil, nil, nil, nil] =
               resolved

      assert is_atom(atom)
    end
  end

  describe "start options" do
    test ":timeout gives {:error, :timeout} and kills a slow init" do
      result =
        conform(Scripted, fn gen, mod ->
          owner = self()

          slow = fn ->
            send(owner, {:init_pid, self()})
            Process.sleep(:infinity)
          end

          res = start(gen, mod, init_with(slow), timeout: 50)
          {:init_pid, pid} = next({:init_pid, _})
          {res, eventually(fn -> not Process.alive?(pid) end), flush()}
        end)

      assert result == {{:error, :timeout}, true, []}
    end

    test ":debug installs sys debug options" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = start!(gen, mod, init_with(fn -> {:ok, :s0} end), debug: [:log])
          :ok = gen.cast(pid, :a_cast)
          send(pid, :a_message)
          reply = gen.call(pid, :state)
          {:ok, events} = :sys.log(pid, :get)
          {reply, events, flush()}
        end)

      assert {:s0, events, messages} = result

      assert [
               {:in, {:"$gen_cast", :a_cast}},
               {:noreply, :s0},
               {:in, :a_message},
               {:noreply, :s0},
               {:in, {:"$gen_call", {caller, [:alias | tag]} = from, :state}},
               {:out, :s0, from, :s0}
             ] = events

      assert caller == self() and is_reference(tag)
      assert [{:cast, :a_cast, :s0}, {:info, :a_message, :s0}] = messages
    end

    test ":spawn_opt is applied to the server process" do
      result =
        conform(Scripted, fn gen, mod ->
          pid =
            start!(gen, mod, init_with(fn -> {:ok, 0} end),
              spawn_opt: [priority: :high, min_heap_size: 1000]
            )

          {:garbage_collection, gc} = Process.info(pid, :garbage_collection)
          {Process.info(pid, :priority), gc[:min_heap_size] >= 1000}
        end)

      assert result == {{:priority, :high}, true}
    end

    test ":hibernate_after hibernates an idle server" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = start!(gen, mod, init_with(fn -> {:ok, :s0} end), hibernate_after: 20)
          first = await_hibernated(pid)
          reply = gen.call(pid, :state)
          {first, reply, await_hibernated(pid)}
        end)

      hibernated = {:current_function, {:erlang, :hibernate, 3}}
      assert result == {hibernated, :s0, hibernated}
    end
  end

  describe "process metadata and supervision" do
    test "$initial_call and $ancestors" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = start!(gen, mod, init_with(fn -> {:ok, 0} end))
          {:dictionary, dict} = Process.info(pid, :dictionary)
          {mod, dict[:"$initial_call"], hd(dict[:"$ancestors"]) == self()}
        end)

      assert {mod, {mod, :init, 1}, true} = result
      assert mod == Scripted.GenServer
    end

    test "child_spec/1 is injected and takes the use options" do
      result =
        conform(WithSpec, fn gen, mod ->
          custom = Module.concat(CustomSpec, gen)
          {mod.child_spec(:arg), custom.child_spec(:arg)}
        end)

      assert result ==
               {%{
                  id: WithSpec.GenServer,
                  start: {WithSpec.GenServer, :start_link, [:arg]},
                  restart: :transient,
                  shutdown: 10_000
                },
                %{
                  id: :custom_id,
                  start: {CustomSpec.GenServer, :start_link, [:arg]},
                  restart: :temporary
                }}
    end

    test "a supervisor starts and restarts the server through child_spec/1" do
      result =
        conform(WithSpec, fn _gen, mod ->
          {:ok, sup} = Supervisor.start_link([{mod, :state}], strategy: :one_for_one)
          track(sup)
          [{^mod, pid, :worker, [^mod]}] = Supervisor.which_children(sup)
          state = :sys.get_state(pid)
          Process.exit(pid, :boom)
          await_exit(pid)

          restarted =
            eventually(fn ->
              case Supervisor.which_children(sup) do
                [{_, new, _, _}] when is_pid(new) and new != pid -> new
                _ -> false
              end
            end)

          :ok = Supervisor.stop(sup)
          {state, is_pid(restarted), Process.alive?(restarted)}
        end)

      assert result == {:state, true, false}
    end
  end
end
