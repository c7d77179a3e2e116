require Conformance

# Servers shared by several conformance test files. Each exists twice, as
# `X.GenServer` (`use GenServer`) and `X.GenNative` (`use GenNative`).

Conformance.defserver Conformance.Scripted do
  @moduledoc false
  # A server whose every callback runs a function sent by the test, so one
  # module covers the whole matrix of callback return values. The start
  # argument is `{owner, init_fun}`; `owner` is told about `terminate/2` and
  # about messages, continues and casts that carry no function.

  def start_link(arg), do: @gen.start_link(__MODULE__, arg)

  @impl true
  def init({owner, fun}) do
    Process.put(:conf_owner, owner)
    fun.()
  end

  @impl true
  def handle_call({:run, fun}, from, state), do: fun.(from, state)
  def handle_call(:state, _from, state), do: {:reply, state, state}

  @impl true
  def handle_cast({:run, fun}, state), do: fun.(state)

  def handle_cast(msg, state) do
    notify({:cast, msg, state})
    {:noreply, state}
  end

  @impl true
  def handle_info({:run, fun}, state), do: fun.(state)

  def handle_info(msg, state) do
    notify({:info, msg, state})
    {:noreply, state}
  end

  @impl true
  def handle_continue({:run, fun}, state), do: fun.(state)

  def handle_continue(arg, state) do
    notify({:continue, arg, state})
    {:noreply, state}
  end

  @impl true
  def terminate(reason, state) do
    notify({:terminate, reason, state})
    :ignored
  end

  @impl true
  def code_change(old_vsn, state, fun), do: fun.(old_vsn, state)

  defp notify(msg) do
    if owner = Process.get(:conf_owner), do: send(owner, msg)
  end
end

Conformance.defserver Conformance.Recorder do
  @moduledoc false
  # Records every request in arrival order; `:log` returns the record.

  def start_link(log), do: @gen.start_link(__MODULE__, log)

  @impl true
  def init(log), do: {:ok, log}

  @impl true
  def handle_call(:log, _from, log), do: {:reply, Enum.reverse(log), log}
  def handle_call(msg, _from, log), do: {:reply, {:ok, msg}, [{:call, msg} | log]}

  @impl true
  def handle_cast(msg, log), do: {:noreply, [{:cast, msg} | log]}

  @impl true
  def handle_info(msg, log), do: {:noreply, [{:info, msg} | log]}
end

Conformance.defserver Conformance.Defaults do
  @moduledoc false
  # Only `init/1`: every other callback is the one `use` injects.

  @impl true
  def init(arg), do: {:ok, arg}
end
