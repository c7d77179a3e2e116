defmodule GenNative.Distributed.KV do
  @moduledoc false
  # The server the distribution test runs on both nodes. It lives in
  # test/support so that it is compiled into the build dir, where a peer
  # node can load it; a module defined in an .exs file exists only in the
  # VM that ran the file.
  #
  # `use GenNative.Distributed.KV, GenNative` and `use ..., GenServer` give
  # the same callbacks on either behaviour, so the test can compare them.

  defmacro __using__(behaviour) do
    quote do
      use unquote(behaviour)

      @behaviour_module unquote(behaviour)

      def start(name), do: @behaviour_module.start(__MODULE__, name, name: name)
      def start_link(name), do: @behaviour_module.start_link(__MODULE__, name, name: name)

      @impl true
      def init(name), do: {:ok, %{name: name, data: %{}}}

      @impl true
      def handle_call(:ping, _from, state), do: {:reply, {:pong, node()}, state}
      def handle_call({:get, key}, _from, state), do: {:reply, Map.get(state.data, key), state}

      def handle_call({:put, key, value}, _from, state),
        do: {:reply, :ok, put_in(state.data[key], value)}

      def handle_call({:sleep, ms}, _from, state) do
        Process.sleep(ms)
        {:reply, :slept, state}
      end

      def handle_call({:stop, reason}, _from, state), do: {:stop, reason, state}

      @impl true
      def handle_cast({:put, key, value}, state), do: {:noreply, put_in(state.data[key], value)}

      def handle_cast({:tell, pid, message}, state) do
        send(pid, {message, node()})
        {:noreply, state}
      end
    end
  end
end

defmodule GenNative.Distributed.NativeKV do
  @moduledoc false
  use GenNative.Distributed.KV, GenNative
end

defmodule GenNative.Distributed.PlainKV do
  @moduledoc false
  use GenNative.Distributed.KV, GenServer
end
