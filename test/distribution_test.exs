defmodule GenNative.DistributionTest do
  # Not async: it turns distribution on for the whole VM, and multi_call/2
  # and abcast/2 address every connected node.
  use ExUnit.Case, async: false

  alias GenNative.Distributed.{Cluster, NativeKV, PlainKV}

  setup_all do
    if Cluster.ensure_distributed!() == :started do
      on_exit(fn -> :net_kernel.stop() end)
    end

    {_peer, peer_node} = Cluster.start_peer!(~c"gn_peer")
    %{peer: peer_node}
  end

  setup %{test: test} do
    # One name per test, so tests sharing the peer never see each other's servers.
    %{name: :"gn_dist_#{System.unique_integer([:positive])}", test: test}
  end

  defp start_remote(node, module, name) do
    {:ok, pid} = :erpc.call(node, module, :start, [name])
    # Started unlinked (the erpc process that ran start/1 is gone), so
    # clean up here; a no-op when the server or its node is already gone.
    on_exit(fn -> Process.exit(pid, :kill) end)
    pid
  end

  # GenNative's exits are GenServer's with GenNative in the location.
  defp as_gen_native({reason, {GenServer, fun, args}}), do: {reason, {GenNative, fun, args}}

  describe "call/3 and cast/2 to {name, node}" do
    test "reach a GenNative server on the peer", %{peer: peer, name: name} do
      pid = start_remote(peer, NativeKV, name)
      assert node(pid) == peer

      assert GenNative.call({name, peer}, :ping) == {:pong, peer}
      assert GenNative.call(pid, :ping) == {:pong, peer}

      assert GenNative.call({name, peer}, {:put, :a, 1}) == :ok
      assert GenNative.cast({name, peer}, {:put, :b, 2}) == :ok
      assert GenNative.cast(pid, {:put, :c, 3}) == :ok
      # One sender's requests are handled in the order it sent them.
      assert GenNative.call({name, peer}, {:get, :b}) == 2
      assert GenNative.call(pid, {:get, :c}) == 3

      assert :erpc.call(peer, :sys, :get_state, [name]) ==
               %{name: name, data: %{a: 1, b: 2, c: 3}}
    end

    test "a cast can answer back across nodes", %{peer: peer, name: name} do
      start_remote(peer, NativeKV, name)

      for n <- 1..20, do: :ok = GenNative.cast({name, peer}, {:tell, self(), n})
      for n <- 1..20, do: assert_receive({^n, ^peer})
    end

    test "whereis/1 answers as GenServer's does", %{peer: peer, name: name} do
      start_remote(peer, NativeKV, name)

      assert GenNative.whereis({name, peer}) == {name, peer}
      assert GenNative.whereis({name, peer}) == GenServer.whereis({name, peer})
    end

    test "GenServer.call/cast reach a GenNative server on the peer and back",
         %{peer: peer, name: name} do
      native = start_remote(peer, NativeKV, name)
      plain_name = :"#{name}_plain"
      plain = start_remote(peer, PlainKV, plain_name)

      assert GenServer.call({name, peer}, :ping) == {:pong, peer}
      assert GenServer.call(native, :ping) == {:pong, peer}
      :ok = GenServer.cast({name, peer}, {:put, :k, :native})
      assert GenServer.call({name, peer}, {:get, :k}) == :native

      assert GenNative.call({plain_name, peer}, :ping) == {:pong, peer}
      assert GenNative.call(plain, :ping) == {:pong, peer}
      :ok = GenNative.cast({plain_name, peer}, {:put, :k, :plain})
      assert GenNative.call({plain_name, peer}, {:get, :k}) == :plain
    end
  end

  describe "call/3 failures across nodes" do
    test "a name missing on the peer exits with :noproc", %{peer: peer, name: name} do
      exit = catch_exit(GenNative.call({name, peer}, :ping))

      assert exit == {:noproc, {GenNative, :call, [{name, peer}, :ping, 5000]}}
      assert exit == as_gen_native(catch_exit(GenServer.call({name, peer}, :ping)))
    end

    test "a timeout exits and the late reply never arrives", %{peer: peer, name: name} do
      start_remote(peer, NativeKV, name)

      assert catch_exit(GenNative.call({name, peer}, {:sleep, 200}, 10)) ==
               {:timeout, {GenNative, :call, [{name, peer}, {:sleep, 200}, 10]}}

      # Handled after the sleep, so by now the late reply has been sent.
      assert GenNative.call({name, peer}, :ping) == {:pong, peer}
      refute_received {_, :slept}
    end

    test "a server stopping mid-call exits the caller with its reason",
         %{peer: peer, name: name} do
      start_remote(peer, NativeKV, name)
      plain_name = :"#{name}_plain"
      start_remote(peer, PlainKV, plain_name)

      request = {:stop, {:shutdown, :bye}}
      exit = catch_exit(GenNative.call({name, peer}, request))
      assert exit == {{:shutdown, :bye}, {GenNative, :call, [{name, peer}, request, 5000]}}

      plain_exit = catch_exit(GenServer.call({plain_name, peer}, request))
      assert {reason, {GenNative, :call, [_, ^request, 5000]}} = as_gen_native(plain_exit)
      assert reason == elem(exit, 0)
    end
  end

  describe "multi_call/4" do
    test "gathers the replies of the servers on every node", %{peer: peer, name: name} do
      start_remote(peer, NativeKV, name)
      {:ok, _} = NativeKV.start_link(name)

      {replies, bad_nodes} = GenNative.multi_call([node(), peer], name, :ping)
      assert Enum.sort(replies) == Enum.sort([{node(), {:pong, node()}}, {peer, {:pong, peer}}])
      assert bad_nodes == []

      # multi_call/2 defaults to this node and every connected one.
      {replies, []} = GenNative.multi_call(name, {:put, :k, :v})
      assert Enum.sort(replies) == Enum.sort([{node(), :ok}, {peer, :ok}])
      assert GenNative.call(name, {:get, :k}) == :v
      assert GenNative.call({name, peer}, {:get, :k}) == :v
    end

    test "lists the nodes without the server, as GenServer does", %{peer: peer, name: name} do
      start_remote(peer, NativeKV, name)
      start_remote(peer, PlainKV, :"#{name}_plain")
      nowhere = :"gn_nowhere_#{System.unique_integer([:positive])}@127.0.0.1"
      nodes = [node(), peer, nowhere]

      native = GenNative.multi_call(nodes, name, :ping, 5_000)
      assert {[{^peer, {:pong, ^peer}}], bad_nodes} = native
      assert Enum.sort(bad_nodes) == Enum.sort([node(), nowhere])

      {plain_replies, plain_bad} = GenServer.multi_call(nodes, :"#{name}_plain", :ping, 5_000)
      assert plain_replies == [{peer, {:pong, peer}}]
      assert Enum.sort(plain_bad) == Enum.sort(bad_nodes)
    end
  end

  describe "abcast/3" do
    test "casts to the server of that name on every node", %{peer: peer, name: name} do
      start_remote(peer, NativeKV, name)
      {:ok, _} = NativeKV.start_link(name)

      assert GenNative.abcast([node(), peer], name, {:tell, self(), :hello}) == :abcast
      assert_receive {:hello, ^peer}
      me = node()
      assert_receive {:hello, ^me}

      # abcast/2 defaults to this node and every connected one.
      assert GenNative.abcast(name, {:tell, self(), :again}) == :abcast
      assert_receive {:again, ^peer}
      assert_receive {:again, ^me}
    end

    test "returns :abcast where the server or the node is missing", %{peer: peer, name: name} do
      nowhere = :"gn_nowhere_#{System.unique_integer([:positive])}@127.0.0.1"
      assert GenNative.abcast([node(), peer, nowhere], name, :anything) == :abcast
    end
  end

  describe "a peer that goes down" do
    setup do
      {peer, node} = Cluster.start_peer!(~c"gn_doomed")
      %{doomed: peer, doomed_node: node}
    end

    test "calls exit with nodedown, as GenServer's do",
         %{doomed: doomed, doomed_node: node, name: name} do
      plain_name = :"#{name}_plain"
      native_pid = start_remote(node, NativeKV, name)
      plain_pid = start_remote(node, PlainKV, plain_name)
      assert GenNative.call({name, node}, :ping) == {:pong, node}

      # Calls in flight when the node goes.
      sleep = {:sleep, 60_000}

      native_task =
        Task.async(fn -> catch_exit(GenNative.call({name, node}, sleep, :infinity)) end)

      plain_task =
        Task.async(fn -> catch_exit(GenServer.call({plain_name, node}, sleep, :infinity)) end)

      wait_until_busy(native_pid)
      wait_until_busy(plain_pid)

      true = Node.monitor(node, true)
      :ok = :peer.stop(doomed)
      assert_receive {:nodedown, ^node}

      in_flight = Task.await(native_task)

      assert in_flight ==
               {{:nodedown, node}, {GenNative, :call, [{name, node}, sleep, :infinity]}}

      assert elem(in_flight, 0) == elem(Task.await(plain_task), 0)

      # Calls made after it went, by name and by pid.
      for {native, plain} <- [{{name, node}, {plain_name, node}}, {native_pid, plain_pid}] do
        exit = catch_exit(GenNative.call(native, :ping))
        assert exit == {{:nodedown, node}, {GenNative, :call, [native, :ping, 5000]}}
        assert {reason, _} = as_gen_native(catch_exit(GenServer.call(plain, :ping)))
        assert reason == elem(exit, 0)
      end

      # A cast to the dead node still returns :ok.
      assert GenNative.cast({name, node}, :ping) == :ok
      assert GenNative.cast(native_pid, :ping) == :ok
    end

    test "multi_call/4 lists it among the bad nodes", %{
      doomed: doomed,
      doomed_node: node,
      peer: peer,
      name: name
    } do
      start_remote(node, NativeKV, name)
      start_remote(peer, NativeKV, name)
      :ok = :peer.stop(doomed)

      assert {[{^peer, {:pong, ^peer}}], [^node]} =
               GenNative.multi_call([peer, node], name, :ping)
    end
  end

  # Waits until the remote server is sleeping inside handle_call/3.
  defp wait_until_busy(pid) do
    case :erpc.call(node(pid), Process, :info, [pid, :current_function]) do
      {:current_function, {Process, :sleep, 1}} ->
        :ok

      _ ->
        Process.sleep(1)
        wait_until_busy(pid)
    end
  end
end
