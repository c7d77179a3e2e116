defmodule GenNative.Server do
  # The engine that runs inside every GenNative server process.
  #
  # A GenNative server is a plain :gen_server whose callback module is the
  # user's module; `use GenNative` wraps that module's init/1, handle_cast/2
  # and handle_info/2 so that they call in here. Everything :gen_server does
  # (names, start options, calls, :sys, hibernation, timeouts, crash reports,
  # supervision) therefore stays exactly GenServer's.
  #
  # What this module adds is the native mailbox (c_src/mailbox.c). In
  # message mode (the default) a cast is admitted by the mailbox and then
  # travels as the ordinary {:"$gen_cast", request} message, so the order of
  # everything the server handles is the VM's, as for a GenServer; the
  # wrappers only tell the mailbox a cast was handled. In queue mode
  # (drop_oldest, keep_on_crash, batches) casts wait in the C queue and the
  # sender of the first one wakes us with :"$gn_wake"; on a wake we take
  # casts out in batches until the queue is empty, but if process messages
  # are waiting, only up to what is queued at that moment, with a wake of our
  # own behind them for the rest (see drain/5).
  #
  # Priority requests wait in the mailbox's high lane in both modes. Before
  # any process message is handled, the wrappers ask the mailbox whether
  # priority requests wait and handle those first; a wake covers an idle
  # server.
  #
  # Calls are ordinary gen_server calls: a caller waits for its reply, so a
  # call costs a message each way whatever carries it. With
  # drop_expired_calls, GenNative.call puts the caller's deadline in the tag
  # of `from`, and a call whose deadline has passed is not handled.
  @moduledoc false

  alias GenNative.Native

  # the shapes of what travels between clients, the mailbox and this module
  require GenNative.Mailbox.Protocol, as: Protocol

  # {mailbox, batch_size, mode}, where mode is {queue?, handle_batch/2
  # exported?, keep_on_crash?, drop_expired_calls?}; {:running, _} while
  # this module runs callbacks itself, so that the wrappers `use GenNative`
  # puts around handle_cast/2 and handle_call/3 step aside; nil when init/1
  # ran outside a server
  @gn :"$gn"
  # keep_on_crash: how many requests taken out the callback running now
  # handles, to ack once it returns (or raises)
  @pending :"$gn_pending"
  # {from, reply} of a priority call that returned {:stop, r, reply, s}
  @stop_reply :"$gn_stop_reply"
  # while a request taken from the native mailbox is being handled: that
  # request, shaped as GenServer would have received it ({:"$gen_cast", r}
  # or {:"$gen_call", from, r}), for crash reports
  @last :"$gn_last_message"

  @doc false
  # init/1 wrapper: sets up the mailbox; returns the user's init argument.
  # GenNative.start_link/3 wraps the argument with the per-server options
  # and name; a server started some other way (GenServer.start_link/3) gets
  # the module's `use GenNative, mailbox: ...` options.
  @spec init_mailbox(module(), term()) :: term()
  def init_mailbox(module, Protocol.init_arg(opts, name, arg)) do
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
         nil <- Process.get(@gn) do
      batch? = function_exported?(module, :handle_batch, 2)
      mode = mode(opts, batch?)
      Process.put(@gn, {open_mailbox(module, opts, name, mode), opts[:batch_size], mode})
    end
  end

  @doc false
  # Queue mode: casts wait in the native queue, for what only a queue can
  # do: evict the oldest (drop_oldest), outlive the process
  # (keep_on_crash), hand out batches. Otherwise casts are process
  # messages, counted by the native mailbox.
  def mode(opts, batch?) do
    queue? =
      opts[:overflow] == :drop_oldest or opts[:keep_on_crash] or
        (batch? and opts[:batch_size] > 1)

    {queue?, batch?, opts[:keep_on_crash], opts[:drop_expired_calls]}
  end

  defp open_mailbox(module, opts, name, {queue?, _batch?, keep?, expire?}) do
    capacity = opts[:capacity]
    overflow = opts[:overflow]
    flags = for {flag, true} <- [queue: queue?, keep: keep?, expire: expire?], do: flag

    if keep? do
      if name == nil do
        raise ArgumentError, "mailbox option keep_on_crash: true requires a registered :name"
      end

      ref =
        case GenNative.Janitor.adopt(name, module) do
          {:ok, ref} -> adopt(ref)
          :none -> Native.mailbox_new(capacity, overflow, flags)
        end

      GenNative.Janitor.keep(name, module, ref)
      ref
    else
      Native.mailbox_new(capacity, overflow, flags)
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
        send(self(), Protocol.wake())
        ref
    end
  end

  @doc false
  # Before handle_cast/2 runs for a {:"$gen_cast", _} message: the mailbox
  # counts the cast as handled, and priority requests waiting are handled
  # first. Returns {:cont, state} or a stop.
  def before_cast(module, state) do
    case Process.get(@gn) do
      {mailbox, _, _} = gn ->
        case Native.mailbox_ack(mailbox, :cast) do
          :ok -> {:cont, state}
          :high -> run_high(module, gn, state)
        end

      _not_a_server_or_running ->
        {:cont, state}
    end
  end

  @doc false
  # Before handle_info/2 runs for any other message: priority requests
  # waiting are handled first.
  def before_info(module, state) do
    case Process.get(@gn) do
      {mailbox, _, _} = gn ->
        if Native.mailbox_high(mailbox), do: run_high(module, gn, state), else: {:cont, state}

      _not_a_server_or_running ->
        {:cont, state}
    end
  end

  @doc false
  # Before handle_call/3: as before_info/2, and with drop_expired_calls a
  # call whose caller gave up is skipped ({:skip, state}).
  def before_call(module, from, state) do
    case Process.get(@gn) do
      {mailbox, _, {_, _, _, expire?}} = gn ->
        if expire? and expired?(from) do
          case Native.mailbox_ack(mailbox, :expired) do
            :ok -> {:skip, state}
            :high -> with {:cont, state} <- run_high(module, gn, state), do: {:skip, state}
          end
        else
          if Native.mailbox_high(mailbox), do: run_high(module, gn, state), else: {:cont, state}
        end

      _not_a_server_or_running ->
        {:cont, state}
    end
  end

  # GenNative.call/3,4 puts the caller's deadline in the tag of `from`.
  defp expired?({_pid, Protocol.call_tag(_, deadline)}) when is_integer(deadline),
    do: :erlang.monotonic_time() >= deadline

  defp expired?(_from), do: false

  # Priority requests overtake the process message about to be handled.
  defp run_high(module, {mailbox, batch_size, mode} = gn, state) do
    Process.put(@gn, {:running, gn})
    ctx = {module, mailbox, mode}
    result = keeping(ctx, fn -> take_high(ctx, batch_size, state) end)
    Process.put(@gn, gn)
    result
  end

  defp take_high({_, mailbox, _} = ctx, batch_size, state) do
    {requests, more?} = taken(Native.mailbox_take(mailbox, batch_size, :high, false), batch_size)

    case requests do
      [] ->
        {:cont, state}

      requests ->
        case handle_requests(ctx, requests, state, nil) do
          {:cont, state, _} when more? -> take_high(ctx, batch_size, state)
          # a short take emptied the lane
          {:cont, state, _} -> {:cont, state}
          stop -> stop
        end
    end
  end

  # What a take returned, and whether there may be more to take: a short
  # list means the lanes were emptied (or `upto` reached); {:more, list}, a
  # take cut short by large requests, that there is more.
  defp taken({:more, requests}, _batch_size), do: {requests, true}
  defp taken(requests, batch_size), do: {requests, length(requests) == batch_size}

  @doc false
  # handle_info(:"$gn_wake", state): priority requests and, in queue mode,
  # queued casts.
  def handle_wake(module, state) do
    case Process.get(@gn) do
      {mailbox, batch_size, mode} = gn ->
        Process.put(@gn, {:running, gn})
        ctx = {module, mailbox, mode}

        result = keeping(ctx, fn -> drain(ctx, batch_size, state, :infinity, nil) end)

        Process.put(@gn, gn)
        result

      _ ->
        {:noreply, state}
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

  # Runs `take` (a drain or a take of priority requests) and finishes it.
  # With keep_on_crash, the mailbox holds what the server took out until
  # the server acks it as handled (see handled/1), and gives what was not
  # back to the next server when this one exits, however it exits: a
  # request whose callback raised counts as handled, as one that stopped
  # the server does.
  defp keeping({_, mailbox, {_, _, true, _}}, take) do
    result =
      try do
        take.()
      catch
        kind, reason ->
          ack_pending(mailbox)
          :erlang.raise(kind, reason, __STACKTRACE__)
      end

    finish(result)
  end

  defp keeping(_ctx, take), do: finish(take.())

  @doc false
  # format_status/1: a crash report names the request taken from the
  # native mailbox that was being handled, not our wake message.
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

  # On a wake: priority requests, then (queue mode) queued casts, in
  # batches. Between two batches, if process messages wait (a call, a :sys
  # request, an exit signal, anything), we go on only up to what is queued
  # at that moment, since their senders may have queued it before sending
  # them, then return to them with a wake of ours behind them for the rest.
  # `upto` is :infinity, :high (priority requests only) or the sequence
  # number of the last normal request to take.
  defp drain({_, mailbox, _} = ctx, batch_size, state, upto, timeout) do
    {requests, more?} = taken(Native.mailbox_take(mailbox, batch_size, upto, true), batch_size)

    case requests do
      [] ->
        reply(state, timeout)

      requests ->
        case handle_requests(ctx, requests, state, timeout) do
          {:cont, state, timeout} ->
            cond do
              # a short take emptied the lanes or reached `upto`
              not more? -> reply(state, timeout)
              upto == :infinity -> continue(ctx, batch_size, state, timeout)
              true -> drain(ctx, batch_size, state, upto, timeout)
            end

          stop ->
            stop
        end
    end
  end

  defp continue({_, mailbox, _} = ctx, batch_size, state, timeout) do
    case Process.info(self(), :message_queue_len) do
      {:message_queue_len, 0} ->
        drain(ctx, batch_size, state, :infinity, timeout)

      _ ->
        send(self(), Protocol.wake())

        case Native.mailbox_watermark(mailbox) do
          :none -> drain(ctx, batch_size, state, :high, timeout)
          upto -> drain(ctx, batch_size, state, upto, timeout)
        end
    end
  end

  # A timeout or :hibernate returned by the last request handled applies
  # only if nothing else is handled after it, as in GenServer.
  defp reply(state, nil), do: {:noreply, state}
  defp reply(state, timeout), do: {:noreply, state, timeout}

  # Priority requests come first in a take, wrapped as {:"$gn_high", _};
  # then normal casts, bare. `mode` is {queue?, handle_batch/2 exported?,
  # keep_on_crash?, drop_expired_calls?}; with keep_on_crash each request
  # is acked once its callback has returned (track/2, handled/1), so that
  # if the server is killed, only the one being handled is given to the
  # next server again.
  defp handle_requests(_ctx, [], state, timeout), do: {:cont, state, timeout}

  defp handle_requests(ctx, [Protocol.high_call(from, request) | rest], state, timeout) do
    {module, mailbox, {_, _, _, expire?} = mode} = ctx
    track(mode, 1)

    if expire? and expired?(from) do
      Native.mailbox_ack(mailbox, :expired)
      handled(ctx)
      handle_requests(ctx, rest, state, timeout)
    else
      Process.put(@last, Protocol.gen_call(from, request))
      result = run(fn -> module.handle_call(request, from, state) end)
      handled(ctx)

      case call_result(module, from, result, state) do
        {:cont, state, timeout} -> handle_requests(ctx, rest, state, timeout)
        stop -> stop
      end
    end
  end

  defp handle_requests(ctx, [Protocol.high_cast(request) | rest], state, _) do
    {module, _, {_, batch?, _, _} = mode} = ctx
    track(mode, 1)
    Process.put(@last, Protocol.gen_cast(request))

    result =
      if batch?,
        do: run(fn -> module.handle_batch([request], state) end),
        else: run(fn -> module.handle_cast(request, state) end)

    handled(ctx)

    case noreply(module, result, state) do
      {:cont, state, timeout} -> handle_requests(ctx, rest, state, timeout)
      stop -> stop
    end
  end

  defp handle_requests({module, _, {_, true, _, _} = mode} = ctx, requests, state, _timeout) do
    {batch, rest} = Enum.split_while(requests, &(not wrapped?(&1)))
    track(mode, length(batch))
    Process.put(@last, Protocol.gen_cast(Protocol.batch(batch)))
    result = run(fn -> module.handle_batch(batch, state) end)
    handled(ctx)

    case noreply(module, result, state) do
      {:cont, state, timeout} -> handle_requests(ctx, rest, state, timeout)
      stop -> stop
    end
  end

  defp handle_requests({module, _, mode} = ctx, [request | rest], state, _timeout) do
    track(mode, 1)
    Process.put(@last, Protocol.gen_cast(request))

    # the hot path: no closure
    result =
      try do
        module.handle_cast(request, state)
      catch
        :throw, value -> value
      end

    handled(ctx)

    case noreply(module, result, state) do
      {:cont, state, timeout} -> handle_requests(ctx, rest, state, timeout)
      stop -> stop
    end
  end

  # keep_on_crash: the callback about to run handles `n` requests taken out
  defp track({_, _, true, _}, n), do: Process.put(@pending, n)
  defp track(_mode, _n), do: :ok

  # keep_on_crash: they are handled (the callback returned, or raised)
  defp handled({_, mailbox, {_, _, true, _}}), do: ack_pending(mailbox)
  defp handled(_ctx), do: :ok

  defp ack_pending(mailbox) do
    case Process.put(@pending, 0) do
      n when is_integer(n) and n > 0 -> Native.mailbox_ack(mailbox, n)
      _ -> :ok
    end
  end

  # priority requests end a batch
  defp wrapped?(Protocol.high(_)), do: true
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
