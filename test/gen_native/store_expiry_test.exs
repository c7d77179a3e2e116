defmodule GenNative.StoreExpiryTest do
  # Reads that see the whole store while entries expire all the time: the
  # NIF asks for more time by rescheduling itself on a dirty scheduler, so
  # nothing escapes to the caller (an ErlangError :purge used to, when more
  # entries had expired by the time the call was retried).
  use ExUnit.Case, async: true

  alias GenNative.Store

  # Puts entries that live 1 ms, as fast as it can, until told to stop.
  defp churn(store, i \\ 0) do
    receive do
      :stop -> :ok
    after
      0 ->
        :ok = Store.put(store, {:ttl, i}, i, ttl: 1)
        churn(store, i + 1)
    end
  end

  defp reads(store) do
    [
      fn -> Store.size(store) end,
      fn -> Store.info(store) end,
      fn -> Store.first(store) end,
      fn -> Store.last(store) end,
      fn -> Store.next(store, {:ttl, 0}) end,
      fn -> Store.prev(store, {:ttl, 1_000_000_000}) end,
      fn -> Store.rank(store, :permanent) end,
      fn -> Store.at(store, 0) end,
      fn -> Store.at(store, -1) end,
      fn -> Store.slice(store, 0, 3) end,
      fn -> Store.to_list(store) end
    ]
  end

  @tag timeout: 120_000
  test "size/info/first/last/next/prev/rank/at never raise while entries expire continuously" do
    {:ok, store} = Store.new(:ordered_set, access: :public)
    :ok = Store.put(store, :permanent, :here)
    writers = for _ <- 1..2, do: spawn_link(fn -> churn(store) end)
    deadline = System.monotonic_time(:millisecond) + 3_000

    failures =
      Stream.repeatedly(fn -> System.monotonic_time(:millisecond) end)
      |> Stream.take_while(&(&1 < deadline))
      |> Enum.flat_map(fn _ ->
        for read <- reads(store), reduce: [] do
          acc ->
            try do
              read.()
              acc
            rescue
              e -> [e | acc]
            end
        end
      end)

    Enum.each(writers, &send(&1, :stop))
    assert failures == [], "#{length(failures)} raised, e.g. #{inspect(hd(failures ++ [nil]))}"
    # whatever has expired is gone; the permanent entry stays
    Process.sleep(5)
    assert {:ok, 0} = Store.rank(store, :permanent)
  end
end
