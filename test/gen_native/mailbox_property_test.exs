defmodule GenNative.MailboxModel do
  # A `:proper_statem` model of one GenNative server's native mailbox, used
  # by the property below.
  #
  # The server under test runs under a Supervisor with a registered name and
  # is kept suspended (`:sys.suspend/1`) between drains, so that requests
  # accumulate: the first normal cast to an idle server travels as a plain
  # {:"$gen_cast", request} message, everything else meets the lanes. What
  # the server handles it sends to the test process, so the log survives a
  # crash. A server restarted after a crash is held in its init/1 until the
  # next drain, so requests also meet a mailbox that has just been adopted.
  #
  # The model keeps what the server's process mailbox holds (`procq`: the
  # direct cast, the wake, normal calls, in arrival order) next to the two
  # lanes. A drain lets the server handle `procq` in order, and a wake
  # drains the lanes as they are then: the high lane FIFO, then the normal
  # lane FIFO. A crash ends the drain and loses the rest of `procq`; with
  # keep_on_crash the lanes go to the restarted server, whose priority calls
  # are dropped (their callers exit with the crash), without it they are
  # lost with the server.
  #
  # Counters follow the issue: each request sent is counted in exactly one of
  # accepted, rejected and dropped; a request dropped after it was accepted
  # (evicted under :drop_oldest, or a priority call of a crashed server)
  # moves from accepted to dropped.
  #
  # When a priority call of the crashed server is dropped is read two ways,
  # chosen by `:dead_calls` in the configuration:
  #   * :at_take (default): it keeps its place in the high lane (length,
  #     high_length, capacity) until the restarted server takes it out, and
  #     is counted as dropped then; c_src/mailbox.c does this;
  #   * :at_crash: it leaves the lane when its server crashes.
  @moduledoc false

  alias GenNative.MailboxModel.Server

  @ctx :gn_mailbox_property_ctx
  @wait_ms 2_000
  # the default batch_size: the most requests one take hands over
  @batch_size 64

  defmodule Server do
    @moduledoc false
    use GenNative

    def child_spec({owner, table, name, mailbox}) do
      %{
        id: __MODULE__,
        start:
          {GenNative, :start_link, [__MODULE__, {owner, table}, [name: name, mailbox: mailbox]]}
      }
    end

    # After a crash the new server waits here, mailbox adopted and name
    # registered, until the test says go.
    @impl true
    def init({owner, table} = state) do
      send(owner, {:gn_prop_started, self()})

      if :ets.take(table, :hold) != [] do
        receive do
          {:gn_prop_go, pid} when pid == self() -> :ok
        end
      end

      {:ok, state}
    end

    @impl true
    def handle_cast({:crash, _lane, _id} = request, {owner, table}) do
      send(owner, {:gn_prop_handled, request})
      if :ets.lookup(table, :teardown) == [], do: :ets.insert(table, {:hold})
      raise "gn_prop crash"
    end

    def handle_cast(request, {owner, _} = state) do
      send(owner, {:gn_prop_handled, request})
      {:noreply, state}
    end

    @impl true
    def handle_call(:ping, _from, state), do: {:reply, :pong, state}

    def handle_call({kind, id} = request, _from, {owner, _} = state)
        when kind in [:pcall, :ncall] do
      send(owner, {:gn_prop_handled, request})
      {:reply, {:reply, id}, state}
    end
  end

  ## Configuration and the system under test

  @doc "Generates a mailbox configuration: capacity, overflow, keep_on_crash."
  def config(dead_calls \\ :at_take) do
    :proper_types.bind(
      [
        :proper_types.oneof([:proper_types.integer(1, 5), :infinity]),
        :proper_types.elements([:reject, :drop_newest, :drop_oldest]),
        :proper_types.frequency([{3, true}, {1, false}])
      ],
      fn [capacity, overflow, keep] ->
        %{capacity: capacity, overflow: overflow, keep: keep, dead_calls: dead_calls}
      end,
      false
    )
  end

  @doc "Starts the server under a Supervisor, suspended."
  def setup(cfg) do
    flush()
    table = :ets.new(:gn_prop, [:public, :set])
    # A name of its own: a kept mailbox of a server that crashed during the
    # last case's teardown must not be adopted by this one.
    name = :"gn_mailbox_property_#{System.unique_integer([:positive])}"
    mailbox = [capacity: cfg.capacity, overflow: cfg.overflow, keep_on_crash: cfg.keep]

    {:ok, sup} =
      Supervisor.start_link([{Server, {self(), table, name, mailbox}}],
        strategy: :one_for_one,
        max_restarts: 1_000_000,
        max_seconds: 1
      )

    Process.unlink(sup)

    pid =
      receive do
        {:gn_prop_started, pid} -> pid
      after
        @wait_ms -> raise "server did not start"
      end

    :ok = :sys.suspend(pid)
    Process.put(@ctx, %{sup: sup, table: table, name: name, pid: pid, held: false, helpers: []})
    :ok
  end

  @doc "Stops the server and every helper left."
  def teardown do
    case Process.delete(@ctx) do
      nil ->
        :ok

      ctx ->
        Enum.each(ctx.helpers, fn {_id, pid} -> Process.exit(pid, :kill) end)
        # a held server blocks its supervisor: let it go, and hold no more
        :ets.insert(ctx.table, {:teardown})
        :ets.delete(ctx.table, :hold)
        if ctx.held, do: send(ctx.pid, {:gn_prop_go, ctx.pid})
        ref = Process.monitor(ctx.sup)
        Process.exit(ctx.sup, :shutdown)

        receive do
          {:DOWN, ^ref, _, _, _} -> :ok
        end

        :ets.delete(ctx.table)
    end

    flush()
  end

  defp flush do
    receive do
      {:gn_prop_started, _} -> flush()
      {:gn_prop_handled, _} -> flush()
      {:gn_prop_result, _, _} -> flush()
    after
      0 -> :ok
    end
  end

  defp ctx, do: Process.get(@ctx)

  ## Commands, run in the test process

  @doc false
  def cast(lane, id), do: do_cast({:cast, lane, id}, lane)

  @doc false
  def cast_crash(lane, id), do: do_cast({:crash, lane, id}, lane)

  defp do_cast(request, :normal), do: GenNative.cast(ctx().name, request)
  defp do_cast(request, :high), do: GenNative.cast(ctx().name, request, priority: :high)

  @doc false
  # A priority call from a helper process; returns once it is sent, its
  # result is collected at the next drain.
  def pcall(id) do
    name = ctx().name
    helper_call(id, fn -> GenNative.call(name, {:pcall, id}, 30_000, priority: :high) end)
  end

  @doc false
  # A normal call from a helper process: admitted against the normal lane,
  # then a gen_server call the server answers at the next drain.
  def ncall(id) do
    name = ctx().name
    helper_call(id, fn -> GenNative.call(name, {:ncall, id}, 30_000) end)
  end

  defp helper_call(id, fun) do
    %{pid: pid, helpers: helpers} = c = ctx()
    before = sent(GenNative.mailbox_info(pid))
    parent = self()

    helper =
      spawn(fn ->
        result =
          try do
            case fun.() do
              {:reply, ^id} -> :ok
              other -> {:unexpected_reply, other}
            end
          catch
            :exit, reason -> exit_reason(reason)
          end

        send(parent, {:gn_prop_result, id, result})
      end)

    Process.put(@ctx, %{c | helpers: [{id, helper} | helpers]})
    wait_sent(pid, before, helper, deadline())
  end

  defp exit_reason({:mailbox_full, {GenNative, :call, _}}), do: :mailbox_full

  defp exit_reason({{%RuntimeError{message: "gn_prop crash"}, _}, {GenNative, :call, _}}),
    do: :crashed

  defp exit_reason(reason), do: {:exit, reason}

  defp sent(%{accepted: a, rejected: r, dropped: d}), do: a + r + d

  # Whatever the outcome, sending changes the counters; but an admitted
  # normal call is counted before its message goes, so also wait for the
  # helper to be waiting for its reply (or done).
  defp wait_sent(pid, before, helper, deadline) do
    cond do
      sent(GenNative.mailbox_info(pid)) != before and
          Process.info(helper, :status) in [{:status, :waiting}, nil] ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        :not_sent

      true ->
        :erlang.yield()
        wait_sent(pid, before, helper, deadline)
    end
  end

  defp deadline, do: System.monotonic_time(:millisecond) + @wait_ms

  @doc false
  def info, do: GenNative.mailbox_info(ctx().pid)

  @doc false
  # Lets the server run (resume, or go for a held one) until it has handled
  # everything sent so far, or until it crashes; then fetches with a normal
  # call and suspends it again, or leaves its successor held in init/1.
  def drain do
    %{pid: pid, helpers: helpers} = c = ctx()
    if c.held, do: send(pid, {:gn_prop_go, pid}), else: :ok = :sys.resume(pid)

    {outcome, ping} =
      try do
        :sys.get_state(pid, @wait_ms)
        ping = GenNative.call(pid, :ping)
        :ok = :sys.suspend(pid)
        {{:ok, pid}, ping}
      catch
        :exit, _ ->
          receive do
            {:gn_prop_started, new} -> {{:restarted, new}, nil}
          after
            @wait_ms -> {:gone, nil}
          end
      end

    results = collect_results(Enum.reverse(helpers), %{}, deadline())
    log = collect_log([])

    case outcome do
      {:ok, pid} ->
        Process.put(@ctx, %{c | helpers: [], held: false})

        %{log: log, results: results, restarted: false, info: GenNative.mailbox_info(pid)}
        |> Map.put(:ping, ping)

      {:restarted, new} ->
        Process.put(@ctx, %{c | pid: new, helpers: [], held: true})
        %{log: log, results: results, restarted: true, info: GenNative.mailbox_info(new)}

      :gone ->
        %{log: log, results: results, error: :no_server}
    end
  end

  defp collect_log(acc) do
    receive do
      {:gn_prop_handled, request} -> collect_log([request | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  # After a drain every helper has its answer: its call was handled, or its
  # server crashed.
  defp collect_results([], acc, _deadline), do: acc

  defp collect_results([{id, _pid} | rest], acc, deadline) do
    wait = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:gn_prop_result, ^id, result} -> collect_results(rest, Map.put(acc, id, result), deadline)
    after
      wait -> collect_results(rest, Map.put(acc, id, :no_result), deadline)
    end
  end

  ## The model

  @counters %{admitted: 0, rejected: 0, dropped_new: 0, evicted: 0, skipped: 0, max_length: 0}

  def initial_state,
    do: initial_state(%{capacity: :infinity, overflow: :reject, keep: true, dead_calls: :at_take})

  def initial_state(cfg) do
    %{
      cfg: cfg,
      next_id: 1,
      # lane items: {:cast | :crash, lane, id}, {:pcall, id}, and {:dead, id}
      # for a priority call of a crashed server not taken out yet
      normal: [],
      high: [],
      procq: [],
      signaled: false,
      inflight: 0,
      # a restarted server waiting in init/1
      held: false,
      counters: @counters,
      # results of helper calls settled when sent (refused or evicted)
      settled: %{},
      # helper calls since the last drain
      outstanding: []
    }
  end

  def command(s) do
    id = s.next_id
    lane = :proper_types.elements([:normal, :high])

    :proper_types.frequency([
      {8, {:call, __MODULE__, :cast, [lane, id]}},
      {3, {:call, __MODULE__, :pcall, [id]}},
      {2, {:call, __MODULE__, :ncall, [id]}},
      {1, {:call, __MODULE__, :cast_crash, [lane, id]}},
      {3, {:call, __MODULE__, :drain, []}},
      {2, {:call, __MODULE__, :info, []}}
    ])
  end

  def precondition(_s, _call), do: true

  def next_state(s, _result, {:call, _, fun, [lane, id]}) when fun in [:cast, :cast_crash] do
    kind = if fun == :cast, do: :cast, else: :crash
    {_result, s} = send_request(bump(s, id), lane, {kind, lane, id})
    s
  end

  def next_state(s, _result, {:call, _, :pcall, [id]}) do
    {_result, s} = send_request(bump(s, id), :high, {:pcall, id})
    %{s | outstanding: [id | s.outstanding]}
  end

  def next_state(s, _result, {:call, _, :ncall, [id]}) do
    {_result, s} = send_request(bump(s, id), :normal, {:ncall, id})
    %{s | outstanding: [id | s.outstanding]}
  end

  def next_state(s, _result, {:call, _, :drain, []}), do: simulate_drain(s).state
  def next_state(s, _result, {:call, _, :info, []}), do: s

  defp bump(s, id), do: %{s | next_id: max(s.next_id, id + 1)}

  def postcondition(s, {:call, _, fun, [lane, id]}, result) when fun in [:cast, :cast_crash] do
    kind = if fun == :cast, do: :cast, else: :crash
    {expected, _} = send_request(s, lane, {kind, lane, id})
    check(fun, expected, result)
  end

  def postcondition(_s, {:call, _, fun, [_id]}, result) when fun in [:pcall, :ncall],
    do: check(fun, :ok, result)

  def postcondition(s, {:call, _, :info, []}, result), do: check(:info, expected_info(s), result)

  def postcondition(s, {:call, _, :drain, []}, result) do
    sim = simulate_drain(s)
    results = Map.merge(Map.take(s.settled, s.outstanding), sim.results)

    expected = %{
      log: sim.log,
      results: results,
      restarted: sim.state.held,
      info: expected_info(sim.state)
    }

    expected = if sim.state.held, do: expected, else: Map.put(expected, :ping, :pong)
    check(:drain, expected, result)
  end

  # Records the mismatch for the failure report.
  defp check(what, expected, actual) do
    if expected == actual do
      true
    else
      Process.put(:gn_prop_mismatch, %{command: what, expected: expected, actual: actual})
      false
    end
  end

  # One request meets the mailbox, as the issue and c_src/mailbox.c say.
  # Returns the sender's result and the new state.
  defp send_request(s, lane, item) do
    queue = Map.fetch!(s, lane)
    call? = match?({kind, _} when kind in [:pcall, :ncall], item)

    if full?(s.cfg.capacity, length(queue)) do
      case s.cfg.overflow do
        :reject ->
          {refused(call?), count(s, :rejected) |> settle(item, :mailbox_full)}

        :drop_newest ->
          {:ok, count(s, :dropped_new) |> settle(item, :mailbox_full)}

        :drop_oldest ->
          [oldest | rest] = queue

          s =
            s
            |> Map.put(lane, rest)
            |> count(:evicted)
            |> settle(oldest, :mailbox_full)

          accept(s, lane, item)
      end
    else
      accept(s, lane, item)
    end
  end

  defp full?(:infinity, _len), do: false
  defp full?(capacity, len), do: len >= capacity

  defp refused(true), do: :ok
  defp refused(false), do: {:error, :mailbox_full}

  # Only live calls have a caller to tell.
  defp settle(s, {kind, id}, result) when kind in [:pcall, :ncall],
    do: %{s | settled: Map.put(s.settled, id, result)}

  defp settle(s, _item, _result), do: s

  defp count(s, key, n \\ 1), do: %{s | counters: Map.update!(s.counters, key, &(&1 + n))}

  defp accept(s, lane, item) do
    s = count(s, :admitted)

    cond do
      match?({:ncall, _}, item) ->
        {:ok, %{s | procq: s.procq ++ [item]}}

      # a keep_on_crash mailbox queues every cast: a direct one would die
      # with its server
      lane == :normal and not s.cfg.keep and not s.signaled and s.normal == [] and s.high == [] and
          s.inflight == 0 ->
        {:ok, %{s | inflight: 1, procq: s.procq ++ [{:direct, item}]}}

      true ->
        s = Map.put(s, lane, Map.fetch!(s, lane) ++ [item])
        len = length(s.normal) + length(s.high)
        s = %{s | counters: %{s.counters | max_length: max(s.counters.max_length, len)}}

        if s.signaled,
          do: {:ok, s},
          else: {:ok, %{s | signaled: true, procq: s.procq ++ [:wake]}}
    end
  end

  defp expected_info(s) do
    c = s.counters
    later_dropped = c.evicted + c.skipped

    %{
      length: length(s.normal),
      high_length: length(s.high),
      capacity: s.cfg.capacity,
      overflow: s.cfg.overflow,
      accepted: c.admitted - later_dropped,
      rejected: c.rejected,
      dropped: c.dropped_new + later_dropped,
      max_length: c.max_length,
      blocked_senders: 0
    }
  end

  # What a drain does: the server handles its process mailbox in order; a
  # wake takes the high lane, then the normal lane. Without a crash, the
  # normal call that fetches the log is admitted last.
  defp simulate_drain(s) do
    d = run_procq(%{s: %{s | held: false}, log: [], results: %{}})
    s = d.s
    s = if s.held, do: s, else: count(s, :admitted)

    %{
      log: Enum.reverse(d.log),
      results: d.results,
      state: %{s | outstanding: [], settled: %{}}
    }
  end

  defp run_procq(%{s: %{procq: []}} = d), do: %{d | s: %{d.s | signaled: false, inflight: 0}}

  defp run_procq(%{s: %{procq: [msg | rest]} = s} = d) do
    d = %{d | s: %{s | procq: rest}}

    case msg do
      {:direct, item} ->
        handle_items([item], %{d | s: %{d.s | inflight: 0}}, :direct)

      {:ncall, _} = item ->
        handle_items([item], d, :direct)

      :wake ->
        take(d)
    end
  end

  # A wake takes batches of up to @batch_size requests, the high lane first,
  # until the lanes are empty; a dead call is skipped, and counted, as it is
  # taken out.
  defp take(%{s: %{high: [], normal: []}} = d), do: run_procq(d)

  defp take(d) do
    {batch, s} = take_batch(d.s, @batch_size, [])
    handle_items(batch, %{d | s: s}, :taken)
  end

  defp take_batch(s, 0, acc), do: {Enum.reverse(acc), s}
  defp take_batch(%{high: [], normal: []} = s, _n, acc), do: {Enum.reverse(acc), s}

  defp take_batch(%{high: [item | rest]} = s, n, acc),
    do: take_one(%{s | high: rest}, item, n, acc)

  defp take_batch(%{high: [], normal: [item | rest]} = s, n, acc),
    do: take_one(%{s | normal: rest}, item, n, acc)

  defp take_one(s, {:dead, _id}, n, acc), do: take_batch(count(s, :skipped), n, acc)
  defp take_one(s, item, n, acc), do: take_batch(s, n - 1, [item | acc])

  defp handle_items([], d, :taken), do: take(d)
  defp handle_items([], d, :direct), do: run_procq(d)

  defp handle_items([item | rest], d, how) do
    d = %{d | log: [item | d.log]}

    case item do
      {:crash, _lane, _id} -> crash(d, if(how == :taken, do: rest, else: []))
      {kind, id} when kind in [:pcall, :ncall] -> handle_items(rest, put_result(d, id, :ok), how)
      _cast -> handle_items(rest, d, how)
    end
  end

  defp put_result(d, id, result), do: %{d | results: Map.put(d.results, id, result)}

  # The server dies: the rest of its process mailbox is lost (normal calls
  # waiting there exit), what it took out and did not handle goes back to
  # the front of the lanes, and the callers of priority calls still queued
  # exit. Its successor is held in init/1.
  defp crash(d, untaken) do
    s = d.s
    {high_back, normal_back} = Enum.split_with(untaken, &high?/1)
    high = high_back ++ s.high
    normal = normal_back ++ s.normal
    lost_calls = for {:ncall, id} <- s.procq, do: id
    pcalls = for {:pcall, id} <- high, do: id
    d = Enum.reduce(lost_calls ++ pcalls, d, &put_result(&2, &1, :crashed))

    s =
      if s.cfg.keep do
        # adopted by the successor, which wakes itself if anything is queued
        wake = if high ++ normal == [], do: [], else: [:wake]

        {high, s} =
          case s.cfg.dead_calls do
            :at_take ->
              {Enum.map(high, &dead/1), s}

            :at_crash ->
              {Enum.reject(high, &match?({:pcall, _}, &1)), count(s, :skipped, length(pcalls))}
          end

        %{s | high: high, normal: normal, procq: wake, signaled: wake != []}
      else
        # a fresh mailbox: what was queued is lost, counters start again
        %{s | high: [], normal: [], counters: @counters, procq: [], signaled: false}
      end

    %{d | s: %{s | inflight: 0, held: true}}
  end

  defp dead({:pcall, id}), do: {:dead, id}
  defp dead(item), do: item

  defp high?({kind, _id}), do: kind in [:pcall, :dead]
  defp high?({_kind, lane, _id}), do: lane == :high

  ## The property

  @doc """
  The property: any command sequence, against a fresh server of a generated
  configuration, behaves as the model says.
  """
  def property(dead_calls \\ :at_take) do
    :proper.forall(config(dead_calls), fn cfg ->
      :proper.forall(:proper_statem.commands(__MODULE__, initial_state(cfg)), fn cmds ->
        Process.delete(:gn_prop_mismatch)
        setup(cfg)

        {history, _state, result} =
          try do
            :proper_statem.run_commands(__MODULE__, cmds)
          after
            teardown()
          end

        mismatch = Process.get(:gn_prop_mismatch)

        :proper.aggregate(
          command_names(cmds),
          :proper.whenfail(
            fn -> report(cfg, cmds, history, result, mismatch) end,
            fn -> result == :ok end
          )
        )
      end)
    end)
  end

  defp command_names(cmds) do
    for {:set, _var, {:call, _mod, fun, args}} <- cmds do
      case {fun, args} do
        {fun, [lane, _id]} -> {fun, lane}
        {fun, _} -> fun
      end
    end
  end

  defp report(cfg, cmds, history, result, mismatch) do
    IO.puts("""

    configuration: #{inspect(cfg)}
    commands:
    #{format_commands(cmds)}
    result: #{inspect(result)}
    steps run: #{length(history)}
    mismatch: #{inspect(mismatch, pretty: true, limit: :infinity)}
    """)
  end

  @doc "Formats a command sequence one command per line."
  def format_commands(cmds) do
    Enum.map_join(cmds, "\n", fn
      {:set, _var, {:call, _mod, fun, args}} ->
        "  #{fun}(#{Enum.map_join(args, ", ", &inspect/1)})"

      {:init, state} ->
        "  init(#{inspect(state.cfg)})"

      other ->
        "  #{inspect(other)}"
    end)
  end
end

defmodule GenNative.MailboxPropertyTest do
  # A stateful property (PropEr's proper_statem) of the native mailbox:
  # random sequences of casts in both lanes, priority and normal calls,
  # crashes, drains and mailbox_info/1 checks against one suspended server,
  # compared with the model above.
  #
  # Not async: the server under test has a fixed registered name.
  use ExUnit.Case, async: false

  alias GenNative.MailboxModel

  @moduletag :capture_log

  # GN_PROP_NUMTESTS overrides the number of test cases; GN_PROP_DEAD_CALLS
  # (at_take or at_crash) chooses when a crashed server's priority calls
  # leave the mailbox (see the model).
  @numtests String.to_integer(System.get_env("GN_PROP_NUMTESTS", "200"))
  @dead_calls String.to_existing_atom(System.get_env("GN_PROP_DEAD_CALLS", "at_take"))

  describe "native mailbox" do
    @tag timeout: 120_000
    test "behaves as the model under random casts, calls, crashes and drains" do
      GenNative.PropCheck.check(MailboxModel.property(@dead_calls),
        numtests: @numtests,
        max_size: 60,
        format: fn
          [cfg, cmds] ->
            "configuration: #{inspect(cfg)}\n#{MailboxModel.format_commands(cmds)}"

          other ->
            inspect(other, pretty: true)
        end
      )
    end
  end
end
