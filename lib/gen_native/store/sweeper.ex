defmodule GenNative.Store.Sweeper do
  @moduledoc """
  Reclaims the memory of expired store entries (see the `:ttl` option of
  `GenNative.Store.put/4`): every second it purges, on a dirty scheduler,
  every store that holds entries with a time to live. Started by the
  `:gen_native` application.
  """
  use GenServer

  @interval 1_000

  @doc false
  def start_link(_), do: GenServer.start_link(__MODULE__, [], name: __MODULE__)

  @impl true
  def init(_) do
    schedule()
    {:ok, nil}
  end

  @impl true
  def handle_info(:sweep, state) do
    GenNative.Native.store_sweep()
    schedule()
    {:noreply, state}
  end

  defp schedule, do: Process.send_after(self(), :sweep, @interval)
end
