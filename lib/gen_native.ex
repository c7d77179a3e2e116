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
  and crash reports behave as they do for a `GenServer`. What changes is the
  path of a cast: `cast/2` puts it in a native queue owned by the server (see
  `c_src/mailbox.c`) whenever the server is busy. The server is woken by one
  message when its queue goes from empty to busy and then takes casts out in
  batches, so a server under load does not pay for one process message per
  cast, and the queued casts live outside its heap. A cast to an idle server
  is sent as the same message `GenServer.cast/2` sends.

  Calls are `GenServer` calls: the caller waits for its reply, so a call
  costs one message each way whatever carries it.

  Ordering matches `GenServer`'s: the requests one process sends are handled
  in the order it sent them, and whatever a process cast before it sends any
  other message (a call, `send/2`, a `:sys` request, `stop/3`) is handled
  before that message. The one difference: while the server has a backlog, a
  cast may be handled before a plain `send/2` message that the same process
  sent earlier. A call never overtakes anything sent before it.

  `GenServer.call/cast` and `send/2` to a GenNative server work, and
  `GenNative.call/cast` to a plain `GenServer` or to a server on another node
  work too (casts fall back to `GenServer`'s message). The native queue is
  unbounded by default, as a process mailbox is.

  ## use GenNative

  `use GenNative` takes the same options as `use GenServer` (`:id`,
  `:restart`, `:shutdown`, ...), which go into the overridable `child_spec/1`
  it defines, and gives the same default callbacks.
  """

  alias GenNative.Native

  @default_timeout 5000

  @doc false
  defmacro __using__(opts) do
    # The same child_spec/1 and default callbacks as `use GenServer`, defined
    # here rather than by `use GenServer` because our wrappers call `super`,
    # which Elixir deprecates for GenServer's own defaults.
    quote location: :keep, bind_quoted: [opts: opts] do
      @behaviour GenServer

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

    quote location: :keep do
      unquote(init)
      defoverridable init: 1, handle_cast: 2, handle_info: 2

      def init(init_arg) do
        GenNative.Server.init_mailbox(__MODULE__)
        super(init_arg)
      end

      def handle_cast(request, state) do
        GenNative.Server.ack()
        super(request, state)
      end

      def handle_info(:"$gn_wake", state) do
        GenNative.Server.handle_wake(__MODULE__, state)
      end

      def handle_info(message, state), do: super(message, state)

      unquote(format_status)
    end
  end

  @doc """
  Starts a `GenNative` server linked to the current process.

  Same arguments, options (`:name`, `:timeout`, `:debug`, `:spawn_opt`,
  `:hibernate_after`) and return values as `GenServer.start_link/3`.
  """
  @spec start_link(module(), term(), GenServer.options()) :: GenServer.on_start()
  def start_link(module, init_arg, options \\ []) when is_atom(module) and is_list(options) do
    GenServer.start_link(module, init_arg, options)
  end

  @doc """
  Starts a `GenNative` server outside of a supervision tree; see `start_link/3`.
  """
  @spec start(module(), term(), GenServer.options()) :: GenServer.on_start()
  def start(module, init_arg, options \\ []) when is_atom(module) and is_list(options) do
    GenServer.start(module, init_arg, options)
  end

  @doc """
  Makes a synchronous call to `server` and waits for its reply.

  As `GenServer.call/3`: the reply is returned; on failure the caller exits
  with `{reason, {GenNative, :call, [server, request, timeout]}}`, where
  `reason` is `:timeout`, `:noproc`, `:calling_self`, `{:nodedown, node}` or
  the reason the server exited with. A reply that comes after the timeout is
  discarded, never delivered to the caller's mailbox.
  """
  @spec call(GenServer.server(), term(), timeout()) :: term()
  def call(server, request, timeout \\ @default_timeout) do
    case whereis(server) do
      nil ->
        exit({:noproc, {__MODULE__, :call, [server, request, timeout]}})

      pid when pid == self() ->
        exit({:calling_self, {__MODULE__, :call, [server, request, timeout]}})

      dest ->
        try do
          :gen.call(dest, :"$gen_call", request, timeout)
        catch
          :exit, reason -> exit({reason, {__MODULE__, :call, [server, request, timeout]}})
        else
          {:ok, reply} -> reply
        end
    end
  end

  @doc """
  Sends an asynchronous request to `server`; always returns `:ok`, even when
  the server is dead, unknown or on an unreachable node (as `GenServer.cast/2`).
  """
  @spec cast(GenServer.server(), term()) :: :ok
  def cast(server, request)

  def cast(pid, request) when is_pid(pid) and node(pid) == node(), do: native_cast(pid, request)

  def cast(name, request) when is_atom(name) do
    case Process.whereis(name) do
      nil -> :ok
      pid -> native_cast(pid, request)
    end
  end

  def cast({name, node}, request) when is_atom(name) and node == node(), do: cast(name, request)

  def cast({tag, _} = server, request) when tag == :global, do: cast_registered(server, request)
  def cast({:via, _, _} = server, request), do: cast_registered(server, request)
  def cast(server, request), do: GenServer.cast(server, request)

  defp cast_registered(server, request) do
    case whereis(server) do
      pid when is_pid(pid) and node(pid) == node() -> native_cast(pid, request)
      _ -> GenServer.cast(server, request)
    end
  end

  defp native_cast(pid, request) do
    case Native.mailbox_cast(pid, request) do
      :ok -> :ok
      :not_native -> send(pid, {:"$gen_cast", request})
    end

    :ok
  end

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
