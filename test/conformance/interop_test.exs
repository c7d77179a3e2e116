defmodule Conformance.InteropTest do
  # Every scenario here runs for all four pairings of client module
  # (GenServer, GenNative) and server implementation (use GenServer,
  # use GenNative); all must give GenServer-calling-GenServer's result.
  use Conformance.Case, async: true

  @moduletag :capture_log

  defserver Deferred do
    # Replies from another process with the server side's own reply/2.
    @impl true
    def init(state), do: {:ok, state}

    @impl true
    def handle_call(:ignore, _from, state), do: {:noreply, state}

    def handle_call(request, from, state) do
      spawn(fn -> send(state, {:reply_returned, @gen.reply(from, {:deferred, request})}) end)
      {:noreply, state}
    end
  end

  defserver Outer do
    # Calls another server from inside handle_call/3.
    @impl true
    def init(state), do: {:ok, state}

    @impl true
    def handle_call({:forward, client, inner, request}, _from, state) do
      {:reply, {:outer, client.call(inner, request)}, state}
    end
  end

  test "call, cast and plain messages across implementations" do
    result =
      conform_matrix(Recorder, fn client, mod ->
        pid = start!(client, mod, [])
        :ok = client.cast(pid, :a_cast)
        send(pid, :a_message)
        {:ok, :a_call} = client.call(pid, :a_call)
        {client.call(pid, :log), client.call(pid, :log, 1_000)}
      end)

    log = [{:cast, :a_cast}, {:info, :a_message}, {:call, :a_call}]
    assert result == {log, log}
  end

  test "both client modules on one server keep one process's order" do
    result =
      conform(Recorder, fn gen, mod ->
        pid = start!(gen, mod, [])
        :ok = GenServer.cast(pid, 1)
        :ok = GenNative.cast(pid, 2)
        send(pid, 3)
        {:ok, 4} = GenServer.call(pid, 4)
        send(pid, 5)
        {:ok, 6} = GenNative.call(pid, 6)
        :ok = GenNative.cast(pid, 7)
        {:ok, 8} = GenServer.call(pid, 8)
        GenNative.call(pid, :log)
      end)

    assert result == [
             {:cast, 1},
             {:cast, 2},
             {:info, 3},
             {:call, 4},
             {:info, 5},
             {:call, 6},
             {:cast, 7},
             {:call, 8}
           ]
  end

  test "reply/2 of either module answers a call made with either module" do
    result =
      conform_matrix(Deferred, fn client, mod ->
        pid = start!(client, mod, self())
        reply = client.call(pid, :hello)
        {reply, next({:reply_returned, _}), flush()}
      end)

    assert result == {{:deferred, :hello}, {:reply_returned, :ok}, []}
  end

  test "the client's reply/2 answers a from given to the other implementation" do
    result =
      conform_matrix(Scripted, fn client, mod ->
        pid = start!(client, mod, {self(), fn -> {:ok, :s0} end})

        client.call(
          pid,
          {:run,
           fn from, s ->
             spawn(fn -> client.reply(from, {:by_client_reply, s}) end)
             {:noreply, s}
           end}
        )
      end)

    assert result == {:by_client_reply, :s0}
  end

  test "exits name the client module in the location" do
    result =
      conform_matrix(Deferred, fn client, mod ->
        pid = start!(client, mod, self())
        timeout = outcome(client.call(pid, :ignore, 50))
        ref = Process.monitor(pid)
        :ok = client.stop(pid, :normal)
        :normal = await_exit(ref)
        {timeout, outcome(client.call(pid, :hello)), outcome(client.stop(pid)), flush()}
      end)

    assert {{:exit, {:timeout, {GenServer, :call, [pid, :ignore, 50]}}},
            {:exit, {:noproc, {GenServer, :call, [pid, :hello, 5000]}}},
            {:exit, {:noproc, {GenServer, :stop, [pid, :normal, :infinity]}}}, []} = result
  end

  test "stop/3 and terminate/2 across implementations" do
    result =
      conform_matrix(Scripted, fn client, mod ->
        pid = start!(client, mod, {self(), fn -> {:ok, :s0} end})
        ref = Process.monitor(pid)
        {client.stop(pid, {:shutdown, :x}, 1_000), next({:terminate, _, _}), await_exit(ref)}
      end)

    assert result == {:ok, {:terminate, {:shutdown, :x}, :s0}, {:shutdown, :x}}
  end

  test "multi_call and abcast across implementations" do
    result =
      conform_matrix(Recorder, fn client, mod ->
        name = unique_name()
        start!(client, mod, [], name: name)

        {client.abcast(name, :abcasted), client.multi_call(name, :multi),
         client.multi_call([node()], name, :log, 1_000)}
      end)

    assert result ==
             {:abcast, {[{node(), {:ok, :multi}}], []},
              {[{node(), [{:cast, :abcasted}, {:call, :multi}]}], []}}
  end

  test "a server calls a server of the other implementation from a callback" do
    result =
      conform_matrix(Outer, fn client, mod ->
        outer = start!(client, mod, nil)

        for inner_impl <- Conformance.impls() do
          inner = start!(inner_impl, Module.concat(Recorder, inner_impl), [])
          client.call(outer, {:forward, inner_impl, inner, :through})
        end
      end)

    assert result == List.duplicate({:outer, {:ok, :through}}, length(Conformance.impls()))
  end

  test "names registered through Registry" do
    result =
      conform_matrix(Recorder, fn client, mod ->
        registry = unique_name()
        {:ok, reg} = Registry.start_link(keys: :unique, name: registry)
        track(reg)
        name = {:via, Registry, {registry, :worker}}
        {:ok, pid} = start(client, mod, [], name: name)
        :ok = client.cast(name, :via_cast)
        reply = client.call(name, :via_call)

        {client.whereis(name) == pid, Registry.lookup(registry, :worker) == [{pid, nil}], reply,
         client.call(name, :log)}
      end)

    assert result == {true, true, {:ok, :via_call}, [{:cast, :via_cast}, {:call, :via_call}]}
  end

  test "one supervisor runs children of both implementations" do
    result =
      conform(Recorder, fn _gen, _mod ->
        children =
          for impl <- Conformance.impls() do
            Supervisor.child_spec({Module.concat(Recorder, impl), [:started]}, id: impl)
          end

        {:ok, sup} = Supervisor.start_link(children, strategy: :one_for_one)
        track(sup)

        logs =
          for {id, pid, :worker, _} <- Supervisor.which_children(sup) do
            {id, GenServer.call(pid, :log)}
          end

        :ok = Supervisor.stop(sup)
        Enum.sort(logs)
      end)

    assert result == Enum.sort(for impl <- Conformance.impls(), do: {impl, [:started]})
  end
end
