defmodule GenNative.Janitor do
  # Decides what becomes of a `keep_on_crash: true` server's native mailbox
  # when the server exits. The C side cannot: a NIF monitor learns that its
  # owner died, not why. So each such server registers its mailbox here
  # (under its registered name) and this process monitors it:
  #
  #   * exit :normal, :shutdown or {:shutdown, _}: the queue is freed;
  #   * any other exit: the queue is kept, for the next server started under
  #     the same name with the same module to adopt, for at most
  #     `Application.get_env(:gen_native, :keep_on_crash_ms, 5000)` ms;
  #     then it is freed.
  #
  # Holding the mailbox's resource reference is what keeps it alive.
  @moduledoc false
  use GenServer

  alias GenNative.Native

  def start_link(_), do: GenServer.start_link(__MODULE__, [], name: __MODULE__)

  @doc """
  Returns a kept mailbox of a crashed server registered as `key` with
  `module`, handing it over to the caller, or `:none`.
  """
  def adopt(key, module), do: call({:adopt, key, module})

  @doc "Registers the calling server's mailbox to be kept if it crashes."
  def keep(key, module, mailbox), do: call({:keep, key, module, mailbox})

  defp call(request) do
    GenServer.call(__MODULE__, request, :infinity)
  catch
    :exit, {:noproc, _} ->
      raise ArgumentError,
            "mailbox option keep_on_crash: true needs the :gen_native application to be started"
  end

  @impl true
  def init(_), do: {:ok, %{}}

  @impl true
  def handle_call({:keep, key, module, mailbox}, {pid, _}, entries) do
    entry = %{
      pid: pid,
      module: module,
      mailbox: mailbox,
      monitor: Process.monitor(pid),
      timer: nil
    }

    {:reply, :ok, Map.put(entries, key, entry)}
  end

  def handle_call({:adopt, key, module}, {pid, _}, entries) do
    case Map.get(entries, key) do
      %{pid: nil, module: ^module} = entry ->
        Process.cancel_timer(entry.timer)
        {:reply, {:ok, entry.mailbox}, Map.delete(entries, key)}

      %{pid: old, module: ^module, monitor: ref} = entry when old != pid ->
        # The new server can only have its name if the old one is gone; its
        # DOWN is on the way if not here yet.
        receive do
          {:DOWN, ^ref, :process, ^old, reason} ->
            if crashed?(reason) do
              {:reply, {:ok, entry.mailbox}, Map.delete(entries, key)}
            else
              Native.mailbox_discard(entry.mailbox)
              {:reply, :none, Map.delete(entries, key)}
            end
        after
          5_000 -> {:reply, :none, entries}
        end

      _ ->
        {:reply, :none, entries}
    end
  end

  @impl true
  def handle_info({:DOWN, ref, :process, pid, reason}, entries) do
    case Enum.find(entries, fn {_key, e} -> e.monitor == ref and e.pid == pid end) do
      nil ->
        {:noreply, entries}

      {key, entry} ->
        if crashed?(reason) do
          grace = Application.get_env(:gen_native, :keep_on_crash_ms, 5000)
          timer = Process.send_after(self(), {:expire, key, entry.mailbox}, grace)
          {:noreply, Map.put(entries, key, %{entry | pid: nil, timer: timer})}
        else
          Native.mailbox_discard(entry.mailbox)
          {:noreply, Map.delete(entries, key)}
        end
    end
  end

  def handle_info({:expire, key, mailbox}, entries) do
    case Map.get(entries, key) do
      %{pid: nil, mailbox: ^mailbox} ->
        Native.mailbox_discard(mailbox)
        {:noreply, Map.delete(entries, key)}

      _ ->
        {:noreply, entries}
    end
  end

  defp crashed?(:normal), do: false
  defp crashed?(:shutdown), do: false
  defp crashed?({:shutdown, _}), do: false
  defp crashed?(_), do: true
end
