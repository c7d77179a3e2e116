defmodule GenNative.PortFsyncTest do
  # The journal's fdatasync and writes, seen through an LD_PRELOAD shim
  # (test/support/fsync_shim.c, compiled here with gcc) that can hold an
  # fdatasync, fail it with EIO, or fail a write with ENOSPC: sync/1
  # answers only once the data is on disk, and a failed fdatasync or write
  # stops the program (fail-stop) with a reason, never to be retried or
  # ignored.
  #
  # async: false: LD_PRELOAD is set in this VM's environment for the moment
  # a program is spawned.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  import GenNative.TestHelpers, only: [wait_until: 2]

  alias GenNative.Store

  @moduletag :port

  setup_all do
    shim = Path.join(System.tmp_dir!(), "gn_fsync_shim_#{System.unique_integer([:positive])}.so")
    source = Path.expand("../support/fsync_shim.c", __DIR__)

    {out, status} =
      System.cmd("gcc", ["-shared", "-fPIC", "-O1", "-o", shim, source, "-ldl"],
        stderr_to_stdout: true
      )

    assert status == 0, out
    on_exit(fn -> File.rm(shim) end)
    %{shim: shim}
  end

  setup do
    dir = Path.join(System.tmp_dir!(), "gn_port_fsync_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    %{dir: dir, port: :"gn_port_fsync_#{System.unique_integer([:positive])}"}
  end

  defp start_shimmed(shim, port, dir, sync) do
    Process.flag(:trap_exit, true)
    # after what is preloaded already (bin/sanitize's ASan runtime must come first)
    previous = System.get_env("LD_PRELOAD")
    System.put_env("LD_PRELOAD", Enum.join(List.wrap(previous) ++ [shim], " "))

    try do
      {:ok, pid} = GenNative.Port.start_link(name: port, dir: dir, sync: sync)
      pid
    after
      if previous,
        do: System.put_env("LD_PRELOAD", previous),
        else: System.delete_env("LD_PRELOAD")
    end
  end

  defp control(dir, name), do: Path.join(dir, name)

  describe "sync/1 with sync: {:interval, ms}" do
    test "waits for the fdatasync in flight", %{shim: shim, dir: dir, port: port} do
      pid = start_shimmed(shim, port, dir, {:interval, 10})
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      :ok = Store.put(s, :a, 1)
      :ok = GenNative.Port.sync(port)

      File.touch!(control(dir, "FSYNC_HOLD"))
      File.rm(control(dir, "FSYNC_DONE"))
      :ok = Store.put(s, :b, 2)
      # the interval's fdatasync has begun, and is held
      wait_until(fn -> File.exists?(control(dir, "FSYNC_HELD")) end, 10_000)

      sync =
        Task.async(fn ->
          result = GenNative.Port.sync(port)
          {result, File.exists?(control(dir, "FSYNC_DONE"))}
        end)

      # (a sync answered before the fdatasync ended would come back here)
      Task.yield(sync, 300)
      File.rm!(control(dir, "FSYNC_HOLD"))
      assert Task.await(sync, 10_000) == {:ok, true}
      GenServer.stop(pid)
    end
  end

  describe "a failed fdatasync" do
    @tag capture_log: true
    test "with {:interval, ms}: the program stops with {:fsync_failed, text}, never answering :ok",
         %{shim: shim, dir: dir, port: port} do
      pid = start_shimmed(shim, port, dir, {:interval, 10})
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      :ok = Store.put(s, :a, 1)
      :ok = GenNative.Port.sync(port)

      File.touch!(control(dir, "FSYNC_FAIL"))
      :ok = Store.put(s, :b, 2)
      # whether the interval's fdatasync fails first or this one does
      assert {{:fsync_failed, text}, {GenNative.Port, :sync, [^port]}} =
               catch_exit(GenNative.Port.sync(port))

      assert text =~ "Input/output error"
      assert_receive {:EXIT, ^pid, {:fsync_failed, ^text}}, 10_000

      # what was synced is there after a restart
      File.rm!(control(dir, "FSYNC_FAIL"))
      {:ok, pid} = GenNative.Port.start_link(name: port, dir: dir)
      assert Store.get(s, :a) == 1
      GenServer.stop(pid)
    end

    test "with {:interval, ms}, no request waiting: the program stops on its own",
         %{shim: shim, dir: dir, port: port} do
      pid = start_shimmed(shim, port, dir, {:interval, 10})
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      # nothing left to sync: the failing fdatasync is the one for the put
      :ok = GenNative.Port.sync(port)
      File.touch!(control(dir, "FSYNC_FAIL"))

      log =
        capture_log(fn ->
          :ok = Store.put(s, :b, 2)
          assert_receive {:EXIT, ^pid, {:fsync_failed, _}}, 10_000
        end)

      assert log =~ "fsync_failed"
    end

    @tag capture_log: true
    test "with :always: the write is not acknowledged, and the caller exits with the reason",
         %{shim: shim, dir: dir, port: port} do
      pid = start_shimmed(shim, port, dir, :always)
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      :ok = Store.put(s, :a, 1)
      File.touch!(control(dir, "FSYNC_FAIL"))

      assert {{:fsync_failed, _}, {Store, :put, _}} = catch_exit(Store.put(s, :b, 2))
      assert_receive {:EXIT, ^pid, {:fsync_failed, _}}, 10_000
    end
  end

  describe "a failed journal write (ENOSPC)" do
    @tag capture_log: true
    test "is not acknowledged: the program stops with {:journal_write_failed, text}",
         %{shim: shim, dir: dir, port: port} do
      pid = start_shimmed(shim, port, dir, {:interval, 100})
      {:ok, s} = Store.new(:set, backend: {:port, port}, name: :s)
      :ok = Store.put(s, :a, 1)
      File.touch!(control(dir, "WRITE_FAIL"))

      assert {{:journal_write_failed, text}, {Store, :put, _}} = catch_exit(Store.put(s, :b, 2))
      assert text =~ "No space left on device"
      assert_receive {:EXIT, ^pid, {:journal_write_failed, ^text}}, 10_000

      File.rm!(control(dir, "WRITE_FAIL"))
      {:ok, pid} = GenNative.Port.start_link(name: port, dir: dir)
      assert Store.get(s, :a) == 1
      assert Store.fetch(s, :b) == :error
      GenServer.stop(pid)
    end
  end
end
