defmodule GenNative.Port do
  @moduledoc """
  Starts and owns one `gen_native_port` program: an OS process, outside the
  VM, that hosts named `GenNative.Store` stores, in memory or, with a data
  directory, durably (a journal and snapshots).

      children = [
        {GenNative.Port, name: :durable, dir: "/var/lib/my_app/stores", sync: :always}
      ]

      Supervisor.start_link(children, strategy: :one_for_one)

      {:ok, users} = GenNative.Store.new(:set, backend: {:port, :durable}, name: :users)
      :ok = GenNative.Store.put(users, 42, %{name: "ada"})

  `start_link/1` returns once the program has loaded its data directory, so
  the stores are there when the supervisor moves on.

  ## Requests

  Store functions do not go through this server: the calling process sends
  its request to the program itself (any process may write to a port) and
  waits for the reply, which this server forwards to it. Many requests from
  many processes are in flight at once; requests on one store are answered
  in the order the program received them.

  A request waits for its reply up to the `:timeout` given to `start_link/1`
  (15 seconds by default; for a streamed reply such as `to_list/1`, for each
  part), and then exits with `{:timeout, {GenNative.Store, fun, args}}`.

  ## When the program dies

  This server stops with the reason `{:port_exited, status}` (a program
  killed by a signal exits with 128 + the signal number: 137 for
  `kill -9`), or with the reason of the program's fatal error event, so
  that its supervisor restarts it: `{:fsync_failed, text}` or
  `{:journal_write_failed, text}` when the journal could not be written or
  flushed (the program then acknowledges nothing more, and never retries
  the fsync). When
  a request written to the dead program's stdin breaks the pipe before the
  VM learns the exit status, the port closes without one and the reason is
  `{:port_closed, :epipe}`. Every
  request still waiting exits with that reason, the way `GenServer.call/3`
  exits when its server dies, for example
  `{{:port_exited, 137}, {GenNative.Store, :put, [store, key, value, []]}}`.
  A request that finds no program running (not started yet, or between a
  crash and the restart) exits with `{:noproc, {GenNative.Store, fun, args}}`.

  A restarted program starts empty without a data directory, and reloads the
  directory with one. `terminate/2` sends the program a `stop` request (it
  flushes and fsyncs its journal and exits) and waits for its exit status
  (up to 10 seconds, then kills it), so that a restarted program never runs
  alongside the previous one on the same directory.
  """
  use GenServer

  require Logger
  import Bitwise

  @default_timeout 15_000
  # how long init/1 waits for the program to load its data directory
  @ready_timeout 120_000
  # how long terminate/2 waits for the program to exit before killing it
  @exit_wait 10_000
  # the longest sync interval the program takes (--sync MS), in ms: a day
  @max_interval 86_400_000

  @type name :: atom()
  @type sync :: :always | :never | {:interval, pos_integer()}

  @doc """
  A child specification: the child's id is `{GenNative.Port, name}`, so one
  supervisor can hold several programs, and its shutdown time covers the
  wait for the program to exit.
  """
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{
      id: {__MODULE__, Keyword.get(opts, :name)},
      start: {__MODULE__, :start_link, [opts]},
      type: :worker,
      shutdown: @exit_wait + 5_000
    }
  end

  @doc """
  Starts the program and a server owning it, registered as `name`. Returns
  once the data directory is loaded; a program that fails to start or to
  load it gives `{:error, reason}`: `{:corrupt_snapshot, path}`,
  `{:corrupt_journal, path, {from, to}}` (damaged bytes before data that
  was synced), `{:bad_journal_header, path}`, `{:missing_snapshot, path}`,
  `{:missing_journal, path}`, `{:locked, dir}`, `{:io_error, text}`, or
  `{:port_exited, status}`. The files are left as they are.

  ## Options

    * `:name` - an atom, required. Store handles name the program by it:
      `GenNative.Store.new(type, backend: {:port, name}, name: store)`.
    * `:dir` - the data directory (created if missing), or `nil` (default)
      for stores that live in memory only.
    * `:sync` - when the journal is flushed to disk: `:always` (before
      each write is acknowledged), `:never`, or `{:interval, ms}` with
      `ms` at most #{@max_interval} (a day; default `{:interval, 100}`).
    * `:timeout` - how long a request waits for its reply, in ms, or
      `:infinity` (default #{@default_timeout}).

  Invalid options raise `ArgumentError`.
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    config = options!(opts)
    GenServer.start_link(__MODULE__, config, name: config.name)
  end

  defp options!(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError,
            "expected GenNative.Port options to be a keyword list, got: #{inspect(opts)}"
    end

    for {key, _} <- opts, key not in [:name, :dir, :sync, :timeout, :raft] do
      raise ArgumentError,
            "unknown GenNative.Port option #{inspect(key)}, expected :name, :dir, :sync, :timeout or :raft"
    end

    name = Keyword.get(opts, :name)
    dir = Keyword.get(opts, :dir)
    sync = Keyword.get(opts, :sync, {:interval, 100})
    timeout = Keyword.get(opts, :timeout, @default_timeout)

    unless is_atom(name) and name not in [nil, true, false] do
      raise ArgumentError,
            "GenNative.Port needs a :name, an atom, got: #{inspect(name)}"
    end

    dir = if dir == nil, do: nil, else: Path.expand(path!(dir))

    sync =
      case sync do
        :always ->
          "always"

        :never ->
          "never"

        {:interval, ms} when is_integer(ms) and ms > 0 and ms <= @max_interval ->
          Integer.to_string(ms)

        _ ->
          invalid!(
            :sync,
            sync,
            ":always, :never or {:interval, ms} with 0 < ms <= #{@max_interval} (a day)"
          )
      end

    unless timeout == :infinity or (is_integer(timeout) and timeout > 0) do
      invalid!(:timeout, timeout, "a positive integer (ms) or :infinity")
    end

    raft = raft!(Keyword.get(opts, :raft), dir)
    %{name: name, dir: dir, sync: sync, timeout: timeout, raft: raft}
  end

  # The program's --raft-* arguments, or [].
  defp raft!(nil, _dir), do: []

  defp raft!(opts, dir) do
    unless Keyword.keyword?(opts) do
      invalid!(:raft, opts, "a keyword list (:id, :address, :members, :reads, ...)")
    end

    for {key, _} <- opts,
        key not in [:id, :address, :members, :reads, :election_timeout, :snapshot_every] do
      raise ArgumentError,
            "unknown :raft option #{inspect(key)}, expected :id, :address, :members, :reads, " <>
              ":election_timeout or :snapshot_every"
    end

    if dir == nil, do: invalid!(:dir, dir, "a data directory: a Raft member keeps its log there")

    id = Keyword.get(opts, :id)
    address = Keyword.get(opts, :address)

    unless is_integer(id) and id > 0 and id < 1 <<< 63 do
      invalid!(:raft, opts, "an :id, a positive integer")
    end

    unless address?(address), do: invalid!(:raft, opts, "an :address, \"host:port\"")

    members =
      case Keyword.get(opts, :members) do
        nil ->
          []

        list when is_list(list) and list != [] ->
          for member <- list do
            case member do
              {mid, addr} when is_integer(mid) and mid > 0 ->
                if address?(addr),
                  do: "#{mid}=#{addr}",
                  else: invalid!(:raft, opts, "members as {id, \"host:port\"}")

              _ ->
                invalid!(:raft, opts, "members as {id, \"host:port\"}")
            end
          end
          |> then(&["--raft-members", Enum.join(&1, ",")])

        _ ->
          invalid!(:raft, opts, ":members, a non-empty list of {id, \"host:port\"}")
      end

    reads =
      case Keyword.get(opts, :reads, :linearizable) do
        r when r in [:linearizable, :local] -> Atom.to_string(r)
        _ -> invalid!(:raft, opts, ":reads, :linearizable or :local")
      end

    extra =
      for {key, flag} <- [
            election_timeout: "--raft-election-ms",
            snapshot_every: "--raft-snapshot-every"
          ],
          value = Keyword.get(opts, key),
          value != nil,
          into: [] do
        {low, high} = if key == :election_timeout, do: {10, 600_000}, else: {1, 1 <<< 30}

        unless is_integer(value) and value >= low and value <= high do
          invalid!(:raft, opts, "#{inspect(key)}, an integer from #{low} to #{high}")
        end

        [flag, Integer.to_string(value)]
      end

    ["--raft-id", Integer.to_string(id), "--raft-address", address, "--raft-reads", reads] ++
      members ++ List.flatten(extra)
  end

  defp address?(address) do
    is_binary(address) and
      match?([_host, port] when port != "", String.split(address, ":", parts: 2)) and
      not String.contains?(address, [",", "="])
  end

  defp path!(dir) when is_binary(dir) and dir != "", do: dir

  defp path!(dir) when is_list(dir) and dir != [] do
    IO.chardata_to_string(dir)
  rescue
    _ -> invalid!(:dir, dir, "a path (a non-empty string) or nil")
  end

  defp path!(dir), do: invalid!(:dir, dir, "a path (a non-empty string) or nil")

  defp invalid!(opt, value, expected) do
    raise ArgumentError,
          "invalid value for GenNative.Port option #{inspect(opt)}, expected #{expected}, got: #{inspect(value)}"
  end

  @doc """
  Returns `:ok` once every write acknowledged so far is on disk, waiting for
  a background fsync in flight (`sync: {:interval, ms}`). If the fsync
  fails, the program stops and the call exits with `{:fsync_failed, text}`.
  """
  @spec sync(name()) :: :ok
  def sync(name) when is_atom(name),
    do: request(name, {:sync, nil}, :single, {__MODULE__, :sync, [name]})

  @doc """
  Writes a new snapshot of every store now (the program also does it on its
  own once the journal outgrows the snapshot) and returns `:ok` once it is
  in place and the journal before it is deleted. The snapshot is written a
  slice at a time: requests go on meanwhile. `{:error, :no_dir}` for a
  program without a data directory.
  """
  @spec compact(name()) :: :ok | {:error, :no_dir | :compaction_failed}
  def compact(name) when is_atom(name),
    do: request(name, {:compact, nil}, :single, {__MODULE__, :compact, [name]})

  @doc """
  A replicated program's view of its Raft group: `%{id:, state:, leader:,
  last_index:, applied:, members:}`, with `state` one of `:leader`,
  `:follower`, `:candidate`, `:unavailable`, `leader` as `{id, address}`
  or `nil` (not known yet), and `members` as `[{id, address, role}]`
  (`:voter`, `:standby`, `:spare`). See guides/replication.md.
  """
  @spec raft_status(name()) :: map()
  def raft_status(name) when is_atom(name),
    do: request(name, {:raft_status, nil}, :single, {__MODULE__, :raft_status, [name]})

  @doc """
  Waits until the running programs among `names` (members of one group,
  started on this node) agree on a leader among them that says it leads,
  and returns its name: `{:ok, name}`, or `{:error, :timeout}` after
  `timeout` ms. A program that is not running, or does not answer, is left
  out. Polls `raft_status/1` every 10 ms.
  """
  @spec await_leader([name()], timeout()) :: {:ok, name()} | {:error, :timeout}
  def await_leader(names, timeout \\ 10_000) when is_list(names) do
    deadline = if timeout == :infinity, do: :infinity, else: now_ms() + timeout
    await_leader_until(names, deadline)
  end

  defp await_leader_until(names, deadline) do
    statuses = for n <- names, Process.whereis(n), st = status_or_nil(n), do: {n, st}
    leaders = for {n, %{state: :leader, id: id}} <- statuses, do: {n, id}

    case leaders do
      [{name, id}] when statuses != [] ->
        if Enum.all?(statuses, fn {_, st} -> match?({^id, _}, st.leader) end),
          do: {:ok, name},
          else: retry_leader(names, deadline)

      _ ->
        retry_leader(names, deadline)
    end
  end

  defp retry_leader(names, deadline) do
    if deadline != :infinity and now_ms() > deadline do
      {:error, :timeout}
    else
      Process.sleep(10)
      await_leader_until(names, deadline)
    end
  end

  defp status_or_nil(name) do
    raft_status(name)
  catch
    :exit, _ -> nil
  end

  defp now_ms, do: System.monotonic_time(:millisecond)

  @doc """
  Asks the leader (the program `name` must run it) to hand leadership to
  member `id`, or to any up-to-date voter with `id` 0. `:ok` once it has
  moved; `{:error, {:not_leader, leader}}`, `{:error, {:transfer_failed,
  text}}`.
  """
  @spec transfer_leadership(name(), non_neg_integer()) :: :ok | {:error, term()}
  def transfer_leadership(name, id \\ 0) when is_atom(name) and is_integer(id) and id >= 0,
    do:
      request(
        name,
        {:raft_transfer, nil, id},
        :single,
        {__MODULE__, :transfer_leadership, [name, id]}
      )

  @doc """
  Adds member `id` at `address` to the group (through the leader, the
  program `name`): it joins as a spare, catches up, and becomes a voter;
  `:ok` then. The new member is started without `:members`, with an empty
  directory.
  """
  @spec add_member(name(), pos_integer(), String.t()) :: :ok | {:error, term()}
  def add_member(name, id, address)
      when is_atom(name) and is_integer(id) and id > 0 and is_binary(address),
      do:
        request(
          name,
          {:raft_add, nil, id, address},
          :single,
          {__MODULE__, :add_member, [name, id, address]}
        )

  @doc """
  Removes member `id` from the group (through the leader, the program
  `name`). A removed member's directory must be reset (emptied) before it
  can join any group again.
  """
  @spec remove_member(name(), pos_integer()) :: :ok | {:error, term()}
  def remove_member(name, id) when is_atom(name) and is_integer(id) and id > 0,
    do: request(name, {:raft_remove, nil, id}, :single, {__MODULE__, :remove_member, [name, id]})

  @doc """
  Empties a Raft member's data directory (no program may be using it), so
  that it can join a group again as a new member: a member removed from its
  group refuses to start on its old directory (`{:error, {:removed_member,
  dir}}`). Everything the directory held is gone.
  """
  @spec reset_member(Path.t()) :: :ok
  def reset_member(dir) do
    dir = Path.expand(path!(dir))
    File.rm_rf!(dir)
    :ok
  end

  @doc "The stores the program holds: a list of `{name, type}`."
  @spec stores(name()) :: [{atom(), :set | :ordered_set}]
  def stores(name) when is_atom(name),
    do: request(name, {:stores, nil}, :single, {__MODULE__, :stores, [name]})

  @doc "The OS pid of the running program, or `nil` when none runs."
  @spec os_pid(name()) :: non_neg_integer() | nil
  def os_pid(name) when is_atom(name) do
    with {_owner, port, _timeout} <- :persistent_term.get({__MODULE__, name}, nil),
         {:os_pid, os_pid} <- Port.info(port, :os_pid) do
      os_pid
    else
      _ -> nil
    end
  end

  ## Requests, made by the calling process

  @doc false
  # Sends `request` ({op, store, arg...}, tagged here) to the program `name`
  # runs and returns the reply. `kind` is :single, or :list or :binary for
  # the streamed ops, whose parts are joined here. `location` is the
  # {module, fun, args} named in exits.
  @spec request(name(), tuple(), :single | :list | :binary, {module(), atom(), list()}) :: term()
  def request(name, request, kind, location) do
    case :persistent_term.get({__MODULE__, name}, nil) do
      {owner, port, timeout} ->
        # the reply is sent to this alias: once the monitor is gone (reply,
        # DOWN, timeout), a late reply is dropped
        ref = :erlang.monitor(:process, owner, [{:alias, :demonitor}])
        request = with_request_id(name, request)

        try do
          :erlang.port_command(
            port,
            :erlang.term_to_binary(:erlang.insert_element(1, request, ref))
          )
        rescue
          ArgumentError ->
            :erlang.demonitor(ref, [:flush])
            exit({:noproc, location})
        end

        receive do
          {^ref, payload} when kind == :single ->
            :erlang.demonitor(ref, [:flush])
            :erlang.binary_to_term(payload)

          {^ref, payload} ->
            stream(ref, :erlang.binary_to_term(payload), [], kind, timeout, location)

          {:DOWN, ^ref, _, _, reason} ->
            exit({reason, location})
        after
          timeout -> cancel(ref, location)
        end

      nil ->
        exit({:noproc, location})
    end
  end

  # A replicated program's request under GenNative.Store.with_request_id/2
  # ({rid, {Client, Seq}, Op, Store, Args...}) and with_consistency/2
  # ({read, local | linearizable, ...}, outermost).
  defp with_request_id(name, request) do
    if :persistent_term.get({__MODULE__, name, :raft}, false) do
      request
      |> wrap(:rid, Process.get(:"$gn_request_id"))
      |> wrap(:read, Process.get(:"$gn_consistency"))
    else
      request
    end
  end

  defp wrap(request, _wrapper, nil), do: request

  defp wrap(request, wrapper, arg),
    do: :erlang.insert_element(1, :erlang.insert_element(1, request, arg), wrapper)

  defp stream(ref, {:more, part}, parts, kind, timeout, location) do
    receive do
      {^ref, payload} ->
        stream(ref, :erlang.binary_to_term(payload), [part | parts], kind, timeout, location)

      {:DOWN, ^ref, _, _, reason} ->
        exit({reason, location})
    after
      timeout -> cancel(ref, location)
    end
  end

  defp stream(ref, {:done, part}, parts, kind, _timeout, _location) do
    :erlang.demonitor(ref, [:flush])
    join(kind, [part | parts])
  end

  # an answer that is not streamed: an error
  defp stream(ref, reply, [], _kind, _timeout, _location) do
    :erlang.demonitor(ref, [:flush])
    reply
  end

  defp join(:list, [last | earlier]),
    do: Enum.reduce(earlier, last, fn part, acc -> part ++ acc end)

  defp join(:binary, parts), do: IO.iodata_to_binary(Enum.reverse(parts))

  defp cancel(ref, location) do
    :erlang.demonitor(ref, [:flush])
    flush(ref)
    exit({:timeout, location})
  end

  # replies that arrived between the timeout and the demonitor
  defp flush(ref) do
    receive do
      {^ref, _} -> flush(ref)
    after
      0 -> :ok
    end
  end

  ## The server

  @impl true
  def init(config) do
    Process.flag(:trap_exit, true)
    await_previous(config.name)

    with :ok <- make_dir(config.dir),
         {:ok, port, os_pid} <- open(config),
         :ok <- await_ready(port, os_pid, config.name) do
      :persistent_term.put({__MODULE__, config.name}, {self(), port, config.timeout})
      :persistent_term.put({__MODULE__, config.name, :raft}, config.raft != [])
      # the key to wait on, should this server be killed without terminate/2
      :persistent_term.put({__MODULE__, config.name, :os_pid}, os_pid)
      {:ok, %{name: config.name, port: port, os_pid: os_pid, fatal: nil}}
    else
      {:error, reason} -> {:stop, reason}
    end
  end

  # A server killed without terminate/2 (:kill) left its program to exit on
  # its own once its stdin closed: wait for it, so that two programs never
  # share a data directory.
  defp await_previous(name) do
    case :persistent_term.get({__MODULE__, name, :os_pid}, nil) do
      nil -> :ok
      os_pid -> await_exit(os_pid, System.monotonic_time(:millisecond) + @exit_wait)
    end
  end

  defp make_dir(nil), do: :ok

  # The parents only: the program creates the directory itself, mode 0700.
  defp make_dir(dir) do
    with :ok <- File.mkdir_p(Path.dirname(dir)),
         false <- File.exists?(dir) and not File.dir?(dir) do
      :ok
    else
      true -> {:error, {:dir, dir, :enotdir}}
      {:error, reason} -> {:error, {:dir, dir, reason}}
    end
  end

  defp open(config) do
    path = Path.join(:code.priv_dir(:gen_native), "gen_native_port")
    dir_args = if config.dir, do: ["--dir", config.dir], else: []
    args = dir_args ++ ["--sync", config.sync] ++ config.raft

    # parallelism: many callers write to the port at once; with it a
    # write that finds the port busy is scheduled instead of waiting for
    # the port's lock (in a pipelined run with 32 writers: 196k -> 356k
    # requests/s)
    try do
      Port.open({:spawn_executable, path}, [
        :binary,
        {:packet, 4},
        :exit_status,
        {:parallelism, true},
        {:args, args}
      ])
    rescue
      e in ErlangError -> {:error, {:spawn_failed, path, e.original}}
    else
      port ->
        case Port.info(port, :os_pid) do
          {:os_pid, os_pid} -> {:ok, port, os_pid}
          nil -> {:error, {:spawn_failed, path, :closed}}
        end
    end
  end

  defp await_ready(port, os_pid, name) do
    receive do
      {^port, {:data, <<0::16, event::binary>>}} ->
        case :erlang.binary_to_term(event) do
          {:ready, _info} ->
            :ok

          {:error, {:bad_request, _}} = event ->
            log_event(event, name)
            await_ready(port, os_pid, name)

          {:error, reason} ->
            # the program exits with status 2 right after a fatal error
            receive do
              {^port, {:exit_status, _}} -> :ok
            after
              @exit_wait -> stop_program(port, os_pid)
            end

            {:error, reason}

          event ->
            log_event(event, name)
            await_ready(port, os_pid, name)
        end

      {^port, {:exit_status, status}} ->
        {:error, {:port_exited, status}}
    after
      @ready_timeout ->
        stop_program(port, os_pid)
        {:error, :ready_timeout}
    end
  end

  @impl true
  def handle_info(
        {port, {:data, <<n::16, tag::binary-size(n), payload::binary>>}},
        %{port: port} = s
      )
      when n > 0 do
    case :erlang.binary_to_term(tag) do
      ref when is_reference(ref) ->
        send(ref, {ref, payload})

      other ->
        Logger.warning(
          "GenNative.Port #{inspect(s.name)}: a reply with the tag #{inspect(other)}"
        )
    end

    {:noreply, s}
  end

  def handle_info({port, {:data, <<0::16, event::binary>>}}, %{port: port} = s) do
    case :erlang.binary_to_term(event) do
      {:error, {:bad_request, _}} = event ->
        log_event(event, s.name)
        {:noreply, s}

      {:error, reason} = event ->
        # fatal: the exit status follows
        log_event(event, s.name)
        {:noreply, %{s | fatal: reason}}

      event ->
        log_event(event, s.name)
        {:noreply, s}
    end
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = s) do
    {:stop, s.fatal || {:port_exited, status}, %{s | port: nil}}
  end

  def handle_info({:EXIT, port, reason}, %{port: port} = s) when is_port(port) do
    # the port closed before the exit status came: a write to the dead
    # program's stdin failed (:epipe)
    {:stop, s.fatal || {:port_closed, reason}, %{s | port: nil}}
  end

  def handle_info(_msg, s), do: {:noreply, s}

  @impl true
  def terminate(_reason, s) do
    :persistent_term.erase({__MODULE__, s.name})

    if s.port do
      stop_program(s.port, s.os_pid)
    end

    :persistent_term.erase({__MODULE__, s.name, :os_pid})
    :persistent_term.erase({__MODULE__, s.name, :raft})
    :ok
  end

  # Asks the program to stop (it flushes and fsyncs its journal and exits
  # 0) and waits for its exit status; kills it if it has not exited within
  # @exit_wait. Replies still coming are skipped.
  defp stop_program(port, os_pid) do
    try do
      :erlang.port_command(port, :erlang.term_to_binary({make_ref(), :stop, nil}))
    rescue
      ArgumentError -> :ok
    end

    receive do
      {^port, {:exit_status, _}} -> :ok
    after
      @exit_wait ->
        System.cmd("kill", ["-KILL", Integer.to_string(os_pid)], stderr_to_stdout: true)

        receive do
          {^port, {:exit_status, _}} -> :ok
        after
          1_000 -> :ok
        end
    end

    try do
      Port.close(port)
    rescue
      ArgumentError -> :ok
    end
  end

  # For a program whose port is gone (its server was killed): polls until
  # the OS process has exited.
  defp await_exit(os_pid, deadline) do
    cond do
      not os_alive?(os_pid) ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        :timeout

      true ->
        Process.sleep(10)
        await_exit(os_pid, deadline)
    end
  end

  # Whether the OS process runs; an exited process not yet reaped (a
  # zombie) holds no files any more.
  defp os_alive?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} ->
        # the state follows the command name, which is in parentheses
        {pos, 1} = stat |> :binary.matches(")") |> List.last()
        binary_part(stat, pos + 2, 1) not in ["Z", "X"]

      {:error, :enoent} ->
        false

      {:error, _} ->
        {_, status} =
          System.cmd("kill", ["-0", Integer.to_string(os_pid)], stderr_to_stdout: true)

        status == 0
    end
  end

  defp log_event({:log, level, text}, name) do
    level = if level in [:info, :warning, :error], do: level, else: :info
    Logger.log(level, "gen_native_port #{inspect(name)}: #{text}")
  end

  defp log_event({:error, reason}, name) do
    Logger.error("gen_native_port #{inspect(name)}: #{inspect(reason)}")
  end

  defp log_event({:ready, _}, _name), do: :ok

  defp log_event(event, name) do
    Logger.warning("gen_native_port #{inspect(name)}: unknown event #{inspect(event)}")
  end
end
