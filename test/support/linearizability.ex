defmodule GenNative.Test.Linearizability do
  @moduledoc """
  Checks that a recorded history of operations on a key-value store is
  linearizable (Herlihy & Wing, 1990) with respect to a register per key.

  ## Model

  Each key is a register that starts absent. `put(v)` sets it to `v` and
  returns `:ok`; `delete` makes it absent and returns `:ok`; `get` returns
  `{:ok, v}`, or `:error` when the register is absent.

  A history is a list of `t:op/0` maps. An operation takes effect at a single
  instant between its `invoke` and its `complete`; the history is
  linearizable if such instants can be chosen so that, replayed in that order,
  the model gives every completed operation the result it really returned.
  An operation whose `invoke` is *greater* than another's `complete` comes
  after it; equal timestamps count as concurrent (either order is allowed).

  Outcomes:

    * `:ok`: the operation completed with `result`.
    * `:fail`: it definitely did not take effect (e.g. `{:error, {:not_leader, _}}`);
      dropped before checking.
    * `:unknown`: the client timed out or crashed, so it may have taken effect
      at any instant after its invoke, or never. Its completion is +infinity
      and it may be left out, as in Knossos and Porcupine. An unknown `get`
      carries no information and is dropped.

  Keys are checked one at a time: linearizability is *local* (Herlihy & Wing,
  Theorem 1), so a history is linearizable exactly when each object's
  sub-history is, and every key here is an independent register. Splitting by
  key keeps each search small.

  ## Algorithm

  Wing & Gong's search with Lowe's memoization ("WGL", as in Porcupine). The
  completed operations of a key become call and return events sorted by time
  (at equal times calls come first, which makes them concurrent). The search
  repeatedly picks an operation whose call precedes the first return still
  outstanding, applies it to the model, and recurses; when no choice works it
  backtracks. Each visited configuration (the set of linearized operations as
  an integer bitset, the set of unknown operations used, the register's
  value) is remembered, so no configuration is explored twice.

  Unknown writes are not branched on: one only matters if a later `get`
  observes it (otherwise the next write overwrites it, or it can be moved to
  the end, where it is harmless). So an unknown write is only ever
  linearized immediately before a completed `get` that reads its effect,
  when the register does not already hold that, and only one of several
  identical unknown writes (same effect, all already invoked) is tried: they
  are interchangeable, since each stays available forever once invoked.

  ## Complexity and limits

  Checking linearizability is NP-complete in general. The search is linear
  in the number of operations for a valid history whose concurrency is low,
  and memoization bounds it by the number of distinct configurations, about
  `n * 2^c` for `n` operations with at most `c` concurrent at any instant.
  Many concurrent operations, or many unknown writes of the same effect,
  make it exponential in the worst case. The `:max_steps` option bounds the
  configurations visited per key; when it is reached `check/2` returns
  `{:error, %{reason: "search limit ..."}}`, never `:ok`.

  ## Options

    * `:max_steps` - configurations visited per key before giving up
      (default #{1_000_000}).
  """

  import Bitwise

  @type op :: %{
          client: term(),
          key: term(),
          f: :put | :get | :delete,
          value: term(),
          result: {:ok, term()} | :error | :ok | nil,
          invoke: integer(),
          complete: integer() | :infinity,
          outcome: :ok | :fail | :unknown
        }

  @type failure :: %{key: term(), ops: [op()], reason: String.t()}

  @doc """
  Returns `:ok` if `history` is linearizable, else
  `{:error, %{key: key, ops: ops, reason: reason}}` for the first key that is
  not: `ops` starts with the operation the search could not get past (at the
  furthest point it reached), followed by those concurrent with it. Raises
  `ArgumentError` on a malformed operation.
  """
  @spec check([op()], keyword()) :: :ok | {:error, failure()}
  def check(history, opts \\ []) when is_list(history) do
    max_steps = Keyword.get(opts, :max_steps, 1_000_000)

    unless is_integer(max_steps) and max_steps > 0,
      do:
        raise(ArgumentError, ":max_steps must be a positive integer, got: #{inspect(max_steps)}")

    Enum.each(history, &validate!/1)

    history
    |> Enum.reject(&(&1.outcome == :fail or (&1.outcome == :unknown and &1.f == :get)))
    |> Enum.group_by(& &1.key)
    |> Enum.find_value(:ok, fn {key, ops} -> check_key(key, ops, max_steps) end)
  end

  defp validate!(%{f: f, outcome: outcome, invoke: i, complete: c, result: r} = op)
       when f in [:put, :get, :delete] and outcome in [:ok, :fail, :unknown] and is_integer(i) do
    cond do
      outcome != :ok -> :ok
      not is_integer(c) or c < i -> bad!(op, "a completed op needs an integer complete >= invoke")
      f == :get and not (r == :error or match?({:ok, _}, r)) -> bad!(op, "bad get result")
      f != :get and r not in [:ok, nil] -> bad!(op, "a put or delete returns :ok")
      true -> :ok
    end
  end

  defp validate!(op), do: bad!(op, "not an operation")

  defp bad!(op, why), do: raise(ArgumentError, "#{why}: #{inspect(op)}")

  # Returns nil when the key's sub-history is linearizable.
  defp check_key(key, ops, max_steps) do
    {done, unknown} = Enum.split_with(ops, &(&1.outcome == :ok))
    done = List.to_tuple(done)

    # Events {time, 0 = call | 1 = return, index}: calls sort before returns
    # at equal times, so such operations are concurrent.
    events =
      Enum.sort(
        for i <- 0..(tuple_size(done) - 1)//1,
            op = elem(done, i),
            ev <- [{op.invoke, 0, i}, {op.complete, 1, i}],
            do: ev
      )

    # Unknown writes by effect, earliest invoke first: {invoke, index}.
    spare =
      unknown
      |> Enum.with_index()
      |> Enum.group_by(fn {op, _} -> effect(op) end, fn {op, j} -> {op.invoke, j} end)
      |> Map.new(fn {eff, list} -> {eff, Enum.sort(list)} end)

    ctx = %{done: done, spare: spare, max: max_steps}
    acc = %{memo: MapSet.new(), steps: 0, best: nil}

    case search(events, 0, 0, :absent, 0, ctx, acc) do
      {:ok, _} -> nil
      {:fail, acc} -> {:error, failure(key, ctx, acc.best, :fail)}
      {:limit, acc} -> {:error, failure(key, ctx, acc.best, :limit)}
    end
  end

  defp effect(%{f: :put, value: v}), do: {:value, v}
  defp effect(%{f: :delete}), do: :absent
  defp effect(%{f: :get, result: {:ok, v}}), do: {:value, v}
  defp effect(%{f: :get, result: :error}), do: :absent

  # One configuration: `lin` and `used` are bitsets of the completed and
  # unknown operations linearized so far, `state` the register.
  defp search(events, lin, used, state, depth, ctx, acc) do
    case window(events, lin, []) do
      :done ->
        {:ok, acc}

      {calls, ret, rest} ->
        key = {lin, used, state}

        cond do
          MapSet.member?(acc.memo, key) ->
            {:fail, acc}

          acc.steps >= ctx.max ->
            {:limit, acc}

          true ->
            acc = %{acc | memo: MapSet.put(acc.memo, key), steps: acc.steps + 1}

            acc =
              if acc.best == nil or depth > elem(acc.best, 0),
                do: %{acc | best: {depth, calls, ret, state}},
                else: acc

            node = {calls, ret, rest, lin, used, state, depth}
            try_calls(calls, node, ctx, acc)
        end
    end
  end

  # The calls before the first return still outstanding (in order), that
  # return and the events from it on. Returns of linearized ops are dropped.
  defp window([], _lin, _calls), do: :done
  defp window([{_, 0, _} = call | rest], lin, calls), do: window(rest, lin, [call | calls])

  defp window([{t, 1, i} | rest] = events, lin, calls) do
    if (lin >>> i &&& 1) == 1,
      do: window(rest, lin, calls),
      else: {Enum.reverse(calls), {t, i}, events}
  end

  defp try_calls([], _node, _ctx, acc), do: {:fail, acc}

  defp try_calls([{_, 0, i} = call | more], node, ctx, acc) do
    {calls, ret, rest, lin, used, state, depth} = node

    case step(elem(ctx.done, i), state, used, ret, ctx) do
      nil ->
        try_calls(more, node, ctx, acc)

      {state, used} ->
        events = List.delete(calls, call) ++ rest

        case search(events, lin ||| 1 <<< i, used, state, depth + 1, ctx, acc) do
          {:fail, acc} -> try_calls(more, node, ctx, acc)
          other -> other
        end
    end
  end

  # Applies a completed op to the register: {new state, new used} or nil.
  # A get that does not match may be preceded by an unknown write of its
  # value, invoked before the first outstanding return `ret`.
  defp step(%{f: :get} = op, state, used, {ret_time, _}, ctx) do
    case effect(op) do
      ^state ->
        {state, used}

      want ->
        ctx.spare
        |> Map.get(want, [])
        |> Enum.find(fn {invoke, j} -> invoke <= ret_time and (used >>> j &&& 1) == 0 end)
        |> case do
          {_, j} -> {want, used ||| 1 <<< j}
          nil -> nil
        end
    end
  end

  defp step(op, _state, used, _ret, _ctx), do: {effect(op), used}

  defp failure(key, ctx, {depth, calls, {_, blocker}, state}, why) do
    op = elem(ctx.done, blocker)
    others = for {_, 0, i} <- calls, i != blocker, do: elem(ctx.done, i)

    reason =
      case why do
        :fail ->
          "not linearizable: at most #{depth} of the #{tuple_size(ctx.done)} completed " <>
            "operations on this key can be linearized; none can be ordered before the " <>
            describe(op) <> " completes (furthest attempt: register #{show(state)})"

        :limit ->
          "search limit: gave up after #{ctx.max} configurations (:max_steps) without " <>
            "deciding (furthest: #{depth} of #{tuple_size(ctx.done)} ops linearized, " <>
            "stuck before the " <> describe(op) <> " completes); this is not a pass"
      end

    %{key: key, ops: [op | others], reason: reason}
  end

  defp describe(op) do
    result = if op.f == :get, do: " -> #{inspect(op.result)}", else: ""
    args = if op.f == :put, do: "(#{inspect(op.value)})", else: ""

    "#{op.f}#{args}#{result} by client #{inspect(op.client)} " <>
      "[#{op.invoke}, #{op.complete}]"
  end

  defp show(:absent), do: "absent"
  defp show({:value, v}), do: "holds #{inspect(v)}"
end
