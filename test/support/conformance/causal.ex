require Conformance

# Servers and helpers for test/conformance/causal_order_test.exs: the
# single-node causal order of GenServer (shared/GENSERVER_SEMANTICS.md,
# "Ordering"), and a generator, runner and checker of random causal
# histories over several processes.

Conformance.defserver Conformance.Busy do
  @moduledoc false
  # A counter and a log in one state, `{count, log}`. `{:block, test}`
  # holds the server inside a call (it tells `test` `{:blocked, pid}` first)
  # until it gets `:release`, so that whatever comes meanwhile waits. It
  # traps exits (an exit signal is logged as a message) and, when started
  # with an owner pid, sends it `{:terminated, reason, log}` from
  # terminate/2.

  @impl true
  def init(owner) do
    Process.flag(:trap_exit, true)
    Process.put(:busy_owner, owner)
    {:ok, {0, []}}
  end

  @impl true
  def handle_call({:block, test}, _from, state) do
    send(test, {:blocked, self()})

    receive do
      :release -> {:reply, :released, state}
    end
  end

  def handle_call(:get, _from, {count, _log} = state), do: {:reply, count, state}
  def handle_call(:log, _from, {_count, log} = state), do: {:reply, Enum.reverse(log), state}

  def handle_call(msg, _from, {count, log}),
    do: {:reply, {:ok, msg}, {count, [{:call, msg} | log]}}

  @impl true
  def handle_cast({:add, n}, {count, log}), do: {:noreply, {count + n, log}}
  def handle_cast(msg, {count, log}), do: {:noreply, {count, [{:cast, msg} | log]}}

  @impl true
  def handle_info(msg, {count, log}), do: {:noreply, {count, [{:info, msg} | log]}}

  @impl true
  def terminate(reason, {_count, log}) do
    if owner = Process.get(:busy_owner), do: send(owner, {:terminated, reason, Enum.reverse(log)})
  end
end

Conformance.defserver Conformance.CausalLog do
  @moduledoc false
  # Logs `{kind, id, deps}` for every `{:req, id, deps}` it handles, newest
  # first (so `:sys.get_state/1` shows the log at that point); `:log`
  # returns it oldest first.

  @impl true
  def init(_arg), do: {:ok, []}

  @impl true
  def handle_call(:log, _from, log), do: {:reply, Enum.reverse(log), log}
  def handle_call({:req, id, deps}, _from, log), do: {:reply, :ok, [{:call, id, deps} | log]}

  @impl true
  def handle_cast({:req, id, deps}, log), do: {:noreply, [{:cast, id, deps} | log]}

  @impl true
  def handle_info({:req, id, deps}, log), do: {:noreply, [{:info, id, deps} | log]}
end

defmodule Conformance.FailingVia do
  @moduledoc false
  # A `:via` registry that fails in every function: the name is
  # `{kind, term}` and `kind` (`:raise`, `:exit` or `:throw`) says how.

  def whereis_name({kind, name}), do: fail(kind, {:whereis_name, name})
  def send({kind, name}, _msg), do: fail(kind, {:send, name})
  def register_name({kind, name}, _pid), do: fail(kind, {:register_name, name})
  def unregister_name({kind, name}), do: fail(kind, {:unregister_name, name})

  defp fail(:raise, what), do: raise("FailingVia: #{inspect(what)}")
  defp fail(:exit, what), do: exit({:failing_via, what})
  defp fail(:throw, what), do: throw({:failing_via, what})
end

defmodule Conformance.Causal do
  @moduledoc false
  # Random causal histories.
  #
  # `generate/1` draws, from a seed, one global sequence of steps over 3 to
  # 5 processes and projects it onto one script per process. A step is a
  # burst of casts to the server, a call, a plain message (`send/2`) to the
  # server, `:sys.get_state/1`, or a token passed to another process (the
  # receiver's script gets the matching wait). Every wait is for a token
  # sent earlier in the global sequence, so the scripts cannot deadlock: the
  # global sequence is one schedule that completes.
  #
  # `run/3` runs the scripts concurrently against a server. Every request
  # is `{:req, id, deps}` with `id = {process, n}` (the process's n-th
  # request) and `deps` the sender's vector clock when it sent it: for each
  # process `q`, the highest `n` such that `{q, n}` happened before. A
  # process learns another's clock from a token; its own requests advance
  # its own entry.
  #
  # `violations/3` checks the handled log: every request comes after every
  # request that happened before it, every request is handled exactly once
  # and before the call that reads the log, and each `:sys.get_state/1` saw
  # everything that happened before it.

  import ExUnit.Assertions

  @doc """
  The scripts for `seed`: `%{process => [step]}`, processes numbered from 1.
  """
  def generate(seed) do
    :rand.seed(:exsss, seed)
    procs = 2 + :rand.uniform(3)
    steps = 30 + :rand.uniform(50)
    empty = Map.new(1..procs, &{&1, []})

    {scripts, _tokens} =
      Enum.reduce(1..steps, {empty, 0}, fn _, {scripts, token} ->
        p = :rand.uniform(procs)

        case :rand.uniform(100) do
          x when x <= 22 ->
            {add(scripts, p, {:casts, :rand.uniform(25)}), token}

          # a burst long enough to leave a backlog behind
          x when x <= 30 ->
            {add(scripts, p, {:casts, 100 + :rand.uniform(400)}), token}

          x when x <= 45 ->
            {add(scripts, p, :call), token}

          x when x <= 60 ->
            {add(scripts, p, :send), token}

          x when x <= 92 ->
            q = other(p, procs)
            scripts = scripts |> add(p, {:token, token, q}) |> add(q, {:await, token})
            {scripts, token + 1}

          _ ->
            {add(scripts, p, :get_state), token}
        end
      end)

    Map.new(scripts, fn {p, script} -> {p, Enum.reverse(script)} end)
  end

  defp add(scripts, p, step), do: Map.update!(scripts, p, &[step | &1])

  defp other(p, procs) do
    q = :rand.uniform(procs - 1)
    if q >= p, do: q + 1, else: q
  end

  @doc """
  Runs `scripts` against `server` with client module `gen`. Returns
  `{issued, observations}`: how many requests each process sent, and
  `{process, clock, handled_ids}` for every `:sys.get_state/1`.
  """
  def run(gen, server, scripts, timeout \\ 60_000) do
    test = self()

    pids =
      Map.new(scripts, fn {p, script} ->
        pid =
          spawn(fn ->
            receive do
              {:go, pids} -> send(test, {:causal_done, p, exec(gen, server, p, script, pids)})
            end
          end)

        {p, pid}
      end)

    Enum.each(pids, fn {_p, pid} -> send(pid, {:go, pids}) end)

    results =
      Map.new(pids, fn {p, pid} ->
        receive do
          {:causal_done, ^p, result} -> {p, result}
        after
          timeout ->
            Enum.each(pids, fn {_, pid} -> Process.exit(pid, :kill) end)

            flunk(
              "process #{p} (#{inspect(Process.info(pid, [:current_stacktrace, :messages]))}) " <>
                "did not finish its script in #{timeout} ms"
            )
        end
      end)

    issued = Map.new(results, fn {p, {seq, _obs}} -> {p, seq} end)
    observations = Enum.flat_map(results, fn {_p, {_seq, obs}} -> obs end)
    {issued, observations}
  end

  defp exec(gen, server, p, script, pids) do
    acc = %{p: p, seq: 0, clock: %{}, obs: []}

    acc =
      Enum.reduce(script, acc, fn
        {:casts, n}, acc ->
          Enum.reduce(1..n, acc, fn _, acc -> request(acc, &(:ok = gen.cast(server, &1))) end)

        :call, acc ->
          request(acc, &(:ok = gen.call(server, &1, 30_000)))

        :send, acc ->
          request(acc, &send(server, &1))

        {:token, token, q}, acc ->
          send(pids[q], {:causal_token, token, acc.clock}) && acc

        {:await, token}, acc ->
          await_token(acc, token)

        :get_state, acc ->
          observe(acc, :sys.get_state(server, 30_000))
      end)

    {acc.seq, acc.obs}
  end

  defp request(acc, fun) do
    seq = acc.seq + 1
    fun.({:req, {acc.p, seq}, acc.clock})
    %{acc | seq: seq, clock: Map.put(acc.clock, acc.p, seq)}
  end

  defp await_token(acc, token) do
    receive do
      {:causal_token, ^token, clock} ->
        %{acc | clock: Map.merge(acc.clock, clock, fn _q, a, b -> max(a, b) end)}
    end
  end

  defp observe(acc, log) do
    ids = Enum.map(log, fn {_kind, id, _deps} -> id end)
    %{acc | obs: [{acc.p, acc.clock, ids} | acc.obs]}
  end

  @doc """
  The causal constraints `log` (oldest first) breaks. With `relaxed: true`
  a cast handled before a plain message that happened before it is allowed
  (queue mode's one documented exception).
  """
  def violations(log, {issued, observations}, opts \\ []) do
    relaxed? = Keyword.get(opts, :relaxed, false)
    kinds = Map.new(log, fn {kind, id, _deps} -> {id, kind} end)

    expected = MapSet.new(for {p, n} <- issued, n > 0, k <- 1..n, do: {p, k})
    ids = Enum.map(log, fn {_kind, id, _deps} -> id end)

    # the log is read by a call made once every script has ended, so
    # everything sent had happened before it
    seen = MapSet.new(ids)

    count =
      [
        {:handled_twice, ids -- Enum.uniq(ids)},
        {:not_handled_before_final_call, MapSet.to_list(MapSet.difference(expected, seen))},
        {:never_sent, MapSet.to_list(MapSet.difference(seen, expected))}
      ]
      |> Enum.reject(fn {_tag, ids} -> ids == [] end)

    {order, _handled} =
      Enum.reduce(log, {[], MapSet.new()}, fn {kind, id, deps}, {bad, handled} ->
        missing =
          for pred <- before(deps),
              not MapSet.member?(handled, pred),
              not (relaxed? and kind == :cast and kinds[pred] == :info),
              do: {pred, kinds[pred]}

        bad = if missing == [], do: bad, else: [{:handled_before, {kind, id}, missing} | bad]
        {bad, MapSet.put(handled, id)}
      end)

    observed =
      for {p, clock, seen} <- observations,
          missing = before(clock) -- seen,
          missing != [],
          do: {:get_state_missed, {:by, p, kinds_of(missing, kinds)}}

    count ++ Enum.reverse(order) ++ observed
  end

  # {id, kind} for each id, ranges of consecutive ids of one kind shortened
  defp kinds_of(ids, kinds) do
    ids
    |> Enum.sort()
    |> Enum.chunk_while(
      nil,
      fn
        {q, k}, {q, first, last, kind} = run ->
          if k == last + 1 and kinds[{q, k}] == kind,
            do: {:cont, {q, first, k, kind}},
            else: {:cont, run, {q, k, k, kinds[{q, k}]}}

        {q, k}, nil ->
          {:cont, {q, k, k, kinds[{q, k}]}}

        {q, k}, run ->
          {:cont, run, {q, k, k, kinds[{q, k}]}}
      end,
      fn
        nil -> {:cont, nil}
        run -> {:cont, run, nil}
      end
    )
    |> Enum.map(fn {q, first, last, kind} -> {kind, {q, first..last}} end)
  end

  defp before(clock), do: for({q, n} <- clock, k <- 1..n//1, do: {q, k})

  @doc "How many constraints between requests of different processes `log` has."
  def cross_constraints(log) do
    Enum.sum(for {_kind, {p, _}, deps} <- log, {q, n} <- deps, q != p, do: n)
  end
end
