defmodule GenNative.StoreUpgradeTest do
  # A NIF library upgrade: GenNative.Native is reloaded with a COPY of
  # gen_native_nif.so under another name (loading the same path again
  # returns the same handle, so no upgrade would happen). Named stores, TTL
  # sweeping and live mailboxes must carry over: the stores' shared state
  # lives in the library's private data, which upgrade hands on. Then the
  # original library is loaded back the same way (another upgrade) and the
  # old instances are purged (their unload runs).
  # Not async: it replaces a module every test uses.
  use ExUnit.Case, async: false

  import GenNative.TestHelpers, only: [wait_until: 2]

  alias GenNative.MailboxServers.Counter
  alias GenNative.Native
  alias GenNative.Store

  @moduletag :tmp_dir

  # GenNative.Native's code with load_nif/0 loading `path` (no extension).
  defp native_loading(path) do
    {Native, beam, _file} = :code.get_object_code(Native)

    {:ok, {_, [debug_info: {:debug_info_v1, backend, data}]}} =
      :beam_lib.chunks(beam, [:debug_info])

    {:ok, forms} = backend.debug_info(:erlang_v1, Native, data, [])

    forms =
      Enum.map(forms, fn
        {:function, l, :load_nif, 0, _} ->
          call =
            {:call, l, {:remote, l, {:atom, l, :erlang}, {:atom, l, :load_nif}},
             [{:string, l, String.to_charlist(path)}, {:integer, l, 0}]}

          {:function, l, :load_nif, 0, [{:clause, l, [], [], [call]}]}

        form ->
          form
      end)

    {:ok, Native, bin} = :compile.forms(forms, [:binary, :return_errors])
    bin
  end

  defp load!(bin, label) do
    # the current code becomes old; any older code must go first
    :code.purge(Native)
    assert {:module, Native} = :code.load_binary(Native, String.to_charlist(label), bin)
  end

  defp mapped?(path), do: File.read!("/proc/self/maps") =~ path

  # :erlang.memory(:binary), or nil in a VM without memory accounting
  # (bin/sanitize runs it with +Mea min)
  defp binary_memory do
    :erlang.memory(:binary)
  rescue
    ErlangError -> nil
  end

  test "named stores, TTL sweeping and mailboxes live on across upgrades", %{tmp_dir: dir} do
    original = Path.join(:code.priv_dir(:gen_native), "gen_native_nif")
    copy = Path.join(dir, "gn_upgrade_copy")
    File.cp!(original <> ".so", copy <> ".so")
    {Native, original_beam, _} = :code.get_object_code(Native)

    name = :"gn_upgrade_#{System.unique_integer([:positive])}"
    {:ok, store} = Store.new(:set, name: name, lifetime: :named, access: :public)
    :ok = Store.put(store, :k, :v)
    {:ok, server} = GenNative.start_link(Counter, :ok)
    GenNative.cast(server, :one)
    assert GenNative.call(server, :count) == 1

    # entries that expire during the upgrade: the sweeper must still find
    # their store afterwards (nothing reads it, and reads purge)
    binary_before = binary_memory()

    for i <- 1..2_000,
        do: :ok = Store.put(store, {:ttl, i}, :binary.copy(<<i::32>>, 250), ttl: 300)

    if binary_before, do: assert(binary_memory() - binary_before > 1_500_000)

    try do
      load!(native_loading(copy), "gn_upgrade_copy")
      assert mapped?("gn_upgrade_copy.so")

      assert Store.whereis(name) == store
      assert Store.get(store, :k) == :v
      GenNative.cast(server, :two)
      assert GenNative.call(server, :count) == 2

      if binary_before,
        do: wait_until(fn -> binary_memory() - binary_before < 500_000 end, 5_000)

      # new stores, names and TTLs work under the new library
      other = :"#{name}_after"
      {:ok, after_store} = Store.new(:ordered_set, name: other)
      :ok = Store.put(after_store, :a, 1, ttl: 50)
      assert Store.whereis(other) == after_store
      Process.sleep(100)
      assert Store.size(after_store) == 0
      :ok = Store.delete(after_store)
    after
      # back to the original library: another upgrade, and the copy's
      # instance is purged (its unload runs)
      load!(original_beam, "gen_native_original")
      :code.purge(Native)
    end

    assert Store.whereis(name) == store
    assert Store.get(store, :k) == :v
    assert GenNative.call(server, :count) == 2
    :ok = Store.delete(store)
    assert Store.whereis(name) == nil
  end

  # A library of another layout (GN_ABI) must not take over live stores and
  # mailboxes: its upgrade is refused, the module fails to load, and the
  # running code goes on with its data intact.
  @tag timeout: 300_000
  test "a library of another layout is refused, and the old one runs on", %{tmp_dir: dir} do
    erts =
      :filename.join([:code.root_dir(), ~c"erts-#{:erlang.system_info(:version)}", ~c"include"])

    {out, status} =
      System.cmd(
        "make",
        [
          "-j2",
          "#{dir}/build/priv/gen_native_nif.so",
          "MIX_APP_PATH=#{dir}/build",
          "ERTS_INCLUDE_DIR=#{erts}",
          "ERL_EI_INCLUDE_DIR=#{:code.lib_dir(:erl_interface, :include)}",
          "ERL_EI_LIBDIR=#{:code.lib_dir(:erl_interface, :lib)}"
        ],
        cd: Path.expand("../..", __DIR__),
        # in the environment, so that the Makefile's own flags are added
        env: [{"CFLAGS", "-O0 -DGN_ABI=9999"}],
        stderr_to_stdout: true
      )

    assert status == 0, out
    other = Path.join(dir, "gn_other_abi")
    File.cp!(Path.join(dir, "build/priv/gen_native_nif.so"), other <> ".so")

    name = :"gn_abi_#{System.unique_integer([:positive])}"
    {:ok, store} = Store.new(:set, name: name, lifetime: :named, access: :public)
    :ok = Store.put(store, :k, :v)
    {:ok, server} = GenNative.start_link(Counter, :ok)
    GenNative.cast(server, :one)

    :code.purge(Native)

    assert {:error, :on_load_failure} =
             :code.load_binary(Native, ~c"gn_other_abi", native_loading(other))

    refute mapped?("gn_other_abi.so")
    assert Store.whereis(name) == store
    assert Store.get(store, :k) == :v
    :ok = Store.put(store, :k2, :v2)
    GenNative.cast(server, :two)
    assert GenNative.call(server, :count) == 2
    :ok = Store.delete(store)
  end
end
