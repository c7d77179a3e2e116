defmodule GenNative.StoreBigTermsTest do
  # No store NIF runs longer than 1 ms on a normal scheduler whatever the
  # size of one key or value: past a size threshold a call moves to a dirty
  # scheduler, and the arena's compaction runs inline only for a store of
  # few live bytes. Proved with :erlang.system_monitor/2 long_schedule
  # (1 ms) as in GenNative.StoreSchedulingTest: each watched call in a
  # timeslice of its own, up to 3 attempts (an OS preemption also shows as
  # a long schedule; a NIF that copies 16 MB inline does so every time).
  # Not async: the system monitor is node-wide. Tagged :scheduling.
  use ExUnit.Case, async: false

  import GenNative.TestHelpers,
    only: [
      isolated: 1,
      run_all: 2,
      watch_long_schedules: 1,
      assert_one_clean: 2
    ]

  # Runs one call in a process of its own, with a heap big enough for what
  # it gets back, that exits right after: so the long_schedule check sees
  # the NIF, not the garbage collection of a 16 MB result (which the VM
  # does in one go, as for any term that size). Returns its pid.
  defp alone(fun) do
    {pid, ref} = :erlang.spawn_opt(fn -> isolated(fun) end, [:monitor, min_heap_size: 4_000_000])

    receive do
      {:DOWN, ^ref, :process, ^pid, :normal} -> pid
      {:DOWN, ^ref, :process, ^pid, reason} -> flunk("#{inspect(pid)} exited: #{inspect(reason)}")
    end
  end

  alias GenNative.Store

  @moduletag :scheduling

  # `fun` returns the pids to watch, or runs in the one watched process.
  defp watch(fun, pids? \\ false),
    do: watch_long_schedules(if pids?, do: fun, else: fn -> run_all(1, fun) end)

  @tag timeout: 600_000
  test "big keys and values: put, get, take, first/at/next, update_counter, delete" do
    list = Enum.to_list(1..1_000_000)
    # a 100 MB binary key
    big_key = :binary.copy(<<7>>, 100_000_000)

    assert_one_clean(
      3,
      fn ->
        {:ok, set} = Store.new(:set, access: :public)
        {:ok, ordered} = Store.new(:ordered_set, access: :public)

        long =
          watch(
            fn ->
              for store <- [set, ordered] do
                [
                  alone(fn -> :ok = Store.put(store, :list, list) end),
                  alone(fn -> [_ | _] = Store.get(store, :list) end),
                  alone(fn -> {:ok, _} = Store.fetch(store, :list) end),
                  alone(fn -> :ok = Store.put(store, big_key, :v) end),
                  alone(fn -> :v = Store.get(store, big_key) end),
                  alone(fn -> 1 = Store.update_counter(store, {big_key}, 1) end),
                  alone(fn -> {:ok, :v} = Store.take(store, big_key) end),
                  alone(fn -> :ok = Store.delete(store, {big_key}) end),
                  alone(fn -> {:ok, _} = Store.take(store, :list) end),
                  alone(fn -> true = Store.put_new(store, :list, list) end)
                ]
              end
              |> List.flatten()
              |> Kernel.++([
                alone(fn -> {:ok, {:list, _}} = Store.first(ordered) end),
                alone(fn -> {:ok, {:list, _}} = Store.at(ordered, 0) end),
                alone(fn -> {:ok, {:list, _}} = Store.next(ordered, :a) end),
                alone(fn -> :error = Store.next(ordered, big_key) end),
                alone(fn -> :error = Store.rank(ordered, big_key) end)
              ])
            end,
            true
          )

        :ok = Store.delete(set)
        :ok = Store.delete(ordered)
        long
      end
    )
  end

  # The issue's case: a store holding 1,000 values of 10k-element lists
  # (here 100: the same 16 MB of live terms per compaction), then tiny
  # writes whose garbage triggered an inline compaction of all of it.
  @tag timeout: 600_000
  test "tiny writes next to big live values never compact inline" do
    value = Enum.to_list(1..10_000)

    assert_one_clean(
      3,
      fn ->
        {:ok, store} = Store.new(:set, access: :public)
        for i <- 1..100, do: :ok = Store.put(store, i, value)

        long =
          watch(fn ->
            for i <- 1..1_500 do
              isolated(fn -> :ok = Store.put(store, {:tiny, i}, i) end)
              isolated(fn -> :ok = Store.delete(store, {:tiny, i}) end)
            end
          end)

        :ok = Store.delete(store)
        long
      end
    )
  end

  # Below the size that sends it dirty, a call still copies up to 64 KB:
  # it is charged reductions for the bytes it copies (a timeslice per
  # 512 KB), so that the process making it is preempted in time. Reductions
  # are the VM's own count, not a timing.
  test "put, get and take are charged reductions for the bytes they copy" do
    {:ok, store} = Store.new(:set)
    big = Enum.to_list(1..3_500)
    # 3,500 cons cells, 56 KB: under the 64 KB that would go dirty
    small_put = GenNative.TestHelpers.reductions(fn -> Store.put(store, :small, 1) end)
    big_put = GenNative.TestHelpers.reductions(fn -> Store.put(store, :big, big) end)
    small_get = GenNative.TestHelpers.reductions(fn -> Store.get(store, :small) end)
    big_get = GenNative.TestHelpers.reductions(fn -> Store.get(store, :big) end)
    small_take = GenNative.TestHelpers.reductions(fn -> Store.take(store, :small) end)
    big_take = GenNative.TestHelpers.reductions(fn -> Store.take(store, :big) end)
    # 56 KB is 10% of a 4,000-reduction timeslice
    assert big_put - small_put >= 300, "put: #{small_put} against #{big_put}"
    assert big_get - small_get >= 300, "get: #{small_get} against #{big_get}"
    assert big_take - small_take >= 300, "take: #{small_take} against #{big_take}"
  end
end
