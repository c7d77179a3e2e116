defmodule GenNative.BusyServers.Common do
  @moduledoc false
  # The callbacks every server of GenNative.BusyServers shares. The state
  # is `%{test: owner, handled: casts handled so far, kept: last {:keep, _}}`.

  # `batch: true` adds a handle_batch/2 that records each batch.
  defmacro __using__(opts) do
    batch =
      if opts[:batch] do
        quote do
          @impl GenNative
          def handle_batch(requests, state) do
            send(state.test, {:ev, self(), {:batch, requests}})
            {:noreply, %{state | handled: state.handled + length(requests)}}
          end
        end
      end

    quote do
      unquote(batch)

      @impl true
      def init(test), do: {:ok, %{test: test, handled: 0, kept: nil}}

      @impl true
      def handle_call({:block, test}, _from, state) do
        send(test, {:blocked, self()})

        receive do
          :release -> {:reply, :released, state}
        end
      end

      def handle_call(:handled, _from, state), do: {:reply, state.handled, state}
      def handle_call({:crash, message}, _from, _state), do: raise(message)

      def handle_call(request, _from, state) do
        send(state.test, {:ev, self(), {:call, request}})
        state = if match?({:keep, _}, request), do: %{state | kept: request}, else: state
        {:reply, {:ok, request}, state}
      end

      @impl true
      def handle_info(message, state) do
        send(state.test, {:ev, self(), {:info, message}})
        {:noreply, state}
      end
    end
  end
end

defmodule GenNative.BusyServers do
  @moduledoc false
  # Servers for test/gen_native/mailbox_busy_test.exs, held busy inside a
  # call: `hold/1` makes a call `{:block, test}` from another process and
  # returns once the server is in handle_call/3 (the handler tells the test
  # `{:blocked, pid}` first); the server stays there until `release/2` sends
  # it `:release`. Each server reports what it handles to its owner (the
  # test process, its init argument) as `{:ev, server_pid, event}`, the
  # shape GenNative.MailboxServers.events_until/3 and sync_events/1 read.

  import ExUnit.Assertions
  import GenNative.MailboxServers, only: [async: 1, await: 2]

  @doc """
  Holds `server` busy inside a call; returns the handle for `release/2`.
  The call is a `GenNative.call/3` (so it is counted in `accepted`) unless
  `via: GenServer` is given.
  """
  def hold(server, opts \\ []) do
    gen = Keyword.get(opts, :via, GenNative)
    test = self()
    pid = GenServer.whereis(server)
    caller = async(fn -> gen.call(server, {:block, test}, :infinity) end)

    receive do
      {:blocked, ^pid} -> caller
    after
      10_000 -> flunk("the server did not start handling {:block, _} in 10 s")
    end
  end

  @doc "Lets the held server's call return; waits for its reply."
  def release(server, caller) do
    send(GenServer.whereis(server), :release)
    assert await(caller, 10_000) == {:ok, :released}
    :ok
  end
end

defmodule GenNative.BusyServers.Log do
  @moduledoc false
  # Casts go to handle_cast/2; `:tick` casts are only counted, not reported.
  # `{:block_cast, test}` waits for `:release` inside handle_cast/2.
  use GenNative
  use GenNative.BusyServers.Common

  @impl true
  def handle_cast(:tick, state), do: {:noreply, %{state | handled: state.handled + 1}}

  # holds the server inside handle_cast/2 as {:block, test} does in a call
  def handle_cast({:block_cast, test} = request, state) do
    send(state.test, {:ev, self(), {:cast, request}})
    send(test, {:blocked_cast, self()})

    receive do
      :release -> {:noreply, %{state | handled: state.handled + 1}}
    end
  end

  def handle_cast(request, state) do
    send(state.test, {:ev, self(), {:cast, request}})
    {:noreply, %{state | handled: state.handled + 1}}
  end
end

defmodule GenNative.BusyServers.BatchOnly do
  @moduledoc false
  # handle_batch/2 and no handle_cast/2: a cast given to handle_cast/2
  # crashes it with use GenNative's default.
  use GenNative
  use GenNative.BusyServers.Common, batch: true
end

defmodule GenNative.BusyServers.BatchAndCast do
  @moduledoc false
  # Both handle_batch/2 and handle_cast/2: every cast must go to the first.
  use GenNative
  use GenNative.BusyServers.Common, batch: true

  @impl true
  def handle_cast(request, state) do
    send(state.test, {:ev, self(), {:cast, request}})
    {:noreply, %{state | handled: state.handled + 1}}
  end
end
