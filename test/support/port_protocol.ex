defmodule GenNative.PortProtocol do
  @moduledoc """
  The port program's protocol spoken directly, for tests
  (see c_src/port/PROTOCOL.md): open the program, send requests, read
  replies and events.
  """
  import ExUnit.Assertions

  @doc "The program's path."
  def program, do: Path.join(:code.priv_dir(:gen_native), "gen_native_port")

  @doc "Opens the program with `args`; returns `{port, info}` of its ready event."
  def open(args \\ []) do
    port =
      Port.open({:spawn_executable, program()}, [:binary, {:packet, 4}, :exit_status, args: args])

    assert {:ready, info} = event(port)
    {port, info}
  end

  def send_term(port, term), do: Port.command(port, :erlang.term_to_binary(term))

  @doc "The next event (a frame with no tag)."
  def event(port) do
    assert_receive {^port, {:data, <<0::16, event::binary>>}}, 5_000
    :erlang.binary_to_term(event)
  end

  @doc "The reply to the request tagged `tag`, whatever came before it."
  def reply(port, tag) do
    ext = :erlang.term_to_binary(tag)
    n = byte_size(ext)
    assert_receive {^port, {:data, <<^n::16, ^ext::binary-size(n), payload::binary>>}}, 10_000
    :erlang.binary_to_term(payload)
  end

  @doc "The next frame: `{tag, payload}` for a reply, the payload for an event."
  def next(port) do
    receive do
      {^port, {:data, <<0::16, event::binary>>}} ->
        :erlang.binary_to_term(event)

      {^port, {:data, <<n::16, tag::binary-size(n), payload::binary>>}} ->
        {:erlang.binary_to_term(tag), :erlang.binary_to_term(payload)}
    after
      30_000 -> flunk("no frame from the program")
    end
  end

  @doc "Sends `request` (a tuple without its tag) and returns its reply."
  def call(port, request) do
    tag = make_ref()
    send_term(port, :erlang.insert_element(1, request, tag))
    reply(port, tag)
  end

  def close(port) do
    Port.close(port)
  catch
    _, _ -> :ok
  end
end
