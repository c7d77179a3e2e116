defmodule GenNative.TestHelpers do
  @moduledoc false

  @doc """
  Polls `fun` every millisecond until it returns a truthy value; flunks
  after `timeout` ms. For waiting on something no message of ours can be
  ordered against (a monitor firing inside a server, a supervisor restart).
  """
  def wait_until(fun, timeout \\ 5_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_wait_until(fun, deadline)
  end

  defp do_wait_until(fun, deadline) do
    cond do
      fun.() ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        ExUnit.Assertions.flunk("condition not met in time")

      true ->
        Process.sleep(1)
        do_wait_until(fun, deadline)
    end
  end
end
