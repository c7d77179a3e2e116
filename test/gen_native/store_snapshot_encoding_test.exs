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

  defp frames(
         <<kl::32, k::binary-size(kl), vl::32, v::binary-size(vl), ttl::64, rest::binary>>,
         acc
       ),
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
        :ünïcödé,
        :日本,
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

      want =
        Map.new(entries, fn {k, v} -> {:erlang.term_to_binary(k), :erlang.term_to_binary(v)} end)

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

  ## Decoding: restore takes any valid encoding, not only term_to_binary's

  defp sealed(type, entries) do
    body =
      for {k, v} <- entries, into: <<>> do
        <<byte_size(k)::32, k::binary, byte_size(v)::32, v::binary, 0::64>>
      end

    data = <<"GNS2", type, length(entries)::64, body::binary>>
    data <> <<:erlang.crc32(data)::32>>
  end

  # What binary_to_term/2 makes of bytes: {:ok, term} or :error. A
  # snapshot's entry must be exactly one encoding: bytes past the term
  # (which binary_to_term ignores) make it invalid.
  defp vm_decode(bytes, opts) do
    case :erlang.binary_to_term(bytes, [:used | opts]) do
      {term, used} when used == byte_size(bytes) -> {:ok, term}
      _ -> :error
    end
  rescue
    ArgumentError -> :error
  end

  # Restores a snapshot holding `bytes` as a value (and, in an ordered
  # set, as a key too) and compares with binary_to_term/2.
  defp same_as_vm(bytes, safe) do
    key = :erlang.term_to_binary(:k)

    for {type, entries} <- [{0, [{key, bytes}]}, {1, [{key, bytes}, {bytes, key}]}] do
      result = Store.restore(sealed(type, entries), safe: safe)

      case vm_decode(bytes, if(safe, do: [:safe], else: [])) do
        {:ok, term} ->
          assert match?({:ok, _}, result),
                 "#{inspect(bytes)} (safe: #{safe}, type #{type}): #{inspect(result)}"

          {:ok, store} = result
          assert Store.get(store, :k) === term, inspect(bytes)

          if type == 1 do
            assert Store.fetch(store, term) == {:ok, :k}
            assert Enum.any?(Store.to_list(store), fn {k, _} -> k === term end), inspect(bytes)
          end

          Store.delete(store)

        :error ->
          assert match?({:error, _}, result), "#{inspect(bytes)} restored: #{inspect(result)}"
          {:error, reason} = result
          assert reason in [:invalid_snapshot, :unsafe_snapshot]
      end
    end
  end

  defp utf8_atom(text), do: <<118, byte_size(text)::16, text::binary>>

  test "hand-made encodings of every tag restore as binary_to_term decodes them" do
    cases = [
      # integers: canonical or not
      <<131, 97, 7>>,
      <<131, 98, 0, 0, 0, 7>>,
      <<131, 98, 255, 255, 255, 255>>,
      <<131, 110, 1, 0, 5>>,
      <<131, 110, 1, 1, 5>>,
      <<131, 110, 2, 0, 5, 0>>,
      <<131, 110, 1, 1, 0>>,
      <<131, 110, 0, 0>>,
      <<131, 110, 1, 2, 5>>,
      <<131, 110, 8, 0, 255, 255, 255, 255, 255, 255, 255, 255>>,
      <<131, 110, 8, 1, 0, 0, 0, 0, 0, 0, 0, 128>>,
      <<131, 110, 8, 1, 1, 0, 0, 0, 0, 0, 0, 128>>,
      <<131, 110, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9>>,
      <<131, 111, 0, 0, 0, 1, 0, 9>>,
      # floats
      <<131, 70, 0::64>>,
      <<131, 70, 1::1, 0::63>>,
      <<131, 70, 0x7FF0000000000000::64>>,
      <<131, 70, 0x7FF8000000000000::64>>,
      <<131, 99>> <> String.pad_trailing("1.5e+00", 31, <<0>>),
      # atoms, in every spelling
      <<131, 100, 0, 2, "ok">>,
      <<131, 115, 2, "ok">>,
      <<131, 119, 2, "ok">>,
      <<131>> <> utf8_atom("ok"),
      <<131, 115, 0>>,
      <<131>> <> utf8_atom("日本"),
      <<131, 119, 2, 0xC3, 0x28>>,
      <<131, 100, 1, 0>> <> String.duplicate("a", 256),
      <<131>> <> utf8_atom("gn no such atom #{System.unique_integer()}"),
      # binaries
      <<131, 109, 0::32>>,
      <<131, 109, 3::32, "abc">>,
      <<131, 109, 100::32>> <> :binary.copy("b", 100),
      <<131, 109, 4::32, "abc">>,
      <<131, 77, 1::32, 3, 0xE0>>,
      # tuples, lists, strings
      <<131, 104, 0>>,
      <<131, 105, 0::32>>,
      <<131, 105, 2::32, 97, 1, 97, 2>>,
      <<131, 104, 2, 97, 1>>,
      <<131, 106>>,
      <<131, 107, 0::16>>,
      <<131, 107, 3::16, "abc">>,
      <<131, 108, 0::32, 106>>,
      <<131, 108, 2::32, 97, 1, 97, 2, 106>>,
      <<131, 108, 2::32, 97, 1, 97, 2, 97, 3>>,
      <<131, 108, 1::32, 107, 1::16, "x", 109, 1::32, "y">>,
      <<131, 108, 2::32, 97, 1, 106>>,
      # maps
      <<131, 116, 0::32>>,
      <<131, 116, 2::32, 97, 1, 97, 2, 115, 1, "a", 106>>,
      <<131, 116, 2::32, 97, 1, 97, 2, 97, 1, 97, 3>>,
      <<131, 116, 2::32, 97, 1, 97, 2, 70, 1.0::float, 97, 3>>,
      # trailing and missing bytes, and what only the VM decodes
      <<131, 97, 1, 0>>,
      <<131, 97>>,
      <<131>>,
      <<130, 97, 1>>,
      :erlang.term_to_binary({self(), make_ref(), fn -> :ok end}),
      :erlang.term_to_binary(Enum.reduce(1..100, :leaf, &{&1, &2})),
      :erlang.term_to_binary(:lists.seq(1, 100), compressed: 9)
    ]

    for bytes <- cases, safe <- [true, false], do: same_as_vm(bytes, safe)
  end

  test "randomly damaged encodings restore exactly when binary_to_term takes them" do
    :rand.seed(:exsss, {7, 11, 13})

    seeds =
      [
        {1, :a, "bin", [1, 2, 3], 2.5},
        %{a: [1 | 2], b: {-300, 1 <<< 40}},
        [~c"abc", {}, [], <<"x">>, -(1 <<< 62)],
        {:ünï, [{1, 2} | :t], %{{1} => 1.0}}
      ]
      |> Enum.map(&:erlang.term_to_binary/1)

    for _ <- 1..3_000 do
      bytes = Enum.random(seeds)
      at = :rand.uniform(byte_size(bytes) - 1)
      <<pre::binary-size(at), _::8, post::binary>> = bytes
      damaged = pre <> <<:rand.uniform(256) - 1>> <> post
      same_as_vm(damaged, true)
    end
  end
end
