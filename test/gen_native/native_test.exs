defmodule GenNative.NativeTest do
  # The C mailbox's safety: bad handles, scheduler hygiene, memory.
  # Not async: :erlang.system_monitor/2 is node-wide, and the memory checks
  # want the node quiet.
  use ExUnit.Case, async: false

  import GenNative.TestHelpers,
    only: [
      isolated: 1,
      run_all: 2,
      restore_monitor: 1,
      collect_long_schedules: 1,
      assert_one_clean: 2,
      assert_one_clean: 3
    ]

  alias GenNative.Native

  defmodule Sink do
    use GenNative

    @impl true
    def init(test), do: {:ok, test}

    @impl true
    def handle_cast(_request, state), do: {:noreply, state}

    @impl true
    def handle_call(:mailbox, _from, state) do
      {mailbox, _batch_size, _mode} = Process.get(:"$gn")
      {:reply, mailbox, state}
    end
  end

  # Queue mode (drop_oldest) keeps casts in the C queue, where work grows
  # with what is queued; message mode (the default) only counts them.
  defp start_sink(mailbox \\ []) do
    {:ok, pid} = GenNative.start(Sink, self(), mailbox: mailbox)
    pid
  end

  # A process that owns a mailbox but never drains it by itself.
  defp spawn_owner do
    test = self()

    pid =
      spawn(fn ->
        send(test, {:mailbox, Native.mailbox_new(:infinity, :reject, [:queue])})

        receive do
          :stop -> :ok
        end
      end)

    receive do
      {:mailbox, ref} -> {pid, ref}
    end
  end

  describe "bad handles" do
    test "a foreign or forged term is rejected with ArgumentError" do
      forged = :erlang.binary_to_term(:erlang.term_to_binary(make_ref()))

      for bad <- [make_ref(), forged, :atomics.new(1, []), :not_a_ref, 123, self()] do
        assert_raise ArgumentError, fn -> Native.mailbox_take(bad, 1, :infinity, true) end
        assert_raise ArgumentError, fn -> Native.mailbox_ack(bad, :cast) end
        assert_raise ArgumentError, fn -> Native.mailbox_high(bad) end
      end
    end

    test "a handle owned by another process is rejected" do
      {owner, ref} = spawn_owner()
      assert_raise ArgumentError, fn -> Native.mailbox_take(ref, 1, :infinity, true) end
      assert_raise ArgumentError, fn -> Native.mailbox_ack(ref, :cast) end
      send(owner, :stop)
    end

    test "the handle of a dead server is rejected, and a copy of it is harmless" do
      pid = start_sink()
      ref = GenNative.call(pid, :mailbox)
      assert is_reference(ref)
      GenNative.stop(pid)
      assert_raise ArgumentError, fn -> Native.mailbox_take(ref, 1, :infinity, true) end
      assert_raise ArgumentError, fn -> Native.mailbox_ack(ref, :cast) end
      # sending to a dead native server is a no-op, as send/2 is
      assert :ok = GenNative.cast(pid, :late)
    end

    test "take rejects batch sizes outside 1..1024" do
      parent = self()

      spawn_link(fn ->
        ref = Native.mailbox_new(:infinity, :reject, [:queue])

        for bad <- [0, -1, 1025, :x, 1.0] do
          assert_raise ArgumentError, fn -> Native.mailbox_take(ref, bad, :infinity, true) end
        end

        assert [] = Native.mailbox_take(ref, 1024, :infinity, true)
        send(parent, :done)
      end)

      assert_receive :done
    end

    test "enqueue and info reject what is not a pid" do
      for bad <- [:name, {:a, :b}, make_ref(), "pid"] do
        assert_raise ArgumentError, fn -> Native.mailbox_send(bad, :request, :normal, :cast) end
        assert_raise ArgumentError, fn -> Native.mailbox_cancel(bad, make_ref()) end
        assert_raise ArgumentError, fn -> Native.mailbox_info(bad) end
      end
    end

    test "mailbox_new, send, adopt and discard reject bad arguments" do
      for {cap, ov, flags} <- [
            {0, :reject, []},
            {-1, :reject, []},
            {:x, :reject, []},
            {1, :nope, []},
            {1, :reject, :maybe},
            {1, :reject, [:nope]},
            {1, :reject, [:queue | :tail]},
            # keep_on_crash and drop_oldest need the queue
            {1, :reject, [:keep]},
            {1, :drop_oldest, []}
          ] do
        assert_raise ArgumentError, fn -> Native.mailbox_new(cap, ov, flags) end
      end

      pid = start_sink()
      assert_raise ArgumentError, fn -> Native.mailbox_send(pid, :x, :sideways, :cast) end
      assert_raise ArgumentError, fn -> Native.mailbox_send(pid, :x, :normal, :shout) end
      # only a normal call asks for admission
      assert_raise ArgumentError, fn -> Native.mailbox_send(pid, :x, :high, :admit) end
      assert_raise ArgumentError, fn -> Native.mailbox_ack(make_ref(), :sideways) end
      assert_raise ArgumentError, fn -> Native.mailbox_take(make_ref(), 1, :infinity, :maybe) end
      assert_raise ArgumentError, fn -> Native.mailbox_take(make_ref(), 1, -1, true) end
      assert_raise ArgumentError, fn -> Native.mailbox_cancel(pid, :not_a_ref) end

      for bad <- [make_ref(), :atomics.new(1, []), :x] do
        assert_raise ArgumentError, fn -> Native.mailbox_adopt(bad) end
        assert_raise ArgumentError, fn -> Native.mailbox_discard(bad) end
      end

      # a live, not-kept mailbox cannot be adopted
      ref = GenNative.call(pid, :mailbox)
      assert_raise ArgumentError, fn -> Native.mailbox_adopt(ref) end
    end

    test "a process can own one mailbox only" do
      parent = self()

      spawn_link(fn ->
        assert is_reference(Native.mailbox_new(:infinity, :reject, [:queue]))
        assert {:error, :already_exists} = Native.mailbox_new(:infinity, :reject, [:queue])
        send(parent, :done)
      end)

      assert_receive :done
    end

    test "a plain GenServer is not native" do
      {:ok, agent} = Agent.start_link(fn -> 0 end)
      assert Native.mailbox_info(agent) == :not_native
      assert Native.mailbox_send(agent, :x, :normal, :cast) == :not_native
    end
  end

  describe "keep: requests taken out are held until acked" do
    # The owner of a keep mailbox acks what it has handled; when it exits,
    # what it took out and did not ack goes back in front, in order, for
    # the next owner; what was evicted meanwhile stays gone.
    test "the unacked rest of a take goes back in front when the owner is killed" do
      test = self()

      owner =
        spawn(fn ->
          ref = Native.mailbox_new(3, :drop_oldest, [:queue, :keep])
          send(test, {:mailbox, ref})

          receive do
            :take ->
              send(test, {:taken, Native.mailbox_take(ref, 2, :infinity, true)})
              Native.mailbox_ack(ref, 1)
              send(test, :acked)
              Process.sleep(:infinity)
          end
        end)

      ref = receive(do: ({:mailbox, ref} -> ref))
      for i <- 1..3, do: :ok = Native.mailbox_send(owner, i, :normal, :cast)
      send(owner, :take)
      assert_receive {:taken, [1, 2]}
      assert_receive :acked
      # 3 waits; 4 and 5 fit; 6 evicts 3, which is gone for good
      for i <- 4..6, do: :ok = Native.mailbox_send(owner, i, :normal, :cast)
      assert %{length: 3, dropped: 1} = Native.mailbox_info(owner)

      mref = Process.monitor(owner)
      Process.exit(owner, :kill)
      assert_receive {:DOWN, ^mref, _, _, :killed}

      spawn_link(fn ->
        adopted = adopt(ref)
        send(test, {:adopted, adopted, Native.mailbox_take(ref, 10, :infinity, true)})
      end)

      # 2 was taken and not acked: it comes back, before what was queued
      assert_receive {:adopted, 4, [2, 4, 5, 6]}
    end
  end

  defp adopt(ref) do
    case Native.mailbox_adopt(ref) do
      :not_ready ->
        Process.sleep(1)
        adopt(ref)

      n ->
        n
    end
  end

  describe "scheduling" do
    # long_schedule reports any timeslice over 1 ms, including one stretched
    # because the OS preempted the scheduler thread on a busy machine. So each
    # watched NIF call gets a timeslice of its own (`:erlang.yield/0` before
    # and after), and the whole scenario is retried, up to 5 times until one
    # attempt is clean: a NIF that takes over 1 ms does so on every attempt,
    # a preemption does not. Takes, some 500 per attempt, run 40 us at the
    # median with 1 to 7 outliers of 1 to 2 ms wall on this 2-vCPU machine
    # with nothing else running (mix run /tmp/probe.exs in issue 10's note;
    # 0.9 to 1.2 ms before issue 10, per 196 larger takes): an attempt counts
    # as clean with up to 3 long schedules of at most 5 ms (see
    # assert_one_clean/3); in a full-suite CI run all 5 attempts had 1 to 2.
    # Tagged :scheduling: bin/sanitize excludes it, sanitized code is slower.
    @tag timeout: 300_000
    @tag :scheduling
    test "no NIF runs longer than 1 ms on a normal scheduler, with a million queued terms" do
      assert_one_clean(5, &long_schedules_in_scenario/0, outliers: 3)
    end
  end

  describe "large requests" do
    # A take copies requests out of the C queue; large ones must not hold
    # the owner's normal scheduler past 1 ms: a take stops at its budget
    # and says {:more, requests}, and a single request too large for one
    # timeslice is copied on a dirty scheduler. Retried as above.
    @tag timeout: 300_000
    @tag :scheduling
    test "taking large requests never runs longer than 1 ms on a normal scheduler" do
      assert_one_clean(5, &large_take_scenario/0, outliers: 3)
    end
  end

  describe "large requests put in" do
    # A request the mailbox keeps (queued, or held by a blocked sender) is
    # copied into it; a large one is copied on a dirty scheduler, before
    # the lock is taken, and a blocked sender's request moves into the
    # queue without a copy when it is let in. Retried as above.
    @tag timeout: 300_000
    @tag :scheduling
    test "putting large requests in never runs longer than 1 ms on a normal scheduler" do
      assert_one_clean(5, &large_put_scenario/0)
    end
  end

  # Processes with heaps big enough for the 1M-element lists they hold, so
  # that no garbage collection of those shows as a long schedule.
  @big_heap [min_heap_size: 8_000_000]

  defp large_put_scenario do
    parent = self()
    huge = Enum.to_list(1..1_000_000)

    # takes `n` requests, in as many takes as it needs
    owner = fn opts, n ->
      :erlang.spawn_opt(
        fn ->
          ref = apply(Native, :mailbox_new, opts)
          send(parent, {:owner_ready, self()})
          receive do: (:take -> send(parent, {:taken, self(), take_n(ref, n, [])}))
        end,
        @big_heap
      )
    end

    queued = owner.([:infinity, :reject, [:queue]], 3)
    blocking = owner.([1, :block, [:queue]], 2)
    assert_receive {:owner_ready, ^queued}
    assert_receive {:owner_ready, ^blocking}

    previous = :erlang.system_monitor(self(), [{:long_schedule, 1}])

    sender =
      try do
        sender =
          :erlang.spawn_opt(
            fn ->
              put = fn to, request ->
                isolated(fn -> Native.mailbox_send(to, request, :normal, :cast) end)
              end

              for i <- 1..3, do: :ok = put.(queued, {i, huge})
              :ok = put.(blocking, {:a, huge})
              {:wait, tag} = put.(blocking, {:b, huge})
              send(parent, {:blocked, self()})
              receive do: ({^tag, result} -> send(parent, {:let_in, result}))
            end,
            @big_heap
          )

        assert_receive {:blocked, ^sender}, 60_000
        send(queued, :take)
        send(blocking, :take)
        assert_receive {:taken, ^queued, [1, 2, 3]}, 60_000
        # a take lets the blocked sender in, a later one takes its request
        assert_receive {:let_in, :ok}, 60_000
        assert_receive {:taken, ^blocking, [:a, :b]}, 60_000
        sender
      after
        restore_monitor(previous)
      end

    watched = [queued, blocking, sender]
    for {pid, info} <- collect_long_schedules([]), pid in watched, do: {pid, info}
  end

  defp take_n(_ref, n, acc) when length(acc) >= n, do: Enum.reverse(acc)

  defp take_n(ref, n, acc) do
    case isolated(fn -> Native.mailbox_take(ref, 1024, :infinity, true) end) do
      {:more, items} -> take_n(ref, n, tags(items, acc))
      items -> take_n(ref, n, tags(items, acc))
    end
  end

  defp large_take_scenario do
    parent = self()

    owner =
      spawn(fn ->
        ref = Native.mailbox_new(:infinity, :reject, [:queue])
        send(parent, {:owner_ready, self()})

        receive do
          :go -> send(parent, {:taken, take_all(ref, [])})
        end
      end)

    assert_receive {:owner_ready, ^owner}
    big = Enum.to_list(1..10_000)
    for i <- 1..200, do: :ok = Native.mailbox_send(owner, {i, big}, :normal, :cast)
    huge = Enum.to_list(1..1_000_000)
    :ok = Native.mailbox_send(owner, {:huge, huge}, :normal, :cast)
    :ok = Native.mailbox_send(owner, {:last, big}, :normal, :cast)

    previous = :erlang.system_monitor(self(), [{:long_schedule, 1}])

    try do
      send(owner, :go)
      assert_receive {:taken, taken}, 60_000
      # every request, in order
      assert taken == Enum.to_list(1..200) ++ [:huge, :last]
    after
      restore_monitor(previous)
    end

    for {pid, info} <- collect_long_schedules([]), pid == owner, do: {pid, info}
  end

  # Keeps the first element of each request only: the owner's own work on
  # the large terms (a comparison, a GC of them kept alive) would be long
  # schedules of its own.
  defp take_all(ref, acc) do
    case isolated(fn -> Native.mailbox_take(ref, 1024, :infinity, true) end) do
      [] -> Enum.reverse(acc)
      {:more, items} -> take_all(ref, tags(items, acc))
      items -> take_all(ref, tags(items, acc))
    end
  end

  defp tags(items, acc), do: Enum.reduce(items, acc, fn {tag, [1, 2 | _]}, acc -> [tag | acc] end)

  defp long_schedules_in_scenario do
    payload = {:item, "some binary", [1, 2, 3], %{k: :v}}

    # A server with a million queued casts, filled by 4 producers.
    server = start_sink(overflow: :drop_oldest)
    :ok = :sys.suspend(server)
    run_all(4, fn -> for i <- 1..250_000, do: GenNative.cast(server, {payload, i}) end)

    previous = :erlang.system_monitor(self(), [{:long_schedule, 1}])

    watched =
      try do
        # Enqueue and introspect against the million-deep queue.
        [prober] =
          run_all(1, fn ->
            for i <- 1..2_000 do
              isolated(fn -> GenNative.cast(server, {payload, i}) end)
              isolated(fn -> Native.mailbox_info(server) end)
            end
          end)

        assert %{length: length} = Native.mailbox_info(server)
        assert length > 1_000_000

        # The largest batches take/2 allows, by an owner draining 200k items.
        parent = self()

        drainer =
          spawn(fn ->
            ref = Native.mailbox_new(:infinity, :reject, [:queue])
            send(parent, {:drainer_ready, self()})

            receive do
              :go -> send(parent, {:drained, drain(ref, 0)})
            end
          end)

        assert_receive {:drainer_ready, ^drainer}

        run_all(2, fn ->
          for i <- 1..100_000, do: Native.mailbox_send(drainer, {payload, i}, :normal, :cast)
        end)

        send(drainer, :go)
        assert_receive {:drained, 200_000}, 60_000

        # Destroying the server with its million pending terms.
        ref = Process.monitor(server)
        Process.exit(server, :kill)
        assert_receive {:DOWN, ^ref, _, _, :killed}
        Process.sleep(100)
        [server, prober, drainer]
      after
        restore_monitor(previous)
      end

    for {pid, info} <- collect_long_schedules([]), pid in watched, do: {pid, info}
  end

  defp drain(ref, count) do
    case isolated(fn -> Native.mailbox_take(ref, 1024, :infinity, true) end) do
      [] -> count
      {:more, items} -> drain(ref, count + length(items))
      items -> drain(ref, count + length(items))
    end
  end

  # Tagged :memory: bin/sanitize excludes them, its VM has no memory accounting.
  describe "memory" do
    @tag timeout: 300_000
    @tag :memory
    test "starting and stopping 100k servers with queued work leaves memory flat" do
      churn = fn n ->
        for i <- 1..n do
          pid = start_sink(if rem(i, 2) == 0, do: [overflow: :drop_oldest], else: [])
          :ok = :sys.suspend(pid)
          for i <- 1..5, do: GenNative.cast(pid, {:work, i, "payload"})
          GenNative.stop(pid)
        end
      end

      # warm allocators and code up first
      churn.(5_000)
      before = settled_memory()
      churn.(100_000)
      after_churn = settled_memory()

      assert after_churn - before < 8 * 1024 * 1024,
             "memory grew by #{after_churn - before} bytes over 100k start/stop cycles"
    end

    @tag :memory
    test "a killed server's queue of a million terms is freed" do
      before = settled_memory()
      pid = start_sink(overflow: :drop_oldest)
      :ok = :sys.suspend(pid)
      for i <- 1..1_000_000, do: GenNative.cast(pid, {:work, i, "payload"})
      loaded = :erlang.memory(:total)
      assert loaded - before > 20 * 1024 * 1024
      Process.exit(pid, :kill)
      after_kill = settled_memory()

      assert after_kill - before < 8 * 1024 * 1024,
             "#{after_kill - before} bytes still held after the server died"
    end
  end

  # Total VM memory once the reaper has caught up and garbage is collected.
  defp settled_memory do
    Enum.reduce_while(1..50, nil, fn _, last ->
      :erlang.garbage_collect()
      Process.sleep(50)
      now = :erlang.memory(:total)

      if last && abs(now - last) < 256 * 1024,
        do: {:halt, now},
        else: {:cont, now}
    end)
  end
end
