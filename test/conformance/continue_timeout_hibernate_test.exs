defmodule Conformance.ContinueTimeoutHibernateTest do
  use Conformance.Case, async: true

  @moduletag :capture_log

  @hibernated {:current_function, {:erlang, :hibernate, 3}}

  defserver NoContinue do
    @impl true
    def init(owner) do
      watch_self(owner)
      {:ok, :s0, {:continue, :go}}
    end
  end

  defp server(gen, mod, state \\ []) do
    start!(gen, mod, {self(), fn -> {:ok, state} end})
  end

  describe "handle_continue/2" do
    test "runs before any other message, even one the server sent itself" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod)
          :ok = :sys.suspend(pid)
          # Queued behind the cast that asks for the continue.
          :ok =
            gen.cast(
              pid,
              run(fn s ->
                send(self(), :self_sent)
                {:noreply, [:cast | s], {:continue, run(fn s -> {:noreply, [:continue | s]} end)}}
              end)
            )

          send(pid, :queued_before)
          :ok = :sys.resume(pid)
          {next({:info, :queued_before, _}), next({:info, :self_sent, _})}
        end)

      assert result ==
               {{:info, :queued_before, [:continue, :cast]},
                {:info, :self_sent, [:continue, :cast]}}
    end

    test "continues chain" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod)

          third = run(fn s -> {:noreply, [3 | s]} end)
          second = run(fn s -> {:noreply, [2 | s], {:continue, third}} end)
          first = run(fn s -> {:noreply, [1 | s], {:continue, second}} end)
          :ok = gen.cast(pid, run(fn s -> {:noreply, [0 | s], {:continue, first}} end))
          gen.call(pid, :state)
        end)

      assert result == [3, 2, 1, 0]
    end

    test "return values: timeout, :hibernate, {:stop, reason, state}" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod)
          ref = Process.monitor(pid)
          timed = run(fn s -> {:noreply, [:timed | s], 10} end)
          :ok = gen.cast(pid, run(fn s -> {:noreply, s, {:continue, timed}} end))
          timeout = next({:info, :timeout, _})
          hib = run(fn s -> {:noreply, [:hib | s], :hibernate} end)
          :ok = gen.cast(pid, run(fn s -> {:noreply, s, {:continue, hib}} end))
          hibernated = await_hibernated(pid)
          stop = run(fn s -> {:stop, :normal, [:stop | s]} end)
          :ok = gen.cast(pid, run(fn s -> {:noreply, s, {:continue, stop}} end))
          {timeout, hibernated, next({:terminate, _, _}), await_exit(ref)}
        end)

      assert result ==
               {{:info, :timeout, [:timed]}, @hibernated,
                {:terminate, :normal, [:stop, :hib, :timed]}, :normal}
    end

    test "a throw is a return; a raise and a bad return stop the server" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod)
          thrown = run(fn s -> throw({:noreply, [:thrown | s]}) end)
          :ok = gen.cast(pid, run(fn s -> {:noreply, s, {:continue, thrown}} end))
          state = gen.call(pid, :state)

          failures =
            for fun <- [fn _ -> raise "in continue" end, fn _ -> :bogus end] do
              pid = server(gen, mod)
              ref = Process.monitor(pid)
              :ok = gen.cast(pid, run(fn s -> {:noreply, s, {:continue, run(fun)}} end))
              {next({:terminate, _, _}), await_exit(ref)}
            end

          {state, failures}
        end)

      assert {[:thrown],
              [
                {{:terminate, {%RuntimeError{message: "in continue"}, [_ | _]}, []},
                 {%RuntimeError{message: "in continue"}, [_ | _]}},
                {{:terminate, {:bad_return_value, :bogus}, []}, {:bad_return_value, :bogus}}
              ]} = result
    end

    test "without handle_continue/2 a continue crashes the server with :undef" do
      result =
        conform(NoContinue, fn gen, mod ->
          {:ok, pid} = start(gen, mod, self())
          {:down, ^pid, reason} = next({:down, _, _})
          reason
        end)

      assert {:undef, [{NoContinue.GenServer, :handle_continue, [:go, :s0], _} | _]} = result
    end
  end

  describe "timeouts" do
    test "an integer timeout delivers :timeout once and is not re-armed" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod)
          :ok = gen.cast(pid, run(fn s -> {:noreply, [:armed | s], 10} end))
          first = next({:info, :timeout, _})
          second = next({:info, :timeout, _}, 100)
          {first, second, gen.call(pid, :state)}
        end)

      assert result == {{:info, :timeout, [:armed]}, :none, [:armed]}
    end

    test "any message arriving first cancels the timeout" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod)
          # Suspended, so :first is queued before the timeout is armed.
          :ok = :sys.suspend(pid)
          :ok = gen.cast(pid, run(fn s -> {:noreply, s, 100} end))
          send(pid, :first)
          :ok = :sys.resume(pid)
          {next({:info, :first, _}), next({:info, :timeout, _}, 300)}
        end)

      assert result == {{:info, :first, []}, :none}
    end

    test "timeout 0 with a queued message handles the message first" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod)
          :ok = :sys.suspend(pid)
          :ok = gen.cast(pid, run(fn s -> {:noreply, s, 0} end))
          send(pid, :queued)
          :ok = :sys.resume(pid)
          queued = next({:info, :queued, _})
          # Nothing re-armed the timeout: no :timeout at all.
          self_sent = gen.cast(pid, run(fn s -> send(self(), :own) && {:noreply, s, 0} end))
          {queued, self_sent, next({:info, :own, _}), next({:info, :timeout, _}, 100)}
        end)

      assert result == {{:info, :queued, []}, :ok, {:info, :own, []}, :none}
    end

    test "timeout 0 with nothing queued delivers :timeout at once" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod)
          :ok = gen.cast(pid, run(fn s -> {:noreply, [:zero | s], 0} end))
          next({:info, :timeout, _})
        end)

      assert result == {:info, :timeout, [:zero]}
    end

    test "a system message restarts the timeout" do
      # Timeout 600 ms, system message after 300 ms: without a restart
      # :timeout would come at 600 ms, with it at 900 ms. We look at 750 ms.
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod)
          :ok = gen.cast(pid, run(fn s -> {:noreply, s, 600} end))
          Process.sleep(300)
          state = :sys.get_state(pid)
          early = next({:info, :timeout, _}, 450)
          {state, early, next({:info, :timeout, _}, 2_000)}
        end)

      assert result == {[], :none, {:info, :timeout, []}}
    end
  end

  describe "hibernation" do
    test "{:noreply, state, :hibernate} hibernates until the next message" do
      result =
        conform(Scripted, fn gen, mod ->
          pid = server(gen, mod, :big_state)
          :ok = gen.cast(pid, run(fn s -> {:noreply, {:kept, s}, :hibernate} end))
          hibernated = await_hibernated(pid)
          state = gen.call(pid, :state)
          {:current_function, after_call} = Process.info(pid, :current_function)
          {hibernated, state, after_call != {:erlang, :hibernate, 3}}
        end)

      assert result == {@hibernated, {:kept, :big_state}, true}
    end

    test "calls, casts and plain messages wake a hibernated server" do
      result =
        conform(Recorder, fn gen, mod ->
          pid = start!(gen, mod, [], hibernate_after: 1)
          h1 = await_hibernated(pid)
          :ok = gen.cast(pid, :cast)
          h2 = await_hibernated(pid)
          send(pid, :info)
          h3 = await_hibernated(pid)
          {:ok, :call} = gen.call(pid, :call)
          {[h1, h2, h3], await_hibernated(pid), gen.call(pid, :log)}
        end)

      assert result ==
               {[@hibernated, @hibernated, @hibernated], @hibernated,
                [{:cast, :cast}, {:info, :info}, {:call, :call}]}
    end
  end
end
