defmodule GenNative.MailboxTest do
  # Mailbox control: options, overflow policies, blocked senders, the
  # priority lane, handle_batch/2, keep_on_crash and mailbox_info/1.
  #
  # A backlog is built by suspending the server (:sys.suspend/1) and
  # casting. In message mode (the default) the casts sit in its process
  # mailbox, counted in `length`; in queue mode (drop_oldest, keep_on_crash,
  # handle_batch/2) in the native queue. Priority requests wait in the
  # native high lane in both.
  use ExUnit.Case, async: true

  import GenNative.TestHelpers
  import GenNative.MailboxServers

  alias GenNative.MailboxServers.{BatchRecorder, Counter, Plain, Recorder}

  @moduletag :capture_log

  defp start_server(mailbox, opts \\ [], module \\ Recorder) do
    {:ok, pid} = GenNative.start(module, self(), [mailbox: mailbox] ++ opts)
    on_exit(fn -> Process.exit(pid, :kill) end)
    pid
  end

  defp info(server), do: GenNative.mailbox_info(server)

  defp sent(info), do: info.accepted + info.rejected + info.dropped + info.expired

  defp loc(server, request, timeout), do: {GenNative, :call, [server, request, timeout]}

  defp wait_info(server, key, value) do
    wait_until(fn -> match?(%{^key => ^value}, info(server)) end)
  end

  defp casts(requests), do: Enum.map(requests, &{:cast, &1})

  defp unique_name(prefix), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  describe "cast/3 and call/4 options" do
    test "options that are not a keyword list raise ArgumentError, whatever the server" do
      pid = start_server([])
      name = unique_name(:opts)
      Process.register(spawn(fn -> Process.sleep(:infinity) end), name)

      for server <- [pid, name, :no_such_name, {:global, :no_such}, {:x, :gn_nohost@nohost}],
          bad <- [[:high], [{:priority}], :high, %{priority: :high}, [{"priority", :high}]] do
        error = assert_raise ArgumentError, fn -> GenNative.cast(server, :x, bad) end
        assert error.message =~ "expected options to be a keyword list, got: #{inspect(bad)}"
      end

      for bad <- [[:high], :high, %{priority: :high}] do
        error = assert_raise ArgumentError, fn -> GenNative.call(pid, :x, 5000, bad) end
        assert error.message =~ "expected options to be a keyword list, got: #{inspect(bad)}"
      end

      # the server saw none of them
      assert sync_events(pid) == []
    end
  end

  describe "options" do
    @invalid [
      capacity: [0, -1, 1.5, :big, nil, "10", [1]],
      overflow: [:drop, nil, "reject", :block_forever, 1],
      batch_size: [0, -1, 1025, :infinity, 2.0, nil],
      keep_on_crash: [nil, :yes, 1, "true"]
    ]

    test "every invalid value of every option raises ArgumentError naming it, in use GenNative" do
      for {option, values} <- @invalid, value <- values do
        module = Module.concat(__MODULE__, "Invalid#{System.unique_integer([:positive])}")

        source = """
        defmodule #{inspect(module)} do
          use GenNative, mailbox: [#{option}: #{inspect(value)}]
          def init(arg), do: {:ok, arg}
        end
        """

        error = assert_raise ArgumentError, fn -> Code.compile_string(source) end

        assert error.message =~ inspect(option),
               "#{option}: #{inspect(value)} raised #{inspect(error.message)}"

        refute Code.ensure_loaded?(module)
      end
    end

    test "every invalid value of every option raises ArgumentError naming it, in start_link/start" do
      for {option, values} <- @invalid, value <- values, start <- [:start_link, :start] do
        error =
          assert_raise ArgumentError, fn ->
            apply(GenNative, start, [Recorder, self(), [mailbox: [{option, value}]]])
          end

        assert error.message =~ inspect(option)
      end

      # nothing was started, nothing linked to us died
      assert Process.info(self(), :links) == {:links, []}
    end

    test "an unknown option raises ArgumentError naming it" do
      source = """
      defmodule #{inspect(__MODULE__)}.Unknown do
        use GenNative, mailbox: [capacity: 10, priority_lanes: 2]
        def init(arg), do: {:ok, arg}
      end
      """

      error = assert_raise ArgumentError, fn -> Code.compile_string(source) end
      assert error.message =~ ":priority_lanes"

      error =
        assert_raise ArgumentError, fn ->
          GenNative.start_link(Recorder, self(), mailbox: [size: 10])
        end

      assert error.message =~ ":size"
    end

    test "a mailbox that is not a keyword list raises ArgumentError" do
      for bad <- [:bounded, [1, 2], %{capacity: 1}] do
        assert_raise ArgumentError, fn ->
          GenNative.start_link(Recorder, self(), mailbox: bad)
        end
      end

      source = """
      defmodule #{inspect(__MODULE__)}.NotKeyword do
        use GenNative, mailbox: :bounded
        def init(arg), do: {:ok, arg}
      end
      """

      assert_raise ArgumentError, fn -> Code.compile_string(source) end
    end

    test "the edge values are accepted and the defaults apply" do
      pid = start_server(capacity: 1, batch_size: 1, overflow: :block, keep_on_crash: false)
      assert %{capacity: 1, overflow: :block} = info(pid)

      pid = start_server(capacity: :infinity, batch_size: 1024)
      assert %{capacity: :infinity, overflow: :reject} = info(pid)

      pid = start_server([])

      assert info(pid) == %{
               length: 0,
               high_length: 0,
               capacity: :infinity,
               overflow: :reject,
               accepted: 0,
               rejected: 0,
               dropped: 0,
               expired: 0,
               max_length: 0,
               blocked_senders: 0
             }
    end

    test "start_link options override use GenNative's, key by key" do
      source = """
      defmodule #{inspect(__MODULE__)}.Bounded do
        use GenNative, mailbox: [capacity: 5, overflow: :drop_newest]
        def init(arg), do: {:ok, arg}
      end
      """

      [{module, _}] = Code.compile_string(source)

      {:ok, pid} = GenNative.start(module, nil)
      assert %{capacity: 5, overflow: :drop_newest} = info(pid)

      {:ok, pid2} = GenNative.start(module, nil, mailbox: [overflow: :block])
      assert %{capacity: 5, overflow: :block} = info(pid2)

      # started the GenServer way: the module's options
      {:ok, pid3} = GenServer.start(module, nil)
      assert %{capacity: 5, overflow: :drop_newest} = info(pid3)

      Enum.each([pid, pid2, pid3], &GenServer.stop/1)
    end

    test "keep_on_crash without a registered name raises ArgumentError" do
      for start <- [:start_link, :start] do
        error =
          assert_raise ArgumentError, fn ->
            apply(GenNative, start, [Recorder, self(), [mailbox: [keep_on_crash: true]]])
          end

        assert error.message =~ "keep_on_crash"
      end

      source = """
      defmodule #{inspect(__MODULE__)}.Keeper do
        use GenNative, mailbox: [keep_on_crash: true]
        def init(arg), do: {:ok, arg}
      end
      """

      [{module, _}] = Code.compile_string(source)
      assert_raise ArgumentError, ~r/keep_on_crash/, fn -> GenNative.start(module, nil) end

      # started the GenServer way, the check happens in init/1
      assert {:error, {%ArgumentError{message: message}, _}} = GenServer.start(module, nil)
      assert message =~ "keep_on_crash"
    end

    test "invalid :priority and cast :timeout options raise ArgumentError naming them" do
      pid = start_server([])

      assert_raise ArgumentError, ~r/:priority/, fn ->
        GenNative.cast(pid, :x, priority: :urgent)
      end

      assert_raise ArgumentError, ~r/:priority/, fn ->
        GenNative.call(pid, :x, 1000, priority: :urgent)
      end

      assert_raise ArgumentError, ~r/:timeout/, fn -> GenNative.cast(pid, :x, timeout: -1) end
      assert_raise ArgumentError, ~r/:timeout/, fn -> GenNative.cast(pid, :x, timeout: :soon) end
      assert sync_events(pid) == []
    end
  end

  describe "overflow: :reject" do
    test "casts: a full lane refuses the new ones, counted as rejected" do
      pid = start_server(capacity: 2, overflow: :reject)
      :ok = :sys.suspend(pid)

      # 1 and 2 fill the lane
      assert Enum.map(1..5, &GenNative.cast(pid, &1)) ==
               [
                 :ok,
                 :ok,
                 {:error, :mailbox_full},
                 {:error, :mailbox_full},
                 {:error, :mailbox_full}
               ]

      # the high lane has its own room
      assert GenNative.cast(pid, :h1, priority: :high) == :ok
      assert GenNative.cast(pid, :h2, priority: :high) == :ok
      assert GenNative.cast(pid, :h3, priority: :high) == {:error, :mailbox_full}

      assert %{length: 2, high_length: 2, accepted: 4, rejected: 4, dropped: 0, max_length: 4} =
               i = info(pid)

      assert sent(i) == 8

      :ok = :sys.resume(pid)
      assert sync_events(pid) == casts([:h1, :h2, 1, 2])
    end

    test "calls: a normal call meeting a full lane exits at once, a priority call too" do
      pid = start_server(capacity: 2, overflow: :reject)
      :ok = :sys.suspend(pid)
      Enum.each(1..3, &GenNative.cast(pid, &1))

      # no message to the suspended server is needed to refuse it
      assert catch_exit(GenNative.call(pid, :n, 1000)) == {:mailbox_full, loc(pid, :n, 1000)}

      hc1 = async(fn -> GenNative.call(pid, :hc1, 5000, priority: :high) end)
      wait_info(pid, :high_length, 1)
      hc2 = async(fn -> GenNative.call(pid, :hc2, 5000, priority: :high) end)
      wait_info(pid, :high_length, 2)

      assert catch_exit(GenNative.call(pid, :hc3, 1000, priority: :high)) ==
               {:mailbox_full, loc(pid, :hc3, 1000)}

      assert %{accepted: 4, rejected: 3, dropped: 0} = i = info(pid)
      assert sent(i) == 7

      :ok = :sys.resume(pid)
      assert await(hc1) == {:ok, {:ok, :hc1}}
      assert await(hc2) == {:ok, {:ok, :hc2}}

      # with room again, a normal call is admitted and counted
      assert GenNative.call(pid, :n2) == {:ok, :n2}
      assert %{accepted: 5, rejected: 3, dropped: 0} = info(pid)

      assert sync_events(pid) ==
               [{:call, :hc1}, {:call, :hc2}, {:cast, 1}, {:cast, 2}, {:call, :n2}]
    end
  end

  describe "overflow: :drop_newest" do
    test "casts: the new ones are discarded and counted, cast returns :ok" do
      pid = start_server(capacity: 2, overflow: :drop_newest)
      :ok = :sys.suspend(pid)

      assert Enum.map(1..5, &GenNative.cast(pid, &1)) == [:ok, :ok, :ok, :ok, :ok]

      assert Enum.map([:h1, :h2, :h3], &GenNative.cast(pid, &1, priority: :high)) == [
               :ok,
               :ok,
               :ok
             ]

      assert %{length: 2, high_length: 2, accepted: 4, rejected: 0, dropped: 4} = i = info(pid)
      assert sent(i) == 8

      :ok = :sys.resume(pid)
      assert sync_events(pid) == casts([:h1, :h2, 1, 2])
    end

    test "calls: a discarded call exits its caller with :mailbox_full at once" do
      pid = start_server(capacity: 2, overflow: :drop_newest)
      :ok = :sys.suspend(pid)
      Enum.each(1..3, &GenNative.cast(pid, &1))

      assert catch_exit(GenNative.call(pid, :n, 1000)) == {:mailbox_full, loc(pid, :n, 1000)}

      :ok = GenNative.cast(pid, :h1, priority: :high)
      hc = async(fn -> GenNative.call(pid, :hc, 5000, priority: :high) end)
      wait_info(pid, :high_length, 2)

      assert catch_exit(GenNative.call(pid, :hc2, 1000, priority: :high)) ==
               {:mailbox_full, loc(pid, :hc2, 1000)}

      assert %{accepted: 4, rejected: 0, dropped: 3} = i = info(pid)
      assert sent(i) == 7

      :ok = :sys.resume(pid)
      assert await(hc) == {:ok, {:ok, :hc}}
      assert sync_events(pid) == [{:cast, :h1}, {:call, :hc}, {:cast, 1}, {:cast, 2}]
    end
  end

  describe "overflow: :drop_oldest" do
    test "casts: the oldest queued ones make room, counted as dropped" do
      pid = start_server(capacity: 2, overflow: :drop_oldest)
      :ok = :sys.suspend(pid)

      # the queue mode: 1, 2 and 3 are evicted by 3, 4 and 5
      assert Enum.map(1..5, &GenNative.cast(pid, &1)) == [:ok, :ok, :ok, :ok, :ok]

      assert Enum.map([:h1, :h2, :h3], &GenNative.cast(pid, &1, priority: :high)) == [
               :ok,
               :ok,
               :ok
             ]

      i = info(pid)
      assert %{length: 2, high_length: 2, accepted: 4, rejected: 0, dropped: 4} = i
      assert sent(i) == 8, "accepted + rejected + dropped = #{sent(i)}, 8 sent: #{inspect(i)}"

      :ok = :sys.resume(pid)
      assert sync_events(pid) == casts([:h2, :h3, 4, 5])
    end

    test "calls: an evicted priority call exits its caller at once; a normal call evicts a cast" do
      pid = start_server(capacity: 2, overflow: :drop_oldest)
      :ok = :sys.suspend(pid)

      hc1 = async(fn -> GenNative.call(pid, :hc1, 5000, priority: :high) end)
      wait_info(pid, :high_length, 1)
      hc2 = async(fn -> GenNative.call(pid, :hc2, 5000, priority: :high) end)
      wait_info(pid, :high_length, 2)

      # the lane is full: :h3 evicts hc1, hc4 evicts hc2, while the server
      # is still suspended
      assert GenNative.cast(pid, :h3, priority: :high) == :ok
      assert await(hc1) == {:exit, {:mailbox_full, loc(pid, :hc1, 5000)}}
      hc4 = async(fn -> GenNative.call(pid, :hc4, 5000, priority: :high) end)
      assert await(hc2) == {:exit, {:mailbox_full, loc(pid, :hc2, 5000)}}

      # normal lane: a wake is pending, so 1 is queued too; 3 evicts 1 and
      # a normal call, admitted against the lane's capacity, evicts 2
      Enum.each(1..3, &GenNative.cast(pid, &1))
      n = async(fn -> GenNative.call(pid, :n, 5000) end)
      wait_info(pid, :length, 1)

      i = info(pid)
      assert %{high_length: 2, rejected: 0, dropped: 4, accepted: 4} = i
      assert sent(i) == 8

      :ok = :sys.resume(pid)
      assert await(hc4) == {:ok, {:ok, :hc4}}
      assert await(n) == {:ok, {:ok, :n}}
      assert sync_events(pid) == [{:cast, :h3}, {:call, :hc4}, {:cast, 3}, {:call, :n}]
    end
  end

  describe "overflow: :block" do
    test "casts and calls wait for room; counters match what was sent" do
      pid = start_server(capacity: 2, overflow: :block)
      :ok = :sys.suspend(pid)
      assert Enum.map(1..2, &GenNative.cast(pid, &1)) == [:ok, :ok]

      c3 = async(fn -> GenNative.cast(pid, 3) end)
      wait_info(pid, :blocked_senders, 1)
      n = async(fn -> GenNative.call(pid, :n, :infinity) end)
      wait_info(pid, :blocked_senders, 2)

      assert %{length: 2, accepted: 2, blocked_senders: 2} = info(pid)

      :ok = :sys.resume(pid)
      assert await(c3) == {:ok, :ok}
      assert await(n) == {:ok, {:ok, :n}}

      assert %{accepted: 4, rejected: 0, dropped: 0, blocked_senders: 0} = i = info(pid)
      assert sent(i) == 4
      events = sync_events(pid)
      assert Enum.take(events, 3) == casts([1, 2, 3])
      assert Enum.drop(events, 3) == [{:call, :n}]
    end

    test "the priority lane blocks when it is full" do
      pid = start_server(capacity: 1, overflow: :block)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, :h1, priority: :high)

      h2 = async(fn -> GenNative.cast(pid, :h2, priority: :high) end)
      wait_info(pid, :blocked_senders, 1)
      hc = async(fn -> GenNative.call(pid, :hc, :infinity, priority: :high) end)
      wait_info(pid, :blocked_senders, 2)

      :ok = :sys.resume(pid)
      assert await(h2) == {:ok, :ok}
      assert await(hc) == {:ok, {:ok, :hc}}
      assert sync_events(pid) == [{:cast, :h1}, {:cast, :h2}, {:call, :hc}]
      assert %{accepted: 3, rejected: 0, dropped: 0} = info(pid)
    end

    test "blocked casts are released in arrival order" do
      pid = start_server(capacity: 1, overflow: :block)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, 0)

      senders =
        for k <- 1..9 do
          sender = async(fn -> GenNative.cast(pid, k) end)
          wait_info(pid, :blocked_senders, k)
          sender
        end

      :ok = :sys.resume(pid)
      assert Enum.map(senders, &await/1) == List.duplicate({:ok, :ok}, 9)
      assert sync_events(pid) == casts(Enum.to_list(0..9))
      assert %{accepted: 10, rejected: 0, dropped: 0, max_length: 1} = info(pid)
    end

    test "blocked calls are served in arrival order" do
      pid = start_server(capacity: 1, overflow: :block)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, 0)

      callers =
        for k <- 1..8 do
          caller = async(fn -> GenNative.call(pid, {:n, k}, :infinity) end)
          wait_info(pid, :blocked_senders, k)
          caller
        end

      :ok = :sys.resume(pid)
      assert Enum.map(callers, &await/1) == for(k <- 1..8, do: {:ok, {:ok, {:n, k}}})
      assert sync_events(pid) == casts([0]) ++ for(k <- 1..8, do: {:call, {:n, k}})
    end

    test "cast with :timeout gives up with {:error, :mailbox_full} and is never delivered" do
      pid = start_server(capacity: 1, overflow: :block)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, 0)

      assert GenNative.cast(pid, :late0, timeout: 0) == {:error, :mailbox_full}
      assert GenNative.cast(pid, :late50, timeout: 50) == {:error, :mailbox_full}
      assert GenNative.cast(pid, :late_high, priority: :high, timeout: 0) == :ok
      assert %{blocked_senders: 0} = info(pid)

      :ok = :sys.resume(pid)
      assert sync_events(pid) == casts([:late_high, 0])
    end

    test "a cast that timed out counts as rejected" do
      pid = start_server(capacity: 1, overflow: :block)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, 0)
      assert GenNative.cast(pid, 1, timeout: 0) == {:error, :mailbox_full}

      i = info(pid)
      assert sent(i) == 2, "accepted + rejected + dropped = #{sent(i)}, 2 sent: #{inspect(i)}"
      assert %{accepted: 1, rejected: 1} = i
    end

    test "a blocked sender that times out lets the ones behind it through, in order" do
      pid = start_server(capacity: 1, overflow: :block)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, 0)

      a = async(fn -> GenNative.cast(pid, :a) end)
      wait_info(pid, :blocked_senders, 1)
      {_, impatient} = async(fn -> GenNative.cast(pid, :impatient, timeout: :infinity) end)
      wait_info(pid, :blocked_senders, 2)
      b = async(fn -> GenNative.cast(pid, :b) end)
      wait_info(pid, :blocked_senders, 3)

      # a blocked sender that dies stays in line; one that times out leaves
      # it: a call's wait counts against its timeout
      assert catch_exit(GenNative.call(pid, :n, 50)) == {:timeout, loc(pid, :n, 50)}
      assert %{blocked_senders: 3} = info(pid)
      Process.exit(impatient, :kill)

      :ok = :sys.resume(pid)
      assert await(a) == {:ok, :ok}
      assert await(b) == {:ok, :ok}
      events = sync_events(pid)
      refute {:call, :n} in events
      assert Enum.reject(events, &(&1 == {:cast, :impatient})) == casts([0, :a, :b])
    end

    test "a priority call's wait counts against its timeout" do
      pid = start_server(capacity: 1, overflow: :block)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, :h, priority: :high)

      assert catch_exit(GenNative.call(pid, :hc, 50, priority: :high)) ==
               {:timeout, loc(pid, :hc, 50)}

      assert %{blocked_senders: 0, high_length: 1} = info(pid)
      :ok = :sys.resume(pid)
      assert sync_events(pid) == [{:cast, :h}]
    end

    test "a priority request is not held behind senders blocked on the normal lane" do
      pid = start_server(capacity: 1, overflow: :block)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, 0)
      blocked = async(fn -> GenNative.cast(pid, 1) end)
      wait_info(pid, :blocked_senders, 1)

      # the high lane is empty: there is room for it
      assert GenNative.cast(pid, :h, priority: :high, timeout: 0) == :ok

      :ok = :sys.resume(pid)
      assert await(blocked) == {:ok, :ok}
      assert sync_events(pid) == casts([:h, 0, 1])
    end

    test "when the server dies every blocked sender is released" do
      pid = start_server(capacity: 1, overflow: :block)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, 0)
      :ok = GenNative.cast(pid, :h, priority: :high)

      c = async(fn -> GenNative.cast(pid, 2) end)
      wait_info(pid, :blocked_senders, 1)
      n = async(fn -> GenNative.call(pid, :n, :infinity) end)
      wait_info(pid, :blocked_senders, 2)
      hc = async(fn -> GenNative.call(pid, :hc, :infinity, priority: :high) end)
      wait_info(pid, :blocked_senders, 3)
      ht = async(fn -> GenNative.cast(pid, :ht, priority: :high, timeout: :infinity) end)
      wait_info(pid, :blocked_senders, 4)

      Process.exit(pid, :kill)

      assert await(c) == {:ok, :ok}
      assert await(ht) == {:ok, :ok}
      assert await(n) == {:exit, {:noproc, loc(pid, :n, :infinity)}}
      assert {:exit, {_, {GenNative, :call, [^pid, :hc, :infinity]}}} = await(hc)
      assert info(pid) == {:error, :noproc}
    end

    test "a blocked priority call exits as a blocked normal call when the server dies" do
      pid = start_server(capacity: 1, overflow: :block)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, :h, priority: :high)
      # both lanes full
      :ok = GenNative.cast(pid, :x)
      n = async(fn -> GenNative.call(pid, :n, :infinity) end)
      hc = async(fn -> GenNative.call(pid, :hc, :infinity, priority: :high) end)
      wait_info(pid, :blocked_senders, 2)
      Process.exit(pid, :kill)

      # neither request reached the server
      assert await(n) == {:exit, {:noproc, loc(pid, :n, :infinity)}}
      assert await(hc) == {:exit, {:noproc, loc(pid, :hc, :infinity)}}
    end
  end

  describe "priority" do
    test "high casts and calls go before every normal request still queued, each lane FIFO" do
      pid = start_server([])
      :ok = :sys.suspend(pid)

      Enum.each(1..5, &GenNative.cast(pid, {:n, &1}))
      :ok = GenNative.cast(pid, {:h, 1}, priority: :high)
      hc = async(fn -> GenNative.call(pid, {:hc, 2}, 5000, priority: :high) end)
      wait_info(pid, :high_length, 2)
      :ok = GenNative.cast(pid, {:h, 3}, priority: :high)
      :ok = GenNative.cast(pid, {:n, 6})

      assert %{length: 6, high_length: 3, accepted: 9} = info(pid)
      :ok = :sys.resume(pid)
      assert await(hc) == {:ok, {:ok, {:hc, 2}}}

      assert sync_events(pid) ==
               [{:cast, {:h, 1}}, {:call, {:hc, 2}}, {:cast, {:h, 3}}] ++
                 casts(for k <- 1..6, do: {:n, k})
    end

    test "a priority request to an idle server is handled" do
      pid = start_server([])
      :ok = GenNative.cast(pid, :h, priority: :high)
      assert GenNative.call(pid, :hc, 5000, priority: :high) == {:ok, :hc}
      assert sync_events(pid) == [{:cast, :h}, {:call, :hc}]
      assert %{accepted: 2, length: 0, high_length: 0} = info(pid)
    end

    test "a high call behind 100k queued casts is answered before the backlog drains" do
      {:ok, pid} = GenNative.start(Counter, nil)
      on_exit(fn -> Process.exit(pid, :kill) end)
      :ok = :sys.suspend(pid)

      for _ <- 1..100_000, do: :ok = GenNative.cast(pid, :tick)
      assert %{length: 100_000} = info(pid)

      hc = async(fn -> GenNative.call(pid, :count, 60_000, priority: :high) end)
      wait_info(pid, :high_length, 1)
      :ok = :sys.resume(pid)

      assert await(hc, 60_000) == {:ok, 0}
      assert GenNative.call(pid, :count, 60_000) == 100_000
    end

    test "system messages are answered while producers keep a backlog" do
      {:ok, pid} = GenNative.start(Counter, nil, mailbox: [capacity: 20_000])
      on_exit(fn -> Process.exit(pid, :kill) end)

      producers =
        for _ <- 1..4 do
          spawn_link(fn ->
            Stream.repeatedly(fn -> GenNative.cast(pid, {:work, 20}) end) |> Stream.run()
          end)
        end

      wait_until(fn -> info(pid).length > 1_000 end, 30_000)

      for _ <- 1..5 do
        assert is_integer(:sys.get_state(pid, 60_000))
        assert {:status, ^pid, _, _} = :sys.get_status(pid, 60_000)
        assert :sys.replace_state(pid, & &1, 60_000) |> is_integer()
      end

      # the producers never stopped: the backlog was there all along
      assert info(pid).accepted > 1_000
      Enum.each(producers, &(Process.unlink(&1) && Process.exit(&1, :kill)))
    end
  end

  describe "system messages under a backlog" do
    # Queue mode: the server drains what was queued before the :sys request
    # reached it, since its sender may have known of all of it, and no more
    # in one go than that.
    test "in queue mode a system message comes after the casts queued before it" do
      {:ok, pid} =
        GenNative.start(Counter, nil, mailbox: [batch_size: 16, overflow: :drop_oldest])

      on_exit(fn -> Process.exit(pid, :kill) end)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, {:hold, self()})
      for _ <- 1..10_000, do: :ok = GenNative.cast(pid, :tick)
      :ok = :sys.resume(pid)
      assert_receive {:holding, server}

      # the server is inside a callback, with 10k casts queued behind it
      state = async(fn -> :sys.get_state(pid, 60_000) end)
      wait_until(fn -> Process.info(pid, :message_queue_len) == {:message_queue_len, 1} end)
      send(server, :release)

      # the hold and the 10k ticks
      assert await(state, 60_000) == {:ok, 10_001}
      assert GenNative.call(pid, :count, 60_000) == 10_001
    end
  end

  describe "handle_batch/2" do
    test "queued casts come in order, at most batch_size at a time" do
      pid = start_server([batch_size: 3], [], BatchRecorder)
      :ok = :sys.suspend(pid)
      Enum.each(1..10, &GenNative.cast(pid, &1))
      :ok = :sys.resume(pid)

      assert sync_events(pid) ==
               [{:batch, [1, 2, 3]}, {:batch, [4, 5, 6]}, {:batch, [7, 8, 9]}, {:batch, [10]}]
    end

    test "the default batch_size is 64" do
      pid = start_server([], [], BatchRecorder)
      :ok = :sys.suspend(pid)
      Enum.each(0..200, &GenNative.cast(pid, &1))
      :ok = :sys.resume(pid)

      batches = sync_events(pid)
      assert Enum.map(batches, fn {:batch, b} -> length(b) end) == [64, 64, 64, 9]
      assert Enum.flat_map(batches, fn {:batch, b} -> b end) == Enum.to_list(0..200)
    end

    test "priority casts go to handle_batch/2 too, alone and first" do
      pid = start_server([], [], BatchRecorder)
      :ok = :sys.suspend(pid)
      Enum.each(1..4, &GenNative.cast(pid, &1))
      :ok = GenNative.cast(pid, :h, priority: :high)
      :ok = :sys.resume(pid)

      assert sync_events(pid) == [{:batch, [:h]}, {:batch, [1, 2, 3, 4]}]
    end

    test "a call between casts from one process splits the batch" do
      pid = start_server([], [], BatchRecorder)
      test = self()
      :ok = :sys.suspend(pid)

      {_, helper} =
        async(fn ->
          Enum.each([:a1, :a2, :a3, :a4], &GenNative.cast(pid, &1))
          {:ok, :mark} = GenNative.call(pid, :mark)
          send(test, :called)

          receive do
            :go -> Enum.each([:b1, :b2, :b3, :b4], &GenNative.cast(pid, &1))
          end

          send(test, :cast)
        end)

      # the wake and the call wait in the server's mailbox
      wait_until(fn -> Process.info(pid, :message_queue_len) == {:message_queue_len, 2} end)
      :ok = :sys.resume(pid)
      assert_receive :called, 5000
      :ok = :sys.suspend(pid)
      send(helper, :go)
      assert_receive :cast, 5000
      :ok = :sys.resume(pid)

      assert sync_events(pid) == [
               {:batch, [:a1, :a2, :a3, :a4]},
               {:call, :mark},
               {:batch, [:b1, :b2, :b3, :b4]}
             ]
    end

    # The documented exception of queue mode (README, "Ordering"): nothing
    # records where the queue stood when a call was sent, so casts a process
    # queues after a call it did not wait for (:gen_server.send_request) may
    # be handled before that call. What holds: casts sent before the call
    # are handled before it, and casts keep their order.
    test "a call sent without waiting (send_request) comes after the casts sent before it" do
      pid = start_server([], [], BatchRecorder)
      :ok = :sys.suspend(pid)
      Enum.each([:a1, :a2, :a3], &GenNative.cast(pid, &1))
      request = :gen_server.send_request(pid, :mark)
      Enum.each([:b1, :b2, :b3], &GenNative.cast(pid, &1))
      :ok = :sys.resume(pid)

      assert {:reply, {:ok, :mark}} = :gen_server.wait_response(request, 5000)

      handled =
        Enum.flat_map(sync_events(pid), fn
          {:batch, b} -> b
          {:cast, c} -> [c]
          {:call, c} -> [c]
        end)

      mark = Enum.find_index(handled, &(&1 == :mark))
      assert Enum.take(handled, 3) == [:a1, :a2, :a3] and mark >= 3
      assert Enum.reject(handled, &(&1 == :mark)) == [:a1, :a2, :a3, :b1, :b2, :b3]
      assert Enum.count(handled, &(&1 == :mark)) == 1
    end

    test "a bad return value stops the server with {:bad_return_value, value}, terminate/2 runs" do
      pid = start_server([], [], BatchRecorder)
      ref = Process.monitor(pid)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, :direct)
      Enum.each([1, {:return, :oops}, 3], &GenNative.cast(pid, &1))
      :ok = :sys.resume(pid)

      assert events_until(&match?({:terminate, _}, &1)) == [
               {:batch, [:direct, 1, {:return, :oops}, 3]},
               {:terminate, {:bad_return_value, :oops}}
             ]

      assert_receive {:DOWN, ^ref, _, _, {:bad_return_value, :oops}}, 5000
    end

    test "a bad timeout in {:noreply, state, timeout} is a bad return too" do
      pid = start_server([], [], BatchRecorder)
      ref = Process.monitor(pid)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, :direct)
      bad = {:noreply, self(), -5}
      :ok = GenNative.cast(pid, {:return, bad})
      :ok = :sys.resume(pid)

      assert_receive {:DOWN, ^ref, _, _, {:bad_return_value, ^bad}}, 5000

      assert {:terminate, {:bad_return_value, ^bad}} =
               List.last(events_until(&match?({:terminate, _}, &1)))
    end

    test "a bad return from handle_batch/2 exits as the same bad return from a GenServer's handle_cast/2" do
      {:ok, gs} = GenServer.start(Plain, nil)
      ref = Process.monitor(gs)
      GenServer.cast(gs, {:return, {:oops, 1}})
      assert_receive {:DOWN, ^ref, _, _, gs_reason}, 5000

      pid = start_server([], [], BatchRecorder)
      ref = Process.monitor(pid)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, :direct)
      :ok = GenNative.cast(pid, {:return, {:oops, 1}})
      :ok = :sys.resume(pid)
      assert_receive {:DOWN, ^ref, _, _, reason}, 5000
      assert reason == gs_reason

      assert {:batch, [:direct, {:return, {:oops, 1}}]} in events_until(
               &match?({:terminate, _}, &1),
               pid
             )
    end

    test "a throw from handle_batch/2 is taken as its return value" do
      pid = start_server([], [], BatchRecorder)
      test = self()
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, :direct)
      Enum.each([1, {:throw, {:noreply, test}}, 3], &GenNative.cast(pid, &1))
      Enum.each([4, {:throw, :bad}], &GenNative.cast(pid, &1))
      ref = Process.monitor(pid)
      :ok = :sys.resume(pid)

      # one batch of all five, handled by the first special: the throw of
      # {:noreply, state}; then the server is still alive
      assert [{:batch, [:direct, 1, {:throw, {:noreply, ^test}}, 3, 4, {:throw, :bad}]}] =
               sync_events(pid)

      refute_received {:DOWN, ^ref, _, _, _}

      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, :direct2)
      :ok = GenNative.cast(pid, {:throw, :bad})
      :ok = :sys.resume(pid)
      assert_receive {:DOWN, ^ref, _, _, {:bad_return_value, :bad}}, 5000
    end

    test "{:stop, reason, state} from handle_batch/2 stops the server after terminate/2" do
      pid = start_server([], [], BatchRecorder)
      ref = Process.monitor(pid)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, :direct)
      Enum.each([1, {:stop, :enough}, 3], &GenNative.cast(pid, &1))
      :ok = :sys.resume(pid)

      assert events_until(&match?({:terminate, _}, &1)) == [
               {:batch, [:direct, 1, {:stop, :enough}, 3]},
               {:terminate, :enough}
             ]

      assert_receive {:DOWN, ^ref, _, _, :enough}, 5000
    end

    test "a raise in handle_batch/2 crashes the server as a raise in handle_cast/2 would" do
      pid = start_server([], [], BatchRecorder)
      ref = Process.monitor(pid)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, :direct)
      :ok = GenNative.cast(pid, {:raise, "boom"})
      :ok = :sys.resume(pid)

      assert_receive {:DOWN, ^ref, _, _, {%RuntimeError{message: "boom"}, _stack}}, 5000

      assert {:terminate, {%RuntimeError{}, _}} =
               List.last(events_until(&match?({:terminate, _}, &1)))
    end
  end

  describe "keep_on_crash under a Supervisor" do
    defp supervise(name, module \\ Recorder, mailbox \\ []) do
      opts = [name: name, mailbox: [keep_on_crash: true] ++ mailbox]

      {:ok, sup} =
        Supervisor.start_link([{module, {self(), opts}}],
          strategy: :one_for_one,
          max_restarts: 100
        )

      on_exit(fn -> Process.exit(sup, :kill) end)
      {sup, Process.whereis(name)}
    end

    defp restarted(name, old) do
      wait_until(fn -> (pid = Process.whereis(name)) != nil and pid != old end)
      pid = Process.whereis(name)
      # the name is registered before init/1 runs; a system message is
      # answered once init/1 has returned (and sent its own wake if it
      # adopted a queue)
      _ = :sys.get_state(pid)
      pid
    end

    test "casts queued when the server is killed reach the restarted server in order" do
      name = unique_name(:keep_killed)
      {_sup, pid} = supervise(name)
      :ok = :sys.suspend(pid)
      Enum.each(1..50, &GenNative.cast(name, &1))
      :ok = GenNative.cast(name, :h, priority: :high)
      # a keep_on_crash mailbox queues every cast in its native lanes, the
      # first included
      Process.exit(pid, :kill)

      new = restarted(name, pid)
      # every cast not handled by the dead server, the one delivered to it
      # as a message included
      assert sync_events(new) == casts([:h | Enum.to_list(1..50)])
    end

    # Casts taken out of the queue and not handled yet survive an exit that
    # runs no code of the server's (a kill, an untrapped linked exit): they
    # stay in the mailbox until handled. The cast being handled when the
    # server died is delivered again (at least once).
    for {how, kill} <- [
          kill: quote(do: fn pid -> Process.exit(pid, :kill) end),
          linked_exit:
            quote(
              do: fn pid ->
                spawn(fn ->
                  Process.link(pid)
                  exit(:boom)
                end)
              end
            )
        ] do
      test "casts taken out but not handled survive an exit (#{how})" do
        name = unique_name(:keep_inflight)
        {_sup, pid} = supervise(name)
        :ok = :sys.suspend(pid)
        test = self()
        requests = Enum.to_list(1..9) ++ [{:hold, test}] ++ Enum.to_list(11..200)
        Enum.each(requests, &GenNative.cast(name, &1))
        :ok = :sys.resume(pid)
        assert_receive {:holding, ^pid}, 5000
        unquote(kill).(pid)

        # the restarted server's first request is the one being handled
        assert_receive {:holding, new} when new != pid, 5000
        assert Process.whereis(name) == new
        send(new, :release)
        assert sync_events(new) == casts(Enum.drop(requests, 9))
      end
    end

    test "a batch taken out but not handled survives a kill, and is handled again" do
      name = unique_name(:keep_inflight_batch)
      {_sup, pid} = supervise(name, BatchRecorder, batch_size: 4)
      :ok = :sys.suspend(pid)
      test = self()
      Enum.each([1, 2, 3, 4, 5, {:hold, test}, 7, 8, 9, 10], &GenNative.cast(name, &1))
      :ok = :sys.resume(pid)
      assert_receive {:holding, ^pid}, 5000
      Process.exit(pid, :kill)

      assert_receive {:holding, new} when new != pid, 5000
      assert Process.whereis(name) == new
      send(new, :release)

      assert sync_events(new) == [{:batch, [5, {:hold, test}, 7, 8]}, {:batch, [9, 10]}]
    end

    test "casts not yet handled when a callback crashes reach the restarted server in order" do
      name = unique_name(:keep_raise)
      {_sup, pid} = supervise(name)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(name, 0)
      Enum.each([1, 2, {:raise, "boom"}, 4, 5], &GenNative.cast(name, &1))
      Enum.each(6..300, &GenNative.cast(name, &1))
      :ok = :sys.resume(pid)

      events = events_until(&match?({:terminate, _}, &1), pid)
      assert Enum.drop(events, -1) == casts([0, 1, 2, {:raise, "boom"}])
      assert {:terminate, {%RuntimeError{message: "boom"}, _stack}} = List.last(events)

      new = restarted(name, pid)
      assert sync_events(new) == casts(Enum.to_list(4..300))
    end

    test "casts not yet handled when handle_batch/2 stops the server reach the restarted one" do
      name = unique_name(:keep_batch)
      {_sup, pid} = supervise(name, BatchRecorder, batch_size: 4)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(name, 0)
      Enum.each([1, 2, {:stop, :crash}, 4, 5, 6, 7, 8], &GenNative.cast(name, &1))
      :ok = :sys.resume(pid)

      assert events_until(&match?({:terminate, _}, &1), pid) ==
               [{:batch, [0, 1, 2, {:stop, :crash}]}, {:terminate, :crash}]

      new = restarted(name, pid)
      assert sync_events(new) == [{:batch, [4, 5, 6, 7]}, {:batch, [8]}]
    end

    test "priority calls queued by the dead server are dropped, their callers exited" do
      name = unique_name(:keep_calls)
      {_sup, pid} = supervise(name)
      :ok = :sys.suspend(pid)
      Enum.each(1..3, &GenNative.cast(name, &1))
      hc = async(fn -> GenNative.call(name, :hc, 10_000, priority: :high) end)
      wait_info(name, :high_length, 1)
      :ok = GenNative.cast(name, :h, priority: :high)
      before = info(name)
      Process.exit(pid, :kill)

      assert await(hc) == {:exit, {:killed, loc(name, :hc, 10_000)}}
      new = restarted(name, pid)
      events = sync_events(new)
      refute {:call, :hc} in events
      assert {:cast, :h} in events
      assert [{:cast, :h} | _] = Enum.drop_while(events, &(&1 == {:cast, 1}))

      after_ = info(new)
      assert after_.dropped == before.dropped + 1
      assert sent(after_) == sent(before)
    end

    test "a normal stop frees the queue: the next server starts empty" do
      for reason <- [:normal, :shutdown, {:shutdown, :bye}] do
        name = unique_name(:keep_stop)
        {_sup, pid} = supervise(name)
        :ok = :sys.suspend(pid)
        Enum.each(1..20, &GenNative.cast(name, &1))
        :ok = GenNative.cast(name, :h, priority: :high)
        :ok = GenNative.stop(pid, reason)
        assert_receive {:ev, ^pid, {:terminate, ^reason}}

        # a permanent child is restarted even after a normal stop
        new = restarted(name, pid)
        assert sync_events(new) == []
        assert %{length: 0, high_length: 0, accepted: 0} = info(new)
      end
    end

    test "a stop from a callback with :normal frees the queue too" do
      name = unique_name(:keep_cb_stop)
      {_sup, pid} = supervise(name)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(name, 0)
      Enum.each([1, {:stop, :normal}, 3, 4], &GenNative.cast(name, &1))
      :ok = :sys.resume(pid)
      assert_receive {:ev, ^pid, {:terminate, :normal}}, 5000

      new = restarted(name, pid)
      assert sync_events(new) == []
      assert %{length: 0} = info(new)
    end

    test "a kept queue goes only to a server of the same module" do
      name = unique_name(:keep_module)
      {:ok, pid} = GenNative.start(Recorder, self(), name: name, mailbox: [keep_on_crash: true])
      :ok = :sys.suspend(pid)
      Enum.each(1..5, &GenNative.cast(name, &1))
      ref = Process.monitor(pid)
      Process.exit(pid, :kill)
      assert_receive {:DOWN, ^ref, _, _, :killed}

      {:ok, other} =
        GenNative.start(BatchRecorder, self(), name: name, mailbox: [keep_on_crash: true])

      on_exit(fn -> Process.exit(other, :kill) end)
      assert sync_events(other) == []
      assert %{length: 0} = info(other)
    end
  end

  describe "mailbox_info/1" do
    test "a server on a node that cannot be reached: {:error, {:nodedown, node}}" do
      node = :"gn_unreachable@nohost.invalid"
      assert info({:some_server, node}) == {:error, {:nodedown, node}}
    end

    test "reads the counters without a message to the server, by pid and by name" do
      name = unique_name(:info)
      pid = start_server([capacity: 10], name: name)
      :ok = :sys.suspend(pid)
      Enum.each(1..5, &GenNative.cast(pid, &1))
      :ok = GenNative.cast(name, :h, priority: :high)
      {:message_queue_len, queued} = Process.info(pid, :message_queue_len)

      expected = %{
        length: 5,
        high_length: 1,
        capacity: 10,
        overflow: :reject,
        accepted: 6,
        rejected: 0,
        dropped: 0,
        expired: 0,
        max_length: 6,
        blocked_senders: 0
      }

      assert info(pid) == expected
      assert info(name) == expected
      assert info({name, node()}) == expected
      assert Process.info(pid, :message_queue_len) == {:message_queue_len, queued}

      :ok = :sys.resume(pid)
      assert length(sync_events(pid)) == 6
      assert %{length: 0, high_length: 0, max_length: 6, accepted: 6} = info(pid)
    end

    test "by a :global or :via name" do
      gname = {:global, unique_name(:info_global)}
      pid = start_server([capacity: 3], name: gname)
      assert %{capacity: 3} = info(gname)
      assert %{capacity: 3} = info(pid)
    end

    test "a plain GenServer or Agent is not native" do
      {:ok, gs} = GenServer.start(Plain, nil)
      {:ok, agent} = Agent.start(fn -> nil end)
      name = unique_name(:info_agent)
      Process.register(agent, name)

      assert info(gs) == {:error, :not_native}
      assert info(agent) == {:error, :not_native}
      assert info(name) == {:error, :not_native}
      assert info(self()) == {:error, :not_native}

      GenServer.stop(gs)
      Agent.stop(agent)
    end

    test "an unknown name or a dead process is :noproc" do
      assert info(unique_name(:nobody)) == {:error, :noproc}
      assert info({:global, unique_name(:nobody)}) == {:error, :noproc}

      pid = start_server([])
      ref = Process.monitor(pid)
      Process.exit(pid, :kill)
      assert_receive {:DOWN, ^ref, _, _, _}
      assert info(pid) == {:error, :noproc}
    end

    test "blocked_senders counts the senders waiting" do
      pid = start_server(capacity: 1, overflow: :block)
      :ok = :sys.suspend(pid)
      :ok = GenNative.cast(pid, 0)

      for k <- 1..5 do
        async(fn -> GenNative.cast(pid, {:b, k}) end)
        wait_info(pid, :blocked_senders, k)
      end

      assert %{blocked_senders: 5, length: 1, accepted: 1} = info(pid)
      :ok = :sys.resume(pid)
      # the blocked casts come from other processes: nothing orders them
      # before a message of ours, so wait for the mailbox to empty
      wait_info(pid, :accepted, 6)
      wait_info(pid, :length, 0)
      assert length(sync_events(pid)) == 6
      assert %{blocked_senders: 0, accepted: 6} = info(pid)
    end
  end
end

defmodule GenNative.MailboxMemoryTest do
  # Not async: these change the application environment and measure the
  # node's memory.
  use ExUnit.Case, async: false

  # bin/sanitize excludes :memory: its VM has no memory accounting
  @moduletag :memory

  import GenNative.TestHelpers
  import GenNative.MailboxServers

  alias GenNative.MailboxServers.Recorder

  @moduletag :capture_log

  defp settle_memory do
    for pid <- Process.list(), do: :erlang.garbage_collect(pid)
    Process.sleep(20)
    :erlang.memory(:total)
  end

  defp fill_and(name, count, payload, finish) do
    {:ok, pid} = GenNative.start(Recorder, self(), name: name, mailbox: [keep_on_crash: true])
    :ok = :sys.suspend(pid)
    # a binary of its own per cast: a leaked queue would keep them all
    for k <- 1..count, do: :ok = GenNative.cast(name, {k, :binary.copy(payload)})
    ref = Process.monitor(pid)
    finish.(pid)
    assert_receive {:DOWN, ^ref, _, _, _}, 5000
  end

  test "keep_on_crash: memory is released on normal stop" do
    name = :"mb_memory_#{System.unique_integer([:positive])}"
    payload = fn -> :binary.copy(<<1>>, 4096) end
    stop = fn pid -> GenNative.stop(pid, :normal) end

    # warm up allocators, then measure over many cycles: 100 cycles of 500
    # casts of 4 KB would leak about 200 MB
    for _ <- 1..5, do: fill_and(name, 500, payload.(), stop)
    before = settle_memory()

    for _ <- 1..100, do: fill_and(name, 500, payload.(), stop)

    wait_until(fn -> settle_memory() - before < 40_000_000 end, 10_000)
    flush_events()
  end

  test "keep_on_crash: the Janitor frees an orphaned queue after the grace period" do
    old = Application.get_env(:gen_native, :keep_on_crash_ms)
    Application.put_env(:gen_native, :keep_on_crash_ms, 100)

    on_exit(fn ->
      if old,
        do: Application.put_env(:gen_native, :keep_on_crash_ms, old),
        else: Application.delete_env(:gen_native, :keep_on_crash_ms)
    end)

    name = :"mb_orphan_#{System.unique_integer([:positive])}"
    fill_and(name, 20, "x", &Process.exit(&1, :kill))

    # the Janitor keeps it, then lets it go
    wait_until(fn -> not Map.has_key?(:sys.get_state(GenNative.Janitor), name) end, 10_000)

    {:ok, pid} = GenNative.start(Recorder, self(), name: name, mailbox: [keep_on_crash: true])
    assert sync_events(pid) == []
    assert %{length: 0, accepted: 0} = GenNative.mailbox_info(pid)
    GenNative.stop(pid)
    flush_events()
  end

  test "keep_on_crash: orphaned queues are freed, memory comes back" do
    Application.put_env(:gen_native, :keep_on_crash_ms, 50)
    on_exit(fn -> Application.delete_env(:gen_native, :keep_on_crash_ms) end)
    payload = :binary.copy(<<2>>, 4096)

    before = settle_memory()

    names =
      for _ <- 1..50 do
        name = :"mb_orphans_#{System.unique_integer([:positive])}"
        fill_and(name, 500, payload, &Process.exit(&1, :kill))
        name
      end

    wait_until(
      fn ->
        kept = :sys.get_state(GenNative.Janitor)
        not Enum.any?(names, &Map.has_key?(kept, &1))
      end,
      10_000
    )

    wait_until(fn -> settle_memory() - before < 40_000_000 end, 10_000)
    flush_events()
  end

  defp flush_events do
    receive do
      {:ev, _, _} -> flush_events()
    after
      0 -> :ok
    end
  end
end
