defmodule GenNative.MailboxServers do
  @moduledoc false
  # Servers for test/gen_native/mailbox_test.exs. Each one tells its owner
  # (the test process given as init argument) what it handles, in the order
  # it handles it, as {:ev, server_pid, event}; a request can also make the
  # callback misbehave, to test crashes, stops and bad returns.

  import ExUnit.Assertions

  @doc "What a request asks the callback handling it to do."
  def act({:raise, message}, _state), do: raise(message)
  def act({:stop, reason}, state), do: {:stop, reason, state}
  def act({:return, value}, _state), do: value
  def act({:throw, value}, _state), do: throw(value)

  def act({:hold, test}, state) do
    send(test, {:holding, self()})

    receive do
      :release -> {:noreply, state}
    end
  end

  def act(_request, state), do: {:noreply, state}

  def special?({tag, _}) when tag in [:raise, :stop, :return, :throw, :hold], do: true
  def special?(_), do: false

  @doc """
  Collects the events `pid` (any server when `nil`) sends until the one
  `pred` matches (included); fails after `timeout` ms without one. Events
  of other servers are left in the mailbox.
  """
  def events_until(pred, pid \\ nil, timeout \\ 10_000), do: events_until(pred, pid, timeout, [])

  defp events_until(pred, pid, timeout, acc) do
    receive do
      {:ev, from, event} when pid == nil or from == pid ->
        acc = [event | acc]
        if pred.(event), do: Enum.reverse(acc), else: events_until(pred, pid, timeout, acc)
    after
      timeout -> flunk("no event after #{inspect(Enum.reverse(acc))}")
    end
  end

  @doc """
  The events `server` sends before it handles a message the test process
  sends now: everything the test process (or anyone who has returned to
  it) queued before is handled first. A plain message is used because a
  call would be admitted against the mailbox's capacity.
  """
  def sync_events(server) do
    ref = make_ref()
    pid = GenServer.whereis(server)
    send(pid, {:sync, ref})
    events = events_until(&(&1 == {:info, {:sync, ref}}), pid)
    Enum.drop(events, -1)
  end

  @doc "Runs `fun` in a new process; `await/1` gives its result or exit."
  def async(fun) do
    test = self()
    ref = make_ref()

    pid =
      spawn(fn ->
        result =
          try do
            {:ok, fun.()}
          catch
            :exit, reason -> {:exit, reason}
          end

        send(test, {ref, result})
      end)

    {ref, pid}
  end

  def await({ref, _pid}, timeout \\ 10_000) do
    receive do
      {^ref, result} -> result
    after
      timeout -> flunk("no result from the process in #{timeout} ms")
    end
  end

  defmodule Recorder do
    @moduledoc false
    # Casts go to handle_cast/2 one by one.
    use GenNative

    alias GenNative.MailboxServers, as: S

    def start_link({test, opts}), do: GenNative.start_link(__MODULE__, test, opts)

    def child_spec({test, opts}) do
      %{id: opts[:name] || __MODULE__, start: {__MODULE__, :start_link, [{test, opts}]}}
    end

    @impl true
    def init(test), do: {:ok, test}

    @impl true
    def handle_cast(request, test) do
      send(test, {:ev, self(), {:cast, request}})
      S.act(request, test)
    end

    @impl true
    def handle_call({:stop, reason}, _from, test) do
      send(test, {:ev, self(), {:call, {:stop, reason}}})
      {:stop, reason, :stopping, test}
    end

    def handle_call(request, _from, test) do
      send(test, {:ev, self(), {:call, request}})
      {:reply, {:ok, request}, test}
    end

    @impl true
    def handle_info(message, test) do
      send(test, {:ev, self(), {:info, message}})
      {:noreply, test}
    end

    @impl true
    def terminate(reason, test) do
      send(test, {:ev, self(), {:terminate, reason}})
    end
  end

  defmodule BatchRecorder do
    @moduledoc false
    # Exports handle_batch/2: queued casts come in batches.
    use GenNative

    alias GenNative.MailboxServers, as: S

    def start_link({test, opts}), do: GenNative.start_link(__MODULE__, test, opts)

    def child_spec({test, opts}) do
      %{id: opts[:name] || __MODULE__, start: {__MODULE__, :start_link, [{test, opts}]}}
    end

    @impl true
    def init(test), do: {:ok, test}

    @impl GenNative
    def handle_batch(requests, test) do
      send(test, {:ev, self(), {:batch, requests}})

      case Enum.find(requests, &S.special?/1) do
        nil -> {:noreply, test}
        request -> S.act(request, test)
      end
    end

    @impl true
    def handle_cast(request, test) do
      send(test, {:ev, self(), {:cast, request}})
      S.act(request, test)
    end

    @impl true
    def handle_call(request, _from, test) do
      send(test, {:ev, self(), {:call, request}})
      {:reply, {:ok, request}, test}
    end

    @impl true
    def handle_info(message, test) do
      send(test, {:ev, self(), {:info, message}})
      {:noreply, test}
    end

    @impl true
    def terminate(reason, test) do
      send(test, {:ev, self(), {:terminate, reason}})
    end
  end

  defmodule Counter do
    @moduledoc false
    # Counts casts without telling anyone, for large backlogs; a call
    # returns how many it has handled so far. `{:work, n}` casts burn a
    # little CPU, to keep a backlog going.
    use GenNative

    @impl true
    def init(_), do: {:ok, 0}

    @impl true
    def handle_cast({:work, n}, count) do
      Enum.reduce(1..n, 0, fn i, acc -> :erlang.phash2({i, acc}) end)
      {:noreply, count + 1}
    end

    def handle_cast({:hold, test}, count) do
      send(test, {:holding, self()})

      receive do
        :release -> {:noreply, count + 1}
      end
    end

    def handle_cast(_request, count), do: {:noreply, count + 1}

    @impl true
    def handle_call(:count, _from, count), do: {:reply, count, count}
  end

  defmodule Plain do
    @moduledoc false
    use GenServer

    @impl true
    def init(arg), do: {:ok, arg}

    @impl true
    def handle_cast({:return, value}, _state), do: value
  end
end
