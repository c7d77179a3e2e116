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
  backtracks. Each visited configuration (the set of linearized operations,
  the set of unknown writes used, the register's value) is remembered, so
  none is explored twice. The linearized set is stored as the first
  outstanding return plus the operations linearized ahead of their return
  (every operation whose return is behind it is linearized), so a memo
  entry grows with the concurrency, not with the history.

  Two rules cut the branching without losing a linearization:

    * A `get` that the register can answer now is linearized at once and no
      alternative is tried: it changes nothing, and no pending operation has
      to precede it (one that completed before the `get` was invoked has its
      return behind the first outstanding one, so it is linearized already).
    * Unknown writes are not branched on: one only matters if a later `get`
      observes it (otherwise the next write overwrites it, or it can move to
      the end, where it is harmless). So an unknown write is only linearized
      immediately before a completed `get` that reads its effect, when the
      register does not hold that already, and only one of several identical
      unknown writes (same effect, all invoked) is tried: they are
      interchangeable, each staying available forever once invoked.

  ## Complexity and limits

  Checking linearizability is NP-complete in general. Memoization bounds the
  search by the number of distinct configurations, about `n * 2^c` for `n`
  operations with at most `c` writes concurrent at any instant; a valid
  history is usually decided after about `n` of them (depth-first search
  finds a linearization without exploring the rest), but an invalid one
  needs every configuration up to the failure explored. Measured on this
  2-core machine with the generated histories of the tests (10,000 ops,
  ~2% unknown): valid, 8 clients on 4 keys, 20-80 ms; 10 clients on one key,
  0.2-0.6 s; invalid near the end, 4 keys, 0.03-0.5 s, but 10 clients on one
  key exceeds the default `:max_steps` (about 10 s). Many concurrent writes
  make it exponential. `:max_steps` bounds the configurations visited per
  key; when it is reached `check/2` returns
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
  An operation of a history, as `check/2` takes it; an `:unknown` one's
  `complete` is taken as `:infinity`.
  """
  @spec op(term(), term(), :put | :get | :delete, term(), term(), integer(), integer(), atom()) ::
          op()
  def op(client, key, f, value, result, invoke, complete, outcome) do
    %{
      client: client,
      key: key,
      f: f,
      value: value,
      result: result,
      invoke: invoke,
      complete: if(outcome == :unknown, do: :infinity, else: complete),
      outcome: outcome
    }
  end

  @doc """
  Returns `:ok` if `history` is linearizable, else
  `{:error, %{key: key, ops: ops, reason: reason}}` for the first key that is
  not: `ops` starts with the operation the search could not get past (at the
  furthest point it reached), followed by those concurrent with it. Raises
  `ArgumentError` on a malformed operation.

  ## Options

    * `:max_steps` - configurations visited per key before giving up with
      `{:error, %{reason: "search limit ..."}}` (default 1,000,000, about
      10 s of CPU here).
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

    case search(events, [], 0, :absent, 0, ctx, acc) do
      {:ok, _} -> nil
      {:fail, acc} -> {:error, failure(key, ctx, acc.best, :fail)}
      {:limit, acc} -> {:error, failure(key, ctx, acc.best, :limit)}
    end
  end

  defp effect(%{f: :put, value: v}), do: {:value, v}
  defp effect(%{f: :delete}), do: :absent
  defp effect(%{f: :get, result: {:ok, v}}), do: {:value, v}
  defp effect(%{f: :get, result: :error}), do: :absent

  # One configuration. `ahead` (an ordset) holds the completed ops
  # linearized whose return event is still ahead in `events`; every op
  # whose return is behind is linearized, so together with the first
  # outstanding return they name the set of linearized ops exactly, in
  # space that grows with the concurrency rather than with the history.
  # `used` is a bitset of the unknown writes used, `state` the register.
  defp search(events, ahead, used, state, depth, ctx, acc) do
    case window(events, ahead, []) do
      :done ->
        {:ok, acc}

      {calls, {_, ret_i} = ret, rest, ahead} ->
        key = {ret_i, ahead, used, state}

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

            node = {calls, ret, rest, ahead, used, state, depth}
            try_calls(reads_first(calls, state, ctx), node, ctx, acc)
        end
    end
  end

  # The calls before the first return still outstanding (in order), that
  # return as {time, op}, the events from it on, and `ahead` without the
  # ops whose returns were passed (those events are dropped).
  defp window([], _ahead, _calls), do: :done
  defp window([{_, 0, _} = call | rest], ahead, calls), do: window(rest, ahead, [call | calls])

  defp window([{t, 1, i} | rest] = events, ahead, calls) do
    if i in ahead,
      do: window(rest, List.delete(ahead, i), calls),
      else: {Enum.reverse(calls), {t, i}, events, ahead}
  end

  # A get that the register can answer now is linearized now, with no
  # alternative tried: it changes nothing, and no pending op must precede
  # it (one that completed before the get was invoked would have its return
  # before the first outstanding one, so it is linearized already). So any
  # linearization from here can be rearranged to start with it.
  defp reads_first(calls, state, ctx) do
    case Enum.find(calls, fn {_, 0, i} -> reads?(elem(ctx.done, i), state) end) do
      nil -> calls
      read -> [read]
    end
  end

  defp reads?(%{f: :get} = op, state), do: effect(op) == state
  defp reads?(_op, _state), do: false

  defp try_calls([], _node, _ctx, acc), do: {:fail, acc}

  defp try_calls([{_, 0, i} = call | more], node, ctx, acc) do
    {calls, ret, rest, ahead, used, state, depth} = node

    case step(elem(ctx.done, i), state, used, ret, ctx) do
      nil ->
        try_calls(more, node, ctx, acc)

      {state, used} ->
        events = List.delete(calls, call) ++ rest

        case search(events, :ordsets.add_element(i, ahead), used, state, depth + 1, ctx, acc) do
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
          "not linearizable: the furthest attempt linearized #{depth} of the " <>
            "#{tuple_size(ctx.done)} completed operations on this key, then could not " <>
            "make the " <>
            describe(op) <>
            " take effect before it completed " <>
            "(register #{show(state)}; `ops` lists it, then the operations pending with it)"

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
