defmodule GenNative.Test.RaftCluster do
  @moduledoc """
  Replicated `GenNative.Port` programs for tests: each member is its own OS
  process (a port program) listening on 127.0.0.1, with its own data
  directory under a temporary directory. Members run under the test's
  supervisor (`start_supervised/2`), as temporary children, so that killing
  one (`kill/1`) does not take the test down.
  """
  import ExUnit.Assertions
  import ExUnit.Callbacks, only: [start_supervised: 2]

  alias GenNative.Port

  @doc "A free TCP port on 127.0.0.1 (bound, then released)."
  def free_port do
    {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1}, reuseaddr: true)
    {:ok, port} = :inet.port(socket)
    :gen_tcp.close(socket)
    port
  end

  @doc """
  Starts `n` members that bootstrap one group. Returns the members: maps
  with `:id`, `:name` (the GenNative.Port name), `:address` and `:dir`.
  `opts` go into each member's `:raft` options (e.g. `reads: :local`).
  """
  def start(n, opts \\ []) do
    # unique across runs too: a directory left by an earlier run holds a
    # group of other addresses
    tag = "#{System.os_time(:microsecond)}_#{System.unique_integer([:positive])}"
    base = Path.join(System.tmp_dir!(), "gn_raft_#{tag}")
    ExUnit.Callbacks.on_exit(fn -> File.rm_rf(base) end)

    members =
      for id <- 1..n do
        %{
          id: id,
          name: :"gn_raft_#{tag}_#{id}",
          address: "127.0.0.1:#{free_port()}",
          dir: Path.join(base, "m#{id}")
        }
      end

    boot = for m <- members, do: {m.id, m.address}
    for m <- members, do: start_member(m, Keyword.put(opts, :members, boot))
    members
  end

  @doc "Starts (or restarts, with its directory) one member."
  def start_member(m, opts \\ []) do
    raft = [id: m.id, address: m.address, election_timeout: 500] ++ opts

    {:ok, _} =
      start_supervised({Port, name: m.name, dir: m.dir, sync: :always, raft: raft},
        restart: :temporary,
        id: {m.name, System.unique_integer()}
      )

    m
  end

  @doc "Kills a member's program with SIGKILL and waits for its server to go."
  def kill(m) do
    pid = Process.whereis(m.name)
    os_pid = Port.os_pid(m.name)
    ref = Process.monitor(pid)
    {_, 0} = System.cmd("kill", ["-KILL", Integer.to_string(os_pid)])
    assert_receive {:DOWN, ^ref, _, _, _}, 10_000
    os_pid
  end

  @doc "Sends a signal (\"STOP\", \"CONT\") to a member's program."
  def signal(m, sig) do
    {_, 0} = System.cmd("kill", ["-#{sig}", Integer.to_string(Port.os_pid(m.name))])
    :ok
  end

  @doc "Whether the member's server runs."
  def alive?(m), do: Process.whereis(m.name) != nil

  @doc """
  Waits until the running members among `members` agree on one leader that
  says it leads (`GenNative.Port.await_leader/2`); returns that member.
  Fails after `timeout` ms.
  """
  def await_leader(members, timeout \\ 10_000) do
    case Port.await_leader(Enum.map(members, & &1.name), timeout) do
      {:ok, name} -> Enum.find(members, &(&1.name == name))
      {:error, :timeout} -> flunk("no agreed leader among #{inspect(Enum.map(members, & &1.id))}")
    end
  end

  @doc "The member's raft_status, or nil if it does not answer."
  def safe_status(m) do
    Port.raft_status(m.name)
  catch
    :exit, _ -> nil
  end

  @doc """
  Waits until `fun.()` is truthy, polling every 20 ms (each poll may be a
  request to a member), or fails after `timeout` ms.
  """
  def eventually(fun, timeout \\ 10_000), do: GenNative.TestHelpers.wait_until(fun, timeout, 20)
end
