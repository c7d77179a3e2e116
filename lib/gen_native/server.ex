defmodule GenNative.Server do
  # The engine that runs inside every GenNative server process.
  #
  # A GenNative server is a plain :gen_server whose callback module is the
  # user's module; `use GenNative` wraps that module's init/1, handle_call/3,
  # handle_cast/2, handle_info/2 and terminate/2 so that they call in here.
  # Everything :gen_server does (names, start options, :sys, hibernation,
  # timeouts, crash reports, supervision) therefore stays exactly GenServer's.
  #
  # What this module adds is the native mailbox (c_src/mailbox.c): requests
  # sent with GenNative.call/cast go into a C queue owned by this process.
  # Each queued item has a sequence number and is one of
  #
  #   * a payload, `{:cast, request}`, copied into the queue;
  #   * a placeholder, the bare sequence number, whose request travels as a
  #     direct message `{:"$gn", seq, item}` (calls always; casts when the
  #     server was idle, so that the message also wakes it).
  #
  # Items are handled strictly in sequence order. At a placeholder whose
  # direct message has not arrived yet the engine stops ("stalls") and
  # returns to the process mailbox: everything the sender sent before that
  # request is then handled first, which is how a plain message sent before
  # a GenNative.call keeps its place. Direct messages that arrive before
  # their turn wait in a small map.
  #
  # Messages that do not come through the native mailbox (GenServer.call,
  # GenServer.cast, send/2, remote senders) first let the engine handle what
  # was queued before them, so a process that casts with GenNative and then
  # calls with GenServer sees its cast handled first.
  #
  # State kept in the process dictionary (all keys start with "$gn"):
  @moduledoc false

  alias GenNative.Native

  # the mailbox resource, or nil when init/1 runs outside a server
  @mailbox :"$gn_mailbox"
  # items taken out of the C queue but not handled yet (after a stall)
  @pending :"$gn_pending"
  # %{seq => item}: direct messages that arrived before their turn
  @early :"$gn_early"
  # the GenServer-shaped message the engine is handling, for crash reports;
  # nil when the engine is not running a callback
  @last :"$gn_last_message"
  # {from, reply} of a queued call that returned {:stop, r, reply, s}
  @stop_reply :"$gn_stop_reply"

  # Most queued requests handled before the server looks at its process
  # mailbox again (system messages, exit signals, plain messages).
  @batch 64

  @doc false
  @spec init_mailbox(module()) :: :ok
  def init_mailbox(module) do
    # Only a server process gets a mailbox; a test that calls init/1
    # directly must not turn the test process into a native server.
    with {^module, :init, 1} <- Process.get(:"$initial_call"),
         nil <- Process.get(@mailbox),
         ref when is_reference(ref) <- Native.mailbox_new() do
      Process.put(@mailbox, ref)
      Process.put(@pending, [])
      Process.put(@early, %{})
    end

    :ok
  end

  @doc false
  # handle_info({:"$gn", seq, item}, state)
  def handle_direct(module, seq, item, state) do
    run(module, {seq, item}, state, @batch)
  end

  @doc false
  # handle_info({:"$gn", item}, state): a call sent while the queue was idle,
  # with no placeholder. Nothing queued can come before it, except items
  # already taken out while we wait at a placeholder: then it goes last.
  def handle_solo(module, item, state) do
    case Process.get(@pending) do
      [] ->
        case handle_item(module, item, state) do
          {:cont, state, timeout} ->
            Process.put(@last, nil)
            reply_to_gen_server(state, timeout)

          stop ->
            stop
        end

      pending ->
        Process.put(@pending, pending ++ [{:solo, item}])
        {:noreply, state}
    end
  end

  @doc false
  # handle_info(:"$gn_wake", state): the engine's own "more to do"
  def handle_wake(module, state) do
    run(module, nil, state, @batch)
  end

  @doc false
  # Before a message that did not come through the native mailbox: handle
  # what was queued before it. Returns {:cont, state} or a stop tuple.
  def before_foreign(module, state) do
    # Checked first: the engine itself calls the user's callbacks through
    # these wrappers, and that path must stay short.
    if Process.get(@last) == nil do
      case Process.get(@mailbox) do
        nil -> {:cont, state}
        mailbox -> drain_queued(module, mailbox, state)
      end
    else
      {:cont, state}
    end
  end

  # Handles what is queued now, not what arrives meanwhile: producers faster
  # than the server must not starve the message that is waiting.
  defp drain_queued(module, mailbox, state) do
    case Process.get(@pending) do
      [] ->
        case Native.mailbox_length(mailbox) do
          0 -> {:cont, state}
          n -> drain_before(module, state, n)
        end

      pending ->
        drain_before(module, state, length(pending) + Native.mailbox_length(mailbox))
    end
  end

  defp drain_before(module, state, budget) do
    case run(module, nil, state, budget) do
      {:noreply, state} -> {:cont, state}
      {:noreply, state, _timeout_or_hibernate} -> {:cont, state}
      stop -> stop
    end
  end

  ## The defaults `use GenNative` gives, which behave as `use GenServer`'s

  @doc false
  def default_handle_call(request, state) do
    # phash2 keeps Dialyzer from flagging the raise as the only return.
    case :erlang.phash2(1, 1) do
      0 ->
        raise "attempted to call GenServer #{inspect(registered_name())} but no handle_call/3 clause was provided"

      1 ->
        {:stop, {:bad_call, request}, state}
    end
  end

  @doc false
  def default_handle_cast(request, state) do
    case :erlang.phash2(1, 1) do
      0 ->
        raise "attempted to cast GenServer #{inspect(registered_name())} but no handle_cast/2 clause was provided"

      1 ->
        {:stop, {:bad_cast, request}, state}
    end
  end

  @doc false
  def default_handle_info(module, message, state) do
    :logger.error(
      %{
        label: {GenServer, :no_handle_info},
        report: %{module: module, message: message, name: registered_name()}
      },
      %{
        domain: [:otp, :elixir],
        error_logger: %{tag: :error_msg},
        report_cb: &GenServer.format_report/1
      }
    )

    {:noreply, state}
  end

  defp registered_name do
    case Process.info(self(), :registered_name) do
      {_, []} -> self()
      {_, name} -> name
    end
  end

  @doc false
  # Called after the user's terminate/2, whatever it did.
  def after_terminate do
    case Process.delete(@stop_reply) do
      {from, reply} -> :gen.reply(from, reply)
      nil -> :ok
    end
  end

  @doc false
  # format_status/1: crash reports name the request being handled, shaped
  # as GenServer would have received it, not the engine's wake message.
  def format_status(%{message: _} = status) do
    case Process.get(@last) do
      nil -> status
      message -> %{status | message: message}
    end
  end

  def format_status(status), do: status

  ## The loop

  # Handles up to `budget` queued items (plus `incoming`, the direct message
  # being handled, when its turn comes) and returns a handle_info/2 result.
  defp run(module, incoming, state, budget) do
    mailbox = Process.get(@mailbox)
    items = Process.put(@pending, [])

    case loop(module, mailbox, items, incoming, state, budget, nil) do
      {:stop, _, _} = stop ->
        # Keep @last: the crash report names the request that stopped us.
        stop

      result ->
        Process.put(@last, nil)
        result
    end
  end

  defp loop(module, mailbox, [], incoming, state, budget, timeout) do
    cond do
      budget == :empty ->
        # The last take emptied the queue; only `incoming` can be left, if
        # its placeholder was consumed already. Never drop a request.
        case incoming do
          nil -> reply_to_gen_server(state, timeout)
          {_seq, item} -> step(module, mailbox, item, [], nil, state, :empty, timeout)
        end

      budget <= 0 ->
        # More may be queued: come back after a look at the process mailbox.
        park_incoming(incoming)
        send(self(), :"$gn_wake")
        {:noreply, state}

      true ->
        want = min(budget, @batch)
        items = Native.mailbox_take(mailbox, want)
        taken = length(items)
        budget = if taken < want, do: :empty, else: budget - taken
        loop(module, mailbox, items, incoming, state, budget, timeout)
    end
  end

  defp loop(module, mailbox, [seq | rest], incoming, state, budget, timeout)
       when is_integer(seq) do
    case incoming do
      {^seq, item} ->
        step(module, mailbox, item, rest, nil, state, budget, timeout)

      _ ->
        early = Process.get(@early)

        case early do
          %{^seq => item} ->
            Process.put(@early, Map.delete(early, seq))
            step(module, mailbox, item, rest, incoming, state, budget, timeout)

          _ ->
            # Its direct message is still on the way: stall until it comes.
            Process.put(@pending, [seq | rest])
            park_incoming(incoming)
            reply_to_gen_server(state, timeout)
        end
    end
  end

  defp loop(module, mailbox, [item | rest], incoming, state, budget, timeout) do
    step(module, mailbox, item, rest, incoming, state, budget, timeout)
  end

  defp step(module, mailbox, item, rest, incoming, state, budget, _timeout) do
    case handle_item(module, item, state) do
      {:cont, state, timeout} ->
        loop(module, mailbox, rest, incoming, state, budget, timeout)

      {:stop, _reason, _state} = stop ->
        # The server is going down; what is left dies with it, as a
        # GenServer's mailbox does.
        stop
    end
  end

  defp park_incoming(nil), do: :ok

  defp park_incoming({seq, item}) do
    Process.put(@early, Map.put(Process.get(@early), seq, item))
  end

  # A timeout or :hibernate returned by the last request handled applies
  # only if nothing else was handled after it, as in GenServer.
  defp reply_to_gen_server(state, nil), do: {:noreply, state}
  defp reply_to_gen_server(state, timeout), do: {:noreply, state, timeout}

  ## One request

  defp handle_item(module, {:solo, item}, state), do: handle_item(module, item, state)

  defp handle_item(module, {:cast, request}, state) do
    Process.put(@last, {:"$gen_cast", request})

    result =
      try do
        module.handle_cast(request, state)
      catch
        :throw, value -> value
      end

    noreply(module, result, state)
  end

  defp handle_item(module, {:call, from, request}, state) do
    Process.put(@last, {:"$gen_call", from, request})

    result =
      try do
        module.handle_call(request, from, state)
      catch
        :throw, value -> value
      end

    case result do
      {:reply, reply, new_state} ->
        :gen.reply(from, reply)
        {:cont, new_state, nil}

      {:reply, reply, new_state, extra} ->
        if valid_extra?(extra) do
          :gen.reply(from, reply)
          after_extra(module, new_state, extra)
        else
          {:stop, {:bad_return_value, result}, state}
        end

      {:stop, reason, reply, new_state} ->
        Process.put(@stop_reply, {from, reply})
        {:stop, reason, new_state}

      other ->
        noreply(module, other, state)
    end
  end

  defp noreply(_module, {:noreply, new_state}, _state), do: {:cont, new_state, nil}

  defp noreply(module, {:noreply, new_state, extra} = result, state) do
    if valid_extra?(extra) do
      after_extra(module, new_state, extra)
    else
      {:stop, {:bad_return_value, result}, state}
    end
  end

  defp noreply(_module, {:stop, reason, new_state}, _state), do: {:stop, reason, new_state}
  defp noreply(_module, other, state), do: {:stop, {:bad_return_value, other}, state}

  defp valid_extra?(:hibernate), do: true
  defp valid_extra?(:infinity), do: true
  defp valid_extra?({:continue, _}), do: true
  defp valid_extra?(timeout) when is_integer(timeout) and timeout >= 0, do: true
  defp valid_extra?(_), do: false

  # {:continue, arg} runs before anything else, so it runs right here.
  defp after_extra(module, state, {:continue, arg}) do
    result =
      try do
        module.handle_continue(arg, state)
      catch
        :throw, value -> value
      end

    noreply(module, result, state)
  end

  defp after_extra(_module, state, timeout_or_hibernate), do: {:cont, state, timeout_or_hibernate}
end
