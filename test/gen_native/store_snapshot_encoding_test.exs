defmodule GenNative.StoreSnapshotEncodingTest do
  # A snapshot's keys and values are encoded by the store's own encoder
  # (c_src/etf_encode.c), which must write the very bytes
  # :erlang.term_to_binary/1 does: compared here term by term, over every
  # kind of term and each boundary where the encoding changes.
  use ExUnit.Case, async: true

  import Bitwise

  alias GenNative.Store

  # Every {key_etf, value_etf, ttl} of a snapshot, in its order.
  defp entries(<<"GNS2", _type, count::64, rest::binary>> = snap) do
    body = binary_part(rest, 0, byte_size(rest) - 4)
    <<crc::32>> = binary_part(snap, byte_size(snap) - 4, 4)
    assert crc == :erlang.crc32(binary_part(snap, 0, byte_size(snap) - 4))
    list = frames(body, [])
    assert length(list) == count
    list
  end

  defp frames(<<>>, acc), do: Enum.reverse(acc)

  defp frames(<<kl::32, k::binary-size(kl), vl::32, v::binary-size(vl), ttl::64, rest::binary>>, acc),
    do: frames(rest, [{k, v, ttl} | acc])

  defp ints do
    edges = [0, 255, 256, 1 <<< 31, 1 <<< 32, 1 <<< 59, 1 <<< 60, 1 <<< 63, 1 <<< 64, 1 <<< 80]
    Enum.flat_map(edges, &[&1 - 1, &1, &1 + 1, -(&1 - 1), -&1, -(&1 + 1)])
  end

  defp terms do
    fresh = :"an atom made for this test #{System.unique_integer()}"

    ints() ++
      [
        0.0,
        -0.0,
        1.5,
        -1.0e300,
        5.0e-324,
        :a,
        true,
        nil,
        fresh,
        :"ünïcödé",
        :"日本",
        String.to_atom(String.duplicate("a", 255)),
        "",
        "short",
        String.duplicate("x", 64),
        String.duplicate("y", 65),
        :binary.copy(<<1, 2, 3>>, 10_000),
        binary_part(:binary.copy("abcdef", 100), 3, 200),
        <<1::3>>,
        <<"bytes", 5::5>>,
        {},
        {1},
        {:a, {:b, {:c, []}}},
        List.to_tuple(Enum.to_list(1..255)),
        List.to_tuple(Enum.to_list(1..256)),
        List.to_tuple(Enum.to_list(1..300)),
        [],
        [1],
        ~c"a string",
        [0, 255],
        [256],
        [-1],
        [1 | 2],
        [1, 2 | :tail],
        [1, 2 | "binary tail"],
        Enum.to_list(rem_bytes(65_535)),
        Enum.to_list(rem_bytes(65_536)),
        Enum.to_list(rem_bytes(65_535)) ++ [300],
        [1.0, :a, "b", {:c}],
        [[[]]],
        %{},
        %{a: 1, b: [2]},
        Map.new(1..40, &{&1, &1 * 2}),
        self(),
        make_ref(),
        hd(Port.list()),
        fn x -> x end,
        &Enum.map/2,
        nest(10),
        nest(70),
        nest(200),
        {[%{k: {1.0, <<7::4>>}}], [make_ref() | self()]}
      ]
  end

  defp rem_bytes(n), do: Stream.map(0..(n - 1), &rem(&1, 256))

  defp nest(0), do: :leaf
  defp nest(n), do: {n, [nest(n - 1)]}

  for type <- [:set, :ordered_set] do
    test "keys and values are written as term_to_binary writes them (#{type})" do
      ts = terms()
      {:ok, store} = Store.new(unquote(type))
      # each term as a key (distinct under both == and =:=: wrapped with
      # its index) and as a value
      entries = Enum.with_index(ts, fn t, i -> {{i, t}, t} end)
      :ok = Store.put_many(store, entries)
      got = entries(Store.snapshot(store))
      assert length(got) == length(ts)

      want = Map.new(entries, fn {k, v} -> {:erlang.term_to_binary(k), :erlang.term_to_binary(v)} end)

      for {k, v, 0} <- got do
        {_i, t} = :erlang.binary_to_term(k)
        assert Map.fetch!(want, k) == v, "value #{inspect(t, limit: 8)} encoded differently"
      end

      # bare terms as keys too: every key's encoding is term_to_binary's
      {:ok, bare} = Store.new(unquote(type))
      keys = Enum.uniq_by(ts, &:erlang.term_to_binary/1)
      :ok = Store.put_many(bare, Enum.map(keys, &{&1, :v}))
      got_keys = MapSet.new(entries(Store.snapshot(bare)), fn {k, _, _} -> k end)
      want_keys = MapSet.new(Store.to_list(bare), fn {k, _} -> :erlang.term_to_binary(k) end)
      assert got_keys == want_keys
    end
  end

  test "a snapshot far bigger than the store's estimate (strings, atoms, off-heap binaries)" do
    {:ok, store} = Store.new(:set)
    big = :binary.copy("z", 100_000)
    :ok = Store.put_many(store, for(i <- 1..200, do: {i, {big, :an_atom, i}}))
    snap = Store.snapshot(store)
    assert byte_size(snap) > 200 * 100_000

    for {k, v, 0} <- entries(snap) do
      i = :erlang.binary_to_term(k)
      assert v == :erlang.term_to_binary({big, :an_atom, i})
    end

    {:ok, copy} = Store.restore(snap)
    assert Store.snapshot(copy) == snap
  end
end
