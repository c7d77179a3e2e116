defmodule GenNative.StoreLayoutTest do
  # How entries are laid out, seen from outside: a :set is a hash table
  # whose walk order depends only on its contents; keys are matched as ETS
  # matches them; word counts past 16 bits (kept out of the entry) are
  # still accounted and copied right.
  use ExUnit.Case, async: true

  import Bitwise

  alias GenNative.Store

  # sorted by encoding: terms that compare equal (1 and 1.0) sort the same
  # way whatever their order before
  defp canonical(list), do: Enum.sort_by(list, &:erlang.term_to_binary/1)

  defp keys(n), do: Enum.flat_map(1..n, &[&1, &1 * 1.0, {&1, "k"}, "key #{&1}"])

  describe "a :set's order" do
    test "to_list and snapshot depend only on what the set holds" do
      ks = keys(3_000)
      {:ok, a} = Store.new(:set)
      {:ok, b} = Store.new(:set)
      # one grows entry by entry (its table regrows as it goes), the other
      # in one put_many, in reverse
      for k <- ks, do: :ok = Store.put(a, k, {:v, k})
      :ok = Store.put_many(b, for(k <- Enum.reverse(ks), do: {k, {:v, k}}))
      assert Store.to_list(a) === Store.to_list(b)
      assert Store.snapshot(a) == Store.snapshot(b)

      # the same after removing the same keys in different orders
      gone = Enum.take_every(ks, 3)
      for k <- gone, do: :ok = Store.delete(a, k)
      for k <- Enum.reverse(gone), do: :ok = Store.delete(b, k)
      assert Store.size(a) == length(ks) - length(gone)
      assert Store.to_list(a) === Store.to_list(b)
      assert Store.snapshot(a) == Store.snapshot(b)

      # and a restored set gives back its snapshot
      {:ok, c} = Store.restore(Store.snapshot(a))
      assert Store.to_list(c) === Store.to_list(a)
      assert Store.snapshot(c) == Store.snapshot(a)
      assert canonical(Store.to_list(a)) === canonical(for k <- ks -- gone, do: {k, {:v, k}})
    end
  end

  describe "matching keys" do
    test "a :set matches keys as an ETS set does, and keeps the key last put" do
      {:ok, store} = Store.new(:set)
      ets = :ets.new(:layout, [:set])

      puts = [{0.0, :a}, {-0.0, :b}, {1, :c}, {1.0, :d}, {{0.0, [-0.0]}, :e}, {{-0.0, [0.0]}, :f}]

      for {k, v} <- puts do
        :ok = Store.put(store, k, v)
        true = :ets.insert(ets, {k, v})
      end

      assert canonical(Store.to_list(store)) === canonical(:ets.tab2list(ets))

      for {k, _} <- puts do
        assert Store.fetch(store, k) ===
                 (case :ets.lookup(ets, k) do
                    [{_, v}] -> {:ok, v}
                    [] -> :error
                  end)
      end
    end
  end

  describe "big terms" do
    # 2 words per list cell: past 65,535 words, the count lives in the
    # entry's extension
    @big Enum.to_list(1..40_000)

    test "a value or key past 65,535 words is stored, read, replaced and removed" do
      for type <- [:set, :ordered_set] do
        {:ok, store} = Store.new(type)
        empty = Store.info(store).memory
        :ok = Store.put(store, :k, @big)
        assert Store.get(store, :k) == @big
        assert Store.info(store).memory - empty >= 80_000 * 8

        :ok = Store.put(store, @big, :small)
        assert Store.get(store, @big) == :small
        assert Store.info(store).memory - empty >= 2 * 80_000 * 8

        :ok = Store.put(store, :k, :small)
        assert Store.take(store, @big) == {:ok, :small}
        assert Store.to_list(store) == [k: :small]

        # with a TTL, and binaries: everything the extension holds
        :ok = Store.put(store, :t, {@big, :binary.copy("b", 1_000)}, ttl: 50)
        assert {_, "b" <> _} = Store.get(store, :t)
        Process.sleep(100)
        assert Store.get(store, :t) == nil
        assert Store.size(store) == 1
        :ok = Store.delete(store)
      end
    end

    test "update_counter over a value past 65,535 words raises not_integer and keeps it" do
      {:ok, store} = Store.new(:ordered_set)
      :ok = Store.put(store, :n, @big)
      assert_raise ArgumentError, fn -> Store.update_counter(store, :n, 1) end
      assert Store.get(store, :n) == @big
      :ok = Store.put(store, :n, 1 <<< 61)
      assert Store.update_counter(store, :n, 1) == (1 <<< 61) + 1
    end
  end
end
