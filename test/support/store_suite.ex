defmodule GenNative.StoreSuite do
  @moduledoc false
  # The functional behaviour of GenNative.Store, written once and run against
  # each backend:
  #
  #     use GenNative.StoreSuite, backend: :nif
  #     use GenNative.StoreSuite, backend: :port
  #
  # The :port variant starts a GenNative.Port (in memory) in setup_all. Every
  # test gets `backend` in its context (:nif or {:port, port_name}) and makes
  # its stores with new/3 and restore/3 below, under unique names. What only
  # one backend has (access, lifetime, owners, memory, scheduling; the port's
  # program and protocol) is tested in store_test.exs and port_test.exs.

  import Bitwise

  alias GenNative.Store

  defmacro __using__(opts) do
    backend = Keyword.fetch!(opts, :backend)
    setup = setup_all(backend)

    quote do
      import Bitwise
      import GenNative.StoreSuite
      import GenNative.TestHelpers, only: [wait_until: 2]

      alias GenNative.Store

      unquote(setup)
      unquote(tests())
    end
  end

  defp setup_all(:nif) do
    quote do
      setup_all do
        %{backend: :nif}
      end
    end
  end

  defp setup_all(:port) do
    quote do
      setup_all do
        name = :"gn_store_suite_port_#{System.unique_integer([:positive])}"
        start_supervised!({GenNative.Port, name: name})
        %{backend: {:port, name}}
      end
    end
  end

  ## Helpers for the suite and the backend-specific tests

  def unique_name, do: :"gn_store_test_#{System.unique_integer([:positive])}"

  @doc "Store.new/2 on `backend`; a port store gets a unique name unless given one."
  def new(backend, type, opts \\ []), do: Store.new(type, with_backend(backend, opts))

  @doc "new/3, which must succeed."
  def new!(backend, type, opts \\ []) do
    {:ok, store} = new(backend, type, opts)
    store
  end

  @doc "Store.restore/2 on `backend`."
  def restore(backend, binary, opts \\ []), do: Store.restore(binary, with_backend(backend, opts))

  defp with_backend(:nif, opts), do: opts

  defp with_backend(backend, opts) when is_list(opts) do
    if Keyword.keyword?(opts) and not Keyword.has_key?(opts, :name),
      do: opts ++ [backend: backend, name: unique_name()],
      else: opts ++ [backend: backend]
  end

  # not a list: passed as is, to be rejected
  defp with_backend(_backend, opts), do: opts

  @doc "Whether `backend` holds a store named `name`."
  def exists?(:nif, name), do: Store.whereis(name) != nil

  def exists?({:port, port}, name),
    do: Enum.any?(GenNative.Port.stores(port), &match?({^name, _}, &1))

  @doc """
  Fills `store` (`:public`) with keys `1..n` and values `value.(key)`,
  100,000 at a time, each batch put from a process of its own so that the
  entries' terms do not stay on the caller's heap.
  """
  def fill(store, n, value) do
    1..n
    |> Enum.chunk_every(100_000)
    |> Enum.each(fn chunk ->
      Task.async(fn -> :ok = Store.put_many(store, for(i <- chunk, do: {i, value.(i)})) end)
      |> Task.await(120_000)
    end)
  end

  @doc "Runs fun in a process of its own: {:ok, result} or {:raised, exception}."
  def in_process(fun) do
    fn ->
      try do
        {:ok, fun.()}
      rescue
        e -> {:raised, e}
      end
    end
    |> Task.async()
    |> Task.await(60_000)
  end

  @doc "The exception fun raises, or {:returned, result}."
  def raised(fun) do
    {:returned, fun.()}
  rescue
    e -> e
  end

  @doc "Every public function that takes a store, with valid other arguments."
  def calls do
    [
      put: &Store.put(&1, :k, 1),
      put_ttl: &Store.put(&1, :k, 1, ttl: 60_000),
      put_new: &Store.put_new(&1, :k, 1),
      put_new_ttl: &Store.put_new(&1, :k, 1, ttl: 60_000),
      get: &Store.get(&1, :k),
      get_default: &Store.get(&1, :k, :default),
      fetch: &Store.fetch(&1, :k),
      member?: &Store.member?(&1, :k),
      delete_key: &Store.delete(&1, :k),
      take: &Store.take(&1, :k),
      update_counter: &Store.update_counter(&1, :n, 1),
      update_counter_default: &Store.update_counter(&1, :n, 1, 10),
      size: &Store.size/1,
      clear: &Store.clear/1,
      to_list: &Store.to_list/1,
      put_many: &Store.put_many(&1, [{:k, 1}, {:j, 2}]),
      info: &Store.info/1,
      snapshot: &Store.snapshot/1,
      first: &Store.first/1,
      last: &Store.last/1,
      next: &Store.next(&1, :k),
      prev: &Store.prev(&1, :k),
      range: &Store.range(&1, :a, :z),
      range_limit: &Store.range(&1, :a, :z, 3),
      rank: &Store.rank(&1, :k),
      at: &Store.at(&1, 0),
      at_negative: &Store.at(&1, -1),
      at_huge: &Store.at(&1, 1 <<< 70),
      slice: &Store.slice(&1, 0, 2),
      delete: &Store.delete/1
    ]
  end

  @doc "The names in calls/0 that write."
  def writes do
    [:put, :put_ttl, :put_new, :put_new_ttl, :delete_key, :take, :update_counter] ++
      [:update_counter_default, :clear, :put_many, :delete]
  end

  @doc "The names in calls/0 that need an :ordered_set."
  def ordered_only do
    [:first, :last, :next, :prev, :range, :range_limit, :rank, :at, :at_negative] ++
      [:at_huge, :slice]
  end

  @doc "Options new/2 and restore/2 reject on every backend, and what the message must name."
  def invalid_options do
    [
      {[:name], "keyword"},
      {:not_a_list, "keyword"},
      {[foo: 1], ":foo"},
      {[name: "store"], ":name"},
      {[name: true], ":name"},
      {[name: 1], ":name"},
      {[max_size: 0], ":max_size"},
      {[max_size: -1], ":max_size"},
      {[max_size: 1.5], ":max_size"},
      {[max_size: nil], ":max_size"},
      {[max_size: :unlimited], ":max_size"}
    ]
  end

  @doc "Entries of every kind of term."
  def sample_entries do
    [
      {1, :one},
      {1.5, "one and a half"},
      {{:tuple, [1, 2]}, %{map: true}},
      {"binary", :binary.copy("x", 1000)},
      {:atom, self()},
      {[1 | 2], make_ref()},
      {<<1::3>>, -0.0},
      {1 <<< 80, [nested: {:list, []}]}
    ]
  end

  # A snapshot with a valid checksum around `body`.
  def sealed(type_byte, count, body) do
    data = <<"GNS2", type_byte, count::64, body::binary>>
    data <> <<:erlang.crc32(data)::32>>
  end

  def etf(term), do: :erlang.term_to_binary(term)

  # key, value, and the time to live left (0: none)
  def entry(k, v),
    do: <<byte_size(etf(k))::32, etf(k)::binary, byte_size(etf(v))::32>> <> etf(v) <> <<0::64>>

  ## The tests

  defp tests do
    quote do
      describe "put/4, get/3, fetch/2, member?/2, delete/2, take/2" do
        test "write and read any term, for both types", %{backend: b} do
          for type <- [:set, :ordered_set] do
            store = new!(b, type)

            for {k, v} <- sample_entries() do
              assert Store.put(store, k, v) == :ok
              assert Store.get(store, k) === v
              assert Store.fetch(store, k) === {:ok, v}
              assert Store.member?(store, k)
            end

            assert Store.get(store, :absent) == nil
            assert Store.get(store, :absent, :default) == :default
            assert Store.fetch(store, :absent) == :error
            refute Store.member?(store, :absent)

            assert Store.put(store, :k, :first) == :ok
            assert Store.put(store, :k, :second) == :ok
            assert Store.get(store, :k) == :second
            assert Store.take(store, :k) == {:ok, :second}
            assert Store.take(store, :k) == :error
            assert Store.delete(store, 1) == :ok
            assert Store.delete(store, 1) == :ok
            assert Store.fetch(store, 1) == :error
            assert Store.size(store) == length(sample_entries()) - 1
          end
        end

        test "a put replaces the key too, as ETS does", %{backend: b} do
          ordered = new!(b, :ordered_set)
          :ok = Store.put(ordered, 1, :int)
          :ok = Store.put(ordered, 1.0, :float)
          assert Store.to_list(ordered) === [{1.0, :float}]
          assert Store.put_new(ordered, 1, :again) == false
          assert Store.to_list(ordered) === [{1.0, :float}]
          assert Store.get(ordered, 1) == :float

          set = new!(b, :set)
          :ok = Store.put(set, 1, :int)
          :ok = Store.put(set, 1.0, :float)

          assert Enum.sort_by(Store.to_list(set), &:erlang.term_to_binary/1) ===
                   Enum.sort_by([{1, :int}, {1.0, :float}], &:erlang.term_to_binary/1)

          assert Store.get(set, 1) == :int
          assert Store.get(set, 1.0) == :float
        end
      end

      describe "put_new/4, update_counter/4 and max_size" do
        test "put_new/4 stores only an absent key", %{backend: b} do
          store = new!(b, :set)
          assert Store.put_new(store, :k, 1) == true
          assert Store.put_new(store, :k, 2) == false
          assert Store.get(store, :k) == 1
        end

        test "update_counter/4 adds, from the default when absent", %{backend: b} do
          store = new!(b, :ordered_set)
          assert Store.update_counter(store, :n, 1) == 1
          assert Store.update_counter(store, :n, 5) == 6
          assert Store.update_counter(store, :n, -10) == -4
          assert Store.update_counter(store, :m, 1, 100) == 101
          assert Store.to_list(store) == [{:m, 101}, {:n, -4}]
        end

        test "a new key beyond max_size gives {:error, :full}; replacing does not", %{backend: b} do
          store = new!(b, :ordered_set, max_size: 2)
          assert Store.put(store, :a, 1) == :ok
          assert Store.put(store, :b, 2) == :ok
          assert Store.put(store, :c, 3) == {:error, :full}
          assert Store.put_new(store, :c, 3) == {:error, :full}
          assert Store.update_counter(store, :c, 1) == {:error, :full}
          assert Store.put_many(store, [{:c, 3}]) == {:error, :full}
          assert Store.put(store, :a, 10) == :ok
          assert Store.put_new(store, :a, 10) == false
          assert Store.update_counter(store, :a, 1) == 11
          assert Store.put_many(store, [{:a, 0}, {:b, 0}, {:a, 1}]) == :ok
          assert Store.to_list(store) == [{:a, 1}, {:b, 0}]
          :ok = Store.delete(store, :b)
          assert Store.put_many(store, [{:c, 3}, {:c, 4}]) == :ok
          assert Store.to_list(store) == [{:a, 1}, {:c, 4}]
          :ok = Store.clear(store)
          assert Store.put_many(store, [{:x, 1}, {:y, 2}, {:z, 3}]) == {:error, :full}
          assert Store.size(store) == 0
        end

        test "put_many counts keys as the store matches them", %{backend: b} do
          ordered = new!(b, :ordered_set, max_size: 1)
          assert Store.put_many(ordered, [{1, :a}, {1.0, :b}]) == :ok
          assert Store.to_list(ordered) === [{1.0, :b}]

          set = new!(b, :set, max_size: 1)
          assert Store.put_many(set, [{1, :a}, {1.0, :b}]) == {:error, :full}
          assert Store.to_list(set) == []
        end

        test "update_counter/4 raises ArgumentError for a non-integer or 64-bit overflow",
             %{backend: b} do
          store = new!(b, :set)

          for value <- [1.0, :atom, "1", [1], 1 <<< 64, -(1 <<< 63) - 1] do
            :ok = Store.put(store, :k, value)
            assert_raise ArgumentError, fn -> Store.update_counter(store, :k, 1) end
            assert Store.get(store, :k) === value
          end

          :ok = Store.put(store, :k, (1 <<< 63) - 1)
          assert_raise ArgumentError, fn -> Store.update_counter(store, :k, 1) end
          assert Store.update_counter(store, :k, -1) == (1 <<< 63) - 2
          assert Store.update_counter(store, :new, 5, 10) == 15
          assert Store.update_counter(store, :new2, -1) == -1

          assert_raise ArgumentError, fn ->
            Store.update_counter(store, :new3, 1, (1 <<< 63) - 1)
          end

          assert Store.fetch(store, :new3) == :error
        end
      end

      describe "size/1, clear/1, to_list/1, put_many/2, info/1" do
        test "count, list and empty a store", %{backend: b} do
          for type <- [:set, :ordered_set] do
            store = new!(b, type)
            assert Store.size(store) == 0
            assert Store.to_list(store) == []
            entries = for i <- 1..100, do: {i, -i}
            assert Store.put_many(store, Enum.shuffle(entries)) == :ok
            assert Store.put_many(store, []) == :ok
            assert Store.size(store) == 100

            if type == :ordered_set,
              do: assert(Store.to_list(store) == entries),
              else: assert(Enum.sort(Store.to_list(store)) == entries)

            assert Store.clear(store) == :ok
            assert Store.size(store) == 0
            assert Store.to_list(store) == []
            assert Store.put(store, :after, :clear) == :ok
            assert Store.to_list(store) == [{:after, :clear}]
          end
        end

        test "put_many/2 keeps the last entry for a key, in list order", %{backend: b} do
          store = new!(b, :ordered_set)
          :ok = Store.put_many(store, [{:a, 1}, {:b, 2}, {:a, 3}])
          assert Store.to_list(store) == [{:a, 3}, {:b, 2}]
        end

        test "info/1 gives the type, size, memory, owner, name, access and lifetime",
             %{backend: b} do
          name = unique_name()
          store = new!(b, :ordered_set, name: name)
          :ok = Store.put_many(store, [{1, :a}, {2, :b}])

          assert %{type: :ordered_set, size: 2, name: ^name, memory: memory} =
                   info = Store.info(store)

          assert is_integer(memory) and memory > 0
          assert Map.has_key?(info, :owner)
          assert info.access in [:protected, :public]
          assert info.lifetime in [:owner, :named]

          assert %{type: :set, size: 0} = Store.info(new!(b, :set))
        end
      end

      describe "first/1, last/1, next/2, prev/2, range/4, rank/2, at/2, slice/3" do
        test "walk an :ordered_set in term order", %{backend: b} do
          store = new!(b, :ordered_set)
          assert Store.first(store) == :error
          assert Store.last(store) == :error
          assert Store.at(store, 0) == :error
          assert Store.slice(store, 0, 10) == []
          assert Store.range(store, 0, 10) == []

          entries = for i <- 1..10, do: {i * 10, i}
          :ok = Store.put_many(store, Enum.reverse(entries))

          assert Store.first(store) == {:ok, {10, 1}}
          assert Store.last(store) == {:ok, {100, 10}}
          assert Store.next(store, 10) == {:ok, {20, 2}}
          assert Store.next(store, 15) == {:ok, {20, 2}}
          assert Store.next(store, 100) == :error
          assert Store.prev(store, 20) == {:ok, {10, 1}}
          assert Store.prev(store, 10) == :error
          assert Store.prev(store, :atom) == {:ok, {100, 10}}
          assert Store.range(store, 25, 55) == [{30, 3}, {40, 4}, {50, 5}]
          assert Store.range(store, 25, 55, 2) == [{30, 3}, {40, 4}]
          assert Store.range(store, 25, 55, 0) == []
          assert Store.range(store, 55, 25) == []
          assert Store.rank(store, 10) == {:ok, 0}
          assert Store.rank(store, 40.0) == {:ok, 3}
          assert Store.rank(store, 41) == :error
          assert Store.at(store, 0) == {:ok, {10, 1}}
          assert Store.at(store, 9) == {:ok, {100, 10}}
          assert Store.at(store, 10) == :error
          assert Store.at(store, -1) == {:ok, {100, 10}}
          assert Store.at(store, -10) == {:ok, {10, 1}}
          assert Store.at(store, -11) == :error
          assert Store.at(store, 1 <<< 70) == :error
          assert Store.slice(store, 8, 5) == [{90, 9}, {100, 10}]
          assert Store.slice(store, -3, 2) == [{80, 8}, {90, 9}]
          assert Store.slice(store, 2, 0) == []
          assert Store.slice(store, 0, 1 <<< 70) == entries
          assert Store.slice(store, -(1 <<< 70), 1) == [{10, 1}]
        end

        test "on a :set they raise ArgumentError naming :ordered_set", %{backend: b} do
          store = new!(b, :set)
          :ok = Store.put(store, :k, 1)

          for {name, call} <- calls(), name in ordered_only() do
            error = assert_raise ArgumentError, fn -> call.(store) end
            assert error.message =~ ":ordered_set", "#{name}: #{error.message}"
          end

          assert Store.to_list(store) == [{:k, 1}]
        end
      end

      describe "bad arguments" do
        test "arguments of the wrong type are rejected before the store is touched",
             %{backend: b} do
          store = new!(b, :ordered_set)
          :ok = Store.put(store, :k, 1)

          rejected = [
            fn -> Store.update_counter(store, :k, 1.0) end,
            fn -> Store.update_counter(store, :k, :one) end,
            fn -> Store.update_counter(store, :k, 1, :zero) end,
            fn -> Store.update_counter(store, :k, 1 <<< 63) end,
            fn -> Store.update_counter(store, :k, -(1 <<< 63) - 1) end,
            fn -> Store.put_many(store, :not_a_list) end,
            fn -> Store.put_many(store, [{:a, 1}, :not_a_pair]) end,
            fn -> Store.put_many(store, [{:a, 1, 2}]) end,
            fn -> Store.put_many(store, [{:a, 1} | :improper]) end,
            fn -> Store.range(store, :a, :z, -1) end,
            fn -> Store.range(store, :a, :z, :all) end,
            fn -> Store.at(store, 1.0) end,
            fn -> Store.at(store, :first) end,
            fn -> Store.slice(store, 0, -1) end,
            fn -> Store.slice(store, :a, 1) end,
            fn -> restore(b, :not_a_binary) end,
            fn -> restore(b, <<1::3>>) end
          ]

          for fun <- rejected do
            error = raised(fun)

            assert match?(%ArgumentError{}, error),
                   "expected ArgumentError, got: #{inspect(error)}"
          end

          assert Store.to_list(store) == [{:k, 1}]
        end

        test "a store handle that went through term_to_binary still names the same store",
             %{backend: b} do
          store = new!(b, :set)
          :ok = Store.put(store, :k, :v)
          copy = :erlang.binary_to_term(:erlang.term_to_binary(store))

          # same node: either the same store, or a clean ArgumentError
          try do
            assert Store.get(copy, :k) == :v
          rescue
            ArgumentError -> :ok
          end
        end

        test "an invalid type or option to new/2 raises ArgumentError naming it", %{backend: b} do
          assert_raise ArgumentError, ~r/:set or :ordered_set/, fn -> new(b, :bag) end
          assert_raise ArgumentError, ~r/:set or :ordered_set/, fn -> new(b, "set") end

          for {opts, named} <- invalid_options() do
            error = assert_raise ArgumentError, fn -> new(b, :set, opts) end
            assert error.message =~ named, "#{inspect(opts)}: #{error.message}"
          end
        end

        test "an invalid option to restore/2 raises ArgumentError naming it, and makes no store",
             %{backend: b} do
          binary = Store.snapshot(new!(b, :set))

          for {opts, named} <- invalid_options() do
            error = assert_raise ArgumentError, fn -> restore(b, binary, opts) end
            assert error.message =~ named, "#{inspect(opts)}: #{error.message}"
          end
        end

        test "a max_size beyond 64 bits raises ArgumentError naming :max_size (or means no cap)",
             %{backend: b} do
          for max <- [1 <<< 64, 1 <<< 100] do
            case raised(fn -> new(b, :set, max_size: max) end) do
              %ArgumentError{message: message} ->
                assert message =~ ":max_size"

              # a cap no store can reach means no cap
              {:returned, {:ok, store}} ->
                assert :ok = Store.put(store, :k, :v)

              other ->
                flunk("max_size: #{max}: #{inspect(other)}")
            end
          end
        end

        test "the largest 64-bit max_size is accepted", %{backend: b} do
          assert {:ok, store} = new(b, :set, max_size: (1 <<< 64) - 1)
          assert Store.put(store, :k, 1) == :ok
        end
      end

      describe "deleted stores" do
        test "every function raises ArgumentError saying the store was deleted", %{backend: b} do
          for type <- [:set, :ordered_set] do
            store = new!(b, type)
            :ok = Store.put(store, :k, 1)
            :ok = Store.delete(store)

            for {name, call} <- calls() do
              error = assert_raise ArgumentError, fn -> call.(store) end
              assert error.message =~ "deleted", "#{type} #{name}: #{error.message}"
            end
          end
        end

        test "a deleted store gives its name up to a new, empty store", %{backend: b} do
          name = unique_name()
          store = new!(b, :set, name: name)
          :ok = Store.put(store, :k, :v)
          assert exists?(b, name)
          :ok = Store.delete(store)
          refute exists?(b, name)
          assert {:ok, again} = new(b, :ordered_set, name: name)
          assert Store.size(again) == 0
          assert Store.info(again).type == :ordered_set
        end
      end

      describe "snapshot/1 and restore/2" do
        test "round-trips every entry, for both types", %{backend: b} do
          for type <- [:set, :ordered_set] do
            store = new!(b, type)
            :ok = Store.put_many(store, sample_entries())
            binary = Store.snapshot(store)
            assert is_binary(binary)
            name = unique_name()

            assert {:ok, restored} = restore(b, binary, name: name)
            assert Store.to_list(restored) === Store.to_list(store)
            assert exists?(b, name)
            assert %{type: ^type, name: ^name, size: 8} = Store.info(restored)
            assert Store.snapshot(restored) == binary

            # the restored store is independent of the original
            :ok = Store.put(restored, :only_in_restored, 1)
            assert Store.size(store) == 8
          end
        end

        test "an empty store round-trips", %{backend: b} do
          store = new!(b, :ordered_set)
          assert {:ok, restored} = restore(b, Store.snapshot(store))
          assert Store.to_list(restored) == []
          assert Store.info(restored).type == :ordered_set
        end

        test "a restore beyond max_size gives {:error, :full} and no store", %{backend: b} do
          store = new!(b, :set)
          :ok = Store.put_many(store, sample_entries())
          name = unique_name()
          assert restore(b, Store.snapshot(store), name: name, max_size: 7) == {:error, :full}
          refute exists?(b, name)
          assert {:ok, restored} = restore(b, Store.snapshot(store), name: name, max_size: 8)
          assert Store.size(restored) == 8
        end

        test "a name in use gives {:error, :already_exists}", %{backend: b} do
          name = unique_name()
          held = new!(b, :set, name: name)
          :ok = Store.put(held, :held, 1)
          binary = Store.snapshot(new!(b, :set))
          assert restore(b, binary, name: name) == {:error, :already_exists}
          assert Store.to_list(held) == [{:held, 1}]
        end

        defp assert_invalid(b, binary, label) do
          name = unique_name()

          assert restore(b, binary, name: name) == {:error, :invalid_snapshot},
                 "#{label}: #{inspect(binary, limit: 40)}"

          refute exists?(b, name), label
        end

        test "a truncated snapshot is invalid and makes no store", %{backend: b} do
          store = new!(b, :ordered_set)
          :ok = Store.put_many(store, sample_entries())
          binary = Store.snapshot(store)
          size = byte_size(binary)

          for len <-
                Enum.uniq(
                  [0, 1, 3, 4, 5, 12, 13, 16, 17, 30, div(size, 2), size - 5] ++
                    [size - 4, size - 1]
                ),
              len < size do
            assert_invalid(b, binary_part(binary, 0, len), "truncated to #{len}")
          end

          assert_invalid(b, binary <> <<0>>, "one byte appended")
          assert_invalid(b, binary <> binary, "doubled")
        end

        test "a snapshot with any byte flipped is invalid and makes no store", %{backend: b} do
          store = new!(b, :set)
          :ok = Store.put_many(store, sample_entries())
          binary = Store.snapshot(store)

          # every offset of the header, the first entry and the checksum, and a
          # sample of the rest
          size = byte_size(binary)
          offsets = Enum.uniq(Enum.to_list(0..40) ++ Enum.to_list((size - 4)..(size - 1)))
          offsets = offsets ++ Enum.take_every(41..(size - 5), 7)

          for offset <- offsets, mask <- [0x01, 0x80, 0xFF] do
            <<before::binary-size(offset), byte, rest::binary>> = binary
            flipped = <<before::binary, Bitwise.bxor(byte, mask), rest::binary>>
            assert_invalid(b, flipped, "offset #{offset} xor #{mask}")
          end
        end

        test "a foreign binary is invalid and makes no store", %{backend: b} do
          store = new!(b, :set)
          :ok = Store.put(store, :k, :v)
          snapshot = Store.snapshot(store)

          for {label, binary} <- [
                {"empty", ""},
                {"magic only", "GNS2"},
                {"text", "not a snapshot at all, but long enough to have a header and a crc"},
                {"term_to_binary", :erlang.term_to_binary(Store.to_list(store))},
                {"random", :crypto.strong_rand_bytes(1000)},
                {"zeros", :binary.copy(<<0>>, 100)},
                {"another magic", "GNS1" <> binary_part(snapshot, 4, byte_size(snapshot) - 4)}
              ] do
            assert_invalid(b, binary, label)
          end
        end

        # Snapshots with a valid checksum but bad contents: what gets past the
        # checksum must still be checked entry by entry.
        test "a snapshot with a valid checksum but bad contents is invalid and makes no store",
             %{backend: b} do
          good = entry(:k, :v) <> entry(:j, "w")

          # our builder matches the real format
          store = new!(b, :ordered_set)
          :ok = Store.put_many(store, [{:j, "w"}, {:k, :v}])
          assert Store.snapshot(store) == sealed(1, 2, entry(:j, "w") <> entry(:k, :v))
          assert {:ok, ok} = restore(b, sealed(0, 2, good))
          assert Enum.sort(Store.to_list(ok)) == [{:j, "w"}, {:k, :v}]

          cases = [
            {"type 2", sealed(2, 2, good)},
            {"type 255", sealed(255, 2, good)},
            {"count too high", sealed(0, 3, good)},
            {"count 2^64-1", sealed(0, (1 <<< 64) - 1, good)},
            {"count too low", sealed(0, 1, good)},
            {"count 0 with entries", sealed(0, 0, good)},
            {"key length too long", sealed(0, 1, <<0xFFFFFFFF::32, etf(:k)::binary>>)},
            {"key length past the end",
             sealed(0, 1, <<100::32>> <> etf(:k) <> <<3::32, 131, 100, 0>>)},
            {"key length short", sealed(0, 1, <<2::32>> <> etf(:k) <> <<4::32>> <> etf(:v))},
            {"key not ETF", sealed(0, 1, <<3::32, 1, 2, 3, 4::32>> <> etf(:v))},
            {"value missing", sealed(0, 1, <<byte_size(etf(:k))::32>> <> etf(:k))},
            {"value not ETF",
             sealed(0, 1, <<byte_size(etf(:k))::32>> <> etf(:k) <> <<2::32, 131, 0>>)},
            {"value length too long",
             sealed(0, 1, <<byte_size(etf(:k))::32>> <> etf(:k) <> <<0xFFFFFFFF::32>>)},
            {"second entry broken", sealed(0, 2, entry(:k, :v) <> <<5::32, 131, 1, 2, 3, 4>>)}
          ]

          for {label, binary} <- cases, do: assert_invalid(b, binary, label)
        end

        test "entries restored from a snapshot keep their time to live", %{backend: b} do
          store = new!(b, :ordered_set)
          :ok = Store.put(store, :short, :v, ttl: 50)
          :ok = Store.put(store, :forever, :v)
          {:ok, restored} = restore(b, Store.snapshot(store))
          Process.sleep(100)
          assert Store.get(store, :short) == nil
          assert Store.get(restored, :short) == nil
          assert Store.to_list(restored) == [{:forever, :v}]
        end
      end

      describe "TTL" do
        # Entries put with ttl: @short are expired after sleep(@expired).
        @short 20
        @expired 60

        test "an expired entry is never returned by any function of an :ordered_set",
             %{backend: b} do
          store = new!(b, :ordered_set)
          :ok = Store.put_many(store, [{1, :kept}, {3, :kept}, {5, :kept}])
          :ok = Store.put(store, 7, :long, ttl: 600_000)

          for k <- [0, 2, 4, 6, 8],
              do: :ok = Store.put(store, k, :expiring, ttl: @short)

          :ok = Store.put(store, :counter, 100, ttl: @short)
          assert Store.get(store, 7) == :long
          Process.sleep(@expired)

          live = [{1, :kept}, {3, :kept}, {5, :kept}, {7, :long}]

          for k <- [0, 2, 4, 6, 8, :counter] do
            assert Store.get(store, k) == nil
            assert Store.get(store, k, :default) == :default
            assert Store.fetch(store, k) == :error
            refute Store.member?(store, k)
            assert Store.rank(store, k) == :error
          end

          assert Store.size(store) == 4
          assert Store.to_list(store) == live
          assert Store.info(store).size == 4
          assert Store.range(store, 0, 8) == live
          assert Store.range(store, 2, 4) == [{3, :kept}]
          assert Store.first(store) == {:ok, {1, :kept}}
          assert Store.last(store) == {:ok, {7, :long}}
          assert Store.next(store, 1) == {:ok, {3, :kept}}
          assert Store.next(store, 7) == :error
          assert Store.prev(store, 3) == {:ok, {1, :kept}}
          assert Store.prev(store, 1) == :error
          assert Store.rank(store, 3) == {:ok, 1}
          assert Store.at(store, 0) == {:ok, {1, :kept}}
          assert Store.at(store, -1) == {:ok, {7, :long}}
          assert Store.at(store, 4) == :error
          assert Store.slice(store, 1, 10) == Enum.drop(live, 1)
          assert {:ok, restored} = restore(b, Store.snapshot(store))
          assert Store.to_list(restored) == live

          assert Store.take(store, 2) == :error
          assert Store.put_new(store, 4, :new) == true
          assert Store.update_counter(store, :counter, 1) == 1
          assert Store.update_counter(store, 6, 1, 10) == 11

          assert Store.to_list(store) ==
                   [{1, :kept}, {3, :kept}, {4, :new}, {5, :kept}] ++
                     [{6, 11}, {7, :long}, {:counter, 1}]
        end

        test "an expired entry is never returned by any function of a :set", %{backend: b} do
          store = new!(b, :set)
          :ok = Store.put(store, :kept, 1)
          for k <- 1..5, do: :ok = Store.put(store, k, :expiring, ttl: @short)
          :ok = Store.put(store, :counter, 100, ttl: @short)
          Process.sleep(@expired)

          for k <- [1, 2, 3, :counter] do
            assert Store.get(store, k) == nil
            assert Store.fetch(store, k) == :error
            refute Store.member?(store, k)
          end

          assert Store.take(store, 4) == :error
          assert Store.size(store) == 1
          assert Store.to_list(store) == [{:kept, 1}]
          assert Store.put_new(store, 5, :new) == true
          assert Store.update_counter(store, :counter, 2) == 2
          assert Enum.sort(Store.to_list(store)) == [{5, :new}, {:counter, 2}, {:kept, 1}]
        end

        test "a put without :ttl makes an entry permanent, one with :ttl makes it expire",
             %{backend: b} do
          store = new!(b, :set)
          :ok = Store.put(store, :was_expiring, 1, ttl: @short)
          :ok = Store.put(store, :was_expiring, 2)
          :ok = Store.put(store, :was_permanent, 1)
          :ok = Store.put(store, :was_permanent, 2, ttl: @short)
          assert Store.put_new(store, :fresh, 1, ttl: @short) == true
          Process.sleep(@expired)
          assert Store.to_list(store) == [{:was_expiring, 2}]
        end

        test "expired entries do not count against max_size", %{backend: b} do
          store = new!(b, :ordered_set, max_size: 3)
          # long enough to be alive still at the first check, on a busy machine
          for k <- 1..3, do: :ok = Store.put(store, k, :v, ttl: 500)
          assert Store.put(store, 4, :v) == {:error, :full}
          Process.sleep(600)
          assert Store.put(store, 4, :v) == :ok
          assert Store.put_new(store, 5, :v) == true
          assert Store.put_many(store, [{6, :v}]) == :ok
          assert Store.to_list(store) == [{4, :v}, {5, :v}, {6, :v}]
        end

        test "expired entries do not count against max_size in update_counter/4",
             %{backend: b} do
          store = new!(b, :set, max_size: 1)
          :ok = Store.put(store, :a, 1, ttl: @short)
          Process.sleep(@expired)
          assert Store.update_counter(store, :b, 1) == 1
        end

        test "10k entries expiring at once: size, to_list and the ordered queries are right",
             %{backend: b} do
          for type <- [:set, :ordered_set] do
            store = new!(b, type)
            kept = for i <- 1..10, do: {{:kept, i}, i}
            :ok = Store.put_many(store, kept)
            for i <- 1..10_000, do: :ok = Store.put(store, i, i, ttl: @short)
            Process.sleep(@expired)
            assert Store.size(store) == 10
            assert Enum.sort(Store.to_list(store)) == kept
            assert Store.get(store, 5_000) == nil

            if type == :ordered_set do
              assert Store.at(store, 0) == {:ok, {{:kept, 1}, 1}}
              assert Store.rank(store, {:kept, 10}) == {:ok, 9}
              assert Store.first(store) == {:ok, {{:kept, 1}, 1}}
              assert Store.range(store, 0, 20_000) == []
            end
          end
        end

        test "10k expired entries are purged by any reader, from any process", %{backend: b} do
          store = new!(b, :ordered_set)
          for i <- 1..10_000, do: :ok = Store.put(store, i, i, ttl: @short)
          :ok = Store.put(store, :kept, 1)
          Process.sleep(@expired)
          assert in_process(fn -> Store.at(store, 0) end) == {:ok, {:ok, {:kept, 1}}}
          assert in_process(fn -> Store.size(store) end) == {:ok, 1}
        end

        test "an invalid :ttl raises ArgumentError", %{backend: b} do
          store = new!(b, :set)

          for ttl <- [0, -1, 1.5, :infinity, "10", nil, 1 <<< 62, 1 <<< 64, -(1 <<< 64)] do
            assert_raise ArgumentError, fn -> Store.put(store, :k, 1, ttl: ttl) end
            assert_raise ArgumentError, fn -> Store.put_new(store, :k, 1, ttl: ttl) end
          end

          assert Store.to_list(store) == []
        end

        test "an invalid :ttl or put option raises ArgumentError naming it", %{backend: b} do
          store = new!(b, :set)

          for ttl <- [0, -1, 1.5, :infinity] do
            assert_raise ArgumentError, ~r/:ttl/, fn -> Store.put(store, :k, 1, ttl: ttl) end
            assert_raise ArgumentError, ~r/:ttl/, fn -> Store.put_new(store, :k, 1, ttl: ttl) end
          end

          assert_raise ArgumentError, ~r/:tll/, fn -> Store.put(store, :k, 1, tll: 5) end
          assert_raise ArgumentError, ~r/:foo/, fn -> Store.put(store, :k, 1, ttl: 5, foo: 1) end
          assert_raise ArgumentError, fn -> Store.put(store, :k, 1, :not_a_list) end
          assert Store.to_list(store) == []
        end
      end

      describe "many readers, one writer" do
        @keys 64
        @rounds 301

        # The writer publishes the version it is about to write for a key in an
        # :atomics, then writes {key, version}: a reader that sees version v
        # for key k reads a published version >= v afterwards, and never sees a
        # version older than one it saw before.
        test "every read is :error or a value the writer wrote, versions never go back",
             %{backend: b} do
          for type <- [:set, :ordered_set] do
            store = new!(b, type)
            published = :atomics.new(@keys, [])
            done = :atomics.new(1, [])

            readers =
              for r <- 1..8 do
                Task.async(fn -> read_loop(store, type, published, done, r, 0, %{}) end)
              end

            for v <- 1..@rounds do
              if rem(v, 10) == 0 do
                for k <- 0..(@keys - 1), do: :atomics.put(published, k + 1, v)
                :ok = Store.put_many(store, for(k <- 0..(@keys - 1), do: {k, {k, v}}))
              else
                for k <- 0..(@keys - 1) do
                  :atomics.put(published, k + 1, v)

                  if rem(k + v, 5) == 0,
                    do: :ok = Store.delete(store, k),
                    else: :ok = Store.put(store, k, {k, v})
                end
              end
            end

            :atomics.put(done, 1, 1)

            for task <- readers do
              assert {:ok, reads} = Task.await(task, 120_000)
              assert reads > 0
            end

            # the last round writes key by key
            expected = for k <- 0..(@keys - 1), rem(k + @rounds, 5) != 0, do: {k, {k, @rounds}}

            assert Enum.sort(Store.to_list(store)) == expected
            assert Store.size(store) == length(expected)
          end
        end

        defp read_loop(store, type, published, done, r, n, seen) do
          loop(store, type, published, done, r, n, seen)
        catch
          bad -> {:bad, bad}
        end

        defp loop(store, type, published, done, r, n, seen) do
          cond do
            :atomics.get(done, 1) == 1 or n >= 200_000 ->
              {:ok, n}

            rem(n, 500) == 0 ->
              list = Store.to_list(store)

              if type == :ordered_set and list != Enum.sort(list),
                do: throw({:unsorted, list})

              seen =
                Enum.reduce(list, seen, fn {k, value}, seen ->
                  check(published, k, {:ok, value}, seen)
                end)

              loop(store, type, published, done, r, n + 1, seen)

            true ->
              k = rem(n * 7 + r, @keys)
              seen = check(published, k, Store.fetch(store, k), seen)
              loop(store, type, published, done, r, n + 1, seen)
          end
        end

        defp check(_published, _k, :error, seen), do: seen

        defp check(published, k, {:ok, {k, v}} = read, seen) when is_integer(v) and v > 0 do
          cond do
            v > :atomics.get(published, k + 1) -> throw({:not_yet_written, k, read})
            v < Map.get(seen, k, 0) -> throw({:went_back, k, read, Map.get(seen, k)})
            true -> Map.put(seen, k, v)
          end
        end

        defp check(_published, k, read, _seen), do: throw({:never_written, k, read})
      end

      describe "a million entries" do
        @n 1_000_000
        @tag timeout: 300_000
        test "put_many, to_list, range, slice, at and rank walk an :ordered_set correctly",
             %{backend: b} do
          entries = for i <- 1..@n, do: {i, -i}
          store = new!(b, :ordered_set)
          :ok = Store.put_many(store, Enum.shuffle(entries))
          assert Store.size(store) == @n
          assert Store.to_list(store) === entries
          assert Store.range(store, 250_000, 750_000) === Enum.slice(entries, 249_999, 500_001)
          assert Store.range(store, 0, @n + 1, 10) === Enum.take(entries, 10)

          assert Store.range(store, 500_000.5, 500_003) === [
                   {500_001, -500_001},
                   {500_002, -500_002},
                   {500_003, -500_003}
                 ]

          assert Store.slice(store, 600_000, 300_000) === Enum.slice(entries, 600_000, 300_000)
          assert Store.slice(store, -10, 100) === Enum.take(entries, -10)
          assert Store.at(store, 999_999) == {:ok, {1_000_000, -1_000_000}}
          assert Store.at(store, -@n) == {:ok, {1, -1}}
          assert Store.rank(store, 777_777) == {:ok, 777_776}
          assert Store.rank(store, 777_777.0) == {:ok, 777_776}

          # a second put_many over the same keys replaces them all
          :ok = Store.put_many(store, for(i <- 1..@n, do: {i, i}))
          assert Store.size(store) == @n
          assert Store.at(store, 123_456) == {:ok, {123_457, 123_457}}
          :ok = Store.delete(store)
        end

        @tag timeout: 300_000
        test "a :set of a million entries walks correctly", %{backend: b} do
          entries = for i <- 1..@n, do: {{:k, i}, "v#{i}"}
          store = new!(b, :set)
          :ok = Store.put_many(store, entries)
          assert Store.size(store) == @n
          assert Enum.sort(Store.to_list(store)) == entries
          assert Store.get(store, {:k, 424_242}) == "v424242"
          assert Store.get(store, {:k, 424_242.0}) == nil
          :ok = Store.delete(store)
        end
      end
    end
  end
end
