defmodule GenNative.Examples.AuditLog do
  @moduledoc """
  An audit log that owns two resources: a file it appends entries to and a
  linked connection process (standing in for a socket to a remote sink).

  It traps exits so that `terminate/2` runs on `stop/3`, on its supervisor's
  shutdown and on its parent's exit, and there writes a last line, closes the
  file and closes the connection. A lost connection stops the server.
  """
  use GenNative, shutdown: 10_000

  ## Client API

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    {path, opts} = Keyword.pop!(opts, :path)
    GenNative.start_link(__MODULE__, path, opts)
  end

  @spec log(GenServer.server(), String.t()) :: :ok
  def log(server, entry), do: GenNative.call(server, {:log, entry})

  @doc "Like `log/2`, without waiting for the entry to be written."
  @spec log_async(GenServer.server(), String.t()) :: :ok
  def log_async(server, entry), do: GenNative.cast(server, {:log, entry})

  @doc "The resources the server holds, so callers can watch them."
  @spec resources(GenServer.server()) :: %{file: pid(), connection: pid()}
  def resources(server), do: GenNative.call(server, :resources)

  ## Callbacks

  @impl true
  def init(path) do
    Process.flag(:trap_exit, true)

    case File.open(path, [:append, :utf8]) do
      {:ok, file} ->
        IO.write(file, "opened\n")
        {:ok, %{file: file, connection: spawn_link(&connection/0)}}

      {:error, reason} ->
        {:stop, {:cannot_open, path, reason}}
    end
  end

  @impl true
  def handle_call({:log, entry}, _from, state) do
    write(state, entry)
    {:reply, :ok, state}
  end

  def handle_call(:resources, _from, state) do
    {:reply, %{file: state.file, connection: state.connection}, state}
  end

  def handle_call(:crash, _from, _state), do: raise("audit log corrupted")

  @impl true
  def handle_cast({:log, entry}, state) do
    write(state, entry)
    {:noreply, state}
  end

  @impl true
  def handle_info({:EXIT, connection, reason}, %{connection: connection} = state) do
    {:stop, {:shutdown, {:connection_lost, reason}}, %{state | connection: nil}}
  end

  @impl true
  def terminate(reason, state) do
    IO.write(state.file, "closed #{inspect(reason)}\n")
    File.close(state.file)
    close_connection(state.connection)
  end

  defp write(state, entry) do
    IO.write(state.file, entry <> "\n")
    send(state.connection, {:send, entry})
  end

  defp close_connection(nil), do: :ok

  defp close_connection(connection) do
    send(connection, {:close, self()})

    receive do
      {:closed, ^connection} -> :ok
    after
      5_000 -> Process.exit(connection, :kill)
    end
  end

  defp connection do
    receive do
      {:send, _entry} ->
        connection()

      {:close, owner} ->
        send(owner, {:closed, self()})
    end
  end
end

defmodule GenNative.Examples.GracefulShutdownTest do
  use ExUnit.Case, async: true

  alias GenNative.Examples.AuditLog

  setup %{test: test} do
    name = "gen_native_audit_#{System.unique_integer([:positive])}.log"
    path = Path.join(System.tmp_dir!(), name)
    on_exit(fn -> File.rm(path) end)
    %{path: path, name: :"#{test}"}
  end

  # Starts the log, writes one entry and monitors both of its resources.
  defp start_log(path, opts \\ []) do
    {:ok, pid} = GenNative.start(AuditLog, path, opts)
    :ok = AuditLog.log(pid, "entry")
    watch(pid)
  end

  defp watch(pid) do
    %{file: file, connection: connection} = AuditLog.resources(pid)

    %{
      pid: pid,
      file: {file, Process.monitor(file)},
      connection: {connection, Process.monitor(connection)}
    }
  end

  defp assert_closed(%{file: {file, file_ref}, connection: {conn, conn_ref}}, conn_reason) do
    assert_receive {:DOWN, ^file_ref, :process, ^file, _}
    assert_receive {:DOWN, ^conn_ref, :process, ^conn, ^conn_reason}
  end

  defp lines(path), do: path |> File.read!() |> String.split("\n", trim: true)

  describe "stop/3" do
    test "runs terminate/2, which closes the file and the connection", %{path: path} do
      log = start_log(path)

      assert GenNative.stop(log.pid) == :ok

      # stop/3 returns after terminate/2 has run.
      assert lines(path) == ["opened", "entry", "closed :normal"]
      refute Process.alive?(log.pid)
      assert_closed(log, :normal)
    end

    test "writes every entry cast before it, then closes", %{path: path} do
      log = start_log(path)
      entries = for n <- 1..500, do: "async #{n}"

      for entry <- entries, do: :ok = AuditLog.log_async(log.pid, entry)
      assert GenNative.stop(log.pid) == :ok

      # stop/3 reaches the server after this client's casts, so they are all
      # handled before terminate/2 closes the file.
      written = lines(path)
      assert Enum.count(written, &String.starts_with?(&1, "async ")) == 500
      assert written == ["opened", "entry"] ++ entries ++ ["closed :normal"]
      assert_closed(log, :normal)
    end

    test "passes its reason to terminate/2", %{path: path} do
      log = start_log(path)

      assert GenNative.stop(log.pid, {:shutdown, :maintenance}) == :ok

      assert List.last(lines(path)) == "closed {:shutdown, :maintenance}"
      assert_closed(log, :normal)
    end
  end

  describe "supervisor shutdown" do
    test "the injected child_spec/1 carries the shutdown option", %{path: path} do
      assert %{shutdown: 10_000, start: {AuditLog, :start_link, [[path: ^path]]}} =
               AuditLog.child_spec(path: path)
    end

    test "terminate/2 runs with :shutdown", %{path: path, name: name} do
      pid = start_supervised!({AuditLog, path: path, name: name})
      log = watch(pid)

      assert stop_supervised(AuditLog) == :ok

      assert lines(path) == ["opened", "closed :shutdown"]
      assert_closed(log, :normal)
    end

    test "under a Supervisor of our own", %{path: path, name: name} do
      {:ok, sup} =
        Supervisor.start_link([{AuditLog, path: path, name: name}], strategy: :one_for_one)

      log = watch(name)

      assert Supervisor.stop(sup) == :ok

      assert lines(path) == ["opened", "closed :shutdown"]
      assert_closed(log, :normal)
    end

    test "the parent's exit runs terminate/2 with the parent's reason", %{path: path} do
      test = self()

      parent =
        spawn(fn ->
          {:ok, pid} = AuditLog.start_link(path: path)
          send(test, {:started, pid})
          Process.sleep(:infinity)
        end)

      assert_receive {:started, pid}
      log = watch(pid)
      ref = Process.monitor(pid)

      Process.exit(parent, :shutdown)

      assert_receive {:DOWN, ^ref, :process, ^pid, :shutdown}
      assert List.last(lines(path)) == "closed :shutdown"
      assert_closed(log, :normal)
    end
  end

  describe "abnormal exits" do
    @tag :capture_log
    test "a raise in a callback still runs terminate/2", %{path: path} do
      log = start_log(path)
      ref = Process.monitor(log.pid)

      assert {{%RuntimeError{message: "audit log corrupted"}, _stack}, {GenNative, :call, _}} =
               catch_exit(GenNative.call(log.pid, :crash))

      assert_receive {:DOWN, ^ref, :process, _, {%RuntimeError{}, _}}

      assert "closed {%RuntimeError{message: \"audit log corrupted\"}" <> _ =
               List.last(lines(path))

      assert_closed(log, :normal)
    end

    test "a lost connection stops the server through terminate/2", %{path: path} do
      log = start_log(path)
      ref = Process.monitor(log.pid)
      {conn, _} = log.connection

      Process.exit(conn, :kill)

      reason = {:shutdown, {:connection_lost, :killed}}
      assert_receive {:DOWN, ^ref, :process, _, ^reason}
      assert List.last(lines(path)) == "closed #{inspect(reason)}"
      assert_closed(log, :killed)
    end

    test ":kill skips terminate/2; the runtime still releases the resources", %{path: path} do
      log = start_log(path)
      ref = Process.monitor(log.pid)

      Process.exit(log.pid, :kill)

      assert_receive {:DOWN, ^ref, :process, _, :killed}
      assert lines(path) == ["opened", "entry"]
      assert_closed(log, :killed)
    end
  end

  describe "init/1" do
    test "fails cleanly when the file cannot be opened", %{path: path} do
      missing = Path.join(path, "no/such/dir.log")

      assert GenNative.start(AuditLog, missing) ==
               {:error, {:cannot_open, missing, :enoent}}
    end
  end
end
