defmodule GenNative.Server do
  # The engine that runs inside every GenNative server process.
  #
  # A GenNative server is a plain :gen_server whose callback module is the
  # user's module; `use GenNative` wraps that module's init/1, handle_cast/2
  # and handle_info/2 so that they call in here. Everything :gen_server does
  # (names, start options, calls, :sys, hibernation, timeouts, crash reports,
  # supervision) therefore stays exactly GenServer's.
  #
  # What this module adds is the native mailbox (c_src/mailbox.c) for casts.
  # A cast to an idle server arrives as an ordinary {:"$gen_cast", request}
  # message and is acked here; otherwise casts wait in the C queue and the
  # sender of the first one wakes us with :"$gn_wake". On a wake we take
  # casts out in batches and run handle_cast/2 on each, as gen_server would,
  # until the queue is empty; but if process messages are waiting (a call,
  # a system message, anything), we only go on up to what is queued at that
  # moment, with a wake of our own behind those messages for the rest. So
  # whatever a process queued before it sent a message is handled before that
  # message, and the process mailbox is never starved.
  #
  # Calls are ordinary gen_server calls: a caller waits for its reply, so a
  # call costs a message each way whatever carries it.
  @moduledoc false

  alias GenNative.Native

  # the mailbox resource, or nil when init/1 ran outside a server
  @mailbox :"$gn_mailbox"
  # {batch_size, {handle_batch/2 exported?, keep_on_crash?}}
  @config :"$gn_config"
  # keep_on_crash: requests taken out but not handled yet
  @pending :"$gn_pending"
  # {from, reply} of a priority call that returned {:stop, r, reply, s}
  @stop_reply :"$gn_stop_reply"
  # while a queued cast is being handled: that cast, shaped as GenServer
  # would have received it ({:"$gen_cast", request}), for crash reports and
  # for the handle_cast/2 wrapper to tell a queued cast from a direct one
  @last :"$gn_last_message"

  @doc false
  # init/1 wrapper: sets up the mailbox; returns the user's init argument.
  # GenNative.start_link/3 wraps the argument with the per-server options
  # and name; a server started some other way (GenServer.start_link/3) gets
  # the module's `use GenNative, mailbox: ...` options.
  @spec init_mailbox(module(), term()) :: term()
  def init_mailbox(module, {:"$gn_init", opts, name, arg}) do
    setup(module, opts, name)
    arg
  end

  def init_mailbox(module, arg) do
    # checked and completed with the defaults by `use GenNative`
    opts = module.__gn_mailbox__()

    name =
      case Process.info(self(), :registered_name) do
        {:registered_name, name} when is_atom(name) and name != [] -> name
        _ -> nil
      end

    setup(module, opts, name)
    arg
  end

  defp setup(module, opts, name) do
    # Only a server process gets a mailbox; a test that calls init/1
    # directly must not turn the test process into a native server.
    with {^module, :init, 1} <- Process.get(:"$initial_call"),
         nil <- Process.get(@mailbox) do
      ref = open_mailbox(module, opts, name)
      Process.put(@mailbox, ref)
      batch? = function_exported?(module, :handle_batch, 2)
      Process.put(@config, {opts[:batch_size], {batch?, opts[:keep_on_crash]}})
    end
  end

  defp open_mailbox(module, opts, name) do
    capacity = opts[:capacity]
    overflow = opts[:overflow]

    if opts[:keep_on_crash] do
      if name == nil do
        raise ArgumentError, "mailbox option keep_on_crash: true requires a registered :name"
      end

      ref =
        case GenNative.Janitor.adopt(name, module) do
          {:ok, ref} -> adopt(ref)
          :none -> Native.mailbox_new(capacity, overflow, true)
        end

      GenNative.Janitor.keep(name, module, ref)
      ref
    else
      Native.mailbox_new(capacity, overflow, false)
    end
  end

  # The old owner's exit reaches the mailbox within microseconds of its
  # DOWN message; wait for it.
  defp adopt(ref, tries \\ 1000) do
    case Native.mailbox_adopt(ref) do
      :not_ready when tries > 0 ->
        Process.sleep(1)
        adopt(ref, tries - 1)

      0 ->
        ref

      _waiting ->
        send(self(), :"$gn_wake")
        ref
    end
  end

  @doc false
  # handle_cast/2 wrapper: a cast that came as a message (directly, or from
  # GenServer.cast) tells the mailbox one fewer direct cast is in flight.
  def ack do
    with nil <- Process.get(@last),
         mailbox when mailbox != nil <- Process.get(@mailbox) do
      Native.mailbox_ack(mailbox)
    end

    :ok
  end

  @doc false
  # handle_info(:"$gn_wake", state)
  def handle_wake(module, state) do
    case Process.get(@mailbox) do
      nil ->
        {:noreply, state}

      mailbox ->
        case Process.get(@config) do
          {_, {_, true}} -> drain_keeping(module, mailbox, state)
          _ -> finish(drain(module, mailbox, state, :infinity, nil))
        end
    end
  end

  defp finish({:stop, _reason, _state} = stop) do
    # Keep @last: the crash report names the request that stopped us.
    stop
  end

  defp finish(result) do
    Process.put(@last, nil)
    result
  end

  # keep_on_crash: what was taken out and not handled when a callback
  # crashes or stops the server goes back to the mailbox for the next one.
  defp drain_keeping(module, mailbox, state) do
    result =
      try do
        drain(module, mailbox, state, :infinity, nil)
      catch
        kind, reason ->
          requeue(mailbox)
          :erlang.raise(kind, reason, __STACKTRACE__)
      end

    case result do
      {:stop, _, _} -> requeue(mailbox)
      _ -> Process.delete(@pending)
    end

    finish(result)
  end

  defp requeue(mailbox) do
    case Process.delete(@pending) do
      [_ | _] = rest -> Native.mailbox_requeue(mailbox, rest)
      _ -> :ok
    end
  end

  @doc false
  # format_status/1: a crash report names the cast being handled, shaped as
  # GenServer would have received it, not our wake message.
  def format_status(%{message: _} = status) do
    case Process.get(@last) do
      nil -> status
      message -> %{status | message: message}
    end
  end

  def format_status(status), do: status

  @doc false
  # Called after the user's terminate/2, whatever it did.
  def after_terminate do
    case Process.delete(@stop_reply) do
      {from, reply} -> :gen.reply(from, reply)
      nil -> :ok
    end
  end

  # `upto` is :infinity (until the queue is empty) or the sequence number of
  # the last normal request to take before returning to the process mailbox.
  defp drain(module, mailbox, state, upto, timeout) do
    {batch_size, mode} = Process.get(@config)

    case Native.mailbox_take(mailbox, batch_size, upto) do
      [] ->
        reply(state, timeout)

      requests ->
        case handle_requests(module, requests, mode, state, timeout) do
          {:cont, state, timeout} ->
            cond do
              # a short take emptied the queue or reached `upto`
              length(requests) < batch_size -> reply(state, timeout)
              upto == :infinity -> continue(module, mailbox, state, timeout)
              true -> drain(module, mailbox, state, upto, timeout)
            end

          stop ->
            stop
        end
    end
  end

  # Between two batches: if process messages wait (a call, a :sys request,
  # an exit signal...), handle what their senders queued before them, then
  # them, and a wake of ours goes behind them for the rest. A process that
  # queued nothing waits at most one batch. A plain message does not say who
  # sent it, so while one waits, everything queued at that moment comes
  # first (its sender may have cast before sending it).
  defp continue(module, mailbox, state, timeout) do
    case Process.info(self(), :message_queue_len) do
      {:message_queue_len, 0} ->
        drain(module, mailbox, state, :infinity, timeout)

      _ ->
        {:messages, messages} = Process.info(self(), :messages)

        case senders(messages, []) do
          # only wakes, which this drain answers already
          :wakes ->
            drain(module, mailbox, state, :infinity, timeout)

          senders ->
            send(self(), :"$gn_wake")

            case Native.mailbox_watermark(mailbox, senders) do
              :none -> reply(state, timeout)
              upto -> drain(module, mailbox, state, upto, timeout)
            end
        end
    end
  end

  # The senders of waiting messages; :any when one is unknown; :wakes when
  # only wakes wait.
  defp senders([], []), do: :wakes
  defp senders([], acc), do: acc
  defp senders([:"$gn_wake" | rest], acc), do: senders(rest, acc)
  defp senders([{:system, {pid, _}, _} | rest], acc) when is_pid(pid), do: sender(rest, pid, acc)

  defp senders([{:"$gen_call", {pid, _}, _} | rest], acc) when is_pid(pid),
    do: sender(rest, pid, acc)

  defp senders([{:EXIT, pid, _} | rest], acc) when is_pid(pid), do: sender(rest, pid, acc)

  defp senders([{:DOWN, _, :process, pid, _} | rest], acc) when is_pid(pid),
    do: sender(rest, pid, acc)

  # A direct cast was sent when nothing was queued: it comes before all that
  # is queued now, so the drain stops for it (its sender needs no mark).
  defp senders([{:"$gen_cast", _} | rest], acc), do: sender(rest, nil, acc)
  defp senders([_plain | _], _acc), do: :any

  defp sender(rest, pid, acc), do: senders(rest, [pid | acc])

  # A timeout or :hibernate returned by the last request handled applies
  # only if nothing else is handled after it, as in GenServer.
  defp reply(state, nil), do: {:noreply, state}
  defp reply(state, timeout), do: {:noreply, state, timeout}

  # Priority requests come first in a take, wrapped as {:"$gn_high", _};
  # then normal casts, bare. `mode` is {handle_batch/2 exported?,
  # keep_on_crash?}; with keep_on_crash the requests not handled yet are
  # kept in @pending, to go back to the mailbox if a callback crashes.
  defp handle_requests(_module, [], _mode, state, timeout), do: {:cont, state, timeout}

  defp handle_requests(module, [{:"$gn_high", {:call, from, request}} | rest], mode, state, _) do
    track(mode, rest)
    Process.put(@last, {:"$gen_call", from, request})

    case call_result(module, from, run(fn -> module.handle_call(request, from, state) end), state) do
      {:cont, state, timeout} -> handle_requests(module, rest, mode, state, timeout)
      stop -> stop
    end
  end

  defp handle_requests(module, [{:"$gn_call", from, request} | rest], mode, state, _) do
    # a normal call that waited for room under overflow: :block
    handle_requests(module, [{:"$gn_high", {:call, from, request}} | rest], mode, state, nil)
  end

  defp handle_requests(module, [{:"$gn_high", {:cast, request}} | rest], mode, state, _) do
    track(mode, rest)
    Process.put(@last, {:"$gen_cast", request})

    case noreply(module, run(fn -> module.handle_cast(request, state) end), state) do
      {:cont, state, timeout} -> handle_requests(module, rest, mode, state, timeout)
      stop -> stop
    end
  end

  defp handle_requests(module, requests, {true, _} = mode, state, _timeout) do
    {batch, rest} = Enum.split_while(requests, &(not wrapped?(&1)))
    track(mode, rest)
    Process.put(@last, {:"$gen_cast", {:"$gn_batch", batch}})

    case noreply(module, run(fn -> module.handle_batch(batch, state) end), state) do
      {:cont, state, timeout} -> handle_requests(module, rest, mode, state, timeout)
      stop -> stop
    end
  end

  defp handle_requests(module, [request | rest], mode, state, _timeout) do
    track(mode, rest)
    Process.put(@last, {:"$gen_cast", request})

    # the hot path: no closure
    result =
      try do
        module.handle_cast(request, state)
      catch
        :throw, value -> value
      end

    case noreply(module, result, state) do
      {:cont, state, timeout} -> handle_requests(module, rest, mode, state, timeout)
      stop -> stop
    end
  end

  defp track({_, true}, rest), do: Process.put(@pending, rest)
  defp track(_mode, _rest), do: :ok

  # priority requests and queued calls end a batch
  defp wrapped?({:"$gn_high", _}), do: true
  defp wrapped?({:"$gn_call", _, _}), do: true
  defp wrapped?(_), do: false

  # A throw in a callback is taken as its return value, as in gen_server.
  defp run(fun) do
    fun.()
  catch
    :throw, value -> value
  end

  defp call_result(module, from, result, state) do
    case result do
      {:reply, reply, new_state} ->
        :gen.reply(from, reply)
        {:cont, new_state, nil}

      {:reply, reply, new_state, extra} ->
        if valid_extra?(extra) do
          :gen.reply(from, reply)
          noreply(module, {:noreply, new_state, extra}, state)
        else
          {:stop, {:bad_return_value, result}, state}
        end

      {:stop, reason, reply, new_state} ->
        # terminate/2 runs first, then the reply is sent, as in gen_server
        Process.put(@stop_reply, {from, reply})
        {:stop, reason, new_state}

      other ->
        noreply(module, other, state)
    end
  end

  defp noreply(_module, {:noreply, new_state}, _state), do: {:cont, new_state, nil}

  defp noreply(module, {:noreply, new_state, {:continue, arg}}, _state) do
    # {:continue, arg} runs before anything else, so it runs right here.
    noreply(module, run(fn -> module.handle_continue(arg, new_state) end), new_state)
  end

  defp noreply(_module, {:noreply, new_state, extra} = result, state) do
    if valid_extra?(extra),
      do: {:cont, new_state, extra},
      else: {:stop, {:bad_return_value, result}, state}
  end

  defp noreply(_module, {:stop, reason, new_state}, _state), do: {:stop, reason, new_state}
  defp noreply(_module, other, state), do: {:stop, {:bad_return_value, other}, state}

  defp valid_extra?(extra),
    do: extra == :hibernate or extra == :infinity or (is_integer(extra) and extra >= 0)

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
end
