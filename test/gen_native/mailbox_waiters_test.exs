defmodule GenNative.MailboxWaitersTest do
  # Blocked senders (overflow: :block) at scale: admitting one, cancelling
  # one and releasing all of them when the owner dies must each cost a
  # bounded amount of work on a normal scheduler, however many wait.
  #
  # Proved with :erlang.system_monitor's long_schedule (any timeslice over
  # 1 ms), as in native_test.exs: each watched NIF call runs in a timeslice
  # of its own, and a scenario is retried up to 5 times until one attempt is
  # clean, since an OS preemption of the scheduler thread also shows up as a
  # long schedule on this 2-core machine; work that grows with the number of
  # waiters shows up in every attempt.
  #
  # The waiters are made by calling the NIF directly from one process,
  # which gets {:wait, tag} back each time, so that 40,000 of them need no
  # 40,000 processes.
  # Not async: :erlang.system_monitor/2 is node-wide.
  use ExUnit.Case, async: false

  import GenNative.TestHelpers,
    only: [isolated: 1, watch_long_schedules: 1, assert_one_clean: 2]

  alias GenNative.Native

  @moduletag :scheduling
  @moduletag timeout: 300_000
  @waiters 40_000

  # A process owning a message-mode mailbox of capacity 1 under :block,
  # which runs the functions it is sent.
  defp spawn_owner do
    test = self()

    pid =
      spawn(fn ->
        send(test, {:mailbox, Native.mailbox_new(1, :block, [])})
        serve()
      end)

    receive do
      {:mailbox, ref} -> {pid, ref}
    end
  end

  defp serve do
    receive do
      {:run, from, fun} ->
        send(from, {:ran, fun.()})
        serve()
    end
  end

  defp run_in(pid, fun) do
    send(pid, {:run, self(), fun})

    receive do
      {:ran, result} -> result
    end
  end

  # Fills the mailbox and parks @waiters blocked casts behind it; returns
  # their tags, oldest first.
  defp block_waiters(owner, n \\ @waiters) do
    :send = Native.mailbox_send(owner, :first, :normal, :cast)

    for i <- 1..n do
      {:wait, tag} = Native.mailbox_send(owner, i, :normal, :cast)
      tag
    end
  end

  defp flush_replies do
    receive do
      {_tag, result} when result in [:ok, :closed] -> flush_replies()
    after
      0 -> :ok
    end
  end

  # The long schedules of the pids `scenario` returns, seen while it ran.
  defp long_schedules_of(scenario) do
    found = watch_long_schedules(scenario)
    flush_replies()
    found
  end

  test "admitting a blocked sender does not grow with the senders waiting" do
    assert_one_clean(5, fn ->
      long_schedules_of(fn ->
        {owner, ref} = spawn_owner()
        _tags = block_waiters(owner, 4 * @waiters)

        # each ack frees the slot, and the oldest waiter takes it
        run_in(owner, fn ->
          for _ <- 1..200, do: isolated(fn -> Native.mailbox_ack(ref, :cast) end)
        end)

        Process.exit(owner, :kill)
        [owner]
      end)
    end)
  end

  test "cancelling a blocked sender does not grow with the senders waiting" do
    assert_one_clean(5, fn ->
      long_schedules_of(fn ->
        {owner, _ref} = spawn_owner()
        tags = block_waiters(owner)
        test = self()

        # the newest give up first: the farthest from the head
        {canceller, mref} =
          spawn_monitor(fn ->
            for tag <- Enum.take(Enum.reverse(tags), 200) do
              :cancelled = isolated(fn -> Native.mailbox_cancel(owner, tag) end)
            end

            send(test, :cancelled)
          end)

        assert_receive :cancelled, 120_000
        assert_receive {:DOWN, ^mref, _, _, :normal}
        assert %{blocked_senders: blocked} = Native.mailbox_info(owner)
        assert blocked == @waiters - 200
        Process.exit(owner, :kill)
        [canceller]
      end)
    end)
  end

  # Normal calls take no room: when one slot frees, every call waiting in
  # a row fits. They are let in a slice at a time, with a wake to the owner
  # for the next slice.
  test "blocked calls let in by one ack come in slices, all of them, in order" do
    n = 5_000

    assert_one_clean(5, fn ->
      long_schedules_of(fn ->
        test = self()

        owner =
          spawn(fn ->
            ref = Native.mailbox_new(1, :block, [])
            send(test, {:mailbox, ref})

            receive do
              :go -> isolated(fn -> Native.mailbox_ack(ref, :cast) end)
            end

            send(test, {:calls, receive_calls(ref, 1, n)})
          end)

        assert_receive {:mailbox, _ref}
        :send = Native.mailbox_send(owner, :first, :normal, :cast)

        # the blocked callers: a process that only counts, once all is done,
        # the {tag, :ok} it was sent
        caller =
          spawn(fn ->
            for i <- 1..n do
              call = {:"$gen_call", {self(), make_ref()}, i}
              {:wait, _tag} = Native.mailbox_send(owner, call, :normal, :call)
            end

            send(test, :blocked)
            receive(do: (:count -> send(test, {:admitted, count_ok(0)})))
          end)

        assert_receive :blocked, 60_000
        send(owner, :go)
        assert_receive {:calls, :all_in_order}, 60_000
        send(caller, :count)
        assert_receive {:admitted, ^n}, 60_000
        [owner]
      end)
    end)
  end

  defp count_ok(count) do
    receive do
      {_tag, :ok} -> count_ok(count + 1)
    after
      0 -> count
    end
  end

  # The owner's side: calls 1..n in order, and a take on each wake.
  defp receive_calls(_ref, next, n) when next > n, do: :all_in_order

  defp receive_calls(ref, next, n) do
    receive do
      {:"$gen_call", _from, ^next} ->
        receive_calls(ref, next + 1, n)

      {:"$gen_call", _from, other} ->
        {:expected, next, :got, other}

      :"$gn_wake" ->
        [] = isolated(fn -> Native.mailbox_take(ref, 64, :infinity, true) end)
        receive_calls(ref, next, n)
    after
      10_000 -> {:stuck_at, next}
    end
  end

  test "the owner's exit releases every blocked sender without a long callback" do
    assert_one_clean(5, fn ->
      long_schedules_of(fn ->
        {owner, _ref} = spawn_owner()
        _tags = block_waiters(owner)
        mref = Process.monitor(owner)
        Process.exit(owner, :kill)
        assert_receive {:DOWN, ^mref, _, _, :killed}

        # every blocked sender is told :closed
        for _ <- 1..@waiters do
          assert_receive {_tag, :closed}, 60_000
        end

        [owner]
      end)
    end)
  end

  # The mailbox's lock is only ever held for O(1) work, so the test hook
  # Native.mailbox_hold/3 holds it (for 300 ms, on a dirty scheduler) to
  # catch the owner's exit at that moment: the down callback must not wait
  # for it, and the close it hands to the reaper thread must still happen.
  test "the owner's exit while the mailbox's lock is busy: no wait, and the close still happens" do
    assert_one_clean(5, fn ->
      long_schedules_of(fn ->
        {owner, ref} = spawn_owner()
        tags = block_waiters(owner, 100)
        test = self()
        spawn(fn -> Native.mailbox_hold(ref, 300, test) end)
        assert_receive :locked
        mref = Process.monitor(owner)
        Process.exit(owner, :kill)
        assert_receive {:DOWN, ^mref, _, _, :killed}, 5_000
        assert_receive :unlocking, 5_000

        # after the lock is let go: every blocked sender is told :closed,
        # and the owner's pid no longer names a native mailbox
        for tag <- tags, do: assert_receive({^tag, :closed}, 5_000)

        GenNative.TestHelpers.wait_until(
          fn -> Native.mailbox_info(owner) == :not_native end,
          5_000
        )

        [owner]
      end)
    end)
  end

  # Letting blocked senders in sends two messages each (the request to the
  # owner, :ok to the sender), far more work than the one reduction a NIF
  # call counts: the call that lets them in is charged for them (1% of a
  # timeslice per 4 messages), so a process that admits many is preempted
  # as often as one that sends as many messages itself. Reductions are the
  # VM's own count, not a timing.
  test "the call that lets blocked senders in is charged reductions for the messages it sends" do
    {owner, ref} = spawn_owner()
    :send = Native.mailbox_send(owner, :first, :normal, :cast)

    # 1,000 blocked calls: one freed slot lets the first slice of them in
    for i <- 1..1_000 do
      call = {:"$gen_call", {self(), make_ref()}, i}
      {:wait, _tag} = Native.mailbox_send(owner, call, :normal, :call)
    end

    {idle, admitting} =
      run_in(owner, fn ->
        {GenNative.TestHelpers.reductions(fn -> Native.mailbox_ack(ref, :expired) end),
         GenNative.TestHelpers.reductions(fn -> Native.mailbox_ack(ref, :cast) end)}
      end)

    Process.exit(owner, :kill)
    # a slice of 128 calls is 256 messages: 65% of a 4,000-reduction timeslice
    assert admitting - idle >= 2_000, "idle #{idle}, admitting #{admitting}"
  end
end
