defmodule GenNative.Examples.ReplicatedAgentTest do
  # The replicated agent (test/support/examples/replicated_agent.ex): three
  # :peer nodes, each with a Raft member and a keeper; the agent runs on one
  # of them, registered globally, and checkpoints every step in the
  # replicated store. Its node dies (halted, and its member killed with
  # SIGKILL); the agent starts again on another node from the last
  # committed checkpoint, with every acknowledged step.
  #
  # Not async: it turns distribution on for the whole VM (as
  # distribution_test.exs does).
  use ExUnit.Case, async: false

  import GenNative.TestHelpers, only: [wait_until: 2]
  import GenNative.Test.RaftCluster, only: [free_port: 0]

  alias GenNative.Distributed.Cluster
  alias GenNative.Examples.ReplicatedAgent
  alias GenNative.Examples.ReplicatedAgent.NodeSupervisor

  @moduletag :port
  @moduletag :capture_log
  @moduletag timeout: 120_000

  setup_all do
    if Cluster.ensure_distributed!() == :started do
      on_exit(fn -> :net_kernel.stop() end)
    end

    :ok
  end

  setup do
    dir = Path.join(System.tmp_dir!(), "gn_agent_example_#{System.unique_integer([:positive])}")

    # three peers, linked to the test process: they stop with it
    peers = for i <- 1..3, do: Cluster.start_peer!(~c"gn_agent#{i}")

    cluster =
      for {{_peer, node}, id} <- Enum.with_index(peers, 1),
          do: {id, node, "127.0.0.1:#{free_port()}"}

    name = :"gn_agent_#{System.unique_integer([:positive])}"

    for {id, node, _address} <- cluster do
      opts = [name: name, cluster: cluster, dir: Path.join(dir, "member#{id}")]
      {:ok, _} = :erpc.call(node, NodeSupervisor, :start, [opts])
    end

    programs =
      for {_, node, _} <- cluster, do: :erpc.call(node, GenNative.Port, :os_pid, [:agent_raft])

    on_exit(fn ->
      # the peers halt once the test process has exited; their members'
      # programs then see their stdin close and exit
      wait_until(fn -> not Enum.any?(programs, &running?/1) end, 15_000)
      File.rm_rf!(dir)
    end)

    wait_until(fn -> ReplicatedAgent.whereis(name) != nil end, 20_000)
    %{name: name, cluster: cluster, peers: Map.new(peers, fn {peer, node} -> {node, peer} end)}
  end

  # Whether the OS process runs (a zombie left for its new parent to reap
  # does not). Read from /proc rather than with pgrep: under bin/sanitize a
  # child inherits libasan in LD_PRELOAD, and pgrep then hangs.
  defp running?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      # "pid (comm) state ...": comm may hold spaces and parentheses
      {:ok, stat} -> not String.starts_with?(stat |> String.split(")") |> List.last(), " Z")
      {:error, _} -> false
    end
  end

  # all submitted work done
  defp idle?(name) do
    match?(%{current: nil, queue: []}, ReplicatedAgent.state(name))
  catch
    :exit, _ -> false
  end

  # The node the agent runs on dies: the node halts (:peer.stop), with the
  # agent and its tools, and its Raft member is killed with SIGKILL. The
  # member is stopped (SIGSTOP) first, so that it neither exits cleanly
  # when its stdin closes nor is restarted by the node's supervisor when
  # it dies before the node.
  defp kill_node(node, ctx) do
    os_pid = :erpc.call(node, GenNative.Port, :os_pid, [:agent_raft]) |> Integer.to_string()
    {_, 0} = System.cmd("kill", ["-STOP", os_pid])
    :ok = :peer.stop(Map.fetch!(ctx.peers, node))
    {_, 0} = System.cmd("kill", ["-KILL", os_pid])
    refute Node.ping(node) == :pong
  end

  # The agent's member leads, so that killing its node also kills the
  # leader: the agent's successor has to wait for an election.
  defp lead_from(node, ctx) do
    {id, _, _} = List.keyfind(ctx.cluster, node, 1)

    wait_until(
      fn ->
        %{leader: leader} = :erpc.call(node, GenNative.Port, :raft_status, [:agent_raft])

        case leader do
          {^id, _} ->
            true

          {other, _} ->
            {_, leader_node, _} = List.keyfind(ctx.cluster, other, 0)
            _ = :erpc.call(leader_node, GenNative.Port, :transfer_leadership, [:agent_raft, id])
            Process.sleep(100)
            false

          nil ->
            Process.sleep(20)
            false
        end
      end,
      10_000
    )
  end

  test "the agent resumes on another node from its last checkpoint, with every acknowledged step",
       %{name: name} = ctx do
    # some work done: five tasks, each a tool call that answers in 10 ms
    acked =
      for i <- 1..5 do
        {:ok, id} = ReplicatedAgent.submit(name, %{prompt: "question #{i}", latency: 10})
        id
      end

    wait_until(fn -> idle?(name) end, 10_000)
    old = ReplicatedAgent.whereis(name)
    lead_from(node(old), ctx)

    # more work, under way when the node dies: a tool call that takes 4 s
    # (the node dies before it answers), and two tasks queued behind it
    acked =
      acked ++
        for {prompt, latency} <- [{"slow", 4_000}, {"six", 10}, {"seven", 10}] do
          {:ok, id} = ReplicatedAgent.submit(name, %{prompt: prompt, latency: latency})
          id
        end

    # every state the agent shows is committed: this is its last checkpoint
    before = ReplicatedAgent.state(name)
    config = ReplicatedAgent.config(name: name, cluster: ctx.cluster)
    assert ReplicatedAgent.last_checkpoint(config) == {:ok, before}
    assert {6, %{prompt: "slow"}} = before.current
    assert [{7, _}, {8, _}] = before.queue

    t0 = System.monotonic_time(:millisecond)
    kill_node(node(old), ctx)

    # another node's keeper starts the agent; it loads the checkpoint
    wait_until(fn -> (pid = ReplicatedAgent.whereis(name)) && pid != old end, 20_000)
    new = ReplicatedAgent.whereis(name)
    assert node(new) != node(old)
    resumed = ReplicatedAgent.state(name)
    failover = System.monotonic_time(:millisecond) - t0
    assert resumed == before

    # it makes the slow call again and works through its queue
    wait_until(fn -> idle?(name) end, 20_000)
    final = ReplicatedAgent.state(name)
    assert ReplicatedAgent.last_checkpoint(config) == {:ok, final}
    assert List.starts_with?(final.conversation, before.conversation)
    assert final.step == length(final.conversation)

    # every acknowledged task, in order, with one tool call and one result
    assert for({:user, id, _} <- final.conversation, do: id) == acked

    for id <- acked do
      assert [{:tool_call, ^id, task}] =
               for({:tool_call, ^id, _} = e <- final.conversation, do: e)

      assert [{:tool_result, ^id, result}] =
               for({:tool_result, ^id, _} = e <- final.conversation, do: e)

      assert result == {:answer, task.prompt}
    end

    assert for({:tool_result, id, _} <- final.conversation, do: id) == acked

    # the agent still takes work, with one node down
    assert {:ok, 9} = ReplicatedAgent.submit(name, %{prompt: "after", latency: 10})
    IO.puts(:stderr, "replicated agent: resumed on another node #{failover} ms after the kill")
  end

  test "clients submitting through the node's death: every acknowledged task is there, in order, once",
       %{name: name} = ctx do
    parent = self()

    clients =
      for c <- 1..3 do
        Task.async(fn -> client_loop(name, c, 1, parent, %{acked: [], unknown: []}) end)
      end

    Process.sleep(500)
    old = ReplicatedAgent.whereis(name)
    lead_from(node(old), ctx)
    kill_node(node(old), ctx)
    wait_until(fn -> (pid = ReplicatedAgent.whereis(name)) && pid != old end, 20_000)
    # each client has a task acknowledged by the new agent before it stops
    flush_acks()
    for c <- 1..3, do: assert_receive({:acked, ^c, _}, 20_000)
    for t <- clients, do: send(t.pid, :stop)
    results = Enum.map(clients, &Task.await(&1, 60_000))

    wait_until(fn -> idle?(name) end, 20_000)
    final = ReplicatedAgent.state(name)
    config = ReplicatedAgent.config(name: name, cluster: ctx.cluster)
    assert ReplicatedAgent.last_checkpoint(config) == {:ok, final}
    assert final.step == length(final.conversation)

    submitted = for {:user, _id, task} <- final.conversation, do: task.prompt
    assert submitted == Enum.uniq(submitted)

    for {c, %{acked: acked, unknown: unknown}} <- Enum.with_index(results, 1) do
      acked = Enum.reverse(acked)
      assert length(acked) > 0
      mine = for {^c, _n} = prompt <- submitted, do: prompt
      # each acknowledged task is there, in the order acknowledged; an
      # unacknowledged one may be there too
      assert Enum.filter(mine, &(&1 in acked)) == acked
      assert Enum.all?(mine -- acked, &(&1 in unknown))
    end

    # every task submitted is done once
    ids = for {:user, id, _} <- final.conversation, do: id
    assert for({:tool_result, id, _} <- final.conversation, do: id) == ids
  end

  test "a step another instance wrote first fences the agent off: it restarts from that step",
       %{name: name} = ctx do
    {:ok, 1} = ReplicatedAgent.submit(name, %{prompt: "first", latency: 10})
    wait_until(fn -> idle?(name) end, 10_000)
    before = ReplicatedAgent.state(name)
    old = ReplicatedAgent.whereis(name)

    # step n + 1 as an instance cut off from the cluster would have written
    # it (one whose node came back after another took over)
    task = %{prompt: "theirs", latency: 10}

    theirs = %{
      before
      | step: before.step + 1,
        next_id: before.next_id + 1,
        queue: [{before.next_id, task}],
        conversation: before.conversation ++ [{:user, before.next_id, task}]
    }

    store = %GenNative.Store.PortHandle{port: :agent_raft, name: :agent_checkpoints}
    {_, node, _} = hd(ctx.cluster)
    %{leader: {leader, _}} = :erpc.call(node, GenNative.Port, :raft_status, [:agent_raft])
    {_, leader_node, _} = List.keyfind(ctx.cluster, leader, 0)

    assert :erpc.call(leader_node, GenNative.Store, :put_new, [store, {name, theirs.step}, theirs])

    # this instance's step n + 1 finds the key taken by another state
    assert ReplicatedAgent.submit(name, %{prompt: "mine", latency: 10}) == {:error, :superseded}

    # its successor starts from the other instance's step, and does its work
    wait_until(fn -> (pid = ReplicatedAgent.whereis(name)) && pid != old end, 20_000)
    wait_until(fn -> idle?(name) end, 10_000)
    final = ReplicatedAgent.state(name)
    assert List.starts_with?(final.conversation, theirs.conversation)
    prompts = for {:user, _, task} <- final.conversation, do: task.prompt
    assert prompts == ["first", "theirs"]
  end

  defp flush_acks do
    receive do
      {:acked, _, _} -> flush_acks()
    after
      0 -> :ok
    end
  end

  # Submits {c, n}, {c, n + 1}, ... until told to stop; keeps the prompts
  # acknowledged (and tells the test) and those whose outcome it cannot
  # know (the call exited).
  defp client_loop(name, c, n, parent, acc) do
    receive do
      :stop -> acc
    after
      0 ->
        prompt = {c, n}

        acc =
          try do
            {:ok, _id} = ReplicatedAgent.submit(name, %{prompt: prompt, latency: 5}, 30_000)
            send(parent, {:acked, c, prompt})
            %{acc | acked: [prompt | acc.acked]}
          catch
            :exit, _ ->
              Process.sleep(10)
              %{acc | unknown: [prompt | acc.unknown]}
          end

        client_loop(name, c, n + 1, parent, acc)
    end
  end
end
