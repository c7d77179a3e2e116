defmodule GenNative.StoreGarbageTest do
  # What a store holds, measured node-wide: overwritten and removed terms
  # are reclaimed once they outweigh the live ones (garbage bounded by
  # bytes, whatever the entry count), and info/1's memory is within 10% of
  # what the VM sees. Not async, so the node is quiet; tagged :memory
  # (bin/sanitize's VM has no memory accounting).
  use ExUnit.Case, async: false

  import Bitwise
  import GenNative.TestHelpers, only: [settled_memory: 3]

  alias GenNative.Store

  @moduletag :memory

  # Waits (bounded) until the node's memory stops moving.
  defp settle(kind \\ :total), do: settled_memory(kind, 200_000, 50)

  # Runs `fun` in a process of its own, so that what it makes does not
  # stay on the test's heap.
  defp elsewhere(fun) do
    Task.async(fun) |> Task.await(300_000)
  end

  test "1 MB binaries put over one key, one after another: garbage stays bounded" do
    {:ok, store} = Store.new(:set, access: :public)
    before = settle(:binary)

    peak =
      elsewhere(fn ->
        Enum.reduce(1..300, 0, fn i, peak ->
          :ok = Store.put(store, :key, :binary.copy(<<i::32>>, 262_144))
          if rem(i, 10) == 0, do: :erlang.garbage_collect()
          max(peak, :erlang.memory(:binary) - before)
        end)
      end)

    # one live megabyte, at most about as much dead, and the test's own
    # binaries not yet collected
    assert peak < 16_000_000, "binary memory grew by #{peak} bytes"
    assert Store.info(store).memory < 3_000_000
    :ok = Store.delete(store)
  end

  test "1 MB binaries put under distinct keys and deleted: garbage stays bounded" do
    {:ok, store} = Store.new(:ordered_set, access: :public)
    before = settle(:binary)

    peak =
      elsewhere(fn ->
        Enum.reduce(1..300, 0, fn i, peak ->
          :ok = Store.put(store, i, :binary.copy(<<i::32>>, 262_144))
          :ok = Store.delete(store, i - 1)
          if rem(i, 10) == 0, do: :erlang.garbage_collect()
          max(peak, :erlang.memory(:binary) - before)
        end)
      end)

    assert peak < 16_000_000, "binary memory grew by #{peak} bytes"
    :ok = Store.delete(store)
  end

  @tag timeout: 300_000
  test "update_counter on a bignum counter: memory stays bounded, and info/1 says so" do
    {:ok, store} = Store.new(:set, access: :public)
    :ok = Store.put(store, :n, 1 <<< 61)
    before = settle()
    elsewhere(fn -> for _ <- 1..1_000_000, do: Store.update_counter(store, :n, 1) end)
    grown = settle() - before
    assert Store.get(store, :n) == (1 <<< 61) + 1_000_000
    assert grown < 3_000_000, "the node grew by #{grown} bytes"
    assert Store.info(store).memory < 200_000
    :ok = Store.delete(store)
  end

  # Values of the shapes stores hold, built by compiled code.
  defp shapes do
    [
      {"small integers", fn i -> i end},
      {"tuples", fn i -> {i, :a, i * 2.5} end},
      {"short binaries", fn i -> :binary.copy(<<rem(i, 256)>>, 30) end},
      {"1 KB binaries", fn i -> :binary.copy(<<rem(i, 256)>>, 1_000) end},
      {"lists of 20", fn i -> Enum.to_list(i..(i + 19)) end},
      {"maps", fn i -> %{id: i, name: :binary.copy("n", 12), tags: [:a, :b], score: i * 1.5} end},
      {"big integers", fn i -> (1 <<< 70) + i end}
    ]
  end

  @tag timeout: 600_000
  test "info/1 memory is within 10% of what the node grows by" do
    n = 100_000

    results =
      for {label, value} <- shapes(), type <- [:set, :ordered_set] do
        before = settle()
        {:ok, store} = Store.new(type, access: :public)

        1..n
        |> Enum.chunk_every(25_000)
        |> Enum.each(fn chunk ->
          elsewhere(fn -> :ok = Store.put_many(store, for(i <- chunk, do: {i, value.(i)})) end)
        end)

        grown = settle() - before
        held = Store.info(store).memory
        :ok = Store.delete(store)
        # the reaper frees it in the background
        settle()
        {label, type, held, grown, held / grown}
      end

    off = for {_, _, _, _, ratio} = r <- results, ratio < 0.9 or ratio > 1.1, do: r
    assert off == [], "info.memory / node growth: #{inspect(results, pretty: true)}"
  end
end
