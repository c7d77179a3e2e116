defmodule GenNative.Distributed.Cluster do
  @moduledoc false
  # Makes this VM a distributed node on loopback and starts peers next to it
  # with OTP 25's :peer, sharing this VM's code path and cookie, so that a
  # peer loads gen_native, its NIF and test/support from the same build dir.

  @host ~c"127.0.0.1"

  @doc """
  Turns distribution on if it is off. Returns `:started` when it did (the
  caller then owns turning it off with `:net_kernel.stop/0`), `:already`
  otherwise.
  """
  def ensure_distributed! do
    if Node.alive?() do
      :already
    else
      # epmd -daemon returns at once, and is a no-op when epmd already runs.
      {_, 0} = System.cmd("epmd", ["-daemon"], stderr_to_stdout: true)
      # Several people may run the suite at once: keep node names unique.
      name = :"gn_primary_#{System.pid()}_#{System.unique_integer([:positive])}@127.0.0.1"
      {:ok, _} = :net_kernel.start([name, :longnames])
      :started
    end
  end

  @doc "Starts a peer linked to the caller; returns `{peer, node}`."
  def start_peer!(prefix) do
    code_path = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
    cookie = Atom.to_charlist(Node.get_cookie())

    {:ok, peer, node} =
      :peer.start_link(%{
        name: :peer.random_name(prefix),
        host: @host,
        longnames: true,
        args: [~c"-setcookie", cookie | code_path]
      })

    {:ok, _apps} = :erpc.call(node, Application, :ensure_all_started, [:gen_native])
    {peer, node}
  end
end
