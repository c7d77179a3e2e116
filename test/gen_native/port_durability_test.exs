defmodule GenNative.PortDurabilityTest do
  # Port stores with a data directory: a restart reloads it; kill -9 of the
  # program at random moments under a concurrent write load, with
  # sync: :always, loses no acknowledged write; a torn or corrupt journal
  # tail is dropped and reported; a corrupt snapshot stops the start with
  # {:corrupt_snapshot, path}; one directory is never used by two programs.
  # Every test has its own directory under the system's tmp dir.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import GenNative.TestHelpers, only: [wait_until: 2]

  alias GenNative.Store

  @moduletag :port

  setup do
    dir = Path.join(System.tmp_dir!(), "gn_port_durable_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm_rf!(dir) end)
    %{dir: dir, port: :"gn_port_durable_#{System.unique_integer([:positive])}"}
  end

  defp start(port, dir, opts \\ []) do
    start_supervised!({GenNative.Port, [name: port, dir: dir] ++ opts})
  end

  defp stop(port), do: :ok = stop_supervised({GenNative.Port, port})

  defp kill9(port) do
    os_pid = GenNative.Port.os_pid(port)
    {_, 0} = System.cmd("kill", ["-KILL", Integer.to_string(os_pid)])
    os_pid
  end

  # Waits until the supervisor has restarted the program killed as `old`.
  defp await_restart(port, old) do
    wait_until(fn -> GenNative.Port.os_pid(port) not in [nil, old] end, 20_000)
  end

  defp store(port, name), do: %GenNative.Store.PortHandle{port: port, name: name}

  defp journals(dir), do: Path.wildcard(Path.join(dir, "journal.*.gnj"))

  defp journal(dir, gen), do: Path.join(dir, "journal.#{gen}.gnj")

  # A program not under a supervisor, for kill -9 without a restart, and
  # for starts expected to fail.
  defp start_unsupervised(port, dir, opts \\ []) do
    Process.flag(:trap_exit, true)
    GenNative.Port.start_link([name: port, dir: dir] ++ opts)
  end

  defp kill9_unsupervised(port, pid) do
    kill9(port)
    assert_receive {:EXIT, ^pid, {:port_exited, 137}}, 10_000
  end

  # The records of a journal: [{offset, op}], op as a character; they end
  # where the zeros written ahead of them (sync: :always) begin.
  defp records(<<"GNJ1", _gen::64, rest::binary>>), do: records(rest, 12, [])

  defp records(<<0::32, _::binary>>, _at, acc), do: Enum.reverse(acc)

  defp records(<<len::32, _crc::32, body::binary-size(len), rest::binary>>, at, acc),
    do: records(rest, at + 8 + len, [{at, :binary.first(body)} | acc])

  defp records(_, _, acc), do: Enum.reverse(acc)

  defp flip(file, offset, mask) do
    data = File.read!(file)
    <<head::binary-size(offset), byte, tail::binary>> = data
    bad = <<head::binary, Bitwise.bxor(byte, mask), tail::binary>>
    File.write!(file, bad)
    bad
  end

  # A journal record putting key = value into the store named `name`, as
  # the program writes it: entries without the version byte, no expiry.
  defp put_record(name, key, value) do
    etf = fn term ->
      binary_part(:erlang.term_to_binary(term), 1, byte_size(:erlang.term_to_binary(term)) - 1)
    end

    k = etf.(key)
    v = etf.(value)

    body =
      <<?P, byte_size(name)::16, name::binary, byte_size(k)::32, k::binary, byte_size(v)::32,
        v::binary, 0::64>>

    <<byte_size(body)::32, :erlang.crc32(body)::32, body::binary>>
  end

  describe "a restart" do
    test "reloads every store, with what every kind of write left", %{dir: dir, port: port} do
      start(port, dir)
      b = {:port, port}
      {:ok, set} = Store.new(:set, backend: b, name: :set, max_size: 100)
      {:ok, ordered} = Store.new(:ordered_set, backend: b, name: :ordered)
      {:ok, doomed} = Store.new(:set, backend: b, name: :doomed)
      {:ok, cleared} = Store.new(:set, backend: b, name: :cleared)

      :ok = Store.put(set, :k, %{any: ["term", 1.5, self()]})
      :ok = Store.put(set, 1, :int)
      :ok = Store.put(set, 1.0, :float)
      true = Store.put_new(set, :new, 1)
      :ok = Store.put(set, :gone, 1)
      :ok = Store.delete(set, :gone)
      :ok = Store.put(set, :taken, 1)
      {:ok, 1} = Store.take(set, :taken)
      3 = Store.update_counter(set, :n, 3)
      5 = Store.update_counter(set, :n, 2)
      :ok = Store.put(set, :long_ttl, :kept, ttl: 600_000)
      :ok = Store.put(set, :short_ttl, :expires, ttl: 20)

      :ok = Store.put_many(ordered, for(i <- 1..1000, do: {i, -i}))
      :ok = Store.put(ordered, 1.0, :replaced_key)
      :ok = Store.put(doomed, :k, :v)
      :ok = Store.delete(doomed)
      :ok = Store.put(cleared, :k, :v)
      :ok = Store.clear(cleared)
      :ok = Store.put(cleared, :after, :clear)
      {:ok, restored} = Store.restore(Store.snapshot(ordered), backend: b, name: :restored)

      before = for s <- [set, ordered, cleared, restored], do: {s, Store.to_list(s)}
      Process.sleep(60)
      stop(port)

      start(port, dir)

      assert Enum.sort(GenNative.Port.stores(port)) ==
               [cleared: :set, ordered: :ordered_set, restored: :ordered_set, set: :set]

      for {s, list} <- before do
        expected = if s == set, do: List.keydelete(list, :short_ttl, 0), else: list
        assert Enum.sort(Store.to_list(s)) === Enum.sort(expected), inspect(s)
      end

      assert Store.to_list(ordered) |> hd() === {1.0, :replaced_key}
      assert Store.get(set, 1) == :int
      assert Store.get(set, 1.0) == :float
      assert Store.info(set).max_size == 100
      assert Store.update_counter(set, :n, 1) == 6
      assert_raise ArgumentError, ~r/deleted/, fn -> Store.size(doomed) end
    end

    test "with sync: :never, a clean stop keeps every write", %{dir: dir, port: port} do
      start(port, dir, sync: :never)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      for i <- 1..500, do: :ok = Store.put(s, i, i)
      stop(port)
      start(port, dir, sync: :never)
      assert Store.size(s) == 500
      assert Enum.sort(Store.to_list(s)) == for(i <- 1..500, do: {i, i})
    end

    test "restarts with no write in between leave the journal as the first clean stop left it",
         %{dir: dir, port: port} do
      start(port, dir)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      for i <- 1..50, do: :ok = Store.put(s, i, i)
      stop(port)
      [file] = journals(dir)
      sealed = File.read!(file)
      # the clean stop sealed it with a SYNC record
      assert {_, ?S} = List.last(records(sealed))

      for _ <- 1..3 do
        start(port, dir)
        assert Store.size(s) == 50
        stop(port)
        assert File.read!(file) == sealed
      end

      # a write after a restart is journaled and sealed again
      start(port, dir)
      :ok = Store.put(s, 51, 51)
      stop(port)
      assert {_, ?S} = List.last(records(File.read!(file)))
      start(port, dir)
      assert Store.size(s) == 51
    end

    test "its files are created with mode 0600", %{dir: dir, port: port} do
      start(port, dir)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      :ok = Store.put(s, :k, :v)
      :ok = GenNative.Port.sync(port)

      files = Path.wildcard(Path.join(dir, "*"))
      assert journals(dir) != []

      for file <- files do
        assert Bitwise.band(File.stat!(file).mode, 0o777) == 0o600, file
      end
    end

    test "the data directory it creates is mode 0700, its parents made as mkdir -p does",
         %{dir: dir, port: port} do
      nested = Path.join([dir, "a", "b"])
      start(port, nested)
      assert Bitwise.band(File.stat!(nested).mode, 0o777) == 0o700
      assert File.dir?(Path.join(dir, "a"))
    end

    @tag capture_log: true
    test "after GenNative.Port is killed (no terminate/2), the new program waits for the old",
         %{dir: dir, port: port} do
      owner = start(port, dir, sync: :always)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      for i <- 1..200, do: :ok = Store.put(s, i, i)
      old = GenNative.Port.os_pid(port)

      Process.exit(owner, :kill)
      await_restart(port, old)

      assert Store.size(s) == 200
      :ok = Store.put(s, :after, :restart)
      assert Store.get(s, :after) == :restart
    end
  end

  describe "group commit with sync: :always" do
    test "writers that come and go are all answered: a commit never waits for writers gone",
         %{dir: dir, port: port} do
      # a commit waits (a moment) for as many writes as the last fdatasync
      # covered: here 16 writers, then fewer and fewer, then one alone
      start(port, dir, sync: :always)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)

      for writers <- [16, 8, 3, 1], round <- 1..2 do
        1..writers
        |> Enum.map(fn w ->
          Task.async(fn ->
            for i <- 1..40, do: :ok = Store.put(s, {writers, round, w, i}, i)
          end)
        end)
        |> Task.await_many(30_000)
      end

      expected = Enum.sum(for writers <- [16, 8, 3, 1], do: 2 * writers * 40)
      assert Store.size(s) == expected
      stop(port)
      start(port, dir, sync: :always)
      assert Store.size(s) == expected
    end

    test "the zeros written ahead of the journal are no record: after kill -9, nothing is dropped",
         %{dir: dir, port: port} do
      {:ok, pid} = start_unsupervised(port, dir, sync: :always)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      for i <- 1..100, do: :ok = Store.put(s, i, i)
      [journal] = journals(dir)
      data = File.read!(journal)
      # records, then zeros: the file is written ahead
      tail = data |> records() |> List.last() |> elem(0)
      assert byte_size(data) > tail + 100
      kill9_unsupervised(port, pid)

      {{:ok, pid}, log} = with_log(fn -> start_unsupervised(port, dir, sync: :always) end)
      refute log =~ "dropped"
      assert Enum.sort(Store.to_list(s)) == for(i <- 1..100, do: {i, i})
      :ok = Store.put(s, :after, 1)
      GenServer.stop(pid)

      # a clean stop cuts the zeros: the journal ends with its SYNC record
      data = File.read!(journal)
      {at, ?S} = data |> records() |> List.last()
      assert byte_size(data) == at + 27
      {:ok, pid} = start_unsupervised(port, dir)
      assert Store.size(s) == 101
      GenServer.stop(pid)
    end
  end

  describe "kill -9 with sync: :always" do
    @rounds 25
    @writers 6

    # Each round: writers put {w, i} (1 KiB values, so that the journal
    # outgrows its snapshot and compactions run too) and count with
    # update_counter in stores of the round, noting each acknowledgement in
    # :atomics; the program is killed at a random moment; once restarted,
    # every store of every round so far holds every acknowledged write, and
    # at most the one write per writer that was in flight.
    @tag timeout: 120_000
    @tag capture_log: true
    test "loses no acknowledged write, killed at random moments, round after round",
         %{dir: dir, port: port} do
      start(port, dir, sync: :always)

      history =
        Enum.reduce(1..@rounds, [], fn round, history ->
          acked = run_round(port, round)
          verify(port, [{round, acked} | history])
          [{round, acked} | history]
        end)

      # the load was real: writes were acknowledged before the kills
      assert Enum.sum(for {_, {puts, _}} <- history, do: Enum.sum(puts)) > 0
    end

    defp run_round(port, round) do
      b = {:port, port}
      {:ok, puts} = Store.new(:set, backend: b, name: :"puts_#{round}")
      {:ok, counts} = Store.new(:ordered_set, backend: b, name: :"counts_#{round}")
      put_acks = :atomics.new(@writers, [])
      count_acks = :atomics.new(@writers, [])
      stop = :atomics.new(1, [])

      writers =
        for w <- 1..@writers do
          Task.async(fn -> write_loop(puts, counts, w, 1, put_acks, count_acks, stop) end)
        end

      Process.sleep(:rand.uniform(150))
      old = kill9(port)
      :atomics.put(stop, 1, 1)

      for task <- writers do
        assert Task.await(task, 30_000) == :stopped
      end

      await_restart(port, old)

      {for(w <- 1..@writers, do: :atomics.get(put_acks, w)),
       for(w <- 1..@writers, do: :atomics.get(count_acks, w))}
    end

    defp write_loop(puts, counts, w, i, put_acks, count_acks, stop) do
      if :atomics.get(stop, 1) == 1 do
        :stopped
      else
        try do
          :ok = Store.put(puts, {w, i}, value(w, i))
          :atomics.put(put_acks, w, i)
          ^i = Store.update_counter(counts, w, 1)
          :atomics.put(count_acks, w, i)
          :continue
        catch
          :exit, {reason, {Store, _, _}} when reason != :timeout -> :stopped
        end
        |> case do
          :continue -> write_loop(puts, counts, w, i + 1, put_acks, count_acks, stop)
          :stopped -> :stopped
        end
      end
    end

    defp value(w, i), do: {i, :binary.copy(<<rem(w * 31 + i, 256)>>, 1024)}

    defp verify(port, history) do
      for {round, {put_acks, count_acks}} <- history, w <- 1..@writers do
        puts = store(port, :"puts_#{round}")
        counts = store(port, :"counts_#{round}")
        acked = Enum.at(put_acks, w - 1)
        counted = Enum.at(count_acks, w - 1)

        # no acknowledged put lost, nothing beyond the one in flight
        for i <- 1..acked//1 do
          assert Store.get(puts, {w, i}) == value(w, i), "round #{round}: put {#{w}, #{i}} lost"
        end

        assert Store.fetch(puts, {w, acked + 2}) == :error

        count = Store.get(counts, w, 0)

        assert count in [counted, counted + 1],
               "round #{round}: writer #{w} counted #{counted}, the store has #{count}"
      end

      assert length(GenNative.Port.stores(port)) == 2 * length(history)
    end
  end

  describe "a damaged journal or snapshot" do
    @tag capture_log: true
    test "a torn tail is dropped, logged, and the journal goes on after it",
         %{dir: dir, port: port} do
      start(port, dir)
      {:ok, s} = Store.new(:ordered_set, backend: {:port, port}, name: :s)
      for i <- 1..100, do: :ok = Store.put(s, i, i)
      stop(port)

      [journal] = journals(dir)
      # a record that says 100 bytes follow, and 10 do
      File.write!(journal, <<100::32, 0::32, "0123456789">>, [:append])

      log =
        capture_log(fn ->
          start(port, dir)
          assert Store.to_list(s) == for(i <- 1..100, do: {i, i})
        end)

      assert log =~ "dropped 18 bytes"

      # appends follow the last good record
      :ok = Store.put(s, :after, :tear)
      stop(port)
      start(port, dir)
      assert Store.size(s) == 101
      assert Store.get(s, :after) == :tear
    end

    @tag capture_log: true
    test "after a crash, a last record that fails its checksum is dropped, the ones before kept",
         %{dir: dir, port: port} do
      {:ok, pid} = start_unsupervised(port, dir)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      for i <- 1..50, do: :ok = Store.put(s, i, i)
      :ok = GenNative.Port.sync(port)
      :ok = Store.put(s, :last, "the last record")
      kill9_unsupervised(port, pid)

      [journal] = journals(dir)
      size = File.stat!(journal).size
      {last, ?P} = journal |> File.read!() |> records() |> List.last()
      flip(journal, size - 3, 0xFF)

      log =
        capture_log(fn ->
          start(port, dir)
          assert Store.size(s) == 50
          assert Store.fetch(s, :last) == :error
        end)

      assert log =~ "dropped #{size - last} bytes"
    end

    @tag capture_log: true
    test "after a crash, unsynced records behind a damaged one are a crash tail: dropped",
         %{dir: dir, port: port} do
      # sync: :never: nothing is synced, so a power loss may have lost any
      # page of the journal, and a hole followed by records is a tail
      {:ok, pid} = start_unsupervised(port, dir, sync: :never)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      for i <- 1..100, do: :ok = Store.put(s, i, i)
      kill9_unsupervised(port, pid)

      [journal] = journals(dir)
      puts = for {at, ?P} <- journal |> File.read!() |> records(), do: at
      at = Enum.at(puts, 10)
      flip(journal, at + 12, 0x01)

      size = File.stat!(journal).size
      {{:ok, pid}, log} = with_log(fn -> start_unsupervised(port, dir, sync: :never) end)
      assert log =~ "dropped #{size - at} bytes"
      assert Enum.sort(Store.to_list(s)) == for(i <- 1..10, do: {i, i})
      assert File.stat!(journal).size == at
      GenServer.stop(pid)
    end

    test "a damaged record before synced data stops the start, naming the bytes, changing nothing",
         %{dir: dir, port: port} do
      start(port, dir)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      for i <- 1..1000, do: :ok = Store.put(s, i, i)
      stop(port)

      [journal] = journals(dir)
      {first_put, ?P} = journal |> File.read!() |> records() |> Enum.find(&match?({_, ?P}, &1))
      bad = flip(journal, first_put + 12, 0x04)

      {result, _log} = with_log(fn -> start_unsupervised(port, dir) end)
      assert {:error, {:corrupt_journal, ^journal, {^first_put, to}}} = result
      assert to > first_put
      assert File.read!(journal) == bad
      assert Process.whereis(port) == nil
    end

    @tag capture_log: true
    test "with {:interval, ms}, damage after the last fsync is a crash tail, before it corruption",
         %{dir: dir, port: port} do
      # no background fsync in this test: only sync/1 syncs
      opts = [sync: {:interval, 86_400_000}]
      {:ok, pid} = start_unsupervised(port, dir, opts)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      # (over 4 KiB before the sync: SYNC records come at most every 4 KiB)
      value = fn i -> {i, :binary.copy("v", 100)} end
      for i <- 1..50, do: :ok = Store.put(s, i, value.(i))
      :ok = GenNative.Port.sync(port)
      for i <- 51..100, do: :ok = Store.put(s, i, value.(i))
      kill9_unsupervised(port, pid)

      [journal] = journals(dir)
      data = File.read!(journal)
      puts = for {at, ?P} <- records(data), do: at
      # the SYNC record the first write after sync/1 wrote
      assert [{_, ?S}] = Enum.filter(records(data), &match?({_, ?S}, &1))

      # put 20 was on disk (the SYNC record says so): corruption
      synced = Enum.at(puts, 19)
      flip(journal, synced + 12, 0x01)
      {result, _log} = with_log(fn -> start_unsupervised(port, dir, opts) end)
      assert {:error, {:corrupt_journal, ^journal, {^synced, _}}} = result
      File.write!(journal, data)

      # put 60 was not: a power loss may have lost its page, and it ends the journal
      unsynced = Enum.at(puts, 59)
      flip(journal, unsynced + 12, 0x01)
      {{:ok, pid}, log} = with_log(fn -> start_unsupervised(port, dir, opts) end)
      assert log =~ "dropped #{byte_size(data) - unsynced} bytes"
      assert Enum.sort(Store.to_list(s)) == for(i <- 1..59, do: {i, value.(i)})
      GenServer.stop(pid)
    end

    test "damage at the end of a journal that is not the newest is corruption",
         %{dir: dir, port: port} do
      {:ok, pid} = start_unsupervised(port, dir)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      for i <- 1..10, do: :ok = Store.put(s, i, i)
      kill9_unsupervised(port, pid)

      # a compaction cut short began journal 2 after journal 1 was synced
      [journal] = journals(dir)
      File.write!(journal(dir, 2), <<"GNJ1", 2::64, put_record("s", :later, 1)::binary>>)
      {last, ?P} = journal |> File.read!() |> records() |> List.last()
      flip(journal, File.stat!(journal).size - 1, 0x01)
      # what a load that succeeds deletes: a snapshot cut short, a journal
      # holding only its header
      File.write!(Path.join(dir, "snapshot.tmp"), "GNP1")
      File.write!(journal(dir, 2), <<"GNJ1", 2::64>>)
      File.write!(journal(dir, 3), <<"GNJ1", 3::64, put_record("s", :later, 1)::binary>>)
      files = for f <- File.ls!(dir), do: {f, File.read!(Path.join(dir, f))}

      {result, _log} = with_log(fn -> start_unsupervised(port, dir) end)
      assert {:error, {:corrupt_journal, ^journal, {^last, _}}} = result
      # a load that fails changes no file
      assert Enum.sort(for f <- File.ls!(dir), do: {f, File.read!(Path.join(dir, f))}) ==
               Enum.sort(files)
    end

    test "a damaged journal header stops the start, and the journal is left as it is",
         %{dir: dir, port: port} do
      start(port, dir)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      for i <- 1..100, do: :ok = Store.put(s, i, i)
      stop(port)

      [journal] = journals(dir)
      good = File.read!(journal)

      for offset <- [0, 11] do
        bad = flip(journal, offset, 0x01)
        {result, _log} = with_log(fn -> start_unsupervised(port, dir) end)
        assert result == {:error, {:bad_journal_header, journal}}
        assert File.read!(journal) == bad
        File.write!(journal, good)
      end

      # its records were intact all along
      start(port, dir)
      assert Store.size(s) == 100
      :ok = Store.put(s, :after, 1)
      stop(port)
      start(port, dir)
      assert Store.size(s) == 101
    end

    test "a snapshot deleted after compact/1 stops the start", %{dir: dir, port: port} do
      start(port, dir)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      :ok = Store.put_many(s, for(i <- 1..100, do: {i, i}))
      :ok = GenNative.Port.compact(port)
      :ok = Store.put(s, :after, 1)
      stop(port)

      snapshot = Path.join(dir, "snapshot.gns")
      [journal] = journals(dir)
      saved = File.read!(snapshot)
      File.rm!(snapshot)
      {result, _log} = with_log(fn -> start_unsupervised(port, dir) end)
      assert result == {:error, {:missing_snapshot, snapshot}}
      assert Process.whereis(port) == nil
      assert journals(dir) == [journal]

      # the journal after the snapshot gone instead
      File.write!(snapshot, saved)
      File.rm!(journal)
      File.write!(journal(dir, 9), <<"GNJ1", 9::64>>)
      {result, _log} = with_log(fn -> start_unsupervised(port, dir) end)
      assert result == {:error, {:missing_journal, journal}}
    end

    test "a corrupt snapshot stops the start with {:corrupt_snapshot, path}, loading nothing",
         %{dir: dir, port: port} do
      start(port, dir)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      # past the journal's compaction threshold (4 MiB)
      for chunk <- Enum.chunk_every(1..6_000, 1_000) do
        :ok = Store.put_many(s, for(i <- chunk, do: {i, :binary.copy("x", 1024)}))
      end

      snapshot = Path.join(dir, "snapshot.gns")
      wait_until(fn -> File.exists?(snapshot) end, 20_000)
      assert Bitwise.band(File.stat!(snapshot).mode, 0o777) == 0o600
      stop(port)

      # good as it is
      start(port, dir)
      assert Store.size(s) == 6_000
      stop(port)

      data = File.read!(snapshot)
      mid = div(byte_size(data), 2)
      <<head::binary-size(mid), byte, tail::binary>> = data

      for {label, bad} <- [
            {"a byte flipped", <<head::binary, Bitwise.bxor(byte, 0x01), tail::binary>>},
            {"truncated", binary_part(data, 0, byte_size(data) - 1)},
            {"header only", binary_part(data, 0, 12)}
          ] do
        File.write!(snapshot, bad)
        Process.flag(:trap_exit, true)

        {result, _log} = with_log(fn -> GenNative.Port.start_link(name: port, dir: dir) end)

        assert result == {:error, {:corrupt_snapshot, snapshot}}, label
        assert Process.whereis(port) == nil
      end
    end
  end

  describe "one program per directory" do
    @tag timeout: 60_000
    @tag capture_log: true
    test "a second program on a directory in use does not start", %{dir: dir, port: port} do
      start(port, dir)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      :ok = Store.put(s, :k, :v)
      Process.flag(:trap_exit, true)

      assert {:error, reason} = GenNative.Port.start_link(name: :"#{port}_2", dir: dir)
      assert inspect(reason) =~ "locked"
      assert Store.get(s, :k) == :v
    end
  end

  describe "journals left by compactions cut short" do
    # Journals 2..1300 as compactions cut short leave them: the odd ones
    # header-only, the even ones each holding one acknowledged put.
    test "are all loaded, however many; header-only ones are deleted; compact/1 ends them",
         %{dir: dir, port: port} do
      start(port, dir)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      :ok = Store.put(s, :first, 1)
      stop(port)

      for gen <- 2..1300 do
        records = if rem(gen, 2) == 0, do: put_record("s", gen, gen), else: ""
        File.write!(journal(dir, gen), <<"GNJ1", gen::64, records::binary>>)
      end

      start(port, dir)
      assert Store.size(s) == 1 + 650
      for gen <- 2..1300//2, do: assert(Store.get(s, gen) == gen, "journal #{gen} not loaded")
      assert length(journals(dir)) == 1 + 650

      :ok = GenNative.Port.compact(port)
      assert [_] = journals(dir)
      :ok = Store.put(s, :after, 1)
      stop(port)
      start(port, dir)
      assert Store.size(s) == 652
    end
  end

  describe "compact/1" do
    test "writes a snapshot, deletes the journal before it, and a restart loads it",
         %{dir: dir, port: port} do
      start(port, dir)
      {:ok, s} = Store.new(:ordered_set, backend: {:port, port}, name: :s)
      :ok = Store.put_many(s, Enum.map(1..1000, &{&1, &1}))
      :ok = Store.delete(s, 500)
      [old] = journals(dir)

      assert GenNative.Port.compact(port) == :ok
      assert File.exists?(Path.join(dir, "snapshot.gns"))
      [new] = journals(dir)
      assert new != old
      :ok = Store.put(s, :after, 1)

      stop(port)
      start(port, dir)
      assert Store.size(s) == 1000
      assert Store.get(s, 500) == nil
      assert Store.get(s, :after) == 1
    end

    test "without a data directory: {:error, :no_dir}" do
      name = :"gn_port_nodir_#{System.unique_integer([:positive])}"
      start_supervised!({GenNative.Port, name: name})
      assert GenNative.Port.compact(name) == {:error, :no_dir}
    end
  end
end
