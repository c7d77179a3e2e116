defmodule GenNative.Examples.DurableStoreTest do
  # The README's durable store: a visit counter in a store hosted by the
  # port program, with a data directory. It survives the program's death
  # (kill -9: the supervisor restarts the program, which reloads the
  # directory) and a restart of the whole supervision tree, as after the
  # VM restarts.
  use ExUnit.Case, async: true

  import GenNative.TestHelpers, only: [wait_until: 2]

  alias GenNative.Store

  @moduletag :port
  @moduletag :capture_log

  setup do
    dir = Path.join(System.tmp_dir!(), "gn_durable_example_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm_rf!(dir) end)
    %{dir: dir, port: :"gn_durable_example_#{System.unique_integer([:positive])}"}
  end

  defp start_tree(port, dir) do
    children = [{GenNative.Port, name: port, dir: dir, sync: :always}]
    {:ok, sup} = Supervisor.start_link(children, strategy: :one_for_one)
    sup
  end

  test "a counter survives kill -9 of the program and a restart of its supervisor", ctx do
    sup = start_tree(ctx.port, ctx.dir)
    {:ok, visits} = Store.new(:set, backend: {:port, ctx.port}, name: :visits)

    for _ <- 1..3, do: Store.update_counter(visits, "/home", 1)
    :ok = Store.put(visits, "/about", 10)
    assert Store.get(visits, "/home") == 3

    # the program dies; the supervisor starts a new one on the same directory
    old = GenNative.Port.os_pid(ctx.port)
    {_, 0} = System.cmd("kill", ["-9", Integer.to_string(old)])
    wait_until(fn -> GenNative.Port.os_pid(ctx.port) not in [nil, old] end, 5_000)

    # the same handle works: it names the program and the store
    assert Store.get(visits, "/home") == 3
    assert Store.update_counter(visits, "/home", 1) == 4

    # everything stops, as when the VM goes down, and starts again
    :ok = Supervisor.stop(sup)
    start_tree(ctx.port, ctx.dir)
    {:ok, visits} = Store.new(:set, backend: {:port, ctx.port}, name: :visits)

    assert Enum.sort(Store.to_list(visits)) == [{"/about", 10}, {"/home", 4}]
    assert File.ls!(ctx.dir) |> Enum.any?(&String.starts_with?(&1, "journal."))
  end
end
