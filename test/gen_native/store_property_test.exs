defmodule GenNative.StoreModel do
  # A `:proper_statem` model of one GenNative.Store, used by the property
  # below.
  #
  # Every command runs twice: on the store under test and on the model, an
  # ETS table of the same type (a :set matches keys with =:=, an
  # :ordered_set with ==, and a put replaces the whole entry, key included).
  # For the ordered-set queries ETS lacks (rank, at, slice, range, first,
  # last, next, prev) the model answers from the table's sorted list
  # (`:ets.tab2list/1` of an ordered_set, in term order). A command returns
  # `{store_result, model_result}`, each `{:ok, result}` or `{:raise,
  # module}`, and the postcondition wants them `===` (to_list of a :set
  # compared sorted, its order being unspecified). The cap (`max_size`) is
  # modelled by counting the table's distinct keys.
  #
  # The statem state is only the configuration: type, cap and the key pool.
  #
  # The properties take the backend (:nif or {:port, port_name}): the store
  # under test is made on it, and the same model runs against both.
  @moduledoc false

  import Bitwise

  alias GenNative.Store

  @ctx :gn_store_property_ctx
  @default :gn_store_property_default

  ## Configuration and generators

  @doc "A store configuration: type and cap."
  def config do
    :proper_types.tuple([
      :proper_types.elements([:set, :ordered_set]),
      :proper_types.frequency([{2, :infinity}, {1, :proper_types.integer(1, 6)}])
    ])
  end

  @doc """
  Keys that collide under == but not =:= (1 and 1.0, {1} and {1.0}, 0.0 and
  -0.0, 2^70 and its float), and one of each kind of term.
  """
  def key_pool(pid, ref) do
    [
      1,
      1.0,
      2,
      0.0,
      -0.0,
      {1},
      {1.0},
      1 <<< 70,
      1.1805916207174113e21,
      -(1 <<< 64),
      "a",
      "",
      :binary.copy("x", 100),
      <<1::3>>,
      {:a, "b"},
      :a,
      nil,
      pid,
      ref,
      [1, 2],
      [1.0, 2],
      [1 | 2],
      [],
      %{a: 1},
      %{1 => :x},
      %{1.0 => :x},
      Map.new(1..40, &{&1, &1}),
      &Kernel.+/2
    ]
  end

  defp key(keys), do: :proper_types.elements(keys)

  defp value(keys) do
    :proper_types.frequency([
      {4, :proper_types.integer()},
      {1, :proper_types.elements([(1 <<< 63) - 1, -(1 <<< 63), 1 <<< 63, 1 <<< 100])},
      {1, :proper_types.float()},
      {1, :proper_types.binary()},
      {1, key(keys)},
      {1, :proper_types.list(:proper_types.integer())},
      {1, :proper_types.tuple([key(keys), :proper_types.integer()])},
      {1,
       :proper_types.bind(
         :proper_types.list(:proper_types.tuple([key(keys), :proper_types.integer()])),
         &Map.new/1,
         false
       )}
    ])
  end

  defp index do
    :proper_types.frequency([
      {8, :proper_types.integer(-8, 8)},
      {1, :proper_types.elements([1 <<< 64, -(1 <<< 64), 1 <<< 62, -(1 <<< 62)])}
    ])
  end

  defp count do
    :proper_types.frequency([
      {8, :proper_types.integer(0, 8)},
      {1, :proper_types.elements([1 <<< 64, 1 <<< 62])}
    ])
  end

  defp limit do
    :proper_types.frequency([
      {4, :proper_types.integer(0, 6)},
      {2, :infinity},
      {1, 1 <<< 64}
    ])
  end

  defp incr do
    :proper_types.frequency([
      {8, :proper_types.integer(-5, 5)},
      {1, :proper_types.elements([1 <<< 62, -(1 <<< 62), 1 <<< 63, -(1 <<< 63) - 1])}
    ])
  end

  ## proper_statem callbacks

  def initial_state, do: %{type: :set, max: :infinity, keys: [1]}
  def initial_state({type, max}, keys), do: %{type: type, max: max, keys: keys}

  def command(%{type: type, keys: keys}) do
    k = key(keys)
    v = value(keys)

    both = [
      {6, {:call, __MODULE__, :put, [k, v]}},
      {3, {:call, __MODULE__, :put_new, [k, v]}},
      {4, {:call, __MODULE__, :get, [k]}},
      {3, {:call, __MODULE__, :fetch, [k]}},
      {3, {:call, __MODULE__, :delete, [k]}},
      {3, {:call, __MODULE__, :take, [k]}},
      {2, {:call, __MODULE__, :member?, [k]}},
      {4, {:call, __MODULE__, :update_counter, [k, incr(), :proper_types.integer(-3, 3)]}},
      {2, {:call, __MODULE__, :size, []}},
      {2, {:call, __MODULE__, :to_list, []}},
      {2, {:call, __MODULE__, :put_many, [:proper_types.list(:proper_types.tuple([k, v]))]}},
      {1, {:call, __MODULE__, :clear, []}}
    ]

    ordered =
      if type == :ordered_set do
        [
          {1, {:call, __MODULE__, :first, []}},
          {1, {:call, __MODULE__, :last, []}},
          {2, {:call, __MODULE__, :next, [k]}},
          {2, {:call, __MODULE__, :prev, [k]}},
          {2, {:call, __MODULE__, :range, [k, k, limit()]}},
          {3, {:call, __MODULE__, :rank, [k]}},
          {3, {:call, __MODULE__, :at, [index()]}},
          {2, {:call, __MODULE__, :slice, [index(), count()]}}
        ]
      else
        []
      end

    :proper_types.frequency(both ++ ordered)
  end

  def precondition(_s, _call), do: true

  def next_state(s, _result, _call), do: s

  def postcondition(_s, {:call, _, fun, args}, {store, model} = result) do
    same = same?(fun, store, model)

    unless same do
      Process.put(:gn_store_prop_mismatch, {fun, args, result})
    end

    same
  end

  defp same?(:to_list, {:ok, a}, {:ok, b}) do
    if elem(ctx(), 2).type == :set, do: canonical(a) === canonical(b), else: a === b
  end

  defp same?(_fun, a, b), do: a === b

  # A :set's order is unspecified: sort by encoding, which orders even
  # terms that compare equal (1 and 1.0) the same way every time.
  defp canonical(list), do: Enum.sort_by(list, &:erlang.term_to_binary/1)

  ## Commands: the store and the model side by side

  defp ctx, do: Process.get(@ctx)

  defp both(on_store, on_model) do
    {store, table, cfg} = ctx()
    {run(fn -> on_store.(store) end), run(fn -> on_model.(table, cfg) end)}
  end

  defp run(fun) do
    {:ok, fun.()}
  rescue
    e -> {:raise, e.__struct__}
  end

  def put(k, v) do
    both(&Store.put(&1, k, v), fn t, cfg ->
      if not :ets.member(t, k) and full?(t, cfg) do
        {:error, :full}
      else
        true = :ets.insert(t, {k, v})
        :ok
      end
    end)
  end

  def put_new(k, v) do
    both(&Store.put_new(&1, k, v), fn t, cfg ->
      cond do
        :ets.member(t, k) -> false
        full?(t, cfg) -> {:error, :full}
        true -> :ets.insert_new(t, {k, v})
      end
    end)
  end

  def get(k) do
    both(&Store.get(&1, k, @default), fn t, _ ->
      case :ets.lookup(t, k) do
        [{_, v}] -> v
        [] -> @default
      end
    end)
  end

  def fetch(k), do: both(&Store.fetch(&1, k), fn t, _ -> lookup(t, k) end)

  def member?(k), do: both(&Store.member?(&1, k), fn t, _ -> :ets.member(t, k) end)

  def delete(k) do
    both(&Store.delete(&1, k), fn t, _ ->
      true = :ets.delete(t, k)
      :ok
    end)
  end

  def take(k) do
    both(&Store.take(&1, k), fn t, _ ->
      case :ets.take(t, k) do
        [{_, v}] -> {:ok, v}
        [] -> :error
      end
    end)
  end

  def update_counter(k, incr, default) do
    both(&Store.update_counter(&1, k, incr, default), fn t, cfg ->
      unless int64?(incr), do: raise(ArgumentError)

      case :ets.lookup(t, k) do
        [{stored_key, v}] ->
          unless int64?(v) and int64?(v + incr), do: raise(ArgumentError)
          # the key stays as it was (as ets:update_counter/4 does)
          true = :ets.insert(t, {stored_key, v + incr})
          v + incr

        [] ->
          cond do
            full?(t, cfg) ->
              {:error, :full}

            not int64?(default + incr) ->
              raise ArgumentError

            true ->
              true = :ets.insert(t, {k, default + incr})
              default + incr
          end
      end
    end)
  end

  def size, do: both(&Store.size/1, fn t, _ -> :ets.info(t, :size) end)

  def to_list, do: both(&Store.to_list/1, fn t, _ -> :ets.tab2list(t) end)

  def put_many(entries) do
    both(&Store.put_many(&1, entries), fn t, cfg ->
      # each distinct new key counts once, keys compared as the table does
      fresh = :ets.new(:gn_store_prop_fresh, [cfg.type])

      for {k, _} <- entries, not :ets.member(t, k), do: :ets.insert(fresh, {k})

      result =
        if cfg.max != :infinity and :ets.info(t, :size) + :ets.info(fresh, :size) > cfg.max do
          {:error, :full}
        else
          # in list order: the last entry for a key wins, key included
          Enum.each(entries, &:ets.insert(t, &1))
          :ok
        end

      :ets.delete(fresh)
      result
    end)
  end

  def clear do
    both(&Store.clear/1, fn t, _ ->
      true = :ets.delete_all_objects(t)
      :ok
    end)
  end

  def first, do: both(&Store.first/1, fn t, _ -> ok_or_error(List.first(sorted(t))) end)
  def last, do: both(&Store.last/1, fn t, _ -> ok_or_error(List.last(sorted(t))) end)

  def next(k) do
    both(&Store.next(&1, k), fn t, _ ->
      ok_or_error(Enum.find(sorted(t), fn {x, _} -> x > k end))
    end)
  end

  def prev(k) do
    both(&Store.prev(&1, k), fn t, _ ->
      ok_or_error(sorted(t) |> Enum.reverse() |> Enum.find(fn {x, _} -> x < k end))
    end)
  end

  def range(from, to, limit) do
    both(&Store.range(&1, from, to, limit), fn t, _ ->
      in_range = Enum.filter(sorted(t), fn {x, _} -> x >= from and x <= to end)
      if limit == :infinity, do: in_range, else: Enum.take(in_range, limit)
    end)
  end

  def rank(k) do
    both(&Store.rank(&1, k), fn t, _ ->
      case Enum.find_index(sorted(t), fn {x, _} -> x == k end) do
        nil -> :error
        i -> {:ok, i}
      end
    end)
  end

  def at(i) do
    both(&Store.at(&1, i), fn t, _ ->
      list = sorted(t)
      j = if i < 0, do: i + length(list), else: i
      if j >= 0 and j < length(list), do: {:ok, Enum.at(list, j)}, else: :error
    end)
  end

  def slice(i, n), do: both(&Store.slice(&1, i, n), fn t, _ -> Enum.slice(sorted(t), i, n) end)

  defp lookup(t, k) do
    case :ets.lookup(t, k) do
      [{_, v}] -> {:ok, v}
      [] -> :error
    end
  end

  defp ok_or_error(nil), do: :error
  defp ok_or_error(entry), do: {:ok, entry}

  defp sorted(t), do: :ets.tab2list(t)

  defp full?(t, cfg), do: cfg.max != :infinity and :ets.info(t, :size) >= cfg.max

  defp int64?(n), do: is_integer(n) and n >= -(1 <<< 63) and n < 1 <<< 63

  ## Properties

  # A store on `backend`, with the options of new/2.
  defp new_store(backend, type, opts) do
    Store.new(type, opts ++ backend_opts(backend))
  end

  defp restore_store(backend, binary), do: Store.restore(binary, backend_opts(backend))

  defp backend_opts(:nif), do: []

  defp backend_opts(backend),
    do: [backend: backend, name: :"gn_store_prop_#{System.unique_integer([:positive])}"]

  @doc """
  Any command sequence, against a fresh store of a generated type and cap on
  `backend`, gives the model's results.
  """
  def property(backend \\ :nif) do
    keys = key_pool(self(), make_ref())

    :proper.forall(config(), fn {type, max} = cfg ->
      :proper.forall(:proper_statem.commands(__MODULE__, initial_state(cfg, keys)), fn cmds ->
        Process.delete(:gn_store_prop_mismatch)
        {:ok, store} = new_store(backend, type, max_size: max)
        table = :ets.new(:gn_store_prop_model, [type])
        Process.put(@ctx, {store, table, %{type: type, max: max}})

        {history, _state, result} =
          try do
            :proper_statem.run_commands(__MODULE__, cmds)
          after
            Store.delete(store)
            :ets.delete(table)
            Process.delete(@ctx)
          end

        mismatch = Process.get(:gn_store_prop_mismatch)

        :proper.aggregate(
          command_names(cmds),
          :proper.whenfail(
            fn ->
              IO.puts("""

              store: #{inspect(type)}, max_size: #{inspect(max)}
              #{format_commands(cmds)}
              result: #{inspect(result)}
              steps run: #{length(history)}
              mismatch ({command, args, {store, model}}):
              #{inspect(mismatch, pretty: true, limit: :infinity)}
              """)
            end,
            fn -> result == :ok end
          )
        )
      end)
    end)
  end

  @doc "A store of any generated content comes back from snapshot/restore as it was."
  def snapshot_property(backend \\ :nif) do
    keys = key_pool(self(), make_ref())

    :proper.forall(
      {:proper_types.elements([:set, :ordered_set]),
       :proper_types.list(:proper_types.tuple([key(keys), value(keys)]))},
      fn {type, entries} ->
        {:ok, store} = new_store(backend, type, [])
        :ok = Store.put_many(store, entries)
        original = Store.to_list(store)
        binary = Store.snapshot(store)
        :ok = Store.delete(store)
        {:ok, restored} = restore_store(backend, binary)

        try do
          restored_list = Store.to_list(restored)
          info = Store.info(restored)

          same =
            restored_list === original and info.type == type and
              info.size == length(original) and Store.snapshot(restored) == binary

          :proper.whenfail(
            fn ->
              IO.puts("""

              #{inspect(type)} with #{inspect(entries, limit: :infinity)}
              before: #{inspect(original, limit: :infinity)}
              after:  #{inspect(restored_list, limit: :infinity)}
              """)
            end,
            fn -> same end
          )
        after
          Store.delete(restored)
        end
      end
    )
  end

  defp command_names(cmds), do: for({:set, _, {:call, _, fun, _}} <- cmds, do: fun)

  @doc "Formats a command sequence one command per line."
  def format_commands(cmds) do
    Enum.map_join(cmds, "\n", fn
      {:set, _var, {:call, _mod, fun, args}} ->
        "  #{fun}(#{Enum.map_join(args, ", ", &inspect/1)})"

      {:init, _state} ->
        "  (a fresh store)"

      other ->
        "  #{inspect(other)}"
    end)
  end

  @doc "Runs a property with PropEr; flunks with the shrunk counterexample."
  def check(property, opts),
    do: GenNative.PropCheck.check(property, Keyword.put(opts, :format, &format/1))

  defp format([_cfg, cmds]) when is_list(cmds), do: format_commands(cmds)
  defp format(other), do: inspect(other, pretty: true, limit: :infinity)
end

defmodule GenNative.StorePropertyTest do
  # Stateful properties (PropEr's proper_statem) of GenNative.Store: random
  # operation sequences against the ETS model above, and snapshot/restore
  # round trips. Each case makes its own unnamed store and table.
  use ExUnit.Case, async: true

  import GenNative.StoreModel, only: [check: 2]

  alias GenNative.StoreModel

  # GN_PROP_NUMTESTS overrides the number of test cases.
  @numtests String.to_integer(System.get_env("GN_PROP_NUMTESTS", "200"))

  describe "GenNative.Store" do
    @tag timeout: 120_000
    test "gives the ETS model's results under random operations" do
      check(StoreModel.property(:nif), numtests: @numtests, max_size: 50)
    end

    @tag timeout: 120_000
    test "snapshot/restore gives back exactly the store it was taken of" do
      check(StoreModel.snapshot_property(:nif), numtests: @numtests, max_size: 40)
    end
  end
end

defmodule GenNative.StorePortPropertyTest do
  # The same properties, on stores in a gen_native_port program.
  use ExUnit.Case, async: true

  import GenNative.StoreModel, only: [check: 2]

  alias GenNative.StoreModel

  @moduletag :port

  @numtests String.to_integer(System.get_env("GN_PROP_NUMTESTS", "200"))

  setup_all do
    name = :"gn_store_prop_port_#{System.unique_integer([:positive])}"
    start_supervised!({GenNative.Port, name: name})
    %{backend: {:port, name}}
  end

  describe "GenNative.Store on the port backend" do
    @tag timeout: 120_000
    test "gives the ETS model's results under random operations", %{backend: backend} do
      check(StoreModel.property(backend), numtests: @numtests, max_size: 50)
    end

    @tag timeout: 120_000
    test "snapshot/restore gives back exactly the store it was taken of", %{backend: backend} do
      check(StoreModel.snapshot_property(backend), numtests: @numtests, max_size: 40)
    end
  end
end
