# The overload suite: 4 producers cast as fast as they can for 5 s at a
# server that spends about 10 us on each request (a busy-wait on
# :erlang.monotonic_time/0, not a sleep): a GenServer, whose process mailbox
# grows without bound, and a GenNative server with
# `mailbox: [capacity: 10_000, overflow: :reject]`, whose producers get
# {:error, :mailbox_full} once it is full.
#
# Measured on each side, one run each (GenNative first, so that its idle
# footprint is not measured after GenServer's gigabytes were freed):
#
#   * VM memory (:erlang.memory(:total)) when idle, just before the producers
#     start, and its peak during the run, sampled every 50 ms by a separate
#     process;
#   * the latency of calls: a probe issues a normal call every 50 ms, each
#     from a process of its own so that a call stuck behind the backlog does
#     not hold the next one back; reported for the calls issued during the
#     last second of the run. After the producers stop, the calls still
#     waiting get 1000 ms more with the server still doing its
#     10 us per request; one still unanswered then counts as "more than"
#     the time it had waited. A normal call is admitted against the
#     mailbox's capacity, so under overflow: :reject GenNative's normal calls
#     mostly exit with :mailbox_full; a second probe on GenNative makes
#     `priority: :high` calls the same way;
#   * every request accounted for: after the producers stop, the server's
#     work is switched off (requests are then handled without the 10 us) to
#     drain what is queued, and the requests sent are checked against those
#     handled and, for GenNative, those mailbox_info/1 says were rejected
#     or dropped.
#
# Safety cap: a GenServer's mailbox can reach gigabytes within seconds; the
# sampler stops the producers early if VM memory exceeds 4 GB
# (GN_BENCH_OVERLOAD_CAP_MB to change it), and the table says so.
#
# A second table (module GenNative.Bench.Overload.Expiry below): calls whose
# caller gave up. A server spends 1 ms per call, callers arrive at twice
# that rate with a 100 ms timeout for 5 s, and the table counts the calls
# the server still ran after their caller had left: GenServer, GenNative
# with its default mailbox, and GenNative with
# `mailbox: [drop_expired_calls: true]` (issue 9; the goal is 0).
#
#     mix gen_native.bench overload
#     GN_BENCH_QUICK=1 bin/bench overload     # 1 s runs

defmodule GenNative.Bench.Overload.Work do
  @moduledoc false
  # The shared control block of a run, an :atomics array:
  #   1: per-request work in native time units (0 = drain as fast as possible)
  #   2: casts handled, 3: calls handled (not counting :stats)
  #   4: 1 once the producers must stop
  @work 1
  @casts 2
  @calls 3
  @stop 4

  def new(work_ns) do
    ref = :atomics.new(4, signed: true)
    :atomics.put(ref, @work, work_ns)
    ref
  end

  def cast_handled(ref) do
    spin(:atomics.get(ref, @work))
    :atomics.add(ref, @casts, 1)
  end

  def call_handled(ref), do: :atomics.add(ref, @calls, 1)

  def stats(ref), do: %{casts: :atomics.get(ref, @casts), calls: :atomics.get(ref, @calls)}

  def fast(ref), do: :atomics.put(ref, @work, 0)
  def stop(ref), do: :atomics.put(ref, @stop, 1)
  def stop?(ref), do: :atomics.get(ref, @stop) == 1

  def spin(0), do: :ok
  def spin(ns), do: spin_until(:erlang.monotonic_time() + ns)

  defp spin_until(deadline) do
    if :erlang.monotonic_time() < deadline, do: spin_until(deadline), else: :ok
  end
end

defmodule GenNative.Bench.Overload.PeerServer do
  @moduledoc false
  use GenServer
  alias GenNative.Bench.Overload.Work

  @impl true
  def init(ctl), do: {:ok, ctl}

  @impl true
  def handle_call(:ping, _from, ctl) do
    Work.call_handled(ctl)
    {:reply, :pong, ctl}
  end

  def handle_call(:stats, _from, ctl), do: {:reply, Work.stats(ctl), ctl}

  @impl true
  def handle_cast(:work, ctl) do
    Work.cast_handled(ctl)
    {:noreply, ctl}
  end
end

defmodule GenNative.Bench.Overload.NativeServer do
  @moduledoc false
  use GenNative, mailbox: [capacity: 10_000, overflow: :reject]
  alias GenNative.Bench.Overload.Work

  @impl true
  def init(ctl), do: {:ok, ctl}

  @impl true
  def handle_call(:ping, _from, ctl) do
    Work.call_handled(ctl)
    {:reply, :pong, ctl}
  end

  def handle_call(:stats, _from, ctl), do: {:reply, Work.stats(ctl), ctl}

  @impl true
  def handle_cast(:work, ctl) do
    Work.cast_handled(ctl)
    {:noreply, ctl}
  end
end

defmodule GenNative.Bench.Overload do
  @moduledoc false
  alias GenNative.Bench
  alias GenNative.Bench.Overload.{NativeServer, PeerServer, Work}

  @producers 4
  @work_us 10
  @sample_ms 50
  @probe_ms 50
  @grace_ms 1000
  @mb 1_000_000

  def run do
    quick = Bench.quick?()
    duration_ms = if quick, do: 1000, else: 5000
    window_ms = min(1000, div(duration_ms, 2))
    cap = String.to_integer(System.get_env("GN_BENCH_OVERLOAD_CAP_MB", "4000")) * @mb
    config = %{duration_ms: duration_ms, window_ms: window_ms, cap: cap}

    started = :erlang.monotonic_time()
    native = side(:native, config)
    peer = side(:peer, config)
    wall_s = :erlang.convert_time_unit(:erlang.monotonic_time() - started, :native, :millisecond)

    plot(peer, native, config)
    text = report(peer, native, config, wall_s / 1000)
    text = text <> GenNative.Bench.Overload.Expiry.run(duration_ms)
    Bench.publish("overload", text)

    for %{unaccounted: u, label: label} <- [peer, native], u != 0 do
      IO.puts(:stderr, "overload: #{label}: #{u} requests unaccounted for")
    end

    :ok
  end

  ## One side

  defp side(which, config) do
    label = if which == :peer, do: "GenServer", else: "GenNative"
    IO.write(:stderr, "overload: #{label} ...")
    work = :erlang.convert_time_unit(@work_us * 1000, :nanosecond, :native)
    ctl = Work.new(work)

    {mod, pid} =
      case which do
        :peer ->
          {:ok, pid} = GenServer.start(PeerServer, ctl)
          {GenServer, pid}

        :native ->
          {:ok, pid} = GenNative.start(NativeServer, ctl)
          {GenNative, pid}
      end

    # Idle: after a collection of every process, nothing running.
    Enum.each(Process.list(), &:erlang.garbage_collect/1)
    Process.sleep(200)
    idle = :erlang.memory(:total)

    sampler = spawn_sampler(ctl, config.cap)
    probe = spawn_probe(mod, pid, [])
    # GenNative only: the same probe with priority: :high calls.
    high_probe = if which == :native, do: spawn_probe(mod, pid, priority: :high)
    t0 = :erlang.monotonic_time()

    producers =
      for _ <- 1..@producers do
        spawn_monitor(fn -> exit({:done, produce(mod, pid, ctl, 0, 0)}) end)
      end

    # Run until the time is up, or the sampler stopped the producers.
    wait_stop(ctl, t0 + ms(config.duration_ms))
    Work.stop(ctl)
    t_stop = :erlang.monotonic_time()
    send(probe, :stop)
    if high_probe, do: send(high_probe, :stop)

    {sent, rejected} =
      Enum.reduce(producers, {0, 0}, fn {ppid, ref}, {s, r} ->
        receive do
          {:DOWN, ^ref, :process, ^ppid, {:done, {ps, pr}}} -> {s + ps, r + pr}
          {:DOWN, ^ref, :process, ^ppid, other} -> raise "producer died: #{inspect(other)}"
        end
      end)

    t_producers_done = :erlang.monotonic_time()
    queued_at_stop = queued(mod, pid)
    handled_at_stop = Work.stats(ctl).casts

    # The calls still waiting get the grace period at full work, then the
    # memory sampler and the probe report.
    calls = collect_probe(probe, t_stop + ms(@grace_ms))
    high_calls = if high_probe, do: collect_probe(high_probe, t_stop + ms(@grace_ms)), else: []
    {peak, capped_at, memory} = stop_sampler(sampler)

    # Drain without the work, and account for every request.
    sampler = spawn_sampler(ctl, :infinity)
    Work.fast(ctl)
    drain_started = :erlang.monotonic_time()
    info = drain(mod, pid)
    drain_ms = to_ms(:erlang.monotonic_time() - drain_started)
    {drain_peak, _, _} = stop_sampler(sampler)
    stats = mod.call(pid, :stats, :infinity)
    :ok = mod.stop(pid, :normal, :infinity)

    window_start = t_stop - ms(config.window_ms)
    last = Enum.filter(calls, fn c -> c.issued >= window_start end)
    high_last = if high_probe, do: Enum.filter(high_calls, &(&1.issued >= window_start))

    IO.puts(:stderr, " done")

    accounting(which, %{
      label: label,
      idle: idle,
      peak: peak,
      drain_peak: drain_peak,
      capped_at: capped_at && to_ms(capped_at - t0),
      ran_ms: to_ms(t_stop - t0),
      stop_ms: to_ms(t_producers_done - t_stop),
      sent: sent,
      rejected_seen: rejected,
      queued_at_stop: queued_at_stop,
      handled_at_stop: handled_at_stop,
      drain_ms: drain_ms,
      stats: stats,
      info: info,
      calls: calls ++ high_calls,
      normal_calls: calls,
      high_calls: high_calls,
      last: last,
      high_last: high_last,
      t0: t0,
      t_stop: t_stop,
      memory: memory
    })
  end

  defp ms(n), do: :erlang.convert_time_unit(n, :millisecond, :native)
  defp to_ms(native), do: :erlang.convert_time_unit(native, :native, :microsecond) / 1000

  defp wait_stop(ctl, deadline) do
    cond do
      Work.stop?(ctl) ->
        :capped

      :erlang.monotonic_time() >= deadline ->
        :time

      true ->
        Process.sleep(10)
        wait_stop(ctl, deadline)
    end
  end

  # A producer casts until told to stop; returns {sent, rejected}.
  defp produce(mod, pid, ctl, sent, rejected) do
    if Work.stop?(ctl) do
      {sent, rejected}
    else
      case mod.cast(pid, :work) do
        :ok -> produce(mod, pid, ctl, sent + 1, rejected)
        {:error, :mailbox_full} -> produce(mod, pid, ctl, sent + 1, rejected + 1)
      end
    end
  end

  defp queued(GenServer, pid) do
    {:message_queue_len, n} = Process.info(pid, :message_queue_len)
    n
  end

  defp queued(GenNative, pid) do
    info = GenNative.mailbox_info(pid)
    info.length + info.high_length
  end

  # GenServer: a call waits for everything queued before it. GenNative: wait
  # until its mailbox is empty (a normal call meeting a full mailbox would
  # be rejected), then the same call.
  defp drain(GenServer, pid) do
    :pong = GenServer.call(pid, :ping, :infinity)
    nil
  end

  defp drain(GenNative, pid) do
    wait_empty(pid)
    :pong = GenNative.call(pid, :ping, :infinity)
    GenNative.mailbox_info(pid)
  end

  defp wait_empty(pid) do
    case GenNative.mailbox_info(pid) do
      %{length: 0, high_length: 0} ->
        :ok

      _ ->
        Process.sleep(1)
        wait_empty(pid)
    end
  end

  ## Memory sampler

  defp spawn_sampler(ctl, cap) do
    parent = self()

    spawn_link(fn ->
      Process.flag(:priority, :high)
      sample(parent, ctl, cap, 0, nil, [])
    end)
  end

  # Keeps every sample, {monotonic time, bytes}, for the memory plot.
  defp sample(parent, ctl, cap, peak, capped_at, samples) do
    total = :erlang.memory(:total)
    peak = max(peak, total)
    samples = [{:erlang.monotonic_time(), total} | samples]

    capped_at =
      if capped_at == nil and total > cap do
        Work.stop(ctl)
        :erlang.monotonic_time()
      else
        capped_at
      end

    receive do
      {:stop, from} ->
        total = :erlang.memory(:total)
        samples = Enum.reverse([{:erlang.monotonic_time(), total} | samples])
        send(from, {:sampler, max(peak, total), capped_at, samples})
    after
      @sample_ms -> sample(parent, ctl, cap, peak, capped_at, samples)
    end
  end

  defp stop_sampler(sampler) do
    send(sampler, {:stop, self()})

    receive do
      {:sampler, peak, capped_at, samples} -> {peak, capped_at, samples}
    end
  end

  ## Call probe

  defp spawn_probe(mod, pid, opts) do
    parent = self()

    spawn_link(fn ->
      Process.flag(:priority, :high)
      probe(parent, mod, pid, opts, [])
    end)
  end

  # Issues a call every @probe_ms, each from a process of its own, until
  # told to stop; then collects the outcomes until `{:collect, deadline}`.
  defp probe(parent, mod, pid, opts, issued) do
    receive do
      :stop -> await_calls(issued)
    after
      @probe_ms ->
        probe(parent, mod, pid, opts, [issue(mod, pid, opts) | issued])
    end
  end

  defp issue(mod, pid, opts) do
    me = self()
    tag = make_ref()
    issued = :erlang.monotonic_time()

    spawn(fn ->
      result =
        try do
          if opts == [],
            do: mod.call(pid, :ping, :infinity),
            else: GenNative.call(pid, :ping, :infinity, opts)
        catch
          :exit, {reason, _} -> {:exit, reason}
        end

      send(me, {tag, result, :erlang.monotonic_time()})
    end)

    {tag, issued}
  end

  defp await_calls(issued) do
    receive do
      {:collect, deadline, from} ->
        calls =
          for {tag, t} <- Enum.reverse(issued) do
            wait =
              max(
                0,
                :erlang.convert_time_unit(
                  deadline - :erlang.monotonic_time(),
                  :native,
                  :millisecond
                )
              )

            receive do
              {^tag, :pong, at} -> %{issued: t, outcome: :answered, latency: at - t}
              {^tag, {:exit, reason}, at} -> %{issued: t, outcome: reason, latency: at - t}
            after
              wait -> %{issued: t, outcome: :unanswered, latency: deadline - t}
            end
          end

        send(from, {:probe, calls})
    end
  end

  defp collect_probe(probe, deadline) do
    send(probe, {:collect, deadline, self()})

    receive do
      {:probe, calls} -> calls
    end
  end

  ## Plots

  # overload-memory.svg: VM memory over time, both sides; overload-latency.svg:
  # each probe call's latency against the time it was issued, both sides,
  # by outcome. Time 0 is the producers' start; they stop at the run's end,
  # and the calls still waiting then get the grace period.
  defp plot(peer, native, config) do
    since = fn s, t -> to_ms(t - s.t0) end

    memory =
      for s <- [peer, native] do
        %{
          label: s.label,
          points: Enum.map(s.memory, fn {t, bytes} -> {since.(s, t), bytes / @mb} end),
          style: :line
        }
      end

    note =
      "#{@producers} producers for #{n(config.duration_ms)} ms, #{@work_us} us per request; " <>
        "GenNative: capacity 10,000, overflow: :reject. #{Bench.machine()}"

    Bench.write_svg(
      "overload-memory.svg",
      GenNative.Bench.SVG.plot(%{
        title: "Overload: VM memory over time (:erlang.memory(:total), every #{@sample_ms} ms)",
        x_label: "ms since the producers started (they stop at #{n(config.duration_ms)} ms)",
        y_label: "MB (log scale)",
        y_scale: :log,
        series: memory,
        note: note
      })
    )

    latency =
      for {s, calls, who} <- [
            {peer, peer.normal_calls, "GenServer call"},
            {native, native.normal_calls, "GenNative call"},
            {native, native.high_calls, "GenNative call, priority: :high"}
          ],
          {outcome, what} <- [
            answered: "answered",
            unanswered: "unanswered at the end (time waited)",
            mailbox_full: "rejected: mailbox_full"
          ],
          points =
            for(
              %{outcome: ^outcome, issued: t, latency: l} <- calls,
              do: {since.(s, t), max(to_ms(l), 0.001)}
            ),
          points != [] do
        %{label: "#{who}, #{what}", points: points, style: :points}
      end

    Bench.write_svg(
      "overload-latency.svg",
      GenNative.Bench.SVG.plot(%{
        title: "Overload: latency of a probe call every #{@probe_ms} ms",
        x_label: "ms since the producers started, when the call was issued",
        y_label: "ms from issue to reply or exit (log scale)",
        y_scale: :log,
        series: latency,
        note: note
      })
    )
  end

  ## Accounting

  # GenServer: sent = handled (after the drain); at the stop, sent =
  # handled so far + still in its mailbox (the mailbox also holds the
  # probe's calls still waiting, and one cast may be in hand).
  defp accounting(:peer, s) do
    handled = s.stats.casts

    Map.merge(s, %{
      handled: handled,
      rejected: 0,
      dropped: 0,
      unaccounted: s.sent - handled,
      counters_check: "n/a"
    })
  end

  # GenNative: sent = handled + rejected + dropped, the latter two from
  # mailbox_info/1; and mailbox_info's own books: accepted + rejected +
  # dropped = every cast and call sent (the probe's calls and the drain's
  # call included), rejected = the {:error, :mailbox_full} the producers saw
  # + the calls that exited with :mailbox_full.
  defp accounting(:native, s) do
    info = s.info
    handled = s.stats.casts
    calls_sent = length(s.calls) + 1
    calls_rejected = Enum.count(s.calls, &(&1.outcome == :mailbox_full))
    # the drain's :ping is counted in stats.calls
    calls_handled = s.stats.calls

    cast_rejected = info.rejected - calls_rejected
    unaccounted = s.sent - handled - cast_rejected - info.dropped

    checks = [
      {"accepted + rejected + dropped = casts + calls sent",
       info.accepted + info.rejected + info.dropped == s.sent + calls_sent},
      {"rejected = mailbox_full results seen by producers and callers",
       info.rejected == s.rejected_seen + calls_rejected},
      {"accepted = casts + calls handled", info.accepted == handled + calls_handled}
    ]

    check =
      case Enum.reject(checks, &elem(&1, 1)) do
        [] -> "ok"
        failed -> "FAILED: " <> Enum.map_join(failed, "; ", &elem(&1, 0))
      end

    Map.merge(s, %{
      handled: handled,
      rejected: cast_rejected,
      dropped: info.dropped,
      unaccounted: unaccounted,
      counters_check: check
    })
  end

  ## Report

  defp report(peer, native, config, wall_s) do
    rows = [
      ["producers ran (ms)", fmt_ms(peer.ran_ms), fmt_ms(native.ran_ms)],
      ["stopped early by the memory cap", capped(peer, config), capped(native, config)],
      ["idle VM memory before (MB)", mb(peer.idle), mb(native.idle)],
      ["peak VM memory during (MB)", mb(peer.peak), mb(native.peak)],
      ["peak - idle (MB)", mb(peer.peak - peer.idle), mb(native.peak - native.idle)],
      [
        "calls issued in the last #{config.window_ms} ms",
        n(length(peer.last)),
        n(length(native.last))
      ],
      [
        "... answered / rejected (mailbox_full) / unanswered",
        outcomes(peer.last),
        outcomes(native.last)
      ],
      ["... median latency (ms)", latency(peer.last, :median), latency(native.last, :median)],
      ["... max latency (ms)", latency(peer.last, :max), latency(native.last, :max)],
      [
        "priority: :high calls issued in the last #{config.window_ms} ms",
        "n/a",
        n(length(native.high_last))
      ],
      ["... answered / rejected (mailbox_full) / unanswered", "n/a", outcomes(native.high_last)],
      ["... median latency (ms)", "n/a", latency(native.high_last, :median)],
      ["... max latency (ms)", "n/a", latency(native.high_last, :max)],
      ["casts sent", n(peer.sent), n(native.sent)],
      ["casts handled", n(peer.handled), n(native.handled)],
      ["casts rejected ({:error, :mailbox_full})", n(peer.rejected), n(native.rejected)],
      ["casts dropped", n(peer.dropped), n(native.dropped)],
      ["handled during the run (casts/s)", rate(peer), rate(native)],
      ["handled when producers stopped", n(peer.handled_at_stop), n(native.handled_at_stop)],
      ["queued when producers stopped", n(peer.queued_at_stop), n(native.queued_at_stop)],
      [
        "drain after the run, without the work (ms)",
        fmt_ms(peer.drain_ms),
        fmt_ms(native.drain_ms)
      ],
      ["peak VM memory during the drain (MB)", mb(peer.drain_peak), mb(native.drain_peak)],
      ["mailbox_info counters consistent", peer.counters_check, native.counters_check],
      ["unaccounted", "#{peer.unaccounted}", "#{native.unaccounted}"]
    ]

    table = Bench.table([["", "GenServer", "GenNative"] | rows], [:left, :right, :right])
    info = native.info

    Bench.report_header("overload") <>
      """
      #{@producers} producers cast as fast as they can for #{config.duration_ms} ms at a \
      server that busy-waits #{@work_us} us per request; GenNative with \
      `mailbox: [capacity: 10_000, overflow: :reject]`, GenServer unbounded. One run \
      per side, GenNative first. VM memory is `:erlang.memory(:total)`, sampled every \
      #{@sample_ms} ms; memory cap for the run #{div(config.cap, @mb)} MB. A probe \
      issues a normal call every #{@probe_ms} ms (each from its own process), and on \
      GenNative a second probe a `priority: :high` call as often; \
      latencies are for the calls issued in the last #{config.window_ms} ms before \
      the producers stopped; calls still unanswered #{@grace_ms} ms after that count \
      as "more than" the time they had waited; a rejected call (exit \
      `{:mailbox_full, _}`, GenNative's normal calls meeting a full mailbox) has no latency. Unaccounted = casts sent - handled - \
      rejected - dropped, after the queue was drained. Suite wall time \
      #{:erlang.float_to_binary(wall_s, decimals: 1)} s.

      #{table}

      GenNative's mailbox_info after the drain: accepted #{n(info.accepted)}, \
      rejected #{n(info.rejected)}, dropped #{n(info.dropped)}, max_length \
      #{n(info.max_length)}, length #{info.length}.
      """
  end

  defp capped(%{capped_at: nil}, _), do: "no"

  defp capped(%{capped_at: at}, config),
    do: "YES, at #{fmt_ms(at)} ms (> #{div(config.cap, @mb)} MB)"

  defp outcomes(calls) do
    a = Enum.count(calls, &(&1.outcome == :answered))
    r = Enum.count(calls, &(&1.outcome == :mailbox_full))
    u = Enum.count(calls, &(&1.outcome == :unanswered))
    other = length(calls) - a - r - u
    "#{a} / #{r} / #{u}" <> if(other > 0, do: " (+#{other} other exits)", else: "")
  end

  # Over the answered and unanswered calls; an unanswered call's latency is
  # a lower bound, shown as "> x".
  defp latency(calls, which) do
    values =
      calls
      |> Enum.filter(&(&1.outcome in [:answered, :unanswered]))
      |> Enum.map(&{to_ms(&1.latency), &1.outcome == :unanswered})
      |> Enum.sort()

    case values do
      [] ->
        "n/a"

      _ ->
        {v, lower_bound?} =
          case which do
            :median -> Enum.at(values, div(length(values) - 1, 2))
            :max -> List.last(values)
          end

        if lower_bound?, do: "> " <> fmt_ms(v), else: fmt_ms(v)
    end
  end

  defp rate(s), do: n(round(s.handled_at_stop / (s.ran_ms / 1000)))

  defp mb(bytes), do: :erlang.float_to_binary(bytes / @mb, decimals: 1)
  defp n(i), do: Bench.thousands(i)

  defp fmt_ms(ms) when ms >= 100, do: Bench.thousands(round(ms))
  defp fmt_ms(ms), do: :erlang.float_to_binary(ms / 1, decimals: 2)
end

# Calls whose caller gave up (issue 9): a server that spends 1 ms on each
# call, callers arriving at twice the rate it can serve, each with a 100 ms
# timeout. Once the backlog is more than 100 ms deep, every call the server
# reaches has timed out already; a GenServer runs it anyway. GenNative with
# `mailbox: [drop_expired_calls: true]` should skip it and count it in
# mailbox_info/1's `expired`.

defmodule GenNative.Bench.Overload.Expiry.Ctl do
  @moduledoc false
  # What a server needs to record a run: an :atomics cell with the work per
  # call in native units (0 once the run is over, to drain quickly), and the
  # ETS table where each call that reaches handle_call/3 writes
  # {id, monotonic time it began}.
  defstruct [:work, :runs]

  def new(work, runs) do
    ref = :atomics.new(1, signed: true)
    :atomics.put(ref, 1, work)
    %__MODULE__{work: ref, runs: runs}
  end

  def handle(%__MODULE__{work: work, runs: runs}, id) do
    :ets.insert(runs, {id, :erlang.monotonic_time()})
    GenNative.Bench.Overload.Work.spin(:atomics.get(work, 1))
  end

  def fast(%__MODULE__{work: work}), do: :atomics.put(work, 1, 0)
end

defmodule GenNative.Bench.Overload.Expiry.Server do
  @moduledoc false
  # The same server on both sides: PeerServer (use GenServer) and
  # NativeServer (use GenNative; its mailbox options are given at start, see
  # Expiry.start/2).
  defmacro __using__(behaviour) do
    quote do
      use unquote(behaviour)
      alias GenNative.Bench.Overload.Expiry.Ctl

      @impl true
      def init(ctl), do: {:ok, ctl}

      @impl true
      def handle_call({:work, id}, _from, ctl) do
        Ctl.handle(ctl, id)
        {:reply, :done, ctl}
      end

      def handle_call(:sync, _from, ctl), do: {:reply, :ok, ctl}
    end
  end
end

defmodule GenNative.Bench.Overload.Expiry.PeerServer do
  @moduledoc false
  use GenNative.Bench.Overload.Expiry.Server, GenServer
end

defmodule GenNative.Bench.Overload.Expiry.NativeServer do
  @moduledoc false
  use GenNative.Bench.Overload.Expiry.Server, GenNative
end

defmodule GenNative.Bench.Overload.Expiry do
  @moduledoc false
  alias GenNative.Bench
  alias GenNative.Bench.Overload.Expiry.{Ctl, NativeServer, PeerServer}

  @work_us 1000
  @timeout_ms 100
  @producers 4
  # Callers still waiting this long after the producers stop are reported,
  # not waited for.
  @callers_grace_ms 5000

  @sides [
    peer: "GenServer",
    native: "GenNative, default mailbox",
    native_drop: "GenNative, drop_expired_calls: true"
  ]

  @doc "Runs the three sides one after the other; returns the report section."
  def run(duration_ms) do
    # Twice the rate at which the server can do @work_us per call.
    rate = div(2 * 1_000_000, @work_us)
    config = %{duration_ms: duration_ms, rate: rate}
    results = for {side, label} <- @sides, do: side(side, label, config)
    report(results, config)
  end

  ## One side

  defp side(side, label, config) do
    IO.write(:stderr, "overload: calls whose caller gave up, #{label} ...")
    runs = :ets.new(:expiry_runs, [:public, :set, write_concurrency: true])
    calls = :ets.new(:expiry_calls, [:public, :set, write_concurrency: true])
    ctl = Ctl.new(:erlang.convert_time_unit(@work_us, :microsecond, :native), runs)

    try do
      case start(side, ctl) do
        {:ok, mod, pid} ->
          result = drive(mod, pid, ctl, calls, config)
          IO.puts(:stderr, " done")
          Map.merge(result, %{side: side, label: label, available: true})

        {:unavailable, message} ->
          IO.puts(:stderr, " not run: #{message}")
          %{side: side, label: label, available: false, why: message}
      end
    after
      :ets.delete(runs)
      :ets.delete(calls)
    end
  end

  defp start(:peer, ctl) do
    {:ok, pid} = GenServer.start(PeerServer, ctl)
    {:ok, GenServer, pid}
  end

  defp start(:native, ctl) do
    {:ok, pid} = GenNative.start(NativeServer, ctl)
    {:ok, GenNative, pid}
  end

  # Until GenNative knows the option, the start raises ArgumentError
  # (unknown mailbox option) and this side is reported as not run.
  defp start(:native_drop, ctl) do
    {:ok, pid} = GenNative.start(NativeServer, ctl, mailbox: [drop_expired_calls: true])
    {:ok, GenNative, pid}
  rescue
    e in ArgumentError -> {:unavailable, Exception.message(e)}
  end

  defp drive(mod, pid, ctl, calls, config) do
    t0 = :erlang.monotonic_time()
    stop_at = t0 + ms(config.duration_ms)
    # Each producer issues its share of calls on a fixed schedule (open
    # loop: a caller that waits does not slow the arrivals down).
    interval = div(ms(1000) * @producers, config.rate)

    producers =
      for p <- 1..@producers do
        first = t0 + div(interval * (p - 1), @producers)

        spawn_monitor(fn ->
          exit({:issued, produce(mod, pid, calls, p, first, interval, stop_at, 0)})
        end)
      end

    issued =
      Enum.reduce(producers, 0, fn {ppid, ref}, acc ->
        receive do
          {:DOWN, ^ref, :process, ^ppid, {:issued, n}} -> acc + n
          {:DOWN, ^ref, :process, ^ppid, other} -> raise "producer died: #{inspect(other)}"
        end
      end)

    t_stop = :erlang.monotonic_time()
    ran_during = :ets.info(ctl.runs, :size)

    # Every caller ends within @timeout_ms of its call (answered or not);
    # meanwhile the server goes on with its work.
    waiting = wait_callers(calls, issued, t_stop + ms(@callers_grace_ms))
    ran_before_drain = :ets.info(ctl.runs, :size)

    # Drain what is still queued without the work: the :sync call reaches
    # the server after every call sent before it, and its 60 s timeout
    # cannot pass before then (nor can drop_expired_calls skip it).
    Ctl.fast(ctl)
    :ok = mod.call(pid, :sync, 60_000)
    info = if mod == GenNative, do: GenNative.mailbox_info(pid)
    :ok = mod.stop(pid, :normal, :infinity)

    tally(calls, ctl.runs, %{
      issued: issued,
      ran_ms: to_ms(t_stop - t0),
      ran_during: ran_during,
      ran_before_drain: ran_before_drain,
      waiting: waiting,
      info: info
    })
  end

  # Issues the calls due by now, sleeps about 1 ms, and again, until
  # stop_at; returns how many it issued. Ids are p, p + @producers, ...
  defp produce(mod, pid, calls, p, next, interval, stop_at, n) do
    now = :erlang.monotonic_time()

    cond do
      now >= stop_at ->
        n

      next <= now ->
        call(mod, pid, calls, p + n * @producers)
        produce(mod, pid, calls, p, next + interval, interval, stop_at, n + 1)

      true ->
        Process.sleep(1)
        produce(mod, pid, calls, p, next, interval, stop_at, n)
    end
  end

  # One caller: {id, issued at, outcome, when the call returned or exited}.
  defp call(mod, pid, calls, id) do
    spawn(fn ->
      issued = :erlang.monotonic_time()

      outcome =
        try do
          :done = mod.call(pid, {:work, id}, @timeout_ms)
          :answered
        catch
          :exit, {:timeout, _} -> :timeout
          :exit, reason -> {:exit, reason}
        end

      # The table is gone if this caller outlived the side's grace period.
      try do
        :ets.insert(calls, {id, issued, outcome, :erlang.monotonic_time()})
      rescue
        ArgumentError -> :ok
      end
    end)
  end

  defp wait_callers(calls, issued, deadline) do
    done = :ets.info(calls, :size)

    cond do
      done >= issued ->
        0

      :erlang.monotonic_time() >= deadline ->
        issued - done

      true ->
        Process.sleep(10)
        wait_callers(calls, issued, deadline)
    end
  end

  defp tally(calls, runs, s) do
    timeout = ms(@timeout_ms)
    outcomes = :ets.tab2list(calls)

    ran =
      for {id, began} <- :ets.tab2list(runs) do
        case :ets.lookup(calls, id) do
          [{^id, issued, outcome, ended}] ->
            %{
              left: outcome == :timeout and began >= ended,
              late: began >= issued + timeout
            }

          [] ->
            %{left: false, late: false, unknown: true}
        end
      end

    Map.merge(s, %{
      answered: Enum.count(outcomes, &(elem(&1, 2) == :answered)),
      timed_out: Enum.count(outcomes, &(elem(&1, 2) == :timeout)),
      # the caller's exit came before its timeout had passed since the issue
      early:
        Enum.count(outcomes, fn {_, issued, outcome, ended} ->
          outcome == :timeout and ended - issued < timeout
        end),
      other_exits: Enum.count(outcomes, &match?({:exit, _}, elem(&1, 2))),
      ran: length(ran),
      ran_after_left: Enum.count(ran, & &1.left),
      ran_after_deadline: Enum.count(ran, & &1.late),
      ran_unknown: Enum.count(ran, &Map.get(&1, :unknown, false))
    })
  end

  ## Report

  defp report(results, config) do
    header = ["" | Enum.map(results, & &1.label)]

    lines = [
      {"calls issued (#{n(config.rate)}/s for #{n(config.duration_ms)} ms)", & &1.issued},
      {"... answered within #{@timeout_ms} ms", & &1.answered},
      {"... timed out (the caller exited with :timeout)", & &1.timed_out},
      {"... of which exited before #{@timeout_ms} ms had passed since the issue", & &1.early},
      {"... other exits", & &1.other_exits},
      {"... callers still waiting #{n(@callers_grace_ms)} ms after the run", & &1.waiting},
      {"handle_call/3 ran", & &1.ran},
      {"... while the producers ran", & &1.ran_during},
      {"... rate while the producers ran (calls/s)",
       &n(round(&1.ran_during * 1000 / max(&1.ran_ms, 1)))},
      {"... after, until the last caller was done (still #{@work_us} us per call)",
       &(&1.ran_before_drain - &1.ran_during)},
      {"... in the drain (work switched off)", &(&1.ran - &1.ran_before_drain)},
      {"calls run after their caller left (handle_call/3 began after the caller " <>
         "caught its :timeout)", & &1.ran_after_left},
      {"calls run #{@timeout_ms} ms or more after they were issued", & &1.ran_after_deadline},
      {"calls never run", &(&1.issued - &1.ran)},
      {"mailbox_info(s).expired", &expired/1},
      {"issued = run + expired", &books/1}
    ]

    rows =
      for {label, fun} <- lines do
        [label | Enum.map(results, &cell(&1, fun))]
      end

    aligns = [:left | Enum.map(results, fn _ -> :right end)]

    unavailable =
      for %{available: false} = r <- results do
        "* #{r.label}: not run: #{r.why}\n"
      end

    """

    ### Calls whose caller gave up

    A server that busy-waits #{@work_us} us in each call; #{@producers} producers \
    issue calls at #{n(config.rate)}/s together (twice what the server can serve), each \
    from a process of its own, with a #{@timeout_ms} ms timeout, for \
    #{n(config.duration_ms)} ms. Each caller notes the time just before its call \
    (the issue) and when the call returned or exited; the server notes when each call \
    reaches handle_call/3. A call ran "after its caller left" when handle_call/3 began \
    after its caller had caught the `:timeout` exit: that caller was certainly gone \
    (counting from the moment it caught the exit, a few microseconds after its timer \
    fired, undercounts by those microseconds). "#{@timeout_ms} ms or more after they \
    were issued" counts against the nominal deadline instead. A caller whose exit came \
    before #{@timeout_ms} ms had passed since the issue waited less than it asked. \
    After the producers stop, the server goes on at #{@work_us} us per call until \
    the last caller is done, then what is still queued is drained with the work \
    switched off; those calls count too (a GenServer would run every one of them). \
    GenNative's option is given as \
    `GenNative.start(mod, arg, mailbox: [drop_expired_calls: true])`. One run per \
    side, in column order.

    #{Bench.table([header | rows], aligns)}

    #{goal(results)}

    #{unavailable}\
    """
  end

  defp cell(%{available: false}, _fun), do: "not run"

  defp cell(r, fun) do
    case fun.(r) do
      i when is_integer(i) -> n(i)
      text -> text
    end
  end

  defp expired(%{info: nil}), do: "n/a"
  defp expired(%{info: info}), do: info |> Map.get(:expired, "n/a (no :expired key)") |> to_text()

  # Every call issued either ran or (GenNative) expired, and each run
  # belongs to a call a caller issued.
  defp books(r) do
    expired = if r.info, do: Map.get(r.info, :expired, 0), else: 0
    ok(r.issued == r.ran + expired and r.waiting == 0 and r.ran_unknown == 0)
  end

  defp ok(true), do: "ok"
  defp ok(false), do: "NO"

  defp to_text(i) when is_integer(i), do: n(i)
  defp to_text(other), do: to_string(other)

  defp goal(results) do
    case Enum.find(results, &(&1.side == :native_drop)) do
      %{available: true, ran_after_left: 0} ->
        "Goal (issue 9): no call run after its caller left, with drop_expired_calls: " <>
          "true: met."

      %{available: true, ran_after_left: k} ->
        "Goal (issue 9): no call run after its caller left, with drop_expired_calls: " <>
          "true: NOT met (#{k})."

      _ ->
        "Goal (issue 9): not measured, drop_expired_calls is not available in this build."
    end
  end

  defp ms(n), do: :erlang.convert_time_unit(n, :millisecond, :native)
  defp to_ms(native), do: :erlang.convert_time_unit(native, :native, :microsecond) / 1000
  defp n(i), do: Bench.thousands(i)
end

GenNative.Bench.Overload.run()
