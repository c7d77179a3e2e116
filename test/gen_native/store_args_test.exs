defmodule GenNative.StoreArgsTest do
  # Every argument a Store function rejects raises ArgumentError with a
  # message, never FunctionClauseError (nor a Protocol or Enum error from
  # inside): wrong types, and improper lists where a list is expected.
  use ExUnit.Case, async: true

  alias GenNative.Store

  setup do
    {:ok, store} = Store.new(:ordered_set)
    {:ok, store: store}
  end

  test "wrong types and improper lists raise ArgumentError with a message", %{store: s} do
    cases = [
      {"whereis/1 with a string", fn -> Store.whereis("name") end, ~r/atom/},
      {"whereis/1 with a tuple", fn -> Store.whereis({:a}) end, ~r/atom/},
      {"at/2 with an atom", fn -> Store.at(s, :a) end, ~r/index/},
      {"at/2 with a float", fn -> Store.at(s, 1.0) end, ~r/index/},
      {"slice/3 with an atom index", fn -> Store.slice(s, :a, 1) end, ~r/index/},
      {"slice/3 with a negative count", fn -> Store.slice(s, 0, -1) end, ~r/count/},
      {"range/4 with a negative limit", fn -> Store.range(s, 1, 2, -1) end, ~r/limit/},
      {"range/4 with a float limit", fn -> Store.range(s, 1, 2, 1.5) end, ~r/limit/},
      {"update_counter/3 with an atom", fn -> Store.update_counter(s, :k, :a) end, ~r/integer/},
      {"update_counter/4 with a float default", fn -> Store.update_counter(s, :k, 1, 1.0) end,
       ~r/integer/},
      {"put_many/2 with a map", fn -> Store.put_many(s, %{a: 1}) end, ~r/list/},
      {"put_many/2 with an improper list", fn -> Store.put_many(s, [{1, 2} | :x]) end, ~r/list/},
      {"put_many/2 with a 3-tuple", fn -> Store.put_many(s, [{1, 2, 3}]) end, ~r/tuples/},
      {"restore/2 with an atom", fn -> Store.restore(:snapshot) end, ~r/binary/},
      {"restore/2 with an improper list of options",
       fn -> Store.restore(<<>>, [{:name, :x} | :y]) end, ~r/keyword/},
      {"new/2 with an improper list of options", fn -> Store.new(:set, [{:name, :x} | :y]) end,
       ~r/keyword/},
      {"put/4 with an improper list of options", fn -> Store.put(s, 1, 2, [{:ttl, 5} | :y]) end,
       ~r/keyword/},
      {"put_new/4 with an improper list of options",
       fn -> Store.put_new(s, 1, 2, [{:ttl, 5} | :y]) end, ~r/keyword/}
    ]

    for {label, fun, message} <- cases do
      error =
        try do
          fun.()
          flunk("#{label}: did not raise")
        rescue
          e in ExUnit.AssertionError -> reraise e, __STACKTRACE__
          e -> e
        end

      assert %ArgumentError{} = error, "#{label}: raised #{inspect(error)}"
      assert Exception.message(error) =~ message, "#{label}: #{Exception.message(error)}"
    end

    # nothing was written
    assert Store.size(s) == 0
  end
end
