defmodule GenNative.PortLongWorkTest do
  # Long work in the port program runs in slices, and other requests are
  # answered in between: a to_list of a big store, a purge of many expired
  # entries, a compaction. The tests watch the order of replies, never
  # their timing. Compactions run while writes go on ("fuzzy" snapshots):
  # after a restart, the stores hold exactly what was acknowledged.
  use ExUnit.Case, async: true

  alias GenNative.Store
  alias GenNative.PortProtocol

  import GenNative.PortProtocol, only: [next: 1]

  @moduletag :port

  @big 200_000

  setup do
    dir = Path.join(System.tmp_dir!(), "gn_port_long_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm_rf!(dir) end)
    %{dir: dir, port: :"gn_port_long_#{System.unique_integer([:positive])}"}
  end

  ## The protocol, spoken directly (see c_src/port/PROTOCOL.md)

  # No background TTL sweep: expired entries are purged by the requests
  # that meet them, so the tests see when.
  defp open_program do
    {port, _info} = PortProtocol.open(["--sweep", "0"])
    port
  end

  defp send_request(port, request), do: PortProtocol.send_term(port, request)

  # The reply must be the next frame.
  defp call(port, request) do
    tag = make_ref()
    send_request(port, Tuple.insert_at(request, 0, tag))
    {^tag, reply} = next(port)
    reply
  end

  defp fill(port, store, n, value \\ & &1) do
    0..(n - 1)
    |> Stream.chunk_every(20_000)
    |> Enum.each(fn keys ->
      :ok = call(port, {:put_many, store, Enum.map(keys, &{&1, value.(&1)})})
    end)
  end

  # Frames until `tag`'s {done, _}, in arrival order.
  defp until_done(port, tag, acc \\ []) do
    case next(port) do
      {^tag, {:done, _}} = frame -> Enum.reverse([frame | acc])
      frame -> until_done(port, tag, [frame | acc])
    end
  end

  test "a to_list of a big store comes in parts, with other stores answered in between" do
    port = open_program()
    :ok = call(port, {:open, :big, :ordered_set, :infinity})
    :ok = call(port, {:open, :small, :set, :infinity})
    :ok = call(port, {:put, :small, :k, :v, 0})
    fill(port, :big, @big)

    # the get is sent after the whole to_list request
    send_request(port, {:list, :to_list, :big})
    send_request(port, {:get, :get, :small, :k})
    frames = until_done(port, :list)
    frames = if List.keymember?(frames, :get, 0), do: frames, else: frames ++ [next(port)]

    parts = for {:list, {_, part}} <- frames, do: part
    assert length(parts) > 1
    assert Enum.concat(parts) == Enum.map(0..(@big - 1), &{&1, &1})

    at_get = Enum.find_index(frames, &match?({:get, _}, &1))
    assert Enum.at(frames, at_get) == {:get, {:ok, :v}}
    # answered before the last part of the list
    assert at_get < length(frames) - 2
    Port.close(port)
  end

  test "a restore of a big snapshot runs in slices, with other stores answered in between" do
    port = open_program()
    :ok = call(port, {:open, :big, :ordered_set, :infinity})
    :ok = call(port, {:open, :small, :set, :infinity})
    :ok = call(port, {:put, :small, :k, :v, 0})
    fill(port, :big, @big)
    send_request(port, {:snap, :snapshot, :big})
    snapshot = IO.iodata_to_binary(for {:snap, {_, part}} <- until_done(port, :snap), do: part)

    send_request(port, {:restore, :restore, :copy, snapshot, :infinity})
    send_request(port, {:get, :get, :small, :k})
    assert [{:get, {:ok, :v}}, {:restore, :ok}] == [next(port), next(port)]
    assert call(port, {:size, :copy}) == @big
    assert call(port, {:at, :copy, -1}) == {:ok, {@big - 1, @big - 1}}

    # a corrupt one is refused whole, after its checksum
    bad = :binary.part(snapshot, 0, byte_size(snapshot) - 1) <> <<0>>
    assert call(port, {:restore, :bad, bad, :infinity}) == {:error, :invalid_snapshot}
    assert call(port, {:size, :bad}) == {:error, :no_store}
    Port.close(port)
  end

  # 50k entries (and one that stays) put in a new store, to expire together
  # about `window` ms from now. Returns {store, latest}, once all of them
  # were put well before they expire: the window grows on a machine too
  # slow for it (a loaded one, or the program under a sanitizer or
  # valgrind). The program counts a TTL from when it takes the put, which
  # is before its reply: `latest` (the last reply of a chunk plus the TTL
  # its puts carried, plus 2% for the VM's time correction, which may run
  # its clock up to 1% off the OS's, and 2 ms for the program's 1 ms
  # clock) is a time by which every entry has expired, whatever the
  # program's lag.
  defp fill_expiring(port, window) do
    store = :"ttl_#{window}"
    :ok = call(port, {:open, store, :ordered_set, :infinity})
    expires = System.monotonic_time(:millisecond) + window

    latest =
      Enum.reduce_while(Enum.chunk_every(0..49_999, 10_000), expires, fn chunk, latest ->
        ttl = expires - System.monotonic_time(:millisecond)

        if ttl > div(window, 2) do
          for i <- chunk, do: send_request(port, {i, :put, store, i, i, ttl})
          for _ <- chunk, do: {_, :ok} = next(port)
          {:cont, max(latest, System.monotonic_time(:millisecond) + ttl + div(ttl, 50) + 2)}
        else
          {:halt, :too_slow}
        end
      end)

    :ok = call(port, {:put, store, :stays, 1, 0})

    if latest != :too_slow and System.monotonic_time(:millisecond) < expires - div(window, 2),
      do: {store, latest},
      else: fill_expiring(port, window * 4)
  end

  test "a purge of many expired entries runs in slices; then size/1 counts none of them" do
    port = open_program()
    :ok = call(port, {:open, :other, :set, :infinity})
    :ok = call(port, {:put, :other, :k, :v, 0})

    # a put purges at most 1000 expired entries itself, so the size below
    # meets ~50k
    {ttl, latest} = fill_expiring(port, 3_000)
    assert call(port, {:size, ttl}) == 50_001
    Process.sleep(max(latest - System.monotonic_time(:millisecond), 0))

    # the size waits behind the purge; the get on another store does not
    send_request(port, {:size, :size, ttl})
    send_request(port, {:get, :get, :other, :k})
    assert [{:get, {:ok, :v}}, {:size, 1}] == [next(port), next(port)]
    assert call(port, {:to_list, ttl}) == {:done, [{:stays, 1}]}
    Port.close(port)
  end

  describe "compaction" do
    # Writes of every kind go on while the compaction runs; acknowledged
    # writes are recorded in a model (a map per store) by the writer.
    defp write_load(store_of, model, rounds) do
      Enum.reduce(1..rounds, model, fn i, model ->
        big = store_of.(:big)
        key = rem(i * 7919, @big)

        case rem(i, 6) do
          0 ->
            :ok = Store.put(big, key, {:new, i})
            put_in(model, [:big, key], {:new, i})

          1 ->
            :ok = Store.delete(big, key)
            update_in(model, [:big], &Map.delete(&1, key))

          2 ->
            :ok = Store.put(big, {:fresh, i}, i)
            put_in(model, [:big, {:fresh, i}], i)

          3 ->
            n = Store.update_counter(store_of.(:small), :counter, 1)
            put_in(model, [:small, :counter], n)

          4 ->
            :ok = Store.put_many(store_of.(:small), [{{:many, i}, i}, {:shared, i}])
            model |> put_in([:small, {:many, i}], i) |> put_in([:small, :shared], i)

          5 ->
            # a store dropped and made again while the snapshot walks
            :ok = Store.delete(store_of.(:churn))
            {:ok, _} = Store.new(:set, backend: {:port, store_of.(:port)}, name: :churn)
            :ok = Store.put(store_of.(:churn), :last, i)
            Map.put(model, :churn, %{last: i})
        end
      end)
    end

    test "snapshots while writes go on: after a restart, exactly what was acknowledged",
         %{dir: dir, port: port} do
      start_supervised!({GenNative.Port, name: port, dir: dir, sync: {:interval, 100}})
      b = {:port, port}
      {:ok, big} = Store.new(:ordered_set, backend: b, name: :big)
      {:ok, small} = Store.new(:set, backend: b, name: :small)
      {:ok, churn} = Store.new(:set, backend: b, name: :churn)
      :ok = Store.put(churn, :last, 0)

      0..(@big - 1)
      |> Stream.chunk_every(20_000)
      |> Enum.each(&(:ok = Store.put_many(big, Enum.map(&1, fn k -> {k, k} end))))

      model = %{big: Map.new(0..(@big - 1), &{&1, &1}), small: %{}, churn: %{last: 0}}
      stores = %{big: big, small: small, churn: churn, port: port}

      # the compaction, from another process; writes from this one meanwhile
      test = self()

      spawn_link(fn ->
        send(test, {:compacted, GenNative.Port.compact(port)})
      end)

      {model, during} = write_until_compacted(stores, model, 0)
      # writes were acknowledged while the snapshot was being written
      assert during > 0
      model = write_load(&Map.fetch!(stores, &1), model, 300)

      stop_supervised!({GenNative.Port, port})
      files = File.ls!(dir)
      assert "snapshot.gns" in files
      # the journals before the snapshot's generation are gone
      assert length(Enum.filter(files, &String.starts_with?(&1, "journal."))) == 1

      start_supervised!({GenNative.Port, name: port, dir: dir})
      for {name, expected} <- model, do: assert_store(port, name, expected)
    end

    defp write_until_compacted(stores, model, during) do
      receive do
        {:compacted, :ok} -> {model, during}
      after
        0 ->
          model = write_load(&Map.fetch!(stores, &1), model, 6)
          write_until_compacted(stores, model, during + 6)
      end
    end

    defp assert_store(port, name, expected) do
      got = Map.new(Store.to_list(%GenNative.Store.PortHandle{port: port, name: name}))
      assert map_size(got) == map_size(expected), "#{name}: size"
      assert got == expected, "#{name}: contents"
    end
  end
end
