defmodule GenNative.MailboxBusyTest do
  # Mailbox control (spec-i9.md) with the server held busy INSIDE A CALL:
  # a process calls {:block, test}, the handler tells the test it is there
  # and waits for :release (GenNative.BusyServers.hold/1, release/2). That
  # is the situation where casts used to travel past the mailbox's count.
  # Every scenario runs 20 times on a fresh server and must hold each time.
  use ExUnit.Case, async: true

  import ExUnit.CaptureIO
  import ExUnit.CaptureLog
  import GenNative.BusyServers
  import GenNative.MailboxServers, only: [async: 1, await: 1, await: 2, sync_events: 1]
  import GenNative.TestHelpers, only: [wait_until: 1]

  alias GenNative.BusyServers.{BatchAndCast, BatchOnly, Log}

  @moduletag :capture_log

  @runs 20

  defp start_server(mailbox, module \\ Log) do
    {:ok, pid} = GenNative.start(module, self(), mailbox: mailbox)
    on_exit(fn -> Process.exit(pid, :kill) end)
    pid
  end

  defp info(server), do: GenNative.mailbox_info(server)

  # spec-i9.md: accepted + rejected + dropped + expired = requests sent with
  # GenNative, calls included.
  defp sent(info), do: info.accepted + info.rejected + info.dropped + info.expired

  defp wait_info(server, key, value) do
    wait_until(fn -> match?(%{^key => ^value}, info(server)) end)
  end

  defp loc(server, request, timeout), do: {GenNative, :call, [server, request, timeout]}

  defp casts(requests), do: Enum.map(requests, &{:cast, &1})

  describe "capacity with overflow: :reject" do
    test "capacity 5: of 10 casts exactly 5 are accepted, and exactly those are handled, in order" do
      for _ <- 1..@runs do
        pid = start_server(capacity: 5, overflow: :reject)
        held = hold(pid)

        assert Enum.map(1..10, &GenNative.cast(pid, &1)) ==
                 List.duplicate(:ok, 5) ++ List.duplicate({:error, :mailbox_full}, 5)

        # accepted: the holding call and the 5 casts
        i = info(pid)
        assert %{length: 5, rejected: 5, accepted: 6, dropped: 0, expired: 0} = i
        assert sent(i) == 11

        release(pid, held)
        assert sync_events(pid) == casts(1..5)
        assert %{length: 0, accepted: 6, rejected: 5} = info(pid)
      end
    end

    test "capacity 2 and two casts waiting: a call exits with :mailbox_full at once" do
      for _ <- 1..@runs do
        pid = start_server(capacity: 2, overflow: :reject)
        held = hold(pid)
        assert :ok = GenNative.cast(pid, 1)
        assert :ok = GenNative.cast(pid, 2)

        # refused before it is sent: the 5 s timeout is never reached
        assert catch_exit(GenNative.call(pid, :n, 5_000)) == {:mailbox_full, loc(pid, :n, 5_000)}

        assert %{length: 2, accepted: 3, rejected: 1} = i = info(pid)
        assert sent(i) == 4

        release(pid, held)
        assert sync_events(pid) == casts([1, 2])
      end
    end
  end

  describe "capacity and GenServer.cast" do
    # spec-i9.md: casts sent with GenServer.cast are not counted; so
    # handling one must not free a slot that a GenNative cast holds.
    # The documented limit (GenNative.Mailbox, :capacity): a GenServer.cast
    # arrives as the same {:"$gen_cast", _} message as a GenNative cast, so
    # it takes no slot when sent, and handling it frees one, which lets as
    # many more GenNative casts in as GenServer casts were handled.
    test "GenServer.cast casts take no slot, and handling one frees a slot" do
      for _ <- 1..@runs do
        test = self()
        pid = start_server(capacity: 2, overflow: :reject)
        held = hold(pid)
        :ok = GenServer.cast(pid, :g1)
        :ok = GenServer.cast(pid, {:block_cast, test})

        assert Enum.map(1..3, &GenNative.cast(pid, &1)) ==
                 [:ok, :ok, {:error, :mailbox_full}]

        assert %{length: 2} = info(pid)

        # the server handles :g1, then waits inside the second GenServer
        # cast: 1 and 2 still wait, but the two handled GenServer casts
        # freed their slots
        release(pid, held)
        assert_receive {:blocked_cast, ^pid}, 10_000
        assert %{length: 0} = info(pid)
        assert GenNative.cast(pid, 4) == :ok

        send(pid, :release)
        assert sync_events(pid) == casts([:g1, {:block_cast, test}, 1, 2, 4])
        assert %{length: 0, accepted: 4, rejected: 1} = i = info(pid)
        assert sent(i) == 5
      end
    end
  end

  describe "capacity with overflow: :drop_newest" do
    test "capacity 3, casts 1..6: all return :ok, 1..3 are handled, 3 are dropped" do
      for _ <- 1..@runs do
        pid = start_server(capacity: 3, overflow: :drop_newest)
        held = hold(pid)

        assert Enum.map(1..6, &GenNative.cast(pid, &1)) == List.duplicate(:ok, 6)
        assert %{length: 3, dropped: 3, accepted: 4, rejected: 0} = i = info(pid)
        assert sent(i) == 7

        release(pid, held)
        assert sync_events(pid) == casts([1, 2, 3])
      end
    end

    test "capacity 2 and two casts waiting: a call exits with :mailbox_full at once" do
      for _ <- 1..@runs do
        pid = start_server(capacity: 2, overflow: :drop_newest)
        held = hold(pid)
        assert :ok = GenNative.cast(pid, 1)
        assert :ok = GenNative.cast(pid, 2)
        assert catch_exit(GenNative.call(pid, :n, 5_000)) == {:mailbox_full, loc(pid, :n, 5_000)}
        assert sent(info(pid)) == 4

        release(pid, held)
        assert sync_events(pid) == casts([1, 2])
      end
    end
  end

  describe "capacity with overflow: :drop_oldest (queue mode)" do
    test "capacity 3, casts 1..6: all return :ok, 4..6 are handled, 3 are dropped" do
      for _ <- 1..@runs do
        pid = start_server(capacity: 3, overflow: :drop_oldest)
        held = hold(pid)

        assert Enum.map(1..6, &GenNative.cast(pid, &1)) == List.duplicate(:ok, 6)
        # an eviction moves a cast from accepted to dropped
        assert %{length: 3, dropped: 3, accepted: 4, rejected: 0} = i = info(pid)
        assert sent(i) == 7

        release(pid, held)
        assert sync_events(pid) == casts([4, 5, 6])
      end
    end
  end

  describe "capacity with overflow: :block" do
    test "capacity 1, one cast waiting: a cast with timeout: 50 returns {:error, :mailbox_full}" do
      for _ <- 1..@runs do
        pid = start_server(capacity: 1, overflow: :block)
        held = hold(pid)
        assert :ok = GenNative.cast(pid, 1)

        assert GenNative.cast(pid, :x, timeout: 50) == {:error, :mailbox_full}
        assert %{length: 1, blocked_senders: 0, accepted: 2, rejected: 1} = i = info(pid)
        assert sent(i) == 3

        release(pid, held)
        assert sync_events(pid) == casts([1])
      end
    end

    test "capacity 1, one cast waiting: a blocked cast and a blocked call are admitted after it" do
      for _ <- 1..@runs do
        pid = start_server(capacity: 1, overflow: :block)
        held = hold(pid)
        assert :ok = GenNative.cast(pid, 1)

        late = async(fn -> GenNative.cast(pid, :late, timeout: 60_000) end)
        wait_info(pid, :blocked_senders, 1)
        call = async(fn -> GenNative.call(pid, :n, 60_000) end)
        wait_info(pid, :blocked_senders, 2)

        release(pid, held)
        assert await(late) == {:ok, :ok}
        assert await(call) == {:ok, {:ok, :n}}

        assert sync_events(pid) == [{:cast, 1}, {:cast, :late}, {:call, :n}]
        assert %{blocked_senders: 0, accepted: 4, rejected: 0} = i = info(pid)
        assert sent(i) == 4
      end
    end
  end

  describe "priority" do
    test "casts 1..5, then a high cast: the high one is handled first" do
      for _ <- 1..@runs do
        pid = start_server([])
        held = hold(pid)
        Enum.each(1..5, &(:ok = GenNative.cast(pid, &1)))
        :ok = GenNative.cast(pid, :urgent, priority: :high)

        release(pid, held)
        assert sync_events(pid) == casts([:urgent, 1, 2, 3, 4, 5])
      end
    end

    test "a high call behind 10_000 casts sees none of them handled before its reply" do
      for _ <- 1..@runs do
        pid = start_server([])
        held = hold(pid)
        for _ <- 1..10_000, do: :ok = GenNative.cast(pid, :tick)

        high = async(fn -> GenNative.call(pid, :handled, 60_000, priority: :high) end)
        wait_info(pid, :high_length, 1)

        release(pid, held)
        assert await(high, 60_000) == {:ok, 0}
        assert GenNative.call(pid, :handled, 60_000) == 10_000
      end
    end

    test "a high cast to a bounded message-mode mailbox overtakes the casts waiting" do
      for overflow <- [:reject, :drop_newest, :block], _ <- 1..@runs do
        pid = start_server(capacity: 10, overflow: overflow)
        held = hold(pid)
        Enum.each(1..5, &(:ok = GenNative.cast(pid, &1)))
        :ok = GenNative.cast(pid, :urgent, priority: :high)

        release(pid, held)
        assert {overflow, sync_events(pid)} == {overflow, casts([:urgent, 1, 2, 3, 4, 5])}
      end
    end
  end

  describe "handle_batch/2" do
    # Every cast reaches handle_batch/2: a GenNative cast to an idle server,
    # a GenServer.cast, a priority cast, and casts waiting while the server
    # is busy. Returns {idle events, busy events}; the server must survive.
    defp batch_scenario(module, mailbox) do
      pid = start_server(mailbox, module)
      ref = Process.monitor(pid)

      idle =
        for {cast, request} <- [
              {&GenNative.cast(&1, &2), :idle},
              {&GenServer.cast(&1, &2), :gs_idle},
              {&GenNative.cast(&1, &2, priority: :high), :high_idle}
            ] do
          :ok = cast.(pid, request)
          sync_events(pid)
        end

      held = hold(pid)
      Enum.each(1..3, &(:ok = GenNative.cast(pid, &1)))
      :ok = GenServer.cast(pid, :gs)
      :ok = GenNative.cast(pid, :h, priority: :high)
      release(pid, held)
      busy = sync_events(pid)

      refute_received {:DOWN, ^ref, _, _, _}
      assert Process.alive?(pid)
      {idle, busy}
    end

    defp flat(events), do: Enum.flat_map(events, fn {:batch, batch} -> batch end)

    test "only handle_batch/2, message mode (batch_size: 1): every cast, one per batch" do
      for _ <- 1..@runs do
        {idle, busy} = batch_scenario(BatchOnly, batch_size: 1)
        assert idle == [[{:batch, [:idle]}], [{:batch, [:gs_idle]}], [{:batch, [:high_idle]}]]
        assert busy == Enum.map([:h, 1, 2, 3, :gs], &{:batch, [&1]})
      end
    end

    test "only handle_batch/2, queue mode (batch_size 64): every cast, in order" do
      for _ <- 1..@runs do
        {idle, busy} = batch_scenario(BatchOnly, [])
        assert idle == [[{:batch, [:idle]}], [{:batch, [:gs_idle]}], [{:batch, [:high_idle]}]]

        # a priority cast is a batch of one
        assert [{:batch, [:h]} | _] = busy
        assert flat(busy) == [:h, 1, 2, 3, :gs]
      end
    end

    test "handle_batch/2 and handle_cast/2: every cast goes to handle_batch/2, in both modes" do
      for mailbox <- [[batch_size: 1], []], _ <- 1..@runs do
        {idle, busy} = batch_scenario(BatchAndCast, mailbox)
        expected_idle = [[{:batch, [:idle]}], [{:batch, [:gs_idle]}], [{:batch, [:high_idle]}]]
        assert {mailbox, idle} == {mailbox, expected_idle}

        if mailbox == [batch_size: 1] do
          assert busy == Enum.map([:h, 1, 2, 3, :gs], &{:batch, [&1]})
        else
          assert [{:batch, [:h]} | _] = busy
          assert flat(busy) == [:h, 1, 2, 3, :gs]
        end
      end
    end
  end

  describe "drop_expired_calls" do
    # Three calls with a 100 ms timeout wait behind the held call until
    # their callers have exited.
    defp expire_three(pid) do
      late = for i <- 1..3, do: {i, async(fn -> GenNative.call(pid, {:late, i}, 100) end)}

      for {i, caller} <- late do
        assert await(caller) == {:exit, {:timeout, loc(pid, {:late, i}, 100)}}
      end
    end

    test "true: calls whose caller timed out are not run, and are counted as expired" do
      for _ <- 1..@runs do
        pid = start_server(drop_expired_calls: true)
        held = hold(pid)
        expire_three(pid)

        # neither an :infinity call nor a GenServer.call is ever expired,
        # even one whose caller timed out
        infinity = async(fn -> GenNative.call(pid, :infinity, :infinity) end)
        gs = async(fn -> GenServer.call(pid, :gs, :infinity) end)
        gs_late = async(fn -> GenServer.call(pid, :gs_late, 100) end)
        assert {:exit, {:timeout, _}} = await(gs_late)

        release(pid, held)
        assert await(infinity) == {:ok, {:ok, :infinity}}
        assert await(gs) == {:ok, {:ok, :gs}}

        events = sync_events(pid)

        assert Enum.sort(events) ==
                 Enum.sort([{:call, :infinity}, {:call, :gs}, {:call, :gs_late}])

        # GenNative sent the holding call, 3 late calls and the :infinity one
        assert %{expired: 3, accepted: 2, rejected: 0, dropped: 0} = i = info(pid)
        assert sent(i) == 5
      end
    end

    # The server is released the moment the caller has exited: a caller
    # that gives up before its deadline has passed (a wait rounded down to
    # the millisecond) would have its call run.
    test "true: a call is not run once its caller has exited, even just after" do
      for _ <- 1..@runs do
        pid = start_server(drop_expired_calls: true)
        held = hold(pid)
        assert catch_exit(GenNative.call(pid, :late, 100)) == {:timeout, loc(pid, :late, 100)}

        release(pid, held)
        assert sync_events(pid) == []
        assert %{expired: 1} = i = info(pid)
        assert sent(i) == 2
      end
    end

    test "true: a high-priority call whose caller timed out is not run either" do
      for _ <- 1..@runs do
        pid = start_server(drop_expired_calls: true)
        held = hold(pid)

        assert catch_exit(GenNative.call(pid, :high_late, 100, priority: :high)) ==
                 {:timeout, loc(pid, :high_late, 100)}

        release(pid, held)
        assert sync_events(pid) == []
        assert %{expired: 1} = i = info(pid)
        assert sent(i) == 2
      end
    end

    test "false (the default): calls whose caller timed out are run, as in GenServer" do
      for mailbox <- [[], [drop_expired_calls: false]], _ <- 1..@runs do
        pid = start_server(mailbox)
        held = hold(pid)
        expire_three(pid)

        release(pid, held)
        assert Enum.sort(sync_events(pid)) == for(i <- 1..3, do: {:call, {:late, i}})
        assert %{expired: 0, accepted: 4} = i = info(pid)
        assert sent(i) == 4
      end
    end

    test "true: handle_call/3 and :sys.get_state/1 see the user's request" do
      for _ <- 1..@runs do
        pid = start_server(drop_expired_calls: true)
        held = hold(pid)
        caller = async(fn -> GenNative.call(pid, {:keep, 1}, 5_000) end)
        release(pid, held)

        assert await(caller) == {:ok, {:ok, {:keep, 1}}}
        assert %{kept: {:keep, 1}} = :sys.get_state(pid)
        assert sync_events(pid) == [{:call, {:keep, 1}}]
      end
    end

    test "true: a crash report names the user's request as the last message" do
      for _ <- 1..@runs do
        # unique: other tests' servers crash with "boom" too
        message = "boom #{System.unique_integer([:positive])}"

        log =
          capture_log(fn ->
            pid = start_server(drop_expired_calls: true)
            ref = Process.monitor(pid)
            held = hold(pid)
            caller = async(fn -> GenNative.call(pid, {:crash, message}, 5_000) end)
            release(pid, held)

            assert {:exit, {{%RuntimeError{message: ^message}, _stack}, loc}} = await(caller)
            assert loc == loc(pid, {:crash, message}, 5_000)
            assert_receive {:DOWN, ^ref, _, _, {%RuntimeError{message: ^message}, _}}, 5_000
          end)

        # other tests run meanwhile: read our server's report only
        [report] =
          log
          |> String.split(~r/\n(?=\d{2}:\d{2}:\d{2}\.\d{3} \[)/)
          |> Enum.filter(&(&1 =~ "** (RuntimeError) #{message}"))

        assert report =~
                 ~r/Last message \(from #PID<[\d.]+>\): \{:crash, "#{message}"\}/

        refute report =~ "$gn"
      end
    end

    test "true: :sys.trace prints the user's request in its *DBG* lines" do
      output =
        capture_io(fn ->
          # started here, the server writes to the captured device
          pid = start_server(drop_expired_calls: true)
          :ok = :sys.trace(pid, true)
          assert GenNative.call(pid, {:probe, 42}, 5_000) == {:ok, {:probe, 42}}
          :ok = :sys.trace(pid, false)
        end)

      assert output =~ ~r/\*DBG\* <[\d.]+> got call \{probe,42\} from <[\d.]+>/
      assert output =~ ~r/\*DBG\* <[\d.]+> sent \{ok,\{probe,42\}\} to <[\d.]+>/
      refute output =~ "$gn"
    end
  end
end
