defmodule GenNative.MailboxModel do
  # A `:proper_statem` model of one GenNative server's native mailbox, used
  # by the property below.
  #
  # The server under test runs under a Supervisor with a registered name and
  # is kept suspended (`:sys.suspend/1`) between drains, so that requests
  # accumulate. What the server handles it sends to the test process, so the
  # log survives a crash. A server restarted after a crash is held in its
  # init/1 until the next drain, so requests also meet a mailbox that has
  # just been made or adopted.
  #
  # The mailbox has two modes (c_src/mailbox.c, docs/spec of issue 9):
  #   * message mode (overflow :reject, :drop_newest or :block, no
  #     keep_on_crash; the server has no handle_batch/2): a normal
  #     GenNative.cast is counted (accepted, `length`, against `capacity`)
  #     the moment it returns and travels as the process message
  #     {:"$gen_cast", request}; the normal lane stays empty;
  #   * queue mode (overflow :drop_oldest, or keep_on_crash): normal casts
  #     wait in the normal lane, and the sender of a request that finds no
  #     wake pending sends one.
  # In both modes priority requests wait in the high lane (and wake the
  # server the same way), and a normal call is admitted against the normal
  # lane's capacity (evicting the oldest queued cast under :drop_oldest)
  # without occupying a slot, then travels as a gen_server call.
  #
  # The model keeps what the server's process mailbox holds (`procq`: casts,
  # GenServer.cast casts, plain messages, normal calls and wakes, in arrival
  # order) next to the two lanes. A drain lets the server handle `procq` in
  # order:
  #   * before any process message other than a wake is handled, the high
  #     lane is emptied and handled (priority overtakes everything waiting);
  #     a normal call whose deadline has passed (drop_expired_calls) is
  #     counted expired first and then skipped;
  #   * a wake takes batches of up to @batch_size requests, the high lane
  #     first, then (queue mode) the normal lane, until the lanes are empty;
  #     a take that leaves both lanes empty clears `signaled`, so the next
  #     request sends a wake again. (With process messages waiting the server
  #     drains only what is queued at that moment and wakes itself for the
  #     rest; nothing is sent during a drain here, so that is all of it.)
  # A crash ends the drain and loses the rest of `procq` (normal calls in it
  # exit). With keep_on_crash what was taken out and not handled goes back
  # to the front of the lanes and the lanes go to the restarted server, whose
  # priority calls are dropped (their callers exit with the crash); without
  # it they are lost with the server and the new server has a new mailbox.
  #
  # Counters follow the issue: each request sent is counted in exactly one of
  # accepted, rejected, dropped and expired; a request dropped after it was
  # accepted (evicted under :drop_oldest, or a priority call of a crashed
  # server) moves from accepted to dropped, and a call whose deadline passed
  # before the server reached it (drop_expired_calls) from accepted to
  # expired.
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
  # the timeout of a call made to expire: the server is suspended, so its
  # caller always gives up before the server reaches it
  @short_ms 1

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

    # After a crash the new server waits here, mailbox made or adopted and
    # name registered, until the test says go.
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
        when kind in [:pcall, :ncall, :tpcall, :tncall] do
      send(owner, {:gn_prop_handled, request})
      {:reply, {:reply, id}, state}
    end

    @impl true
    def handle_info({:info, _id} = message, {owner, _} = state) do
      send(owner, {:gn_prop_handled, message})
      {:noreply, state}
    end
  end

  ## Configuration and the system under test

  @doc """
  Generates a mailbox configuration: capacity, overflow, keep_on_crash,
  drop_expired_calls.
  """
  def config(dead_calls \\ :at_take) do
    :proper_types.bind(
      [
        :proper_types.oneof([:proper_types.integer(1, 5), :infinity]),
        :proper_types.frequency([
          {2, :reject},
          {2, :drop_newest},
          {2, :drop_oldest},
          {1, :block}
        ]),
        :proper_types.boolean(),
        :proper_types.boolean()
      ],
      fn [capacity, overflow, keep, expire] ->
        %{
          capacity: capacity,
          overflow: overflow,
          keep: keep,
          expire: expire,
          dead_calls: dead_calls
        }
      end,
      false
    )
  end

  @doc "Queue mode: normal casts wait in the normal lane."
  def queue_mode?(cfg), do: cfg.overflow == :drop_oldest or cfg.keep

  @doc "Starts the server under a Supervisor, suspended."
  def setup(cfg) do
    flush()
    table = :ets.new(:gn_prop, [:public, :set])
    # A name of its own: a kept mailbox of a server that crashed during the
    # last case's teardown must not be adopted by this one.
    name = :"gn_mailbox_property_#{System.unique_integer([:positive])}"

    mailbox = [
      capacity: cfg.capacity,
      overflow: cfg.overflow,
      keep_on_crash: cfg.keep,
      drop_expired_calls: cfg.expire
    ]

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

    Process.put(@ctx, %{
      sup: sup,
      table: table,
      name: name,
      pid: pid,
      cfg: cfg,
      held: false,
      helpers: []
    })

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

  # Under :block a cast that finds no room gives up at once (the server is
  # suspended: no room appears); otherwise the plain cast/2.
  defp do_cast(request, lane) do
    %{name: name, cfg: cfg} = ctx()

    opts =
      if(lane == :high, do: [priority: :high], else: []) ++
        if cfg.overflow == :block, do: [timeout: 0], else: []

    case opts do
      [] -> GenNative.cast(name, request)
      opts -> GenNative.cast(name, request, opts)
    end
  end

  @doc false
  # A cast GenNative cannot count: a plain {:"$gen_cast", request} message.
  def gen_server_cast(id), do: GenServer.cast(ctx().name, {:cast, :gen_server, id})

  @doc false
  # A plain message, for handle_info/2.
  def send_info(id) do
    send(ctx().name, {:info, id})
    :ok
  end

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

  @doc false
  # A call, normal or priority, with a timeout so short that its caller
  # gives up before the (suspended) server reaches it. Returns the caller's
  # result once it has given up: a caller never gives up before its
  # deadline, so with drop_expired_calls the server must skip the call.
  def tcall(lane, id) do
    name = ctx().name

    {request, opts} =
      case lane do
        :normal -> {{:tncall, id}, []}
        :high -> {{:tpcall, id}, [priority: :high]}
      end

    task =
      Task.async(fn ->
        call_result(id, fn -> GenNative.call(name, request, @short_ms, opts) end)
      end)

    case Task.yield(task, @wait_ms) || Task.shutdown(task, :brutal_kill) do
      {:ok, result} -> result
      _ -> :no_result
    end
  end

  defp helper_call(id, fun) do
    %{pid: pid, helpers: helpers} = c = ctx()
    before = sent(GenNative.mailbox_info(pid))
    parent = self()
    helper = spawn(fn -> send(parent, {:gn_prop_result, id, call_result(id, fun)}) end)
    Process.put(@ctx, %{c | helpers: [{id, helper} | helpers]})
    wait_sent(pid, before, helper, deadline())
  end

  defp call_result(id, fun) do
    case fun.() do
      {:reply, ^id} -> :ok
      other -> {:unexpected_reply, other}
    end
  catch
    :exit, reason -> exit_reason(reason)
  end

  defp exit_reason({:mailbox_full, {GenNative, :call, _}}), do: :mailbox_full
  defp exit_reason({:timeout, {GenNative, :call, _}}), do: :timeout

  defp exit_reason({{%RuntimeError{message: "gn_prop crash"}, _}, {GenNative, :call, _}}),
    do: :crashed

  defp exit_reason(reason), do: {:exit, reason}

  defp sent(%{accepted: a, rejected: r, dropped: d, expired: e}), do: a + r + d + e

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

  @counters %{
    admitted: 0,
    rejected: 0,
    dropped_new: 0,
    evicted: 0,
    skipped: 0,
    expired: 0,
    max_length: 0
  }

  def initial_state,
    do:
      initial_state(%{
        capacity: :infinity,
        overflow: :reject,
        keep: false,
        expire: false,
        dead_calls: :at_take
      })

  def initial_state(cfg) do
    %{
      cfg: cfg,
      next_id: 1,
      # lane items: {:cast | :crash, lane, id}, {:pcall, id}, {:tpcall, id},
      # and {:dead, id} for a priority call of a crashed server not taken
      # out yet; the normal lane is used in queue mode only
      normal: [],
      high: [],
      # the server's process mailbox: {:cast, request, counted?} (a
      # {:"$gen_cast", request}; counted? for GenNative's, which are in
      # `length`), {:call, {:ncall | :tncall, id}}, {:info, request}, :wake
      procq: [],
      signaled: false,
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
      {2, {:call, __MODULE__, :tcall, [lane, id]}},
      {1, {:call, __MODULE__, :gen_server_cast, [id]}},
      {1, {:call, __MODULE__, :send_info, [id]}},
      {1, {:call, __MODULE__, :cast_crash, [lane, id]}},
      {3, {:call, __MODULE__, :drain, []}},
      {2, {:call, __MODULE__, :info, []}}
    ])
  end

  # Under :block a call that finds no room would wait for the next drain,
  # racing with it: calls are only made while there is room.
  def precondition(%{cfg: %{overflow: :block}} = s, {:call, _, fun, args})
      when fun in [:pcall, :ncall, :tcall] do
    lane =
      case {fun, args} do
        {:pcall, _} -> :high
        {:ncall, _} -> :normal
        {:tcall, [lane, _id]} -> lane
      end

    not full?(s.cfg.capacity, lane_len(s, lane))
  end

  def precondition(_s, _call), do: true

  def next_state(s, _result, {:call, _, fun, [lane, id]}) when fun in [:cast, :cast_crash] do
    kind = if fun == :cast, do: :cast, else: :crash
    {_outcome, s} = send_request(bump(s, id), lane, {kind, lane, id})
    s
  end

  def next_state(s, _result, {:call, _, :pcall, [id]}) do
    {_outcome, s} = send_request(bump(s, id), :high, {:pcall, id})
    %{s | outstanding: [id | s.outstanding]}
  end

  def next_state(s, _result, {:call, _, :ncall, [id]}) do
    {_outcome, s} = send_request(bump(s, id), :normal, {:ncall, id})
    %{s | outstanding: [id | s.outstanding]}
  end

  def next_state(s, _result, {:call, _, :tcall, [lane, id]}) do
    {_outcome, s} = send_request(bump(s, id), lane, timed_call(lane, id))
    s
  end

  def next_state(s, _result, {:call, _, :gen_server_cast, [id]}) do
    s = bump(s, id)
    %{s | procq: s.procq ++ [{:cast, {:cast, :gen_server, id}, false}]}
  end

  def next_state(s, _result, {:call, _, :send_info, [id]}) do
    s = bump(s, id)
    %{s | procq: s.procq ++ [{:info, {:info, id}}]}
  end

  def next_state(s, _result, {:call, _, :drain, []}), do: simulate_drain(s).state
  def next_state(s, _result, {:call, _, :info, []}), do: s

  defp bump(s, id), do: %{s | next_id: max(s.next_id, id + 1)}

  defp timed_call(:normal, id), do: {:tncall, id}
  defp timed_call(:high, id), do: {:tpcall, id}

  def postcondition(s, {:call, _, fun, [lane, id]}, result) when fun in [:cast, :cast_crash] do
    kind = if fun == :cast, do: :cast, else: :crash
    {outcome, _} = send_request(s, lane, {kind, lane, id})
    expected = if outcome == :rejected, do: {:error, :mailbox_full}, else: :ok
    check(fun, expected, result)
  end

  def postcondition(s, {:call, _, :tcall, [lane, id]}, result) do
    # its caller gave up: at once if the call was refused, else at its timeout
    {outcome, _} = send_request(s, lane, timed_call(lane, id))
    expected = if outcome == :accepted, do: :timeout, else: :mailbox_full
    check(:tcall, expected, result)
  end

  def postcondition(_s, {:call, _, fun, [_id]}, result)
      when fun in [:pcall, :ncall, :gen_server_cast, :send_info],
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

  defp queue?(s), do: queue_mode?(s.cfg)

  # What `length` counts: normal casts queued (queue mode) or sent with
  # GenNative.cast and not handled yet (message mode).
  defp normal_len(s) do
    if queue?(s),
      do: length(s.normal),
      else: Enum.count(s.procq, &match?({:cast, _, true}, &1))
  end

  defp lane_len(s, :normal), do: normal_len(s)
  defp lane_len(s, :high), do: length(s.high)

  # One request meets the mailbox, as the issue and c_src/mailbox.c say.
  # Returns :accepted, :rejected or :dropped (discarded under :drop_newest)
  # and the new state. Under :block a cast that finds no room gives up at
  # once and counts as rejected.
  defp send_request(s, lane, item) do
    if full?(s.cfg.capacity, lane_len(s, lane)) do
      case s.cfg.overflow do
        policy when policy in [:reject, :block] ->
          {:rejected, count(s, :rejected) |> settle(item, :mailbox_full)}

        :drop_newest ->
          {:dropped, count(s, :dropped_new) |> settle(item, :mailbox_full)}

        :drop_oldest ->
          # queue mode: the lane holds what `length` counts; a normal call
          # evicts a queued cast too, though it takes no place itself
          [oldest | rest] = Map.fetch!(s, lane)

          s =
            s
            |> Map.put(lane, rest)
            |> count(:evicted)
            |> settle(oldest, :mailbox_full)

          {:accepted, accept(s, lane, item)}
      end
    else
      {:accepted, accept(s, lane, item)}
    end
  end

  defp full?(:infinity, _len), do: false
  defp full?(capacity, len), do: len >= capacity

  # Only live calls whose caller still waits have a caller to tell.
  defp settle(s, {kind, id}, result) when kind in [:pcall, :ncall],
    do: %{s | settled: Map.put(s.settled, id, result)}

  defp settle(s, _item, _result), do: s

  defp count(s, key, n \\ 1), do: %{s | counters: Map.update!(s.counters, key, &(&1 + n))}

  defp note_length(s) do
    len = normal_len(s) + length(s.high)
    %{s | counters: %{s.counters | max_length: max(s.counters.max_length, len)}}
  end

  # An admitted normal call travels as a gen_server call and takes no
  # place; a normal cast in message mode travels as a {:"$gen_cast", _}
  # message; anything else is queued, and its sender wakes the server if
  # no wake is pending.
  defp accept(s, lane, item) do
    s = count(s, :admitted)

    cond do
      match?({kind, _} when kind in [:ncall, :tncall], item) ->
        %{s | procq: s.procq ++ [{:call, item}]}

      lane == :normal and not queue?(s) ->
        note_length(%{s | procq: s.procq ++ [{:cast, item, true}]})

      true ->
        s = s |> Map.put(lane, Map.fetch!(s, lane) ++ [item]) |> note_length()

        if s.signaled,
          do: s,
          else: %{s | signaled: true, procq: s.procq ++ [:wake]}
    end
  end

  defp expected_info(s) do
    c = s.counters
    later_dropped = c.evicted + c.skipped

    %{
      length: normal_len(s),
      high_length: length(s.high),
      capacity: s.cfg.capacity,
      overflow: s.cfg.overflow,
      accepted: c.admitted - later_dropped - c.expired,
      rejected: c.rejected,
      dropped: c.dropped_new + later_dropped,
      expired: c.expired,
      max_length: c.max_length,
      blocked_senders: 0
    }
  end

  # What a drain does: the server handles its process mailbox in order,
  # until it is empty or the server crashes. Without a crash, the normal
  # call that fetches the log is admitted last.
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

  defp run_procq(%{s: %{procq: []}} = d), do: d

  defp run_procq(%{s: %{procq: [msg | rest]} = s} = d) do
    case handle_message(msg, %{d | s: %{s | procq: rest}}) do
      {:cont, d} -> run_procq(d)
      {:crashed, d} -> d
    end
  end

  # A wake: priority requests, then queued casts.
  defp handle_message(:wake, d), do: take_all(d)

  # A normal call: told to the mailbox (as expired, if its deadline has
  # passed and the server skips such calls), then priority requests first.
  defp handle_message({:call, {kind, _id} = item} = msg, d) do
    expired? = kind == :tncall and d.s.cfg.expire
    d = if expired?, do: %{d | s: count(d.s, :expired)}, else: d

    with {:cont, d} <- take_high(d, msg) do
      if expired?, do: {:cont, d}, else: handle_item(item, d, [], [])
    end
  end

  # A cast (GenNative's or GenServer's) or a plain message: priority
  # requests first.
  defp handle_message({tag, item, _counted?} = msg, d) when tag == :cast do
    with {:cont, d} <- take_high(d, msg), do: handle_item(item, d, [], [])
  end

  defp handle_message({:info, item} = msg, d) do
    with {:cont, d} <- take_high(d, msg), do: handle_item(item, d, [], [])
  end

  # Before the process message `msg`: batches of the high lane only, until
  # a short one. A crash loses `msg` with the rest of the process mailbox.
  defp take_high(%{s: %{high: []}} = d, _msg), do: {:cont, d}

  defp take_high(d, msg) do
    {batch, s} = take_batch(d.s, @batch_size, [], :high)

    case handle_taken(batch, %{d | s: s}, [msg]) do
      {:cont, d} when length(batch) < @batch_size -> {:cont, d}
      {:cont, d} -> take_high(d, msg)
      crashed -> crashed
    end
  end

  # On a wake: batches of the high lane, then the normal lane, until a
  # short one; a take that leaves both lanes empty clears `signaled`.
  defp take_all(d) do
    {batch, s} = take_batch(d.s, @batch_size, [], :all)
    s = if s.high == [] and s.normal == [], do: %{s | signaled: false}, else: s

    case handle_taken(batch, %{d | s: s}, []) do
      {:cont, d} when length(batch) < @batch_size -> {:cont, d}
      {:cont, d} -> take_all(d)
      crashed -> crashed
    end
  end

  # A dead call is skipped, and counted, as it is taken out; it does not
  # count towards the batch.
  defp take_batch(s, 0, acc, _lanes), do: {Enum.reverse(acc), s}

  defp take_batch(%{high: [item | rest]} = s, n, acc, lanes),
    do: take_one(%{s | high: rest}, item, n, acc, lanes)

  defp take_batch(%{high: [], normal: [item | rest]} = s, n, acc, :all),
    do: take_one(%{s | normal: rest}, item, n, acc, :all)

  defp take_batch(s, _n, acc, _lanes), do: {Enum.reverse(acc), s}

  defp take_one(s, {:dead, _id}, n, acc, lanes), do: take_batch(count(s, :skipped), n, acc, lanes)
  defp take_one(s, item, n, acc, lanes), do: take_batch(s, n - 1, [item | acc], lanes)

  defp handle_taken([], d, _lost), do: {:cont, d}

  defp handle_taken([item | rest], d, lost) do
    case handle_item(item, d, rest, lost) do
      {:cont, d} -> handle_taken(rest, d, lost)
      crashed -> crashed
    end
  end

  # Handles one request; `untaken`: what was taken out with it and comes
  # after it; `lost`: the process message being handled, if any.
  defp handle_item(item, d, untaken, lost) do
    d = %{d | log: [item | d.log]}

    case item do
      {:crash, _lane, _id} ->
        {:crashed, crash(d, untaken, lost)}

      {:tpcall, _id} when d.s.cfg.expire ->
        # taken out after its deadline: not handled, counted expired
        {:cont, %{d | log: tl(d.log), s: count(d.s, :expired)}}

      {kind, id} when kind in [:pcall, :ncall] ->
        {:cont, put_result(d, id, :ok)}

      _handled ->
        {:cont, d}
    end
  end

  defp put_result(d, id, result), do: %{d | results: Map.put(d.results, id, result)}

  # The server dies: the rest of its process mailbox is lost (normal calls
  # waiting there exit), what it took out and did not handle goes back to
  # the front of the lanes, and the callers of priority calls still queued
  # exit. Its successor is held in init/1.
  defp crash(d, untaken, lost) do
    s = d.s
    {high_back, normal_back} = Enum.split_with(untaken, &high?/1)
    high = high_back ++ s.high
    normal = normal_back ++ s.normal
    lost_calls = for {:call, {:ncall, id}} <- lost ++ s.procq, do: id
    pcalls = for {:pcall, id} <- high, do: id
    d = Enum.reduce(lost_calls ++ pcalls, d, &put_result(&2, &1, :crashed))

    s =
      if s.cfg.keep do
        # adopted by the successor, which wakes itself if anything is queued
        {high, s} =
          case s.cfg.dead_calls do
            :at_take ->
              {Enum.map(high, &dead/1), s}

            :at_crash ->
              {kept, calls} = Enum.split_with(high, &(not call?(&1)))
              {kept, count(s, :skipped, length(calls))}
          end

        wake = if high ++ normal == [], do: [], else: [:wake]
        %{s | high: high, normal: normal, procq: wake, signaled: wake != []}
      else
        # a new mailbox: what was queued is lost, counters start again
        %{s | high: [], normal: [], counters: @counters, procq: [], signaled: false}
      end

    %{d | s: %{s | held: true}}
  end

  defp call?({kind, _id}), do: kind in [:pcall, :tpcall, :dead]
  defp call?(_item), do: false

  defp dead({kind, id}) when kind in [:pcall, :tpcall], do: {:dead, id}
  defp dead(item), do: item

  defp high?({_kind, _id}), do: true
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
  # A stateful property (PropEr's proper_statem) of the native mailbox, in
  # message mode and in queue mode: random sequences of casts in both lanes,
  # GenServer casts, plain messages, priority and normal calls, calls whose
  # caller gave up, crashes, drains and mailbox_info/1 checks against one
  # suspended server, compared with the model above.
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
