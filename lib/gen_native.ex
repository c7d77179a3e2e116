defmodule GenNative do
  @moduledoc """
  A drop-in `GenServer` whose requests travel through a mailbox written in C.

  Change `use GenServer` to `use GenNative` and `GenServer.` calls to
  `GenNative.`; nothing else. The callbacks are `GenServer`'s (`init/1`,
  `handle_call/3`, `handle_cast/2`, `handle_info/2`, `handle_continue/2`,
  `terminate/2`, `code_change/3`, `format_status/1,2`) with the same
  arguments and return values, and the client functions here take the same
  arguments and give the same results and exits as `GenServer`'s, with
  `GenNative` in the location tuple of an exit:

      defmodule Stack do
        use GenNative

        def start_link(items), do: GenNative.start_link(__MODULE__, items)
        def push(pid, item), do: GenNative.cast(pid, {:push, item})
        def pop(pid), do: GenNative.call(pid, :pop)

        @impl true
        def init(items), do: {:ok, items}

        @impl true
        def handle_call(:pop, _from, [head | tail]), do: {:reply, head, tail}

        @impl true
        def handle_cast({:push, item}, items), do: {:noreply, [item | items]}
      end

      iex> {:ok, pid} = Stack.start_link([:a])
      iex> Stack.push(pid, :b)
      :ok
      iex> Stack.pop(pid)
      :b

  ## How it works

  A GenNative server is a real `:gen_server` process whose callback module is
  yours, so supervisors, `Registry`, `:global`, `:sys`, hibernation, timeouts
  and crash reports behave as they do for a `GenServer`. What it adds is a
  native mailbox (see `c_src/mailbox.c`) that admits each request: it counts
  casts against a capacity, applies the overflow policy, parks blocked
  senders, holds the priority lane, and answers `mailbox_info/1` in O(1).

  In the default **message mode**, an admitted cast then travels as the
  same `{:"$gen_cast", request}` message `GenServer.cast/2` sends. In
  **queue mode** (`overflow: :drop_oldest`, `keep_on_crash: true`, or a
  module that defines `c:handle_batch/2` with a `batch_size` above 1) casts
  wait in a native queue outside the server's heap and come out in batches;
  see `GenNative.Mailbox`.

  Calls are `GenServer` calls: the caller waits for its reply, so a call
  costs one message each way whatever carries it.

  ## Ordering

  In message mode the order is `GenServer`'s, exactly: on one node, whatever
  was sent to the server before another process could know of it is handled
  first, for casts, calls, `send/2`, `:sys` requests, `stop/3`, exit and
  monitor messages alike, from GenNative and GenServer clients.

  Two things reorder, and only when you ask for them:

    * a request sent with `priority: :high` is handled before every request
      still waiting (casts, calls and plain messages in the server's process
      mailbox, casts in its queue): the server handles the priority requests
      waiting before each message it takes. `:sys` requests and `stop/3` are
      handled by the `:gen_server` loop itself, in their place, so one that
      the loop reaches before the server's next cast, call or message is
      not overtaken;
    * in queue mode, casts keep their order among themselves and everything
      cast before a message was sent is handled before that message, but a
      message sent *before* a cast (`send(s, m)` then `cast(s, x)`, or a call
      not waited for) may be handled after that cast while the server has a
      backlog.

  `GenServer.call/cast` and `send/2` to a GenNative server work, and
  `GenNative.call/cast` to a plain `GenServer` or to a server on another
  node work too (casts fall back to `GenServer`'s message). The mailbox is
  unbounded by default, as a process mailbox is.

  ## use GenNative

  `use GenNative` takes the same options as `use GenServer` (`:id`,
  `:restart`, `:shutdown`, ...), which go into the overridable `child_spec/1`
  it defines, and gives the same default callbacks. It also takes
  `mailbox: [...]`, the native mailbox's options: a capacity with an
  overflow policy or backpressure, the batch size for `c:handle_batch/2`,
  and whether queued casts survive a crash; see `GenNative.Mailbox`. Each
  server can override them with the `:mailbox` option of `start_link/3`:

      use GenNative, mailbox: [capacity: 10_000, overflow: :reject]

  Priority requests (`cast/3` and `call/4` with `priority: :high`) and
  `mailbox_info/1` work with every mailbox.
  """

  alias GenNative.Native

  require GenNative.Mailbox.Protocol, as: Protocol

  @default_timeout 5000

  @doc """
  Handles casts in batches (optional).

  When the module defines it, every cast goes here instead of to
  `c:GenServer.handle_cast/2`: in queue mode (the default for such a module,
  `batch_size` above 1) up to `:batch_size` consecutive queued casts at
  once, in the order they were sent; a priority cast, or a cast that came as
  a process message (`GenServer.cast/2`), as a batch of one. It returns what
  `handle_cast/2` returns. With `batch_size: 1` the server stays in message
  mode and each batch holds one cast.
  """
  @callback handle_batch(requests :: [term()], state :: term()) ::
              {:noreply, new_state}
              | {:noreply, new_state, timeout() | :hibernate | {:continue, term()}}
              | {:stop, reason :: term(), new_state}
            when new_state: term()

  @optional_callbacks handle_batch: 2

  @doc false
  defmacro __using__(opts) do
    # The same child_spec/1 and default callbacks as `use GenServer`, defined
    # here rather than by `use GenServer` because our wrappers call `super`,
    # which Elixir deprecates for GenServer's own defaults.
    {mailbox, opts} = Keyword.pop(opts, :mailbox, [])
    mailbox = GenNative.Mailbox.validate!(mailbox)

    quote location: :keep, bind_quoted: [opts: opts, mailbox: mailbox] do
      @behaviour GenServer
      @behaviour GenNative

      unless Module.has_attribute?(__MODULE__, :doc) do
        @doc """
        Returns a specification to start this module under a supervisor.

        See `Supervisor`.
        """
      end

      def child_spec(init_arg) do
        default = %{id: __MODULE__, start: {__MODULE__, :start_link, [init_arg]}}
        Supervisor.child_spec(default, unquote(Macro.escape(opts)))
      end

      defoverridable child_spec: 1

      @doc false
      def handle_call(request, _from, state) do
        GenNative.Server.default_handle_call(request, state)
      end

      @doc false
      def handle_cast(request, state) do
        GenNative.Server.default_handle_cast(request, state)
      end

      @doc false
      def handle_info(message, state) do
        GenNative.Server.default_handle_info(__MODULE__, message, state)
      end

      @doc false
      def terminate(_reason, _state), do: :ok

      @doc false
      def code_change(_old_vsn, state, _extra), do: {:ok, state}

      defoverridable handle_call: 3, handle_cast: 2, handle_info: 2, terminate: 2, code_change: 3

      @doc false
      def __gn_mailbox__, do: unquote(Macro.escape(mailbox))

      @before_compile GenNative
    end
  end

  @doc false
  defmacro __before_compile__(env) do
    init =
      unless Module.defines?(env.module, {:init, 1}) do
        IO.warn(
          "function init/1 required by behaviour GenServer is not implemented " <>
            "(in module #{inspect(env.module)}); a default returning {:ok, init_arg} is used",
          Macro.Env.stacktrace(env)
        )

        quote do
          def init(init_arg), do: {:ok, init_arg}
        end
      end

    format_status =
      cond do
        Module.defines?(env.module, {:format_status, 1}) ->
          quote do
            defoverridable format_status: 1

            @doc false
            def format_status(status), do: super(GenNative.Server.format_status(status))
          end

        Module.defines?(env.module, {:format_status, 2}) ->
          # A module with only the old format_status/2 keeps gen_server's
          # own handling of it untouched.
          nil

        true ->
          quote do
            @doc false
            def format_status(status), do: GenNative.Server.format_status(status)
          end
      end

    # Every cast goes to handle_batch/2 when the module defines it.
    handle_cast =
      if Module.defines?(env.module, {:handle_batch, 2}) do
        quote do: handle_batch([request], state)
      else
        quote do: super(request, state)
      end

    quote location: :keep do
      unquote(init)
      defoverridable init: 1, handle_call: 3, handle_cast: 2, handle_info: 2, terminate: 2

      def init(init_arg) do
        super(GenNative.Server.init_mailbox(__MODULE__, init_arg))
      end

      def terminate(reason, state) do
        super(reason, state)
      after
        GenNative.Server.after_terminate()
      end

      # Before each process message: the mailbox is told, and priority
      # requests waiting are handled first.
      def handle_call(request, from, state) do
        case GenNative.Server.before_call(__MODULE__, from, state) do
          {:cont, state} -> super(request, from, state)
          {:skip, state} -> {:noreply, state}
          stop -> stop
        end
      end

      def handle_cast(request, state) do
        case GenNative.Server.before_cast(__MODULE__, state) do
          {:cont, state} -> unquote(handle_cast)
          stop -> stop
        end
      end

      def handle_info(unquote(Protocol.wake()), state) do
        GenNative.Server.handle_wake(__MODULE__, state)
      end

      def handle_info(message, state) do
        case GenNative.Server.before_info(__MODULE__, state) do
          {:cont, state} -> super(message, state)
          stop -> stop
        end
      end

      unquote(format_status)
    end
  end

  @doc """
  Starts a `GenNative` server linked to the current process.

  Same arguments, options (`:name`, `:timeout`, `:debug`, `:spawn_opt`,
  `:hibernate_after`) and return values as `GenServer.start_link/3`, plus
  `:mailbox`, which overrides the module's `use GenNative, mailbox: ...`
  options for this server (see `GenNative.Mailbox`). Invalid mailbox options
  raise `ArgumentError`.
  """
  @spec start_link(module(), term(), GenServer.options()) :: GenServer.on_start()
  def start_link(module, init_arg, options \\ []) when is_atom(module) and is_list(options) do
    {init_arg, options} = with_mailbox(module, init_arg, options)
    GenServer.start_link(module, init_arg, options)
  end

  @doc """
  Starts a `GenNative` server outside of a supervision tree; see `start_link/3`.
  """
  @spec start(module(), term(), GenServer.options()) :: GenServer.on_start()
  def start(module, init_arg, options \\ []) when is_atom(module) and is_list(options) do
    {init_arg, options} = with_mailbox(module, init_arg, options)
    GenServer.start(module, init_arg, options)
  end

  # The :mailbox option, over the module's `use GenNative, mailbox: ...`,
  # travels to init/1 with the server's name, wrapped around init_arg.
  defp with_mailbox(module, init_arg, options) do
    {mailbox, options} = Keyword.pop(options, :mailbox)
    # function_exported?/3 is false for a module not loaded yet
    Code.ensure_loaded(module)

    unless mailbox == nil or Keyword.keyword?(mailbox) do
      raise ArgumentError, "expected :mailbox to be a keyword list, got: #{inspect(mailbox)}"
    end

    if mailbox == nil and not function_exported?(module, :__gn_mailbox__, 0) do
      # a plain GenServer started through GenNative
      {init_arg, options}
    else
      defaults =
        if function_exported?(module, :__gn_mailbox__, 0), do: module.__gn_mailbox__(), else: []

      mailbox = GenNative.Mailbox.validate!(Keyword.merge(defaults, mailbox || []))
      name = options[:name]

      if mailbox[:keep_on_crash] and name == nil do
        raise ArgumentError, "mailbox option keep_on_crash: true requires a registered :name"
      end

      # The process mailbox stays on the heap, even though casts from several
      # producers are delivered in parallel into an off-heap one (2.4x faster
      # with 4 producers here): OTP 25 then keeps only each sender's own
      # order, and a call can overtake casts that were awaited before it
      # (plain GenServer, 4 producers x 20,000 casts awaited then a call:
      # short in 2 of 30 runs).
      {Protocol.init_arg(mailbox, name, init_arg), options}
    end
  end

  @doc """
  Makes a synchronous call to `server` and waits for its reply.

  As `GenServer.call/3`: the reply is returned; on failure the caller exits
  with `{reason, {GenNative, :call, [server, request, timeout]}}`, where
  `reason` is `:timeout`, `:noproc`, `:calling_self`, `{:nodedown, node}` or
  the reason the server exited with. A reply that comes after the timeout is
  discarded, never delivered to the caller's mailbox.

  A bounded mailbox (see `GenNative.Mailbox`) adds `:mailbox_full` as a
  reason: the call met a full mailbox under `overflow: :reject` or
  `:drop_newest`, or was dropped under `:drop_oldest`. Under
  `overflow: :block` the wait for room counts against `timeout`.

  With `mailbox: [drop_expired_calls: true]`, a call with an integer
  `timeout` that the server reaches after its deadline is not handled (its
  caller has exited with `:timeout`, as always) and counts as `expired` in
  `mailbox_info/1`.

  ## Options

    * `:priority` - `:normal` (default) or `:high`. A high-priority call is
      handled before every request still waiting (see "Ordering" above), in
      FIFO order with other high-priority requests.

  Options that are not a keyword list, or a bad `:priority`, raise
  `ArgumentError`.
  """
  @spec call(GenServer.server(), term(), timeout(), keyword()) :: term()
  def call(server, request, timeout \\ @default_timeout, options \\ []) do
    priority = priority!(options)

    case whereis(server) do
      nil ->
        exit({:noproc, {__MODULE__, :call, [server, request, timeout]}})

      pid when pid == self() ->
        exit({:calling_self, {__MODULE__, :call, [server, request, timeout]}})

      pid
      when is_pid(pid) and node(pid) == node() and
             (timeout == :infinity or (is_integer(timeout) and timeout >= 0)) ->
        if priority == :high,
          do: high_call(pid, server, request, timeout),
          else: admitted_call(pid, server, request, timeout)

      dest ->
        gen_call(dest, server, request, timeout, timeout)
    end
  end

  defp gen_call(dest, server, request, timeout, wait) do
    :gen.call(dest, :"$gen_call", request, wait)
  catch
    :exit, reason -> exit({reason, {__MODULE__, :call, [server, request, timeout]}})
  else
    {:ok, reply} -> reply
  end

  # A normal call travels as a gen_server call once the mailbox admits it;
  # to a server that skips calls whose caller gave up, with the caller's
  # deadline in its tag.
  defp admitted_call(pid, server, request, timeout) do
    case Native.mailbox_send(pid, nil, :normal, :admit) do
      result when result in [:ok, :not_native] ->
        gen_call(pid, server, request, timeout, timeout)

      :deadline ->
        deadline = deadline(timeout)
        mref = :erlang.monitor(:process, pid, [{:alias, :demonitor}])
        tag = call_tag(mref, deadline)
        send(pid, Protocol.gen_call({self(), tag}, request))
        loc = {__MODULE__, :call, [server, request, timeout]}
        await_reply(mref, tag, loc, remaining(timeout, deadline))

      # overflow: :block and no room: the mailbox sends the call when its
      # turn comes, so that blocked calls keep their order
      :busy ->
        queued_call(pid, server, request, timeout, :normal)

      full when full in [:full, :dropped] ->
        exit({:mailbox_full, {__MODULE__, :call, [server, request, timeout]}})
    end
  end

  defp high_call(pid, server, request, timeout),
    do: queued_call(pid, server, request, timeout, :high)

  # A call handed to the mailbox: a priority call, queued in the high lane
  # and answered by the server from there, or a normal call that waits for
  # room, which the mailbox sends as gen_server's message.
  defp queued_call(pid, server, request, timeout, lane) do
    deadline = deadline(timeout)
    mref = :erlang.monitor(:process, pid, [{:alias, :demonitor}])
    tag = call_tag(mref, deadline)
    from = {self(), tag}
    loc = {__MODULE__, :call, [server, request, timeout]}

    item =
      case lane do
        :high -> Protocol.high_call(from, request)
        :normal -> Protocol.gen_call(from, request)
      end

    case Native.mailbox_send(pid, item, lane, :call) do
      :ok ->
        await_reply(mref, tag, loc, remaining(timeout, deadline))

      {:ok, dropped} ->
        notify_dropped(dropped)
        await_reply(mref, tag, loc, remaining(timeout, deadline))

      :not_native ->
        :erlang.demonitor(mref, [:flush])
        gen_call(pid, server, request, timeout, remaining(timeout, deadline))

      {:wait, wait_tag} ->
        case wait_room(pid, wait_tag, remaining(timeout, deadline)) do
          :ok -> await_reply(mref, tag, loc, remaining(timeout, deadline))
          # the server died before the call reached it, as for a dead server
          :closed -> give_up(mref, {:noproc, loc})
          :timeout -> give_up(mref, {:timeout, loc})
        end

      full when full in [:full, :dropped] ->
        give_up(mref, {:mailbox_full, loc})
    end
  end

  # The tag of a call's `from`: gen_server's own shape, [:alias | mref],
  # with the deadline (monotonic, native units) after it when the call
  # has one; :gen.reply/2 answers both.
  defp call_tag(mref, :infinity), do: Protocol.call_tag(mref)
  defp call_tag(mref, deadline), do: Protocol.call_tag(mref, deadline)

  defp deadline(:infinity), do: :infinity

  defp deadline(timeout),
    do: :erlang.monotonic_time() + :erlang.convert_time_unit(timeout, :millisecond, :native)

  defp remaining(:infinity, _deadline), do: :infinity

  # Rounded up: a caller never gives up before its deadline, which the
  # server checks to skip calls whose caller gave up.
  defp remaining(_timeout, deadline) do
    left = deadline - :erlang.monotonic_time()
    ms = :erlang.convert_time_unit(1, :millisecond, :native)
    max(div(left + ms - 1, ms), 0)
  end

  defp await_reply(mref, tag, loc, wait) do
    receive do
      {^tag, Protocol.mailbox_full(^mref)} ->
        give_up(mref, {:mailbox_full, loc})

      {^tag, reply} ->
        :erlang.demonitor(mref, [:flush])
        reply

      {:DOWN, ^mref, _, _, reason} ->
        exit({reason, loc})
    after
      wait ->
        :erlang.demonitor(mref, [:flush])

        receive do
          {^tag, Protocol.mailbox_full(^mref)} -> exit({:mailbox_full, loc})
          {^tag, reply} -> reply
        after
          0 -> exit({:timeout, loc})
        end
    end
  end

  defp give_up(mref, reason) do
    :erlang.demonitor(mref, [:flush])
    exit(reason)
  end

  # The caller of a priority call dropped to make room exits at once.
  defp notify_dropped(Protocol.high_call({_pid, tag} = from, _request)) do
    :gen.reply(from, Protocol.mailbox_full(alias_of(tag)))
  end

  defp notify_dropped(_), do: :ok

  defp alias_of(Protocol.call_tag(mref)), do: mref
  defp alias_of(Protocol.call_tag(mref, _deadline)), do: mref

  # Blocked under overflow: :block until the mailbox says {tag, result}.
  defp wait_room(pid, tag, wait) do
    receive do
      Protocol.room(^tag, result) -> result
    after
      wait ->
        case Native.mailbox_cancel(pid, tag) do
          :cancelled ->
            :timeout

          :not_found ->
            receive do
              Protocol.room(^tag, result) -> result
            end
        end
    end
  end

  defp priority!([]), do: :normal

  defp priority!(options) do
    case Keyword.get(options!(options), :priority, :normal) do
      p when p in [:normal, :high] ->
        p

      other ->
        raise ArgumentError, "expected :priority to be :normal or :high, got: #{inspect(other)}"
    end
  end

  @doc """
  Sends an asynchronous request to `server`.

  As `GenServer.cast/2`, returns `:ok`, even when the server is dead, unknown
  or on an unreachable node. A bounded mailbox (see `GenNative.Mailbox`)
  adds `{:error, :mailbox_full}`: the cast met a full mailbox under
  `overflow: :reject`, or waited longer than `:timeout` under `:block`.

  ## Options

    * `:priority` - `:normal` (default) or `:high`: a high-priority cast is
      handled before every request still waiting (see "Ordering" above).
    * `:timeout` - under `overflow: :block`, how long to wait for room, in
      milliseconds or `:infinity` (default).

  Options that are not a keyword list, or a bad `:priority` or `:timeout`,
  raise `ArgumentError`.
  """
  @spec cast(GenServer.server(), term(), keyword()) :: :ok | {:error, :mailbox_full}
  def cast(server, request, options \\ [])
  def cast(server, request, []), do: do_cast(server, request, [])
  def cast(server, request, options), do: do_cast(server, request, options!(options))

  defp do_cast(pid, request, options) when is_pid(pid) and node(pid) == node(),
    do: native_cast(pid, request, options)

  defp do_cast(name, request, options) when is_atom(name) do
    case Process.whereis(name) do
      nil -> :ok
      pid -> native_cast(pid, request, options)
    end
  end

  defp do_cast({name, node}, request, options) when is_atom(name) and node == node(),
    do: do_cast(name, request, options)

  defp do_cast({tag, _} = server, request, options) when tag == :global,
    do: cast_registered(server, request, options)

  defp do_cast({:via, _, _} = server, request, options),
    do: cast_registered(server, request, options)

  defp do_cast(server, request, _options), do: GenServer.cast(server, request)

  defp options!(options) do
    unless Keyword.keyword?(options) do
      raise ArgumentError, "expected options to be a keyword list, got: #{inspect(options)}"
    end

    options
  end

  # GenServer.cast/2 returns :ok whatever the name's module does; so do we.
  defp cast_registered(server, request, options) do
    pid =
      try do
        whereis(server)
      catch
        _kind, _reason -> nil
      end

    case pid do
      pid when is_pid(pid) and node(pid) == node() -> native_cast(pid, request, options)
      _ -> GenServer.cast(server, request)
    end
  end

  defp native_cast(pid, request, []),
    do: cast_result(pid, request, Native.mailbox_send(pid, request, :normal, :cast), :infinity)

  defp native_cast(pid, request, options) do
    timeout = Keyword.get(options, :timeout, :infinity)

    unless timeout == :infinity or (is_integer(timeout) and timeout >= 0) do
      raise ArgumentError,
            "expected :timeout to be a non-negative integer or :infinity, got: #{inspect(timeout)}"
    end

    result =
      case priority!(options) do
        :normal -> Native.mailbox_send(pid, request, :normal, :cast)
        :high -> Native.mailbox_send(pid, Protocol.high_cast(request), :high, :cast)
      end

    cast_result(pid, request, result, timeout)
  end

  defp cast_result(pid, request, result, timeout) do
    case result do
      # admitted in message mode: the message GenServer.cast/2 sends
      :send ->
        send(pid, Protocol.gen_cast(request))
        :ok

      :ok ->
        :ok

      :not_native ->
        send(pid, Protocol.gen_cast(request))
        :ok

      {:ok, dropped} ->
        notify_dropped(dropped)
        :ok

      :dropped ->
        :ok

      :full ->
        {:error, :mailbox_full}

      {:wait, tag} ->
        case wait_room(pid, tag, timeout) do
          :timeout -> {:error, :mailbox_full}
          _admitted_or_closed -> :ok
        end
    end
  end

  @doc """
  The state of `server`'s native mailbox, read in O(1) without sending the
  server a message:

      %{length: n, high_length: n, capacity: c, overflow: policy,
        accepted: n, rejected: n, dropped: n, expired: n, max_length: n,
        blocked_senders: n}

  `length` is the normal casts waiting now (sent with `GenNative.cast` and
  not handled yet; casts sent with `GenServer.cast/2` are not counted) and
  `high_length` the priority requests; `accepted`, `rejected`, `dropped`
  and `expired` count every request sent with GenNative since the server
  started, calls included, each in exactly one of them, so that their sum is
  what was sent: a request evicted under `overflow: :drop_oldest` moves from
  `accepted` to `dropped`, a call skipped under `drop_expired_calls: true`
  from `accepted` to `expired`.
  `max_length` is the most ever queued (both lanes); `blocked_senders` the
  senders waiting under `overflow: :block`, who count once admitted. Returns `{:error, :not_native}`
  for a plain `GenServer` (or a node without GenNative), `{:error, :noproc}`
  when there is no such process, and `{:error, {:nodedown, node}}` for a
  server on a node that cannot be reached (the reason `GenServer.call/3`
  exits with there).
  """
  @spec mailbox_info(GenServer.server()) ::
          GenNative.Mailbox.info() | {:error, :not_native | :noproc | {:nodedown, node()}}
  defdelegate mailbox_info(server), to: GenNative.Mailbox, as: :info

  @doc """
  Replies to a client from inside or outside the server; returns `:ok`.

  `client` is the `from` argument given to `c:GenServer.handle_call/3`.
  """
  @spec reply(GenServer.from(), term()) :: :ok
  def reply(client, reply) do
    :gen.reply(client, reply)
    :ok
  end

  @doc """
  Stops `server` with `reason`, waiting up to `timeout` for it to terminate;
  `terminate/2` runs first. As `GenServer.stop/3`, with exits naming
  `{GenNative, :stop, [server, reason, timeout]}`.
  """
  @spec stop(GenServer.server(), term(), timeout()) :: :ok
  def stop(server, reason \\ :normal, timeout \\ :infinity) do
    case whereis(server) do
      nil ->
        exit({:noproc, {__MODULE__, :stop, [server, reason, timeout]}})

      pid when pid == self() ->
        exit({:calling_self, {__MODULE__, :stop, [server, reason, timeout]}})

      pid ->
        try do
          :proc_lib.stop(pid, reason, timeout)
        catch
          :exit, err -> exit({err, {__MODULE__, :stop, [server, reason, timeout]}})
        end
    end
  end

  @doc """
  Returns the pid or `{name, node}` of a server, or `nil`, as `GenServer.whereis/1`.
  """
  @spec whereis(GenServer.server()) :: pid() | {atom(), node()} | nil
  defdelegate whereis(server), to: GenServer

  @doc """
  Calls every server registered as `name` on `nodes`, as `GenServer.multi_call/4`;
  returns `{replies, bad_nodes}`.
  """
  @spec multi_call([node()], atom(), term(), timeout()) ::
          {replies :: [{node(), term()}], bad_nodes :: [node()]}
  def multi_call(nodes \\ [node() | Node.list()], name, request, timeout \\ :infinity) do
    GenServer.multi_call(nodes, name, request, timeout)
  end

  @doc """
  Casts `request` to every server registered as `name` on `nodes`, as
  `GenServer.abcast/3`; returns `:abcast`.
  """
  @spec abcast([node()], atom(), term()) :: :abcast
  def abcast(nodes \\ [node() | Node.list()], name, request) do
    GenServer.abcast(nodes, name, request)
  end
end
