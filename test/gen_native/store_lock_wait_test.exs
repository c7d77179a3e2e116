defmodule GenNative.StoreLockWaitTest do
  # No store NIF, and no store callback, waits for a store's lock on a
  # normal scheduler while a dirty NIF (a walk of a big store) holds it:
  # it tries the lock and, if busy, moves to a dirty scheduler (a NIF) or
  # hands the work to the reaper thread (the owner-down callback). Proved
  # with :erlang.system_monitor/2 long_schedule (1 ms), as in
  # GenNative.StoreSchedulingTest: each watched call in a timeslice of its
  # own, the scenario retried up to 3 times (an OS preemption of a
  # scheduler thread also shows as a long schedule; a NIF that blocks on a
  # lock does so every time).
  # Not async: the system monitor is node-wide. Tagged :scheduling.
  use ExUnit.Case, async: false

  import GenNative.TestHelpers,
    only: [
      isolated: 1,
      run_all: 2,
      watch_long_schedules: 1,
      assert_one_clean: 2
    ]

  alias GenNative.Store

  @moduletag :scheduling

  # Entries in the walked store: its to_list takes tens of ms.
  @n 300_000

  defp fill(store, n), do: GenNative.StoreSuite.fill(store, n, &{&1, "v"})

  # Runs `fun` while other processes walk `store` over and over (a dirty
  # NIF holding its read lock most of the time).
  defp while_walked(store, fun) do
    walking = :atomics.new(1, [])
    :atomics.put(walking, 1, 1)

    # two walkers: between them, the lock is held nearly all the time
    walkers =
      for _ <- 1..2 do
        Task.async(fn ->
          Stream.repeatedly(fn -> length(Store.to_list(store)) end)
          |> Enum.take_while(fn _ -> :atomics.get(walking, 1) == 1 end)
        end)
      end

    # the walker is in its first walk
    Process.sleep(20)

    try do
      fun.()
    after
      :atomics.put(walking, 1, 0)
      Enum.each(walkers, &Task.await(&1, 120_000))
    end
  end

  @tag timeout: 600_000
  test "size/1 with an expired entry, and new/2 with the walked store's name, do not wait" do
    name = :"gn_lock_wait_#{System.unique_integer([:positive])}"
    {:ok, store} = Store.new(:ordered_set, access: :public, name: name)
    fill(store, @n)

    assert_one_clean(3, fn ->
      watch_long_schedules(fn ->
        while_walked(store, fn ->
          run_all(1, fn ->
            for i <- 1..60 do
              # an entry that expires at once: the next size/1 must purge
              # it, under the write lock
              :ok = Store.put(store, {:ttl, i}, i, ttl: 1)
              Process.sleep(3)
              isolated(fn -> Store.size(store) end)
              isolated(fn -> Store.info(store) end)
              {:error, :already_exists} = isolated(fn -> Store.new(:set, name: name) end)
            end
          end)
        end)
      end)
    end)

    :ok = Store.delete(store)
  end

  @tag timeout: 600_000
  test "the owner's exit does not wait for a walk of its store; the store goes as documented" do
    assert_one_clean(3, fn ->
      test = self()

      for lifetime <- [:owner, :named], reduce: [] do
        acc ->
          name = :"gn_lock_wait_#{System.unique_integer([:positive])}"

          owner =
            spawn(fn ->
              {:ok, store} =
                Store.new(:ordered_set, access: :public, name: name, lifetime: lifetime)

              send(test, {:store, store})
              receive do: (:exit -> :ok)
            end)

          store = receive do: ({:store, store} -> store)
          fill(store, @n)
          ref = Process.monitor(owner)

          long =
            watch_long_schedules(fn ->
              while_walked(store, fn ->
                send(owner, :exit)
                assert_receive {:DOWN, ^ref, _, _, _}, 5_000
              end)

              [owner]
            end)

          # once the walks are over, the exit has taken effect
          if lifetime == :owner do
            GenNative.TestHelpers.wait_until(fn -> Store.whereis(name) == nil end, 10_000)
          else
            {:ok, adopted} = Store.new(:ordered_set, name: name)
            assert Store.size(adopted) == @n
            :ok = Store.delete(adopted)
          end

          acc ++ long
      end
    end)
  end
end
