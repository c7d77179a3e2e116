defmodule GenNative.StoreRestoreAtomsTest do
  # Store.restore/2 and atoms: the whole snapshot is checked before any
  # atom is made, so a rejected snapshot creates none; an accepted one
  # creates what it holds; safe: true refuses unknown atoms. Not async:
  # :erlang.system_info(:atom_count) is node-wide, and async tests make
  # atoms (unique names).
  use ExUnit.Case, async: false

  import Bitwise
  import GenNative.StoreSuite, only: [sealed: 3, etf: 1]

  alias GenNative.Native
  alias GenNative.Store

  # Atom text that no atom has yet: the atoms are only ever spelled inside
  # binaries here, never made by the test.
  defp fresh_text(i), do: "gn_fresh_#{System.unique_integer([:positive])}_#{i}"

  # The encoding of an atom that does not exist yet.
  defp fresh_atom_etf(text), do: <<131, 119, byte_size(text), text::binary>>

  defp raw_entry(k_etf, v_etf, ttl \\ 0),
    do: <<byte_size(k_etf)::32, k_etf::binary, byte_size(v_etf)::32, v_etf::binary, ttl::64>>

  # A snapshot of `n` entries keyed by fresh atoms, the last one's value
  # damaged (a valid checksum all the same): what the issue fed restore.
  defp damaged_last(n) do
    good = for i <- 1..(n - 1), into: <<>>, do: raw_entry(fresh_atom_etf(fresh_text(i)), etf(i))
    bad = raw_entry(fresh_atom_etf(fresh_text(n)), <<131, 1, 2, 3>>)
    sealed(0, n, good <> bad)
  end

  defp atoms, do: :erlang.system_info(:atom_count)

  defp assert_all_invalid(binaries),
    do: for(b <- binaries, do: assert(Store.restore(b) == {:error, :invalid_snapshot}))

  # Makes the input with `make` (not counted), then counts the atoms made
  # while `run` runs on it; up to 3 attempts, stopping at the first with
  # none: another process of the node may make an atom at that moment, but
  # a restore that makes atoms makes them every time (each attempt spells
  # fresh ones).
  defp atoms_made(make, run) do
    Enum.reduce_while(1..3, nil, fn _, _ ->
      input = make.()
      before = atoms()
      run.(input)
      made = atoms() - before
      if made == 0, do: {:halt, 0}, else: {:cont, made}
    end)
  end

  # The first calls load code, whose atoms would count: make them first.
  setup do
    damaged =
      sealed(0, 2, raw_entry(fresh_atom_etf(fresh_text(0)), etf(1)) <> raw_entry(etf(2), <<131>>))

    {:error, :invalid_snapshot} = Store.restore(damaged)
    _ = damaged_last(2)
    :ok
  end

  describe "a rejected snapshot" do
    test "creates no atom: a good first entry with a fresh atom, a damaged second one" do
      make = fn ->
        for i <- 1..500 do
          sealed(
            0,
            2,
            raw_entry(fresh_atom_etf(fresh_text(i)), etf(:v)) <> raw_entry(etf(:k), <<131, 255>>)
          )
        end
      end

      assert atoms_made(make, &assert_all_invalid/1) == 0
    end

    test "creates no atom: 20,000 fresh atom keys, the last entry damaged" do
      run = fn b -> assert Store.restore(b) == {:error, :invalid_snapshot} end
      assert atoms_made(fn -> damaged_last(20_000) end, run) == 0
    end

    # The issue's crafted snapshot: 1.1M atom keys (32 MB) would exhaust
    # the default atom table (1,048,576).
    @tag :slow
    @tag timeout: 600_000
    test "creates no atom: 1.1M fresh atom keys, the last entry damaged" do
      run = fn b -> assert Store.restore(b) == {:error, :invalid_snapshot} end
      assert atoms_made(fn -> damaged_last(1_100_000) end, run) == 0
    end

    test "creates no atom when the damage is in an atom's own text" do
      bad_utf8 = <<131, 119, 2, 0xC3, 0x28>>
      too_long = <<131, 100, 256::16, :binary.copy("a", 256)::binary>>

      make = fn ->
        for bad <- [bad_utf8, too_long, <<131, 119, 5, "abc">>] do
          sealed(0, 2, raw_entry(fresh_atom_etf(fresh_text(1)), etf(1)) <> raw_entry(bad, etf(2)))
        end
      end

      assert atoms_made(make, &assert_all_invalid/1) == 0
    end
  end

  describe "an accepted snapshot" do
    test "creates the atoms it holds, in keys and values, nested anywhere" do
      placeholder = :gn_placeholder_atom_xx
      text = fresh_text(0) |> String.pad_trailing(byte_size("gn_placeholder_atom_xx"), "y")
      text = binary_part(text, 0, byte_size("gn_placeholder_atom_xx"))

      value =
        {placeholder, self(), make_ref(), fn -> :ok end, %{placeholder => [1 | 2]}, 1 <<< 100,
         <<1::3>>, 1.5}

      swap = fn etf -> :binary.replace(etf, "gn_placeholder_atom_xx", text, [:global]) end
      binary = sealed(1, 1, raw_entry(swap.(etf({:k, placeholder})), swap.(etf(value))))

      assert_raise ArgumentError, fn -> String.to_existing_atom(text) end
      assert {:ok, store} = Store.restore(binary)
      fresh = String.to_existing_atom(text)

      assert [{{:k, ^fresh}, {^fresh, pid, _ref, fun, map, big, <<1::3>>, 1.5}}] =
               Store.to_list(store)

      assert pid == self() and is_function(fun, 0) and map == %{fresh => [1 | 2]} and
               big == 1 <<< 100
    end

    test "a map or struct with several atom keys the node knows, and a fresh atom, is restored" do
      placeholder = :gn_placeholder_atom_yy
      text = binary_part(fresh_text(0) <> String.duplicate("y", 22), 0, 22)
      value = %{ok: placeholder, error: 2, __struct__: URI, scheme: "x"}
      swap = fn etf -> :binary.replace(etf, "gn_placeholder_atom_yy", text, [:global]) end
      binary = sealed(0, 1, raw_entry(etf(:k), swap.(etf(value))))

      assert_raise ArgumentError, fn -> String.to_existing_atom(text) end
      assert {:ok, store} = Store.restore(binary)
      fresh = String.to_existing_atom(text)
      assert Store.get(store, :k) == %{ok: fresh, error: 2, __struct__: URI, scheme: "x"}
    end

    # A struct of a module this node has not loaded: its field names are
    # atoms it does not know. Each map's unknown keys are all fresh, so the
    # check must keep them apart; differential with binary_to_term/1.
    test "maps with several unknown atom keys (small and large maps, a struct) are restored" do
      for keys <- [2, 3, 32, 33, 200] do
        texts = for i <- 1..keys, do: fresh_text(i)
        struct_text = "Elixir.GnUnloaded#{System.unique_integer([:positive])}"

        fields = for t <- texts, into: <<>>, do: <<119, byte_size(t), t::binary, 97, 1>>

        map_etf =
          <<131, 116, keys + 1::32, fields::binary, 119, 10, "__struct__", 119,
            byte_size(struct_text), struct_text::binary>>

        assert {:ok, store} = Store.restore(sealed(0, 1, raw_entry(etf(:k), map_etf)))
        assert Store.get(store, :k) == :erlang.binary_to_term(map_etf)
        assert map_size(Store.get(store, :k)) == keys + 1
      end
    end

    test "an unknown atom key beside a key equal to its text, or to '', is kept apart" do
      text = fresh_text(0)
      atom = binary_part(fresh_atom_etf(text), 1, byte_size(text) + 2)
      text_etf = binary_part(etf(text), 1, byte_size(text) + 5)
      map_etf = <<131, 116, 3::32, atom::binary, 97, 1, text_etf::binary, 97, 2, 119, 0, 97, 3>>

      assert {:ok, store} = Store.restore(sealed(0, 1, raw_entry(etf(:k), map_etf)))
      fresh = String.to_existing_atom(text)
      assert Store.get(store, :k) == %{fresh => 1, text => 2, :"" => 3}
    end

    test "one unknown atom spelled twice (Latin-1 and UTF-8) as two keys of a map: refused, as binary_to_term does" do
      text = fresh_text(0) <> "é"
      latin1 = :unicode.characters_to_binary(text, :utf8, :latin1)

      map_etf =
        <<131, 116, 2::32, 100, byte_size(latin1)::16, latin1::binary, 97, 1, 119,
          byte_size(text), text::binary, 97, 2>>

      run = fn b -> assert Store.restore(b) == {:error, :invalid_snapshot} end
      assert atoms_made(fn -> sealed(0, 1, raw_entry(etf(:k), map_etf)) end, run) == 0
      # the same entry with the two spellings of one known atom, for comparison
      known = <<131, 116, 2::32, 100, 2::16, "ok", 97, 1, 119, 2, "ok", 97, 2>>
      assert_raise ArgumentError, fn -> :erlang.binary_to_term(known) end
      assert Store.restore(sealed(0, 1, raw_entry(etf(:k), known))) == {:error, :invalid_snapshot}
    end

    test "an external pid on an unknown node is restored" do
      node_text = "gn_#{System.unique_integer([:positive])}@nohost"
      <<131, 88, rest::binary>> = etf(self())
      {_node, tail} = split_atom(rest)
      pid_etf = <<131, 88, 119, byte_size(node_text), node_text::binary, tail::binary>>
      assert {:ok, store} = Store.restore(sealed(0, 1, raw_entry(etf(:pid), pid_etf)))
      assert node(Store.get(store, :pid)) == String.to_existing_atom(node_text)
    end
  end

  describe "safe: true" do
    test "refuses unknown atoms, creating none; known atoms are fine" do
      make = fn -> sealed(0, 1, raw_entry(fresh_atom_etf(fresh_text(1)), etf(:v))) end
      run = fn b -> assert Store.restore(b, safe: true) == {:error, :unsafe_snapshot} end
      assert atoms_made(make, run) == 0

      {:ok, store} = Store.new(:set)
      :ok = Store.put(store, :known, {:also_known, [1, 2]})
      assert {:ok, copy} = Store.restore(Store.snapshot(store), safe: true)
      assert Store.to_list(copy) == [known: {:also_known, [1, 2]}]
    end

    test "a damaged snapshot is still :invalid_snapshot" do
      binary = sealed(0, 2, raw_entry(etf(:k), etf(:v)) <> raw_entry(etf(:j), <<131, 1>>))
      assert Store.restore(binary, safe: true) == {:error, :invalid_snapshot}
    end

    test "a non-boolean :safe raises ArgumentError" do
      assert_raise ArgumentError, ~r/:safe/, fn -> Store.restore(<<>>, safe: :yes) end
    end
  end

  test "a restore that would make more atoms than the table has left: {:error, :system_limit}" do
    texts = for i <- 1..5, do: fresh_text(i)
    body = for t <- texts, into: <<>>, do: raw_entry(fresh_atom_etf(t), etf(t))
    binary = sealed(0, 5, body)
    # warm up: the first call may load code (whose atoms would count)
    {:error, :system_limit} = Native.store_restore(binary, nil, :protected, :owner, :infinity, 0)

    run = fn b ->
      assert Native.store_restore(b, nil, :protected, :owner, :infinity, 4) ==
               {:error, :system_limit}
    end

    assert atoms_made(fn -> binary end, run) == 0
    assert {:ok, _} = Native.store_restore(binary, nil, :protected, :owner, :infinity, 5)
    for t <- texts, do: assert(is_atom(String.to_existing_atom(t)))
  end

  defp split_atom(<<119, len, text::binary-size(len), tail::binary>>), do: {text, tail}
  defp split_atom(<<100, len::16, text::binary-size(len), tail::binary>>), do: {text, tail}
end
