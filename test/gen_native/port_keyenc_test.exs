defmodule GenNative.PortKeyencTest do
  # The port program's canonical key encoding (c_src/port/keyenc.c), through
  # its `encode_key` op (c_src/port/PROTOCOL.md), against the VM itself: for
  # any two keys A and B,
  #
  #   - the GN_KEY_EQ encodings compare (as binaries, i.e. memcmp) as A and
  #     B compare in Erlang term order, and are equal exactly when A == B;
  #   - the GN_KEY_EXACT encodings are equal exactly when A =:= B, and
  #     compare as A and B compare as map keys (%{A => 0} vs %{B => 0}:
  #     integers before floats, how a map orders its keys).
  #
  # Keys come from PropEr generators over a pool of awkward terms (numbers
  # where integers and floats meet, 0.0 and -0.0, bignums, atoms with NUL
  # and non-ASCII characters, bitstrings, pids, refs and ports of other
  # nodes, funs, large maps), and some as hand-made external formats the VM
  # never writes but reads (a string as a list, an unnormalised bignum, a
  # map's keys out of order), which must encode like the VM's own.
  use ExUnit.Case, async: true

  import Bitwise

  import GenNative.PortProtocol, only: [close: 1]

  alias GenNative.PortProtocol

  @moduletag :port

  # GN_PROP_NUMTESTS overrides the number of test cases.
  @numtests String.to_integer(System.get_env("GN_PROP_NUMTESTS", "200"))

  ## The program

  defp open_program do
    {port, _info} = PortProtocol.open()
    port
  end

  defp ext(term) do
    <<131, e::binary>> = :erlang.term_to_binary(term)
    e
  end

  # A request whose key is given as its external format (without 131).
  defp request(tag, key_ext, mode) do
    <<131, 104, 5, ext(tag)::binary, ext(:encode_key)::binary, ext(nil)::binary, key_ext::binary,
      ext(mode)::binary>>
  end

  # Sends every {key_ext, mode} at once, then collects the replies (any
  # order): a list of the replies' payload terms, in request order.
  defp encode_all(port, requests) do
    requests
    |> Enum.with_index()
    |> Enum.each(fn {{key_ext, mode}, i} -> Port.command(port, request(i, key_ext, mode)) end)

    replies = collect(port, length(requests), %{})
    for i <- 0..(length(requests) - 1)//1, do: Map.fetch!(replies, i)
  end

  defp collect(_port, 0, acc), do: acc

  defp collect(port, n, acc) do
    assert_receive {^port, {:data, <<len::16, tag::binary-size(len), payload::binary>>}}, 10_000

    collect(
      port,
      n - 1,
      Map.put(acc, :erlang.binary_to_term(tag), :erlang.binary_to_term(payload))
    )
  end

  # {eq, exact} encodings of each key.
  defp encodings(port, keys) do
    exts = Enum.map(keys, &ext/1)
    replies = encode_all(port, Enum.flat_map(exts, &[{&1, :eq}, {&1, :exact}]))

    for [eq, exact] <- Enum.chunk_every(replies, 2) do
      assert is_binary(eq) and is_binary(exact), "encode_key failed: #{inspect({eq, exact})}"
      {eq, exact}
    end
  end

  ## Checking

  defp cmp(a, b) do
    cond do
      a == b -> 0
      a < b -> -1
      true -> 1
    end
  end

  # How the VM orders a and b as map keys.
  defp key_cmp(a, b), do: cmp(%{a => 0}, %{b => 0})

  # Every pair that breaks the encoding's contract.
  defp violations(keys, encs) do
    items = Enum.zip(keys, encs) |> List.to_tuple()
    n = tuple_size(items)

    for i <- 0..(n - 1)//1,
        j <- i..(n - 1)//1,
        {a, {eq_a, ex_a}} <- [elem(items, i)],
        {b, {eq_b, ex_b}} <- [elem(items, j)],
        v <- pair_violations(a, b, eq_a, eq_b, ex_a, ex_b),
        do: v
  end

  defp pair_violations(a, b, eq_a, eq_b, ex_a, ex_b) do
    order = cmp(a, b)

    [
      cmp(eq_a, eq_b) != order && {:eq_order, a, b, order, eq_a, eq_b},
      ex_a == ex_b != (a === b) && {:exact_identity, a, b, ex_a, ex_b},
      cmp(ex_a, ex_b) != key_cmp(a, b) && {:exact_order, a, b, key_cmp(a, b), ex_a, ex_b}
    ]
    |> Enum.filter(& &1)
  end

  ## Keys

  defp minus_zero, do: :erlang.binary_to_term(<<131, 70, 1::1, 0::63>>)

  defp numbers do
    p53 = 1 <<< 53
    p70 = 1 <<< 70

    [
      0,
      0.0,
      minus_zero(),
      1,
      1.0,
      -1,
      -1.0,
      0.5,
      -0.5,
      2,
      2.0,
      255,
      256,
      p53,
      p53 + 1,
      p53 - 1,
      p53 * 1.0,
      (p53 + 2) * 1.0,
      p53 + 2,
      (1 <<< 63) - 1,
      1 <<< 63,
      -(1 <<< 63),
      (1 <<< 64) - 1,
      1 <<< 64,
      -(1 <<< 64),
      18_446_744_073_709_551_616.0,
      p70,
      p70 + 1,
      -p70,
      1.1805916207174113e21,
      -1.1805916207174113e21,
      1.0e300,
      -1.0e300,
      trunc(1.0e300),
      trunc(1.0e300) + 1,
      trunc(1.0e300) - 1,
      1 <<< 996,
      1 <<< 997,
      (1 <<< 997) + 1,
      1 <<< 1100,
      -(1 <<< 1100),
      1.7976931348623157e308,
      -1.7976931348623157e308,
      trunc(1.7976931348623157e308),
      5.0e-324,
      -5.0e-324,
      2.2250738585072014e-308,
      2.225073858507201e-308,
      0.1,
      0.30000000000000004,
      576_460_752_303_423_487,
      576_460_752_303_423_488,
      -576_460_752_303_423_489
    ]
  end

  defp atoms do
    [
      :a,
      :b,
      :z,
      :"",
      true,
      false,
      nil,
      :A,
      :aa,
      :ab,
      :é,
      :ÿ,
      :Ā,
      :日本,
      String.to_atom(<<0>>),
      String.to_atom("a" <> <<0>>),
      String.to_atom("a" <> <<1>>),
      String.to_atom(String.duplicate("x", 255)),
      :nonode@nohost
    ]
  end

  defp bitstrings do
    [
      <<>>,
      <<0>>,
      <<0, 0>>,
      <<1>>,
      "a",
      "ab",
      "a" <> <<0>>,
      <<255>>,
      <<255, 0>>,
      <<1::3>>,
      <<32>>,
      <<31>>,
      <<0::1>>,
      <<1::1>>,
      <<0::7>>,
      <<0::9>>,
      <<127::7>>,
      <<255, 0::1>>,
      <<255, 1::1>>,
      <<"abc", 5::3>>,
      <<0, 0::3>>,
      String.duplicate("x", 100)
    ]
  end

  defp atom_ext(name) do
    bin = Atom.to_string(name)
    <<119, byte_size(bin), bin::binary>>
  end

  defp pid(node, id, serial, creation),
    do:
      :erlang.binary_to_term(
        <<131, 88, atom_ext(node)::binary, id::32, serial::32, creation::32>>
      )

  # three words, the high one nonzero: OTP 25 itself crashes or disagrees with
  # itself on shorter and longer references of other nodes in large maps
  defp ref(node, creation, [_, _, _] = ids) do
    words = for id <- ids, into: <<>>, do: <<id::32>>

    :erlang.binary_to_term(
      <<131, 90, 3::16, atom_ext(node)::binary, creation::32, words::binary>>
    )
  end

  defp port(node, id, creation),
    do: :erlang.binary_to_term(<<131, 120, atom_ext(node)::binary, id::64, creation::32>>)

  defp closures(x) do
    [fn -> x end, fn -> {x} end, fn a -> {a, x} end, fn -> :none end]
  end

  # Pids, references, ports and funs, local and of other nodes.
  defp identities(ports) do
    nodes = [:a@b, :b@a, :nonode@nohost, :aa@b, :é@x]
    pids = for _ <- 1..4, do: spawn(fn -> :ok end)
    refs = for _ <- 1..4, do: make_ref()

    foreign =
      for node <- nodes,
          {id, serial, creation} <- [{0, 0, 1}, {5, 1, 1}, {5, 1, 3}, {1 <<< 16, 0, 1 <<< 31}],
          do: pid(node, id, serial, creation)

    foreign_refs =
      for node <- nodes,
          creation <- [1, 1 <<< 31],
          ids <- [[1, 2, 3], [3, 2, 1], [0, 0, 5], [7, 0, 5], [1 <<< 31, 5, 9]],
          do: ref(node, creation, ids)

    foreign_ports =
      for node <- nodes,
          {id, creation} <- [{0, 1}, {5, 3}, {1 <<< 40, 1}, {(1 <<< 64) - 1, 1 <<< 31}],
          do: port(node, id, creation)

    funs =
      closures(1) ++
        closures(1.0) ++
        closures(2) ++
        closures(:a) ++
        [&Kernel.+/2, &Enum.map/2, &:lists.map/2, &:lists.foldl/3, &:lists.filter/2] ++
        [:erlang.make_fun(:a, :zz, 0)]

    [self() | pids] ++ refs ++ ports ++ foreign ++ foreign_refs ++ foreign_ports ++ funs
  end

  defp pool(ports) do
    numbers() ++ atoms() ++ bitstrings() ++ identities(ports) ++ [[], {}, %{}, [1 | 2], "ab"]
  end

  defp leaf(pool) do
    :proper_types.frequency([
      # exactly/1: a bare list or tuple among the choices would be read as a type
      {8, :proper_types.elements(Enum.map(pool, &:proper_types.exactly/1))},
      {2, :proper_types.integer()},
      {1, :proper_types.integer(-(1 <<< 80), 1 <<< 80)},
      {2, :proper_types.float()},
      {1, :proper_types.bind(:proper_types.integer(), &(&1 * 1.0), false)},
      {1, :proper_types.bind(:proper_types.integer(-1100, 1100), &power/1, false)},
      {1, :proper_types.binary()},
      {1, :proper_types.bitstring()}
    ])
  end

  # ±2^|e|, as an integer or a float, or the odd integer just above it.
  defp power(e) when e < 0, do: -power(-e)
  defp power(e) when rem(e, 3) == 0 and e < 1024, do: :math.pow(2, e)
  defp power(e) when rem(e, 3) == 1, do: (1 <<< e) + 1
  defp power(e), do: 1 <<< e

  defp key(pool, 0), do: leaf(pool)

  defp key(pool, depth) do
    sub = key(pool, depth - 1)
    leaf = leaf(pool)

    :proper_types.frequency([
      {6, leaf},
      {2, few(sub)},
      {2, :proper_types.bind(few(sub), &List.to_tuple/1, false)},
      {1, :proper_types.bind({few(sub), leaf}, &improper/1, false)},
      {2, :proper_types.bind(few({sub, sub}), &Map.new/1, false)},
      {1, :proper_types.bind(:proper_types.vector(40, {leaf, leaf}), &Map.new/1, false)},
      {1, :proper_types.list(:proper_types.integer(0, 255))},
      {1, :proper_types.bind({sub, :proper_types.integer(0, 3)}, &closure/1, false)}
    ])
  end

  # 0 to 4 of a type: containers stay small however deep they nest
  defp few(type),
    do: :proper_types.bind(:proper_types.integer(0, 4), &:proper_types.vector(&1, type), false)

  defp closure({x, i}), do: Enum.at(closures(x), i)

  defp improper({[], tail}), do: [tail | tail]
  defp improper({list, tail}), do: list ++ tail

  # n values of a type, as PropEr makes them for a property's cases
  # (:proper_gen.pick/2 warns about values that hold funs)
  defp generate(type, n) do
    collect = fn value ->
      Process.put(:gn_keyenc_generated, [value | Process.get(:gn_keyenc_generated, [])])
      true
    end

    true =
      :proper.quickcheck(:proper.forall(type, collect), [
        {:numtests, n},
        {:max_size, 30},
        {:on_output, fn _, _ -> :ok end}
      ])

    Process.delete(:gn_keyenc_generated)
  end

  ## Tests

  setup do
    port = open_program()
    cats = for _ <- 1..2, do: Port.open({:spawn, "cat"}, [])

    on_exit(fn ->
      close(port)
      Enum.each(cats, &close/1)
    end)

    %{port: port, pool: pool(cats)}
  end

  @tag timeout: 300_000
  test "encodings follow term order, == and =:= for random keys", %{port: port, pool: pool} do
    property =
      :proper.forall(:proper_types.list(key(pool, 3)), fn keys ->
        # an exception must not escape: PropEr 1.2 cannot report one on OTP 25
        bad =
          try do
            violations(keys, encodings(port, keys))
          catch
            kind, reason -> [{:raised, Exception.format(kind, reason, __STACKTRACE__)}]
          end

        :proper.whenfail(
          fn -> IO.puts("\n#{inspect(Enum.take(bad, 5), pretty: true, limit: :infinity)}") end,
          fn -> bad == [] end
        )
      end)

    GenNative.PropCheck.check(property, numtests: @numtests, max_size: 40)
  end

  @tag timeout: 300_000
  test "every pair of a large batch of keys, and of the pool", %{port: port, pool: pool} do
    batch = generate(key(pool, 3), 500)
    assert length(batch) == 500
    keys = pool ++ batch
    encs = encodings(port, keys)
    assert violations(keys, encs) |> Enum.take(5) == []
    # the pool holds 1 and 1.0, 0.0 and -0.0, {1} and {1.0}: spot checks
    [one, one_f, zero, zero_f, minus_zero] = encodings(port, [1, 1.0, 0, 0.0, minus_zero()])

    assert elem(one, 0) == elem(one_f, 0) and elem(one, 1) != elem(one_f, 1)
    assert elem(zero_f, 0) == elem(minus_zero, 0) and elem(zero_f, 1) == elem(minus_zero, 1)
    assert elem(zero, 0) == elem(zero_f, 0)
  end

  test "the same fun made by two processes is one key", %{port: port} do
    parent = self()
    spawn(fn -> send(parent, {:fun, hd(closures(7))}) end)
    assert_receive {:fun, theirs}
    ours = hd(closures(7))
    assert ours === theirs and :erlang.term_to_binary(ours) != :erlang.term_to_binary(theirs)
    assert [same, same] = encodings(port, [ours, theirs])
  end

  test "external formats the VM never writes encode like the VM's own", %{port: port} do
    big_map = Map.new(1..40, &{&1, -&1})

    reversed_big_map =
      <<116, 40::32>> <>
        for {k, v} <- Enum.reverse(Enum.sort(big_map)), into: <<>>, do: ext(k) <> ext(v)

    cases = [
      {~c"ab", <<108, 2::32, 97, 97, 97, 98, 106>>},
      {[1, 2], <<108, 1::32, 97, 1, 108, 1::32, 97, 2, 106>>},
      {[1 | 2], <<108, 1::32, 97, 1, 98, 2::32>>},
      {[], <<108, 0::32, 106>>},
      {5, <<98, 5::32>>},
      {5, <<110, 1, 0, 5>>},
      {5, <<110, 3, 0, 5, 0, 0>>},
      {5, <<111, 1::32, 0, 5>>},
      {-5, <<110, 1, 1, 5>>},
      {0, <<110, 2, 1, 0, 0>>},
      {1 <<< 70, <<111, 12::32, 0, 0::64, 64, 0, 0, 0>>},
      {:é, <<100, 1::16, 233>>},
      {:é, <<115, 1, 233>>},
      {:é, <<118, 2::16, 195, 169>>},
      {:a, <<100, 1::16, 97>>},
      {{1}, <<105, 1::32, 97, 1>>},
      {<<7::3>>, <<77, 1::32, 3, 255>>},
      {"ab", <<77, 2::32, 8, 97, 98>>},
      {%{1 => :a, 2 => :b}, <<116, 2::32, 97, 2, 119, 1, ?b, 97, 1, 119, 1, ?a>>},
      {big_map, reversed_big_map}
    ]

    for {term, etf} <- cases do
      assert :erlang.binary_to_term(<<131, etf::binary>>) === term
    end

    replies =
      encode_all(
        port,
        for({term, etf} <- cases, mode <- [:eq, :exact], e <- [ext(term), etf], do: {e, mode})
      )

    for {{term, _}, [a, b, c, d]} <- Enum.zip(cases, Enum.chunk_every(replies, 4)) do
      assert {a, c} == {b, d}, "#{inspect(term)}: #{inspect({a, b, c, d})}"
      assert is_binary(a) and is_binary(c)
    end
  end

  test "malformed or unsupported keys are refused with badarg", %{port: port} do
    deep = Enum.reduce(1..10_001, :a, fn _, acc -> [acc] end)

    bad = [
      # FLOAT_EXT, the old string format
      <<99>> <> String.pad_trailing("1.5e+00", 31, <<0>>),
      # a map with the same key twice
      <<116, 2::32, 97, 1, 97, 1, 97, 1, 97, 2>>,
      # NaN
      <<70, 0x7FF8::16, 0::48>>,
      # an atom of invalid UTF-8
      <<119, 1, 200>>,
      # nested deeper than the program allows
      ext(deep)
    ]

    for reply <- encode_all(port, for(e <- bad, do: {e, :eq})) do
      assert {:error, {:badarg, _}} = reply
    end

    # still there
    assert [{_, _}] = encodings(port, [:ok])
  end
end
