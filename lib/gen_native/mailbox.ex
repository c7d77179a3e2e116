defmodule GenNative.Mailbox do
  @moduledoc """
  Options of a GenNative server's native mailbox.

  Given to `use GenNative, mailbox: [...]`, and overridable per server with
  the `mailbox: [...]` option of `GenNative.start_link/3` and
  `GenNative.start/3`.

  ## Modes, and the order each gives

  The options decide where casts wait:

    * **Message mode** (the default). A cast is admitted by the mailbox
      (counted against `:capacity`, under the `:overflow` policy) and then
      sent as the `{:"$gen_cast", request}` message `GenServer.cast/2` sends.
      The order of everything the server handles is `GenServer`'s.
    * **Queue mode**: with `overflow: :drop_oldest` (only a queued cast can be
      evicted), `keep_on_crash: true` (a cast in a process mailbox dies with
      the process) or a module that defines `c:GenNative.handle_batch/2` with
      a `:batch_size` above 1 (batches come out of the queue). Casts wait in
      the native queue, outside the server's heap. They keep their order
      among themselves, and everything cast before a message (a call,
      `send/2`, a `:sys` request, an exit signal) was sent is handled before
      that message. The one difference from `GenServer`: a message sent
      *before* a cast may be handled after it while the server has a backlog.

  In both modes a `priority: :high` request is handled before every request
  still waiting; see "Ordering" in `GenNative`.

  ## Options

    * `:capacity` - a positive integer or `:infinity` (default). The most
      normal casts waiting (sent with `GenNative.cast` and not handled yet,
      in the process mailbox or the queue); the priority lane holds as many.
      A normal call is admitted only while there is room too, but takes
      none. A cast sent with `GenServer.cast/2` is the same message as a
      GenNative cast, so the mailbox cannot tell them apart: it takes no
      slot when sent, and handling it frees one, so with GenServer clients
      mixed in, as many more casts as they sent can get in.

    * `:overflow` - what happens to a request that meets a full lane
      (default `:reject`):
      * `:reject` - `GenNative.cast/2,3` returns `{:error, :mailbox_full}`;
        `GenNative.call/2,3,4` exits with
        `{:mailbox_full, {GenNative, :call, [server, request, timeout]}}` at once.
      * `:drop_newest` - the new request is discarded and counted; a cast
        returns `:ok`, a call exits with `{:mailbox_full, location}` at once.
      * `:drop_oldest` - the lane's oldest queued request is discarded and
        counted to make room; if it was a priority call, its caller exits
        with `{:mailbox_full, location}` at once. Queue mode.
      * `:block` - the sender waits, without spinning or polling, until there
        is room. A call's wait counts against its timeout; a cast waits up to
        its `:timeout` option (default `:infinity`) and returns
        `{:error, :mailbox_full}` if it runs out. Blocked senders are served
        in arrival order; if the server dies, blocked casts return `:ok` and
        blocked calls exit with `{:noproc, location}`, as for a dead server.

    * `:batch_size` - the most casts handed to `c:GenNative.handle_batch/2` at
      once, and in queue mode how many queued requests the server handles
      before it looks at its process mailbox again (default 64, at most
      1024). With `handle_batch/2` defined, a batch size above 1 means queue
      mode; `batch_size: 1` keeps message mode. A batch of large casts can
      be smaller: the server copies casts out of the queue for about 250 us
      at a time on its scheduler (a cast too large for that is copied on a
      dirty scheduler).

    * `:keep_on_crash` - `true` or `false` (default). With `true`, casts not
      handled yet when the server crashes are delivered, in order, to the
      next server started under the same registered name with the same
      module (typically by its supervisor); priority calls queued by the
      dead server are dropped, their callers having exited already. A
      registered name is required. Queue mode.

      This holds for any exit, `Process.exit(pid, :kill)` and untrapped
      linked exits included, where no code of the server runs: the mailbox
      keeps the casts the server has taken out of it (up to `:batch_size`
      at a time) until their callback returns. A cast whose callback raised
      or stopped the server counts as handled and is not delivered again.
      The cast (or `handle_batch/2` batch) being handled when the server is
      killed is delivered again to the next server: delivery is at least
      once for it, exactly once for every other cast. The queue is freed when the server stops with
      `:normal`, `:shutdown` or `{:shutdown, _}`, and otherwise kept for
      `Application.get_env(:gen_native, :keep_on_crash_ms, 5000)` ms after
      the crash: if no new server has adopted it by then, it is freed.

    * `:drop_expired_calls` - `false` (default) or `true`. With `true`, a
      `GenNative.call/3,4` with an integer timeout whose deadline has passed
      when the server reaches it is not given to `handle_call/3` and counts
      as `expired` in `GenNative.mailbox_info/1`: its caller has already
      exited with `{:timeout, location}`, so an overloaded server does not
      fall further behind on work nobody waits for. Calls with an
      `:infinity` timeout and `GenServer.call/3` are never skipped. The
      deadline travels in the tag of the call's `from`
      (`{pid, [[:alias | ref] | deadline]}`), which `GenNative.reply/2` and
      `GenServer.reply/2` accept.
  """

  alias GenNative.Native

  @type overflow :: :reject | :drop_newest | :drop_oldest | :block
  @type option ::
          {:capacity, pos_integer() | :infinity}
          | {:overflow, overflow()}
          | {:batch_size, pos_integer()}
          | {:keep_on_crash, boolean()}
          | {:drop_expired_calls, boolean()}

  @typedoc """
  What `GenNative.mailbox_info/1` returns for a GenNative server; see there
  for what each count means.
  """
  @type info :: %{
          length: non_neg_integer(),
          high_length: non_neg_integer(),
          capacity: pos_integer() | :infinity,
          overflow: overflow(),
          accepted: non_neg_integer(),
          rejected: non_neg_integer(),
          dropped: non_neg_integer(),
          expired: non_neg_integer(),
          max_length: non_neg_integer(),
          blocked_senders: non_neg_integer()
        }

  @defaults [
    capacity: :infinity,
    overflow: :reject,
    batch_size: 64,
    keep_on_crash: false,
    drop_expired_calls: false
  ]
  @max_batch 1024

  @doc false
  def defaults, do: @defaults

  @doc """
  Validates mailbox options and fills in the defaults; raises
  `ArgumentError` naming the option at fault.
  """
  @spec validate!(term()) :: [option()]
  def validate!(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError, "expected :mailbox to be a keyword list, got: #{inspect(opts)}"
    end

    Enum.each(opts, &check!/1)
    Keyword.merge(@defaults, opts)
  end

  defp check!({:capacity, c}) when (is_integer(c) and c > 0) or c == :infinity, do: :ok

  defp check!({:overflow, o}) when o in [:reject, :drop_newest, :drop_oldest, :block], do: :ok

  defp check!({:batch_size, b}) when is_integer(b) and b > 0 and b <= @max_batch, do: :ok
  defp check!({:keep_on_crash, k}) when is_boolean(k), do: :ok
  defp check!({:drop_expired_calls, d}) when is_boolean(d), do: :ok

  defp check!({:capacity, c}) do
    raise ArgumentError,
          "invalid value for mailbox option :capacity, expected a positive integer or :infinity, got: #{inspect(c)}"
  end

  defp check!({:overflow, o}) do
    raise ArgumentError,
          "invalid value for mailbox option :overflow, expected :reject, :drop_newest, " <>
            ":drop_oldest or :block, got: #{inspect(o)}"
  end

  defp check!({:batch_size, b}) do
    raise ArgumentError,
          "invalid value for mailbox option :batch_size, expected an integer from 1 to #{@max_batch}, got: #{inspect(b)}"
  end

  defp check!({:keep_on_crash, k}) do
    raise ArgumentError,
          "invalid value for mailbox option :keep_on_crash, expected a boolean, got: #{inspect(k)}"
  end

  defp check!({:drop_expired_calls, d}) do
    raise ArgumentError,
          "invalid value for mailbox option :drop_expired_calls, expected a boolean, got: #{inspect(d)}"
  end

  defp check!({key, _}) do
    raise ArgumentError,
          "unknown mailbox option #{inspect(key)}, expected one of: " <>
            Enum.map_join(Keyword.keys(@defaults), ", ", &inspect/1)
  end

  @doc """
  The state of `server`'s native mailbox, read in O(1) without sending the
  server a message. See `GenNative.mailbox_info/1`.
  """
  @spec info(GenServer.server()) :: info() | {:error, :not_native | :noproc | {:nodedown, node()}}
  def info(server) do
    case GenServer.whereis(server) do
      pid when is_pid(pid) and node(pid) == node() ->
        case Native.mailbox_info(pid) do
          :not_native ->
            if Process.alive?(pid), do: {:error, :not_native}, else: {:error, :noproc}

          info ->
            info
        end

      nil ->
        {:error, :noproc}

      remote ->
        remote_info(node_of(remote), local_name(remote))
    end
  end

  defp remote_info(node, server) do
    :erpc.call(node, __MODULE__, :info, [server])
  catch
    :error, {:erpc, :noconnection} -> {:error, {:nodedown, node}}
    # a node without GenNative runs no GenNative server
    :error, {:exception, :undef, [{__MODULE__, :info, _, _} | _]} -> {:error, :not_native}
  end

  defp node_of({_name, node}), do: node
  defp node_of(pid) when is_pid(pid), do: node(pid)
  defp local_name({name, _node}), do: name
  defp local_name(pid), do: pid
end
