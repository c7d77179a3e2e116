defmodule GenNative.PortTest do
  # GenNative.Port and what only port stores have: starting and stopping the
  # program under a supervisor, its death (kill -9 of the OS process) and
  # restart, request timeouts, many concurrent callers, and the protocol
  # itself, spoken to the program directly (c_src/port/PROTOCOL.md). The
  # store functions themselves are tested on this backend by
  # store_port_test.exs. Every test starts its own programs under unique
  # names.
  use ExUnit.Case, async: true

  import Bitwise

  import GenNative.PortProtocol,
    only: [program: 0, send_term: 2, event: 1, reply: 2, call: 2, close: 1]

  import GenNative.TestHelpers, only: [wait_ms: 1, wait_until: 2]

  alias GenNative.Store
  alias GenNative.PortProtocol

  @moduletag :port

  defp unique(prefix), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  defp start_port(opts \\ []) do
    name = unique(:gn_port)
    pid = start_supervised!({GenNative.Port, [name: name] ++ opts})
    {name, pid}
  end

  defp kill(signal, os_pid) do
    {_, 0} = System.cmd("kill", ["-#{signal}", Integer.to_string(os_pid)])
    :ok
  end

  # Whether an OS process runs (a zombie has exited).
  defp os_alive?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} -> not (stat |> String.split(") ") |> List.last() |> String.starts_with?("Z"))
      {:error, _} -> false
    end
  end

  # Runs fun in a process of its own, which reports what fun returned,
  # raised or exited with.
  defp spawn_caller(fun) do
    test = self()

    spawn(fn ->
      result =
        try do
          {:ok, fun.()}
        rescue
          e -> {:raised, e}
        catch
          :exit, reason -> {:exit, reason}
        end

      send(test, {:caller, self(), result})
    end)
  end

  defp caller_result(pid) do
    assert_receive {:caller, ^pid, result}, 10_000
    result
  end

  # A caller waiting for a reply monitors the port's owner.
  defp waiting_on?(pid, owner) do
    case Process.info(pid, [:monitors, :status]) do
      [monitors: monitors, status: :waiting] -> {:process, owner} in monitors
      _ -> false
    end
  end

  describe "start_link/1 and child_spec/1" do
    test "invalid options raise ArgumentError naming them" do
      for {opts, named} <- [
            {[], ":name"},
            {[name: "port"], ":name"},
            {[name: nil], ":name"},
            {[name: :p, dir: ""], ":dir"},
            {[name: :p, dir: 12], ":dir"},
            {[name: :p, sync: :sometimes], ":sync"},
            {[name: :p, sync: {:interval, 0}], ":sync"},
            {[name: :p, sync: {:interval, 1.5}], ":sync"},
            # the program's own bound (--sync MS): a day
            {[name: :p, sync: {:interval, 86_400_001}], ":sync"},
            {[name: :p, sync: {:interval, 90_000_000}], "86400000"},
            {[name: :p, timeout: 0], ":timeout"},
            {[name: :p, timeout: :never], ":timeout"},
            {[name: :p, bogus: 1], ":bogus"},
            {[:name], "keyword"}
          ] do
        error = assert_raise ArgumentError, fn -> GenNative.Port.start_link(opts) end
        assert error.message =~ named, "#{inspect(opts)}: #{error.message}"
      end
    end

    test "the program is ready when start_link returns, registered under its name" do
      {name, pid} = start_port()
      assert Process.whereis(name) == pid
      assert GenNative.Port.stores(name) == []
      assert is_integer(GenNative.Port.os_pid(name))
      assert os_alive?(GenNative.Port.os_pid(name))
      assert GenNative.Port.sync(name) == :ok

      {:ok, _} = Store.new(:set, backend: {:port, name}, name: :a)
      {:ok, _} = Store.new(:ordered_set, backend: {:port, name}, name: :b)
      assert Enum.sort(GenNative.Port.stores(name)) == [{:a, :set}, {:b, :ordered_set}]
    end

    test "a supervisor holds several, each with its own id and program" do
      a = unique(:gn_port_a)
      b = unique(:gn_port_b)
      children = [{GenNative.Port, name: a}, {GenNative.Port, name: b}]

      sup =
        start_supervised!(%{
          id: :sup,
          start: {Supervisor, :start_link, [children, [strategy: :one_for_one]]},
          type: :supervisor
        })

      assert [{{GenNative.Port, _}, _, :worker, _}, {{GenNative.Port, _}, _, :worker, _}] =
               Supervisor.which_children(sup)

      {:ok, sa} = Store.new(:set, backend: {:port, a}, name: :same)
      {:ok, sb} = Store.new(:set, backend: {:port, b}, name: :same)
      :ok = Store.put(sa, :k, :a)
      :ok = Store.put(sb, :k, :b)
      assert Store.get(sa, :k) == :a
      assert Store.get(sb, :k) == :b
      assert GenNative.Port.os_pid(a) != GenNative.Port.os_pid(b)
    end

    test "stopping it closes the program and waits for it to exit" do
      {name, pid} = start_port()
      {:ok, store} = Store.new(:set, backend: {:port, name}, name: :s)
      os_pid = GenNative.Port.os_pid(name)
      ref = Process.monitor(pid)
      :ok = stop_supervised({GenNative.Port, name})
      assert_receive {:DOWN, ^ref, _, _, :shutdown}
      refute os_alive?(os_pid)
      assert GenNative.Port.os_pid(name) == nil

      assert catch_exit(Store.get(store, :k)) == {:noproc, {Store, :get, [store, :k, nil]}}

      assert catch_exit(GenNative.Port.stores(name)) ==
               {:noproc, {GenNative.Port, :stores, [name]}}
    end

    @tag timeout: 60_000
    test "stopping it kills a program that does not exit when its stdin closes" do
      {name, _pid} = start_port()
      os_pid = GenNative.Port.os_pid(name)
      # stopped, it cannot see the end of its input
      kill(:STOP, os_pid)
      :ok = stop_supervised({GenNative.Port, name})
      refute os_alive?(os_pid)
    end

    test "a data directory that cannot be made gives {:error, reason}" do
      file =
        Path.join(System.tmp_dir!(), "gn_port_not_a_dir_#{System.unique_integer([:positive])}")

      File.write!(file, "")

      try do
        Process.flag(:trap_exit, true)
        assert {:error, {:dir, _, _}} = GenNative.Port.start_link(name: unique(:p), dir: file)
      after
        File.rm(file)
      end
    end
  end

  describe "port stores" do
    setup do
      {name, _pid} = start_port()
      %{port: name}
    end

    test "new/2 needs a :name and takes no :access or :lifetime, saying why", %{port: p} do
      assert_raise ArgumentError, ~r/:name/, fn -> Store.new(:set, backend: {:port, p}) end

      assert_raise ArgumentError, ~r/:access.*any process/, fn ->
        Store.new(:set, backend: {:port, p}, name: :a, access: :public)
      end

      assert_raise ArgumentError, ~r/:lifetime.*delete/, fn ->
        Store.new(:set, backend: {:port, p}, name: :a, lifetime: :named)
      end

      assert_raise ArgumentError, ~r/:name/, fn -> Store.restore(<<>>, backend: {:port, p}) end
      assert GenNative.Port.stores(p) == []
    end

    test "new/2 with the name of a store reopens it; another type gives {:error, :already_exists}",
         %{port: p} do
      {:ok, store} = Store.new(:ordered_set, backend: {:port, p}, name: :board)
      :ok = Store.put(store, :k, :v)
      assert {:ok, again} = Store.new(:ordered_set, backend: {:port, p}, name: :board)
      assert again == store
      assert Store.to_list(again) == [{:k, :v}]
      assert Store.new(:set, backend: {:port, p}, name: :board) == {:error, :already_exists}
      assert Store.to_list(store) == [{:k, :v}]

      # reopened as it is: with the cap it was made with
      {:ok, capped} = Store.new(:set, backend: {:port, p}, name: :capped, max_size: 1)
      :ok = Store.put(capped, :a, 1)
      assert {:ok, ^capped} = Store.new(:set, backend: {:port, p}, name: :capped, max_size: 10)
      assert Store.info(capped).max_size == 1
      assert Store.put(capped, :b, 2) == {:error, :full}
    end

    test "info/1 has no owner; any process writes, and deletes, a port store", %{port: p} do
      {:ok, store} = Store.new(:set, backend: {:port, p}, name: :shared, max_size: 10)

      assert %{
               type: :set,
               size: 0,
               owner: nil,
               name: :shared,
               access: :public,
               lifetime: :named,
               backend: {:port, ^p},
               max_size: 10
             } = Store.info(store)

      assert {:ok, :ok} = in_process(fn -> Store.put(store, :from, :other) end)
      assert Store.get(store, :from) == :other
      assert {:ok, :ok} = in_process(fn -> Store.delete(store) end)
      assert_raise ArgumentError, ~r/deleted/, fn -> Store.size(store) end
    end

    test "restore/2 refuses a value that cannot be decoded, as the NIF store does",
         %{port: p} do
      {:ok, nif} = Store.new(:set)
      :ok = Store.put(nif, :k, {:ok, :zqzqzq})
      good = Store.snapshot(nif)

      # the atom (ATOM_EXT, Latin-1) made an ATOM_UTF8_EXT whose name
      # is not UTF-8 (a lone continuation byte), the checksum made right
      body = binary_part(good, 0, byte_size(good) - 4)
      body = :binary.replace(body, <<100, 6::16, "zqzqzq">>, <<118, 6::16, "zqzqz", 0x80>>)
      assert body != binary_part(good, 0, byte_size(good) - 4)
      bad = <<body::binary, :erlang.crc32(body)::32>>

      assert Store.restore(bad) == {:error, :invalid_snapshot}
      assert Store.restore(bad, backend: {:port, p}, name: :bad) == {:error, :invalid_snapshot}

      assert_raise ArgumentError, fn ->
        Store.size(%GenNative.Store.PortHandle{port: p, name: :bad})
      end

      assert {:ok, _} = Store.restore(good, backend: {:port, p}, name: :good)
    end

    test "whereis/1 does not find port stores", %{port: p} do
      name = unique(:gn_port_store)
      {:ok, _} = Store.new(:set, backend: {:port, p}, name: name)
      assert Store.whereis(name) == nil
    end

    test "a store outlives the process that made it", %{port: p} do
      {:ok, {:ok, store}} =
        in_process(fn ->
          {:ok, store} = Store.new(:set, backend: {:port, p}, name: :kept)
          :ok = Store.put(store, :k, self())
          {:ok, store}
        end)

      assert is_pid(Store.get(store, :k))
    end

    test "a request over 64 MiB raises ArgumentError and the program goes on", %{port: p} do
      {:ok, store} = Store.new(:set, backend: {:port, p}, name: :big)
      huge = :binary.copy(<<7>>, (64 <<< 20) + 1)
      assert_raise ArgumentError, ~r/64 MiB/, fn -> Store.put(store, :k, huge) end
      assert Store.fetch(store, :k) == :error
      assert Store.put(store, :k, :small) == :ok
      assert Store.get(store, :k) == :small
    end

    test "a handle to a program that is not running exits with :noproc" do
      store = %GenNative.Store.PortHandle{port: unique(:gn_port_none), name: :s}
      assert catch_exit(Store.put(store, :k, :v)) == {:noproc, {Store, :put, [store, :k, :v, []]}}
      assert catch_exit(Store.size(store)) == {:noproc, {Store, :size, [store]}}

      assert catch_exit(Store.new(:set, backend: {:port, store.port}, name: :s)) ==
               {:noproc, {Store, :new, [:set, [backend: {:port, store.port}, name: :s]]}}
    end
  end

  defp in_process(fun) do
    pid = spawn_caller(fun)

    case caller_result(pid) do
      {:ok, result} -> {:ok, result}
      other -> flunk("#{inspect(other)}")
    end
  end

  describe "request timeout" do
    test "a request not answered in time exits with {:timeout, _}; its late reply is dropped" do
      # the setup's requests must be answered within it: longer under
      # bin/valgrind, where the program is slow
      {name, _pid} = start_port(timeout: wait_ms(100))
      {:ok, store} = Store.new(:set, backend: {:port, name}, name: :s)
      :ok = Store.put(store, :k, :v)
      os_pid = GenNative.Port.os_pid(name)

      kill(:STOP, os_pid)

      try do
        assert catch_exit(Store.get(store, :k)) == {:timeout, {Store, :get, [store, :k, nil]}}
      after
        kill(:CONT, os_pid)
      end

      # answered after the late reply to the get: which never arrives
      assert Store.get(store, :k) == :v
      {:messages, messages} = Process.info(self(), :messages)
      refute Enum.any?(messages, &match?({ref, _} when is_reference(ref), &1)), inspect(messages)
    end
  end

  describe "when the program dies" do
    @tag capture_log: true
    test "pending callers exit naming the cause; the supervisor restarts it, in-memory stores are gone" do
      {name, owner} = start_port()
      {:ok, store} = Store.new(:set, backend: {:port, name}, name: :s)
      :ok = Store.put(store, :k, :v)
      os_pid = GenNative.Port.os_pid(name)

      # stopped, the program answers nothing: the callers are pending
      kill(:STOP, os_pid)
      callers = for i <- 1..5, do: {i, spawn_caller(fn -> Store.put(store, i, i) end)}
      wait_until(fn -> Enum.all?(callers, fn {_, pid} -> waiting_on?(pid, owner) end) end, 5_000)

      ref = Process.monitor(owner)
      kill(:KILL, os_pid)
      assert_receive {:DOWN, ^ref, _, _, {:port_exited, 137}}, 5_000

      for {i, pid} <- callers do
        assert caller_result(pid) ==
                 {:exit, {{:port_exited, 137}, {Store, :put, [store, i, i, []]}}}
      end

      # restarted, with a new program, empty
      wait_until(fn -> GenNative.Port.os_pid(name) not in [nil, os_pid] end, 5_000)
      assert Process.whereis(name) not in [nil, owner]
      assert GenNative.Port.stores(name) == []
      assert_raise ArgumentError, ~r/deleted/, fn -> Store.get(store, :k) end
      assert {:ok, ^store} = Store.new(:set, backend: {:port, name}, name: :s)
      assert Store.to_list(store) == []
    end

    @tag capture_log: true
    test "with no program running, callers exit with :noproc" do
      name = unique(:gn_port)

      owner =
        start_supervised!(
          Supervisor.child_spec({GenNative.Port, name: name}, restart: :temporary)
        )

      {:ok, store} = Store.new(:set, backend: {:port, name}, name: :s)
      ref = Process.monitor(owner)
      kill(:KILL, GenNative.Port.os_pid(name))
      assert_receive {:DOWN, ^ref, _, _, {:port_exited, 137}}, 5_000

      assert catch_exit(Store.get(store, :k)) == {:noproc, {Store, :get, [store, :k, nil]}}
      assert catch_exit(Store.to_list(store)) == {:noproc, {Store, :to_list, [store]}}
      assert catch_exit(GenNative.Port.sync(name)) == {:noproc, {GenNative.Port, :sync, [name]}}
      assert GenNative.Port.os_pid(name) == nil
    end

    @tag capture_log: true
    test "callers busy while the program is killed again and again never hang" do
      {name, _} = start_port()
      {:ok, _} = Store.new(:ordered_set, backend: {:port, name}, name: :s)
      store = %GenNative.Store.PortHandle{port: name, name: :s}
      # 1: stop; 2: requests answered :ok so far
      stop = :atomics.new(2, [])

      callers =
        for c <- 1..20 do
          Task.async(fn -> busy_caller(store, c, stop, %{}) end)
        end

      Enum.reduce(1..5, nil, fn _, killed ->
        wait_until(fn -> GenNative.Port.os_pid(name) not in [nil, killed] end, 5_000)
        os_pid = GenNative.Port.os_pid(name)
        # each program answers some requests before it dies (under valgrind
        # a program takes a while to start serving)
        answered = :atomics.get(stop, 2)
        wait_until(fn -> :atomics.get(stop, 2) > answered end, 30_000)
        Process.sleep(20)
        # it may have died meanwhile (a write that broke its pipe): no matter
        System.cmd("kill", ["-KILL", Integer.to_string(os_pid)], stderr_to_stdout: true)
        Process.sleep(20)
        os_pid
      end)

      :atomics.put(stop, 1, 1)

      outcomes =
        callers
        |> Enum.map(&Task.await(&1, 30_000))
        |> Enum.reduce(%{}, &Map.merge(&1, &2, fn _, a, b -> a + b end))

      # every outcome is one of these, and some requests were cut by a kill
      for {outcome, _count} <- outcomes do
        assert outcome in [:ok, :deleted, :port_exited, :noproc, :shutdown], inspect(outcomes)
      end

      assert Map.get(outcomes, :ok, 0) > 0
      assert Map.get(outcomes, :port_exited, 0) + Map.get(outcomes, :noproc, 0) > 0
    end
  end

  # Puts and reads until told to stop; counts how each request ended.
  defp busy_caller(store, c, stop, counts) do
    if :atomics.get(stop, 1) == 1 do
      counts
    else
      outcome =
        try do
          :ok = Store.put(store, c, c)
          # nil only if the program was restarted in between
          v = Store.get(store, c)
          if v not in [c, nil], do: raise("read #{inspect(v)} for #{c}")
          :ok
        rescue
          e in ArgumentError ->
            # a restarted program has not got the store: make it again
            if e.message =~ "deleted" do
              _ = safe(fn -> Store.new(:ordered_set, backend: {:port, store.port}, name: :s) end)
              :deleted
            else
              reraise e, __STACKTRACE__
            end
        catch
          :exit, {{:port_exited, 137}, {Store, _, _}} -> :port_exited
          :exit, {{:port_closed, :epipe}, {Store, _, _}} -> :port_exited
          :exit, {:noproc, {Store, _, _}} -> :noproc
          :exit, {:shutdown, {Store, _, _}} -> :shutdown
        end

      if outcome == :ok, do: :atomics.add(stop, 2, 1)
      busy_caller(store, c, stop, Map.update(counts, outcome, 1, &(&1 + 1)))
    end
  end

  defp safe(fun) do
    fun.()
  catch
    :exit, _ -> :exit
  end

  describe "many concurrent callers" do
    test "100 processes, each with a store of its own and a shared counter" do
      {name, _} = start_port()
      {:ok, shared} = Store.new(:set, backend: {:port, name}, name: :shared)

      tasks =
        for c <- 1..100 do
          Task.async(fn ->
            {:ok, own} = Store.new(:ordered_set, backend: {:port, name}, name: :"own_#{c}")

            for i <- 1..200 do
              :ok = Store.put(own, i, {c, i})
              _ = Store.update_counter(shared, :n, 1)
              ^i = Store.update_counter(shared, {:caller, c}, 1)
            end

            {Store.to_list(own), Store.size(own)}
          end)
        end

      for {task, c} <- Enum.with_index(tasks, 1) do
        assert Task.await(task, 60_000) == {for(i <- 1..200, do: {i, {c, i}}), 200}
      end

      assert Store.get(shared, :n) == 100 * 200
      assert Store.size(shared) == 101
      assert length(GenNative.Port.stores(name)) == 101
    end
  end

  describe "the protocol" do
    # The program, opened directly.
    defp open_program(args \\ []) do
      {port, info} = PortProtocol.open(args)
      assert %{stores: 0, entries: 0, dropped_bytes: 0} = info
      port
    end

    # The program reading `input` from a pipe (libuv cannot poll a file):
    # {stdout, exit status}, or {stderr, exit status} with stderr: true.
    defp run_with_input(input, opts \\ []) do
      file = Path.join(System.tmp_dir!(), "gn_port_input_#{System.unique_integer([:positive])}")
      File.write!(file, input)

      script =
        if opts[:stderr],
          do: ~S(cat "$1" | "$0" 2>&1 >/dev/null),
          else: ~S(cat "$1" | "$0" 2>/dev/null)

      try do
        System.cmd("sh", ["-c", script, program(), file])
      after
        File.rm(file)
      end
    end

    defp frame(term) do
      bin = :erlang.term_to_binary(term)
      <<byte_size(bin)::32, bin::binary>>
    end

    defp frames(<<n::32, frame::binary-size(n), rest::binary>>), do: [frame | frames(rest)]
    defp frames(<<>>), do: []

    test "a reply carries the request's tag as sent, whatever the term" do
      port = open_program()

      for tag <- [make_ref(), {:any, "term", [1.5]}, :atom, 123, <<1, 2, 3>>, %{a: self()}] do
        send_term(port, {tag, :open, :s, :set, :infinity})
        assert reply(port, tag) == :ok
      end

      close(port)
    end

    test "a frame that is not a tagged request gets an event and no reply; the program goes on" do
      port = open_program()

      for bad <- [
            "not a term",
            <<131, 104, 2, 97>>,
            :erlang.term_to_binary(:atom),
            :erlang.term_to_binary({}),
            :erlang.term_to_binary({:tag}),
            :erlang.term_to_binary([:tag, :open])
          ] do
        Port.command(port, bad)
        event = event(port)

        assert match?({:error, {:bad_request, text}} when is_binary(text), event),
               "#{inspect(bad)}: #{inspect(event)}"
      end

      assert call(port, {:open, :s, :set, :infinity}) == :ok
      assert call(port, {:size, :s}) == 0
      refute_received {^port, {:data, _}}
      close(port)
    end

    test "with nobody draining its stderr, diagnostics never hold up replies" do
      # stderr is a pipe whose reader never reads: 64 KiB fill it, and
      # 20,000 bad requests each write a line
      port =
        Port.open({:spawn_executable, System.find_executable("bash")}, [
          :binary,
          {:packet, 4},
          :exit_status,
          args: ["-c", ~S|exec "$0" 2> >(exec sleep 60)|, PortProtocol.program()]
        ])

      assert {:ready, _} = event(port)
      for _ <- 1..20_000, do: Port.command(port, "not a term")
      assert call(port, {:open, :s, :set, :infinity}) == :ok
      assert call(port, {:put, :s, :k, :v, 0}) == :ok
      close(port)
    end

    test "unknown ops, wrong arities and wrong argument types are answered {error, {badarg, _}}" do
      port = open_program()
      assert call(port, {:open, :s, :ordered_set, 2}) == :ok
      assert call(port, {:put, :s, :k, 1, 0}) == :ok

      for request <- [
            {:no_such_op, :s},
            {123, :s},
            {"put", :s, :k, :v, 0},
            {:put, :s},
            {:put, :s, :k, :v},
            {:put, :s, :k, :v, 0, :extra},
            {:put, :s, :k, :v, -1},
            {:put, :s, :k, :v, :soon},
            {:put, "s", :k, :v, 0},
            {:put, {:s}, :k, :v, 0},
            {:get, :s},
            {:get, :s, :k, :extra},
            {:open, :t, :bag, :infinity},
            {:open, :t, :set, 0},
            {:open, :t, :set, -5},
            {:open, :t, :set, :big},
            {:open, :t, :set},
            {:update_counter, :s, :k, 1.0, 0},
            {:update_counter, :s, :k, 1 <<< 64, 0},
            {:update_counter, :s, :k, 1, 1 <<< 64},
            {:update_counter, :s, :k, 1, :zero},
            {:put_many, :s, :not_a_list},
            {:put_many, :s, [{:a, 1}, :not_a_pair]},
            {:put_many, :s, [{:a, 1, 2}]},
            {:put_many, :s, [{:a, 1} | :improper]},
            {:range, :s, 1, 2, -1},
            {:range, :s, 1, 2, :all},
            {:step, :s, :sideways, nil},
            {:step, :s, :first},
            {:at, :s, :first},
            {:at, :s, 1.0},
            {:slice, :s, 0, -1},
            {:slice, :s, :a, 1},
            {:restore, :t, :not_a_binary, :infinity},
            {:restore, :t, "GNS2", 0},
            {:encode_key, nil, :k, :neither},
            {:size, :s, :extra}
          ] do
        reply = call(port, request)

        assert match?({:error, {:badarg, text}} when is_binary(text), reply),
               "#{inspect(request)}: #{inspect(reply)}"
      end

      # nothing was changed or made
      assert call(port, {:to_list, :s}) == {:done, [{:k, 1}]}
      assert call(port, {:stores, nil}) == [{:s, :ordered_set}]
      close(port)
    end

    test "a store that does not exist, and ordered ops on a set, are answered as documented" do
      port = open_program()

      for request <- [
            {:get, :nope, :k},
            {:put, :nope, :k, :v, 0},
            {:size, :nope},
            {:delete, :nope}
          ] do
        assert call(port, request) == {:error, :no_store}, inspect(request)
      end

      assert call(port, {:open, :s, :set, :infinity}) == :ok
      assert {:error, {:wrong_type, _}} = call(port, {:open, :s, :ordered_set, :infinity})

      for request <- [{:step, :s, :first, nil}, {:rank, :s, :k}, {:at, :s, 0}] do
        assert call(port, request) == {:error, :not_ordered}, inspect(request)
      end

      close(port)
    end

    test "a frame over 64 MiB is answered {error, frame_too_large} and the program goes on" do
      port = open_program()
      assert call(port, {:open, :s, :set, :infinity}) == :ok
      huge = :binary.copy(<<1>>, (64 <<< 20) + 16)
      assert call(port, {:put, :s, :k, huge, 0}) == {:error, :frame_too_large}
      assert call(port, {:get, :s, :k}) == :error
      assert call(port, {:put, :s, :k, :v, 0}) == :ok
      assert call(port, {:get, :s, :k}) == {:ok, :v}
      close(port)
    end

    test "a streamed reply is {more, Part}... then {done, Part}; the parts make the result" do
      port = open_program()
      assert call(port, {:open, :s, :ordered_set, :infinity}) == :ok
      entries = for i <- 1..200_000, do: {i, :binary.copy("v", 20)}
      assert call(port, {:put_many, :s, entries}) == :ok

      tag = make_ref()
      send_term(port, {tag, :to_list, :s})
      parts = collect_stream(port, tag, [])
      assert Enum.concat(parts) == entries

      tag = make_ref()
      send_term(port, {tag, :snapshot, :s})
      snapshot = port |> collect_stream(tag, []) |> IO.iodata_to_binary()
      assert <<"GNS2", 1, 200_000::64, _::binary>> = snapshot
      close(port)
    end

    test "requests in flight at once: each reply matched by its tag, in order per store" do
      port = open_program()
      stores = for s <- 1..10, do: :"s#{s}"
      for s <- stores, do: assert(call(port, {:open, s, :set, :infinity}) == :ok)

      # 100 increments per store, sent without waiting
      sent =
        for i <- 1..100, s <- stores do
          tag = {s, i, make_ref()}
          send_term(port, {tag, :update_counter, s, :n, 1, 0})
          tag
        end

      replies =
        for _ <- sent do
          assert_receive {^port, {:data, <<n::16, tag::binary-size(n), payload::binary>>}}, 10_000
          {:erlang.binary_to_term(tag), :erlang.binary_to_term(payload)}
        end

      assert Enum.sort(Enum.map(replies, &elem(&1, 0))) == Enum.sort(sent)

      for s <- stores do
        # the i-th increment of a store is answered i, and the replies of a
        # store come in the order its requests were sent
        counts = for {{^s, i, _}, count} <- replies, do: {i, count}
        assert counts == for(i <- 1..100, do: {i, i})
      end

      close(port)
    end

    test "stdin closed between frames: every request is answered, then exit status 0" do
      input =
        frame({1, :open, :s, :set, :infinity}) <>
          frame({2, :put, :s, :k, :v, 0}) <> frame({3, :get, :s, :k})

      {output, status} = run_with_input(input)
      assert status == 0
      [ready | replies] = frames(output)
      assert {:ready, _} = :erlang.binary_to_term(binary_part(ready, 2, byte_size(ready) - 2))

      assert Enum.map(replies, fn <<n::16, tag::binary-size(n), payload::binary>> ->
               {:erlang.binary_to_term(tag), :erlang.binary_to_term(payload)}
             end) == [{1, :ok}, {2, :ok}, {3, {:ok, :v}}]
    end

    test "a stop request: the requests before it are answered, none after it; exit status 0" do
      input =
        frame({1, :open, :s, :set, :infinity}) <>
          frame({2, :put, :s, :k, :v, 0}) <> frame({3, :stop, nil}) <> frame({4, :get, :s, :k})

      {output, status} = run_with_input(input)
      assert status == 0
      [_ready | replies] = frames(output)

      assert Enum.map(replies, fn <<n::16, tag::binary-size(n), payload::binary>> ->
               {:erlang.binary_to_term(tag), :erlang.binary_to_term(payload)}
             end) == [{1, :ok}, {2, :ok}]
    end

    test "a stream that ends inside a frame: exit status 3, the reason on stderr" do
      complete = frame({1, :open, :s, :set, :infinity})

      for {label, truncated} <- [
            {"inside the length", <<0, 0>>},
            {"inside the body", <<0, 0, 0, 100, 131, 104>>},
            {"after a frame", complete <> <<0, 0, 1>>}
          ] do
        {stderr, status} = run_with_input(truncated, stderr: true)
        assert status == 3, label
        assert stderr != "", label
      end
    end
  end

  defp collect_stream(port, tag, parts) do
    case reply(port, tag) do
      {:more, part} -> collect_stream(port, tag, [part | parts])
      {:done, part} -> Enum.reverse([part | parts])
    end
  end
end
