defmodule GenNative.Examples.ReplicatedAgent do
  @moduledoc """
  An AI-agent server that survives the death of its node: a task queue, tool
  results arriving as messages, and its conversation checkpointed in a
  replicated store (a three-member Raft group of `GenNative.Port`
  programs, one on each node). When its node dies, it starts again on
  another node from the last committed checkpoint.

  (It lives in test/support rather than in its test file because the
  test's `:peer` nodes load it from the build directory, as they load
  `GenNative.Distributed.KV`.)

  ## The pieces

  On each of the nodes, `GenNative.Examples.ReplicatedAgent.NodeSupervisor`
  runs:

    * one member of the Raft group: a `GenNative.Port` with `:raft`, named
      the same on every node (`:port`, default `:agent_raft`);
    * a `DynamicSupervisor` for the agent;
    * a keeper (`GenNative.Examples.ReplicatedAgent.Keeper`) that starts the
      agent under that supervisor, registered as `{:global, name}`, unless
      it already runs somewhere, and otherwise monitors it. When the agent
      dies (or its node: the monitor says `:noconnection`), every keeper
      tries again; `:global` lets exactly one of them win.

  The agent is a `GenNative` server. Its state (`t:data/0`) is a step
  number, a task queue, the task whose tool call is outstanding, and the
  conversation: one entry per step, in order (`{:user, id, task}`,
  `{:tool_call, id, task}`, `{:tool_result, id, result}`).

    * `submit/2` appends a task. The reply, `{:ok, id}`, comes only once the
      new state is committed in the store.
    * The agent works through its queue one task at a time: it checkpoints
      `{:tool_call, id, task}`, then starts the tool (`:tool`, an MFA run in
      a process of its own, which sends `{:tool_result, id, result}` to the
      agent's global name when done, as a model API or a search would
      answer later).
    * A tool result is checkpointed before the agent acts on it (takes the
      next task); a result for anything but the outstanding call (a second
      answer of a call made twice) is dropped.
    * `init/1` loads the last checkpoint. A tool call that was outstanding
      is made again: its first result, if it ever comes, is then one of
      two answers, and the first to arrive counts.

  ## Checkpoints

  Every change of state is a step: the whole new state is written to an
  `:ordered_set` store under `{name, step}` with `GenNative.Store.put_new/3`
  on the current leader, and the agent adopts the new state only once the
  leader has answered. The agent finds the leader with
  `GenNative.Port.raft_status/1` (its own node's member first, then the
  others'), writes with `:erpc` on the leader's node, and retries on
  `{:error, {:not_leader, _}}`, on `{:error, {:leadership_lost, _}}`, and
  when the leader's node or program goes away, for up to 10 seconds.

  A write that ended in `:leadership_lost` or a timeout may have been
  applied. Its retry is harmless: `put_new` then finds the key taken, and
  the agent reads it back: if it holds this very state, the step is
  committed. If it holds another state, another instance of the agent
  (one whose node was cut off but still ran) wrote that step first: this
  one stops and the keeper starts it again from that checkpoint. That is
  the fence that keeps two instances from forking the conversation. Once
  step n is committed, the checkpoint of step n - 1 is deleted in the
  background; `init/1` deletes any left behind.

  ## What is promised, and what is not

    * No acknowledged step is lost: a task whose `submit/2` returned
      `{:ok, id}`, and every step before it, is in the state of every later
      instance of the agent, in order, as long as a majority of the members
      (two of three) and their directories survive.
    * Unacknowledged work may be redone, or may be there: a `submit/2` that
      exited (its node died mid-call), or returned `{:error, reason}` (no
      leader within the deadline: the agent then stops and restarts from
      the store), may or may not have been committed; a client that
      retries may submit a task twice. A tool call outstanding when the
      agent died is made again, so tools should be idempotent or tolerate
      being called twice; the second result is dropped.
    * Failover takes a new leader's election (about the member's
      `:election_timeout` when the dead node's member led) plus the
      keeper's start; meanwhile `submit/2` exits with `:noproc` or waits.
    * `:global` registration is not a fence: after a network partition
      heals, `:global` kills one of two registered agents, and the
      `put_new` fence above is what keeps their checkpoints from mixing.
    * Every checkpoint holds the whole conversation: fine for an example,
      but a long-lived agent would checkpoint a bounded window, or each step
      under its own key.
  """
  use GenNative, restart: :temporary

  alias GenNative.Store

  @typedoc "The agent's checkpointed state."
  @type data :: %{
          step: non_neg_integer(),
          next_id: pos_integer(),
          queue: [{pos_integer(), term()}],
          current: {pos_integer(), term()} | nil,
          conversation: [
            {:user | :tool_call, pos_integer(), term()} | {:tool_result, pos_integer(), term()}
          ]
        }

  @typedoc "Raft id, node, and Raft address (\"host:port\") of each member."
  @type cluster :: [{pos_integer(), node(), String.t()}]

  # how long a checkpoint (or the load at start) may look for a leader
  @write_deadline 10_000
  @rpc_timeout 5_000
  @retry_ms 50

  @doc """
  The agent's configuration, from keyword options:

    * `:name` - the agent's global name, required.
    * `:cluster` - `t:cluster/0`, required.
    * `:port` - the name of the `GenNative.Port` on every node (default
      `:agent_raft`).
    * `:store` - the name of the checkpoint store (default
      `:agent_checkpoints`).
    * `:tool` - `{module, function, args}`, called as
      `apply(module, function, [task | args])` in a process of its own; its
      return value is the tool's result (default
      `{GenNative.Examples.ReplicatedAgent.Tool, :run, []}`).
    * `:tool_timeout` - ms after which an unanswered tool call is made again
      (default 10_000).
  """
  @spec config(keyword()) :: map()
  def config(opts) do
    %{
      name: Keyword.fetch!(opts, :name),
      cluster: Keyword.fetch!(opts, :cluster),
      port: Keyword.get(opts, :port, :agent_raft),
      store: Keyword.get(opts, :store, :agent_checkpoints),
      tool: Keyword.get(opts, :tool, {GenNative.Examples.ReplicatedAgent.Tool, :run, []}),
      tool_timeout: Keyword.get(opts, :tool_timeout, 10_000)
    }
  end

  ## Client API

  @doc "Starts the agent, registered as `{:global, config.name}`."
  @spec start_link(map()) :: GenServer.on_start()
  def start_link(config),
    do: GenNative.start_link(__MODULE__, config, name: {:global, config.name})

  @doc """
  Adds `task` to the agent's queue. `{:ok, id}` once that is committed;
  `{:error, reason}` when no leader took the checkpoint in time (the agent
  then restarts from the store, which may or may not hold the task).
  Exits as `GenNative.call/3` does while no agent runs (`:noproc`) or when
  the agent dies before answering.
  """
  @spec submit(atom(), term(), timeout()) :: {:ok, pos_integer()} | {:error, term()}
  def submit(name, task, timeout \\ 30_000),
    do: GenNative.call({:global, name}, {:submit, task}, timeout)

  @doc "The agent's state: its last checkpoint."
  @spec state(atom()) :: data()
  def state(name), do: GenNative.call({:global, name}, :state)

  @doc "The agent's pid, wherever it runs, or `nil`."
  @spec whereis(atom()) :: pid() | nil
  def whereis(name) do
    case :global.whereis_name(name) do
      :undefined -> nil
      pid -> pid
    end
  end

  @doc """
  The last checkpoint in the store (`nil` if none), read on the leader:
  what the agent would start from now. Callable from any node connected to
  the cluster's nodes.
  """
  @spec last_checkpoint(map()) :: {:ok, data() | nil} | {:error, :unavailable}
  def last_checkpoint(config) do
    deadline = deadline()

    with {:ok, store} <- open_store(config, deadline),
         {:ok, {data, _older}} <- read_checkpoints(config, store, deadline) do
      {:ok, data}
    end
  end

  ## Callbacks

  @impl true
  def init(config) do
    deadline = deadline()

    with {:ok, store} <- open_store(config, deadline),
         {:ok, {data, older}} <- read_checkpoints(config, store, deadline) do
      prune(config, store, older)
      s = %{config: config, store: store, data: data || new_data(), dispatched: nil}
      {:ok, s, {:continue, :work}}
    else
      {:error, reason} -> {:stop, reason}
    end
  end

  @impl true
  def handle_call({:submit, task}, _from, s) do
    id = s.data.next_id
    data = %{s.data | next_id: id + 1, queue: s.data.queue ++ [{id, task}]}

    case commit(s, data, {:user, id, task}) do
      {:ok, s} -> {:reply, {:ok, id}, s, {:continue, :work}}
      {:error, reason} -> {:stop, {:shutdown, reason}, {:error, reason}, s}
    end
  end

  def handle_call(:state, _from, s), do: {:reply, s.data, s}

  @impl true
  # A tool call outstanding and not made by this instance (it was when the
  # checkpoint was taken): make it (again).
  def handle_continue(:work, %{data: %{current: {id, _} = call}} = s) do
    if s.dispatched == id, do: {:noreply, s}, else: {:noreply, dispatch(s, call)}
  end

  # Idle, with work queued: checkpoint the tool call, then make it.
  def handle_continue(:work, %{data: %{current: nil, queue: [{id, task} | rest]}} = s) do
    case commit(s, %{s.data | current: {id, task}, queue: rest}, {:tool_call, id, task}) do
      {:ok, s} -> {:noreply, dispatch(s, {id, task})}
      {:error, reason} -> {:stop, {:shutdown, reason}, s}
    end
  end

  def handle_continue(:work, s), do: {:noreply, s}

  @impl true
  def handle_info({:tool_result, id, result}, %{data: %{current: {id, _}}} = s) do
    case commit(s, %{s.data | current: nil}, {:tool_result, id, result}) do
      {:ok, s} -> {:noreply, %{s | dispatched: nil}, {:continue, :work}}
      {:error, reason} -> {:stop, {:shutdown, reason}, s}
    end
  end

  # the second answer of a call made twice, or a stray
  def handle_info({:tool_result, _id, _result}, s), do: {:noreply, s}

  def handle_info({:tool_timeout, id}, %{data: %{current: {id, _} = call}} = s),
    do: {:noreply, dispatch(s, call)}

  def handle_info({:tool_timeout, _id}, s), do: {:noreply, s}

  ## Steps

  defp new_data, do: %{step: 0, next_id: 1, queue: [], current: nil, conversation: []}

  # The next step: `data` with `entry` appended to the conversation,
  # adopted once its checkpoint is committed.
  defp commit(s, data, entry) do
    data = %{data | step: data.step + 1, conversation: data.conversation ++ [entry]}

    case checkpoint(s, data) do
      :ok -> {:ok, %{s | data: data}}
      {:error, _} = error -> error
    end
  end

  # The tool runs in a process of its own, not linked: its answer goes to
  # whichever instance of the agent is registered when it comes.
  defp dispatch(s, {id, task}) do
    %{name: name, tool: {m, f, a}, tool_timeout: timeout} = s.config

    spawn(fn ->
      result = apply(m, f, [task | a])

      case :global.whereis_name(name) do
        :undefined -> :ok
        pid -> send(pid, {:tool_result, id, result})
      end
    end)

    Process.send_after(self(), {:tool_timeout, id}, timeout)
    %{s | dispatched: id}
  end

  ## The replicated store

  defp deadline, do: System.monotonic_time(:millisecond) + @write_deadline

  defp open_store(config, deadline) do
    opts = [backend: {:port, config.port}, name: config.store]

    on_leader(config, deadline, fn node ->
      case rpc(node, :new, [:ordered_set, opts]) do
        {:ok, {:ok, store}} -> {:ok, store}
        {:ok, {:error, :already_exists}} -> {:error, {:not_an_ordered_set, config.store}}
        _ -> :retry
      end
    end)
  end

  # The newest checkpoint of this agent (nil if none) and the keys of the
  # older ones, read on the leader (a linearizable read).
  defp read_checkpoints(config, store, deadline) do
    name = config.name

    on_leader(config, deadline, fn node ->
      case rpc(node, :range, [store, {name, 0}, {name, :max}]) do
        {:ok, []} -> {:ok, {nil, []}}
        {:ok, entries} -> {:ok, {entries |> List.last() |> elem(1), older_keys(entries)}}
        _ -> :retry
      end
    end)
  end

  defp older_keys(entries), do: entries |> Enum.drop(-1) |> Enum.map(&elem(&1, 0))

  defp checkpoint(s, data) do
    key = {s.config.name, data.step}

    on_leader(s.config, deadline(), fn node ->
      case rpc(node, :put_new, [s.store, key, data]) do
        {:ok, true} ->
          prune(s.config, s.store, [{s.config.name, data.step - 1}], node)
          :ok

        # taken: by an earlier attempt of ours that was applied after all,
        # or by another instance of this agent
        {:ok, false} ->
          case rpc(node, :fetch, [s.store, key]) do
            {:ok, {:ok, ^data}} -> :ok
            {:ok, {:ok, _}} -> {:error, :superseded}
            _ -> :retry
          end

        # not the leader, leadership lost, the node or program gone, a timeout
        _ ->
          :retry
      end
    end)
  end

  # Deletes older checkpoints in the background: a delete that fails
  # leaves one behind for the next init/1 to delete.
  defp prune(config, store, keys, node \\ nil) do
    node = node || leader(config)

    if node do
      for key <- keys, do: :erpc.cast(node, Store, :delete, [store, key])
    end

    :ok
  end

  # Runs `fun.(leader_node)` until it returns something else than :retry,
  # or the deadline passes.
  defp on_leader(config, deadline, fun) do
    result =
      case leader(config) do
        nil -> :retry
        node -> fun.(node)
      end

    cond do
      result != :retry ->
        result

      System.monotonic_time(:millisecond) > deadline ->
        {:error, :unavailable}

      true ->
        Process.sleep(@retry_ms)
        on_leader(config, deadline, fun)
    end
  end

  # The node whose member leads, as this node's member sees it, else as
  # another node's does; nil while no member knows one.
  defp leader(config) do
    nodes = [node() | for({_, n, _} <- config.cluster, n != node(), do: n)]

    Enum.find_value(nodes, fn n ->
      case call(n, GenNative.Port, :raft_status, [config.port]) do
        {:ok, %{state: :leader}} -> n
        {:ok, %{leader: {id, _}}} -> config.cluster |> List.keyfind(id, 0) |> node_of()
        _ -> nil
      end
    end)
  end

  defp node_of({_id, node, _address}), do: node
  defp node_of(nil), do: nil

  defp rpc(node, fun, args), do: call(node, Store, fun, args)

  defp call(node, m, f, a) do
    {:ok, :erpc.call(node, m, f, a, @rpc_timeout)}
  catch
    kind, reason -> {:failed, {kind, reason}}
  end
end

defmodule GenNative.Examples.ReplicatedAgent.Tool do
  @moduledoc """
  A stand-in for a slow tool (a model API, a search): `run/1` waits the
  task's `:latency` (ms, default 10), then answers.
  """

  @doc "The tool's answer to `task`, after `task[:latency]` ms."
  @spec run(map()) :: {:answer, term()}
  def run(task) do
    Process.sleep(Map.get(task, :latency, 10))
    {:answer, Map.get(task, :prompt)}
  end
end

defmodule GenNative.Examples.ReplicatedAgent.Keeper do
  @moduledoc """
  Keeps one agent running in the cluster: starts it under this node's
  agent supervisor, registered as `{:global, name}`, or monitors the one
  that already runs, wherever it runs; when it goes (or its node does),
  tries again.
  """
  use GenServer

  alias GenNative.Examples.ReplicatedAgent

  # how long to wait before trying again after a failed start
  @backoff 200

  @doc false
  def start_link({config, agents}), do: GenServer.start_link(__MODULE__, {config, agents})

  @impl true
  def init({config, agents}) do
    # Meet the other nodes first, so that :global sees an agent already
    # running on one of them instead of registering a second one here.
    for {_id, node, _address} <- config.cluster, do: Node.connect(node)
    :global.sync()
    {:ok, %{config: config, agents: agents, ref: nil}, {:continue, :ensure}}
  end

  @impl true
  def handle_continue(:ensure, s), do: {:noreply, ensure(s)}

  @impl true
  def handle_info(:ensure, s), do: {:noreply, ensure(s)}

  def handle_info({:DOWN, ref, :process, _pid, _reason}, %{ref: ref} = s),
    do: {:noreply, ensure(%{s | ref: nil})}

  def handle_info(_msg, s), do: {:noreply, s}

  defp ensure(s) do
    case DynamicSupervisor.start_child(s.agents, {ReplicatedAgent, s.config}) do
      {:ok, pid} ->
        %{s | ref: Process.monitor(pid)}

      {:error, {:already_started, pid}} ->
        %{s | ref: Process.monitor(pid)}

      {:error, _} ->
        Process.send_after(self(), :ensure, @backoff)
        s
    end
  end
end

defmodule GenNative.Examples.ReplicatedAgent.NodeSupervisor do
  @moduledoc """
  What runs on each node of the cluster: this node's Raft member (a
  `GenNative.Port` named `config.port`, with its data in `:dir`), the
  supervisor the agent runs under when it runs here, and the keeper.

  Options: those of `GenNative.Examples.ReplicatedAgent.config/1`, plus
  `:dir` (this member's data directory, required) and `:election_timeout`
  (ms, default 500). This node must be one of the `:cluster`'s.
  """
  use Supervisor

  alias GenNative.Examples.ReplicatedAgent

  @doc "Starts the node's supervisor, linked to the caller."
  @spec start_link(keyword()) :: Supervisor.on_start()
  def start_link(opts), do: Supervisor.start_link(__MODULE__, opts)

  @doc """
  Starts it unlinked, for a caller that does not stay (an `:erpc` call,
  a shell): the supervisor runs until its node stops.
  """
  @spec start(keyword()) :: Supervisor.on_start()
  def start(opts) do
    with {:ok, pid} <- start_link(opts) do
      Process.unlink(pid)
      {:ok, pid}
    end
  end

  @impl true
  def init(opts) do
    config = ReplicatedAgent.config(opts)

    {id, _node, address} =
      List.keyfind(config.cluster, node(), 1) ||
        raise ArgumentError, "#{inspect(node())} is not in the cluster #{inspect(config.cluster)}"

    raft = [
      id: id,
      address: address,
      members: for({id, _node, address} <- config.cluster, do: {id, address}),
      election_timeout: Keyword.get(opts, :election_timeout, 500)
    ]

    agents = :"#{config.name}.agents"

    children = [
      {GenNative.Port,
       name: config.port, dir: Keyword.fetch!(opts, :dir), sync: :always, raft: raft},
      {DynamicSupervisor, name: agents, strategy: :one_for_one},
      {ReplicatedAgent.Keeper, {config, agents}}
    ]

    Supervisor.init(children, strategy: :one_for_one)
  end
end
