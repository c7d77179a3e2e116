defmodule Conformance.OrderingTest do
  use Conformance.Case, async: true

  # Erlang guarantees that messages from one process to another arrive in
  # send order. A GenServer therefore handles one client's casts, calls and
  # plain messages in the order that client sent them, whatever the kind.

  test "a plain message sent before a call is handled first" do
    result =
      conform(Recorder, fn gen, mod ->
        pid = start!(gen, mod, [])
        send(pid, :plain)
        gen.call(pid, :log)
      end)

    assert result == [{:info, :plain}]
  end

  test "casts, plain messages and calls from one process keep their order" do
    result =
      conform(Recorder, fn gen, mod ->
        pid = start!(gen, mod, [])

        for i <- 1..60 do
          case rem(i, 3) do
            0 -> {:ok, {:n, ^i}} = gen.call(pid, {:n, i})
            1 -> :ok = gen.cast(pid, {:n, i})
            2 -> send(pid, {:n, i})
          end
        end

        gen.call(pid, :log)
      end)

    expected =
      for i <- 1..60 do
        kind =
          cond do
            rem(i, 3) == 0 -> :call
            rem(i, 3) == 1 -> :cast
            true -> :info
          end

        {kind, {:n, i}}
      end

    assert result == expected
  end

  # Casts and plain messages from one process, interleaved, with and
  # without a backlog (the server held inside a call while they are sent):
  # exactly GenServer's order. 20 rounds, every one must pass.
  test "casts and plain messages interleaved with no call between them" do
    exact = for i <- 1..200, do: if(rem(i, 2) == 0, do: {:cast, {:n, i}}, else: {:info, {:n, i}})

    for round <- 1..20 do
      result =
        conform(Recorder, fn gen, mod ->
          pid = start!(gen, mod, [])
          if rem(round, 2) == 0, do: :ok = :sys.suspend(pid)

          for i <- 1..200 do
            if rem(i, 2) == 0, do: :ok = gen.cast(pid, {:n, i}), else: send(pid, {:n, i})
          end

          if rem(round, 2) == 0, do: :ok = :sys.resume(pid)
          gen.call(pid, :log)
        end)

      assert result == exact
    end
  end

  test "a plain message sent between two casts is handled between them" do
    result =
      conform(Recorder, fn gen, mod ->
        pid = start!(gen, mod, [])
        # Suspended, so all three are queued before the server looks.
        :ok = :sys.suspend(pid)
        :ok = gen.cast(pid, :cast1)
        send(pid, :plain2)
        :ok = gen.cast(pid, :cast3)
        :ok = :sys.resume(pid)
        gen.call(pid, :log)
      end)

    assert result == [{:cast, :cast1}, {:info, :plain2}, {:cast, :cast3}]
  end

  test "a cast sent before a call is handled before it" do
    result =
      conform(Recorder, fn gen, mod ->
        pid = start!(gen, mod, [])
        :ok = gen.cast(pid, :first)
        {:ok, :second} = gen.call(pid, :second)
        send(pid, :third)
        :ok = gen.cast(pid, :fourth)
        gen.call(pid, :log)
      end)

    assert result == [{:cast, :first}, {:call, :second}, {:info, :third}, {:cast, :fourth}]
  end

  test "many concurrent clients: each client's requests stay in its order" do
    result =
      conform(Recorder, fn gen, mod ->
        pid = start!(gen, mod, [])
        clients = 16
        per_client = 150

        tasks =
          for c <- 1..clients do
            Task.async(fn ->
              for i <- 1..per_client do
                case rem(i, 3) do
                  0 -> gen.call(pid, {c, i})
                  1 -> gen.cast(pid, {c, i})
                  2 -> send(pid, {c, i})
                end
              end

              :done
            end)
          end

        Enum.each(tasks, &Task.await(&1, 20_000))
        log = gen.call(pid, :log)

        by_client =
          log
          |> Enum.map(fn {_kind, {c, i}} -> {c, i} end)
          |> Enum.group_by(fn {c, _} -> c end, fn {_, i} -> i end)

        {length(log),
         Enum.all?(by_client, fn {_c, seq} -> seq == Enum.to_list(1..per_client) end),
         map_size(by_client)}
      end)

    assert result == {16 * 150, true, 16}
  end

  test "handle_info/2 sees messages the server sent itself after pending requests" do
    result =
      conform(Scripted, fn gen, mod ->
        pid = start!(gen, mod, {self(), fn -> {:ok, []} end})
        # Suspended, so both casts are queued before the first one runs.
        :ok = :sys.suspend(pid)

        :ok =
          gen.cast(
            pid,
            {:run,
             fn s ->
               send(self(), :self_sent)
               {:noreply, [:cast | s]}
             end}
          )

        :ok = gen.cast(pid, :second_cast)
        :ok = :sys.resume(pid)
        {next({:cast, :second_cast, _}), next({:info, :self_sent, _})}
      end)

    # :second_cast was already queued when the server sent itself :self_sent.
    assert result == {{:cast, :second_cast, [:cast]}, {:info, :self_sent, [:cast]}}
  end
end
