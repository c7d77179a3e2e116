defmodule GenNative.Test.LinearizabilityCheckerTest do
  # Tests of the linearizability checker in test/support (used by the Raft
  # replication tests): hand-made histories with a known verdict, then
  # generated histories of an atomic register (valid by construction) and
  # corruptions of them (invalid by construction).
  use ExUnit.Case, async: true

  alias GenNative.Test.Linearizability, as: L

  @ops 10_000
  @seeds 1..20

  # (Generated in each test that uses them: handing them to every test as
  # setup_all context made the file ~10x slower.)
  defp histories, do: Enum.map(@seeds, &{&1, generate(&1)})

  # op(client, f, value_or_result, invoke, complete, outcome \\ :ok) on key :k
  defp put(c, v, i, t, outcome \\ :ok), do: op(c, :k, :put, v, ok_or_nil(outcome), i, t, outcome)

  defp del(c, i, t, outcome \\ :ok),
    do: op(c, :k, :delete, nil, ok_or_nil(outcome), i, t, outcome)

  defp get(c, r, i, t, outcome \\ :ok), do: op(c, :k, :get, nil, r, i, t, outcome)

  defp ok_or_nil(:ok), do: :ok
  defp ok_or_nil(_), do: nil

  defp op(c, key, f, value, result, invoke, complete, outcome),
    do: L.op(c, key, f, value, result, invoke, complete, outcome)

  defp on_key(op, key), do: %{op | key: key}

  describe "check/2 on hand-made histories" do
    test "empty and sequential histories are valid" do
      assert L.check([]) == :ok

      assert L.check([
               get(1, :error, 0, 1),
               put(1, :a, 2, 3),
               get(2, {:ok, :a}, 4, 5),
               put(2, :b, 6, 7),
               get(1, {:ok, :b}, 8, 9)
             ]) == :ok
    end

    test "a stale read after a completed put is invalid" do
      h = [put(1, :a, 0, 1), put(1, :b, 2, 3), get(2, {:ok, :a}, 4, 5)]
      assert {:error, %{key: :k, ops: [blocker | _], reason: reason}} = L.check(h)
      assert blocker == get(2, {:ok, :a}, 4, 5)
      assert reason =~ "not linearizable"
    end

    test "a put overlapping a get may be ordered either way" do
      for r <- [:error, {:ok, :a}] do
        assert L.check([put(1, :a, 0, 10), get(2, r, 2, 8)]) == :ok
      end

      # and so may two overlapping puts, as seen by a later read
      for r <- [{:ok, :a}, {:ok, :b}] do
        assert L.check([put(1, :a, 0, 10), put(2, :b, 1, 9), get(3, r, 11, 12)]) == :ok
      end

      assert {:error, _} = L.check([put(1, :a, 0, 10), put(2, :b, 1, 9), get(3, :error, 11, 12)])
    end

    test "a read of a value never written is invalid" do
      assert {:error, %{ops: [blocker]}} = L.check([put(1, :a, 0, 1), get(2, {:ok, :z}, 2, 3)])
      assert blocker.result == {:ok, :z}
    end

    test "delete then get :error is valid; get of the old value after the delete is not" do
      h = [put(1, :a, 0, 1), del(1, 2, 3)]
      assert L.check(h ++ [get(2, :error, 4, 5)]) == :ok
      assert {:error, %{ops: [blocker]}} = L.check(h ++ [get(2, {:ok, :a}, 4, 5)])
      assert blocker.f == :get
    end

    test "a return and a call at the same instant are concurrent; a later call is not" do
      # put completes at 5, get is invoked at 5: the get may come first
      assert L.check([put(1, :a, 0, 5), get(2, :error, 5, 6)]) == :ok
      # invoked at 6 > 5: the put precedes it
      assert {:error, _} = L.check([put(1, :a, 0, 5), get(2, :error, 6, 7)])
    end

    test "an unknown put may take effect late, or never" do
      # read after the unknown put's invoke, even long after
      assert L.check([
               put(1, :a, 0, 1),
               put(2, :b, 2, nil, :unknown),
               get(3, {:ok, :a}, 3, 4),
               get(3, {:ok, :b}, 100, 101)
             ]) == :ok

      # never read
      assert L.check([put(1, :a, 0, 1), put(2, :b, 2, nil, :unknown), get(3, {:ok, :a}, 3, 4)]) ==
               :ok

      # but not before it was invoked
      assert {:error, _} = L.check([get(3, {:ok, :b}, 0, 1), put(2, :b, 2, nil, :unknown)])
      # and once only: :b, then :c, then :b again needs a second write of :b
      h = [put(2, :b, 0, nil, :unknown), get(1, {:ok, :b}, 1, 2), put(1, :c, 3, 4)]
      assert L.check(h) == :ok
      assert {:error, _} = L.check(h ++ [get(1, {:ok, :b}, 5, 6)])
      assert L.check(h ++ [put(3, :b, 0, nil, :unknown), get(1, {:ok, :b}, 5, 6)]) == :ok
    end

    test "an unknown delete may empty the register once" do
      h = [put(1, :a, 0, 1), del(2, 2, nil, :unknown), get(1, :error, 3, 4), put(1, :b, 5, 6)]
      assert L.check(h) == :ok
      assert {:error, _} = L.check(h ++ [get(1, :error, 7, 8)])
    end

    test "an unknown get carries no information" do
      assert L.check([put(1, :a, 0, 1), get(2, nil, 2, nil, :unknown)]) == :ok
    end

    test "a failed put did not happen" do
      assert L.check([put(1, :a, 0, 1, :fail), get(2, :error, 2, 3)]) == :ok
      assert {:error, _} = L.check([put(1, :a, 0, 1, :fail), get(2, {:ok, :a}, 2, 3)])
    end

    test "keys are independent" do
      # each key alone is fine; merged into one key it would not be
      a = [put(1, 1, 0, 1), get(2, {:ok, 1}, 2, 3)] |> Enum.map(&on_key(&1, :a))
      b = [put(1, 2, 4, 5), get(2, {:ok, 2}, 6, 7)] |> Enum.map(&on_key(&1, :b))
      assert L.check(a ++ b) == :ok
      assert L.check(Enum.shuffle(a ++ b)) == :ok
      merged = Enum.map(a ++ b, &on_key(&1, :k)) ++ [get(3, {:ok, 1}, 8, 9)]
      assert {:error, %{key: :k}} = L.check(merged)

      bad_b = b ++ [on_key(get(3, {:ok, 1}, 8, 9), :b)]
      assert {:error, %{key: :b}} = L.check(a ++ bad_b)
    end

    test "malformed operations raise" do
      assert_raise ArgumentError, fn -> L.check([%{f: :put}]) end
      assert_raise ArgumentError, fn -> L.check([get(1, :weird, 0, 1)]) end
      assert_raise ArgumentError, fn -> L.check([put(1, :a, 5, 1)]) end
      assert_raise ArgumentError, fn -> L.check([%{put(1, :a, 0, 1) | complete: :infinity}]) end
      assert_raise ArgumentError, fn -> L.check([], max_steps: 0) end
    end
  end

  describe "check/2 against brute force" do
    # Small random histories (one key, values 1..2, random results, times
    # from a small range so that ties are common), checked by the WGL search
    # and by trying every order that respects real time, with every subset
    # of the unknown writes. The verdicts must agree.
    test "agrees with trying every order on 3,000 random small histories" do
      :rand.seed(:exsss, {1, 2, 3})

      verdicts =
        for _ <- 1..3_000 do
          h = random_small_history()
          expected = brute_force(h)
          assert match?({:error, _}, L.check(h)) != expected, inspect(h, pretty: true)
          expected
        end

      # both verdicts are well represented, so this can fail either way
      assert Enum.count(verdicts, & &1) > 500
      assert Enum.count(verdicts, &(!&1)) > 500
    end
  end

  defp random_small_history do
    for c <- 1..:rand.uniform(7) do
      invoke = :rand.uniform(8)
      complete = invoke + :rand.uniform(4) - 1

      {f, value, result} =
        case :rand.uniform(3) do
          1 -> {:put, :rand.uniform(2), :ok}
          2 -> {:delete, nil, :ok}
          3 -> {:get, nil, Enum.random([:error, {:ok, 1}, {:ok, 2}])}
        end

      outcome = Enum.random([:ok, :ok, :ok, :ok, :unknown, :fail])
      result = if outcome == :ok, do: result
      op(c, :k, f, value, result, invoke, complete, outcome)
    end
  end

  # true when some order of the completed ops plus a subset of the unknown
  # writes respects real time (a before b when a.complete < b.invoke) and
  # gives every completed get its result.
  defp brute_force(h) do
    h = Enum.reject(h, &(&1.outcome == :fail or (&1.outcome == :unknown and &1.f == :get)))
    {done, unknown} = Enum.split_with(h, &(&1.outcome == :ok))
    Enum.any?(subsets(unknown), &some_order?(done ++ &1, :error))
  end

  defp subsets([]), do: [[]]
  defp subsets([x | xs]), do: for(s <- subsets(xs), t <- [s, [x | s]], do: t)

  defp some_order?([], _reg), do: true

  defp some_order?(ops, reg) do
    Enum.any?(ops, fn op ->
      rest = List.delete(ops, op)
      first? = not Enum.any?(rest, &(&1.complete != :infinity and &1.complete < op.invoke))

      first? and
        case op.f do
          :put -> some_order?(rest, {:ok, op.value})
          :delete -> some_order?(rest, :error)
          :get -> (op.outcome != :ok or op.result == reg) and some_order?(rest, reg)
        end
    end)
  end

  describe "check/2 on generated histories" do
    test "a simulated atomic register's history is linearizable" do
      for {seed, h} <- histories() do
        assert length(h) >= @ops
        assert L.check(h) == :ok, "seed #{seed}"
      end
    end

    test "so is one with 10 clients on a single key" do
      for seed <- 1..2 do
        h = generate(seed, keys: 1, clients: 10)
        assert L.check(h) == :ok, "seed #{seed}"
      end
    end

    test "a get changed to read a value written only later is caught" do
      for {seed, h} <- histories() do
        ts = List.to_tuple(h)

        {gi, p} =
          Enum.find_value(div(length(h), 2)..(length(h) - 1), fn gi ->
            g = elem(ts, gi)

            g.f == :get and g.outcome == :ok and
              Enum.find_value(h, fn p ->
                p.key == g.key and p.f == :put and p.outcome == :ok and p.invoke > g.complete and
                  {gi, p}
              end)
          end)

        bad = List.update_at(h, gi, &%{&1 | result: {:ok, p.value}})
        assert {:error, %{ops: [blocker | _]}} = L.check(bad), "seed #{seed}"
        assert blocker == Enum.at(bad, gi)
      end
    end

    test "a stale read (a write lost after it was overwritten) is caught" do
      for {seed, h} <- histories() do
        ts = List.to_tuple(h)
        ok_writes = Enum.filter(h, &(&1.f in [:put, :delete] and &1.outcome == :ok))

        # a get in the last quarter, the last write w2 on its key that
        # completed before the get was invoked, and the last put p1 that
        # completed before w2 was invoked: p1 -> w2 -> get in real time,
        # so reading p1's value then is never linearizable
        {gi, p1} =
          Enum.find_value(div(length(h) * 3, 4)..(length(h) - 1), fn gi ->
            g = elem(ts, gi)

            with true <- g.f == :get and g.outcome == :ok,
                 [_ | _] = before <-
                   Enum.filter(ok_writes, &(&1.key == g.key and &1.complete < g.invoke)),
                 w2 = Enum.max_by(before, & &1.complete),
                 [_ | _] = older <-
                   Enum.filter(before, &(&1.f == :put and &1.complete < w2.invoke)) do
              {gi, Enum.max_by(older, & &1.complete)}
            else
              _ -> nil
            end
          end)

        bad = List.update_at(h, gi, &%{&1 | result: {:ok, p1.value}})
        assert {:error, %{ops: [blocker | _]}} = L.check(bad), "seed #{seed}"
        assert blocker == Enum.at(bad, gi)
      end
    end

    test "dropping, or failing, the only put of a value that is read is caught" do
      for {seed, h} <- histories() do
        read = MapSet.new(for %{f: :get, result: {:ok, v}} <- h, do: v)
        puts = for {%{f: :put, outcome: :ok} = p, i} <- Enum.with_index(h), p.value in read, do: i

        # dropped: the first and the last such put (the search fails early,
        # or only after linearizing almost the whole history); failed: the
        # first
        for {pi, how} <- [{hd(puts), :drop}, {List.last(puts), :drop}, {hd(puts), :fail}] do
          v = Enum.at(h, pi).value

          bad =
            case how do
              :drop -> List.delete_at(h, pi)
              :fail -> List.update_at(h, pi, &%{&1 | outcome: :fail})
            end

          assert {:error, %{ops: [blocker | _]}} = L.check(bad), "seed #{seed} #{how}"
          assert blocker.result == {:ok, v}
        end
      end
    end

    test "hitting :max_steps is an error, not a pass" do
      h = generate(1)
      assert {:error, %{reason: "search limit" <> _}} = L.check(h, max_steps: 100)
    end
  end

  # A history of >= @ops operations on an atomic register (by default 4
  # keys, 8 clients), each op taking effect at an instant strictly between
  # its invoke and its complete, so the history is linearizable by
  # construction. About 2% of
  # ops fail (not applied) and 2% time out (:unknown; applied or not, and if
  # applied, possibly long after the client gave up). Values are unique, so
  # each read names the one put it saw. Integer times from a small range
  # make equal timestamps common.
  defp generate(seed, opts \\ []) do
    :rand.seed(:exsss, {seed, 17, 4242})
    clients = Keyword.get(opts, :clients, 8)
    keys = Enum.map(1..Keyword.get(opts, :keys, 4), &:"k#{&1}")
    per_client = div(@ops, clients) + 1

    ops =
      Enum.flat_map(1..clients, fn c ->
        {ops, _} = Enum.map_reduce(1..per_client, :rand.uniform(10), &client_op(c, keys, &1, &2))
        ops
      end)

    # Replay the applied ops in apply order to fill in results.
    {results, _} =
      ops
      |> Enum.filter(& &1.apply)
      |> Enum.sort_by(& &1.apply)
      |> Enum.map_reduce(%{}, fn op, reg ->
        case op.f do
          :put -> {{op.id, :ok}, Map.put(reg, op.key, op.value)}
          :delete -> {{op.id, :ok}, Map.delete(reg, op.key)}
          :get -> {{op.id, Map.fetch(reg, op.key)}, reg}
        end
      end)

    results = Map.new(results)

    ops
    |> Enum.map(fn op ->
      result = if op.outcome == :ok, do: Map.fetch!(results, op.id)
      op |> Map.drop([:id, :apply]) |> Map.put(:result, result)
    end)
    |> Enum.sort_by(& &1.invoke)
  end

  defp client_op(c, keys, seq, t) do
    invoke = t + :rand.uniform(5)
    apply = invoke + :rand.uniform(10)
    complete = apply + :rand.uniform(10)
    key = Enum.random(keys)

    {f, value} =
      case :rand.uniform(20) do
        n when n <= 8 -> {:put, {c, seq}}
        n when n <= 11 -> {:delete, nil}
        _ -> {:get, nil}
      end

    op = %{id: {c, seq}, client: c, key: key, f: f, value: value, invoke: invoke}

    case :rand.uniform(100) do
      1 ->
        {Map.merge(op, %{complete: complete, outcome: :fail, apply: nil}), complete}

      2 ->
        # applied or not; if applied, up to 200 time units after the invoke
        late = if :rand.uniform(2) == 1, do: invoke + :rand.uniform(200)
        {Map.merge(op, %{complete: :infinity, outcome: :unknown, apply: late}), invoke + 30}

      _ ->
        {Map.merge(op, %{complete: complete, outcome: :ok, apply: apply}), complete}
    end
  end
end
