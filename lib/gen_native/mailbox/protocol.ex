defmodule GenNative.Mailbox.Protocol do
  @moduledoc """
  The shapes of the messages, queued items and call tags that travel
  between GenNative clients (`GenNative`), the server engine
  (GenNative.Server, in `lib/gen_native/server.ex`) and the native
  mailbox. Internal: not part of the public API.

  Every shape is a macro that expands to a literal, so it costs nothing at
  run time and works in patterns and guards as well as in expressions:

      require GenNative.Mailbox.Protocol, as: Protocol

      send(pid, Protocol.wake())
      def handle_info(Protocol.wake(), state), do: ...
      case item do
        Protocol.high_call(from, request) -> ...
      end

  ## The C side

  `c_src/mailbox.c` builds some of the same shapes and must change with
  this module. Its atoms are made once at load, in `gn_make_atoms()` of
  `c_src/nif.c` (declared in `c_src/gen_native.h`):

    * `wake/0` is the atom `gn_am_wake`, sent by `gn_send()` (a sender
      that queues a request while no wake is on its way), by `gn_signal()`
      (blocked senders admitted into the lanes) and by `gn_take()` (lanes
      refilled by blocked senders while the owner drains);
    * `gen_cast/1` is built by `gn_outbox_flush()` around the stored
      request of a blocked cast that a message-mode mailbox lets in
      (`gn_am_gen_cast`). A normal call handed to the mailbox (kind
      `:call`, after `:busy`) is the `gen_call/2` message itself, which
      `gn_send()` or, once the call's turn comes, `gn_outbox_flush()`
      sends unchanged;
    * `room/2` is built by `gn_waiter_tell()`: `{Tag, Result}` to a blocked
      sender, where `Tag` is the waiter resource the `mailbox_send` NIF
      returned in `{:wait, tag}` and `Result` is `:ok` or `:closed`.

  The priority wrappers (`high_cast/1`, `high_call/2`) are built here only:
  the mailbox keeps them as opaque items in its high lane and hands them
  back unchanged, from the `mailbox_take` NIF or, for a priority call
  evicted under `overflow: :drop_oldest`, in the `{:ok, dropped}` result
  of the `mailbox_send` NIF. (`c_src/nif.c` makes a `gn_am_gn_high` atom
  for `:"$gn_high"`, but no C code uses it.) The init wrapper, the
  mailbox-full reply, the batch marker and the call tags never reach C.
  """

  @doc """
  The message that wakes a server to take what its native mailbox holds:
  the bare atom `:"$gn_wake"`.
  """
  defmacro wake, do: :"$gn_wake"

  @doc """
  A priority cast, as queued in the high lane: `{:"$gn_high", {:cast, request}}`.
  """
  defmacro high_cast(request) do
    quote do: {:"$gn_high", {:cast, unquote(request)}}
  end

  @doc """
  A priority call, as queued in the high lane:
  `{:"$gn_high", {:call, from, request}}`.
  """
  defmacro high_call(from, request) do
    quote do: {:"$gn_high", {:call, unquote(from), unquote(request)}}
  end

  @doc """
  Any item of the high lane (`high_cast/1` or `high_call/2`), whose body
  is `body`: `{:"$gn_high", body}`. In a take, priority items come first,
  wrapped; normal casts follow, bare.
  """
  defmacro high(body) do
    quote do: {:"$gn_high", unquote(body)}
  end

  @doc """
  gen_server's cast message, `{:"$gen_cast", request}`: what an admitted
  message-mode cast travels as, whoever sends it.
  """
  defmacro gen_cast(request) do
    quote do: {:"$gen_cast", unquote(request)}
  end

  @doc """
  gen_server's call message, `{:"$gen_call", from, request}`: what a normal
  call travels as, and what a blocked normal call hands to the mailbox to
  send when its turn comes.
  """
  defmacro gen_call(from, request) do
    quote do: {:"$gen_call", unquote(from), unquote(request)}
  end

  @doc """
  The request a crash report names while a `c:GenNative.handle_batch/2` batch taken
  from the queue is being handled: `{:"$gn_batch", requests}`, inside
  `gen_cast/1`.
  """
  defmacro batch(requests) do
    quote do: {:"$gn_batch", unquote(requests)}
  end

  @doc """
  The answer a blocked sender waits for, `{tag, result}`: `tag` is the
  one the `mailbox_send` NIF returned in `{:wait, tag}`, `result` `:ok`
  (admitted) or `:closed` (the server died first).
  """
  defmacro room(tag, result) do
    quote do: {unquote(tag), unquote(result)}
  end

  @doc """
  The reply that tells the caller of a priority call evicted under
  `overflow: :drop_oldest` to exit with `:mailbox_full`:
  `{:"$gn_mailbox_full", mref}`, where `mref` is the call's monitor (and
  alias).
  """
  defmacro mailbox_full(mref) do
    quote do: {:"$gn_mailbox_full", unquote(mref)}
  end

  @doc """
  The init argument `GenNative.start_link/3` and `GenNative.start/3` give
  `c:GenServer.init/1`: `{:"$gn_init", mailbox_options, name, init_arg}`,
  which the `init/1` that `use GenNative` defines unwraps.
  """
  defmacro init_arg(options, name, arg) do
    quote do: {:"$gn_init", unquote(options), unquote(name), unquote(arg)}
  end

  @doc """
  The tag of a call's `from` without a deadline: gen_server's own shape,
  `[:alias | mref]`.
  """
  defmacro call_tag(mref) do
    quote do: [:alias | unquote(mref)]
  end

  @doc """
  The tag of a call's `from` carrying the caller's deadline (monotonic
  time, native units), which a server with `drop_expired_calls: true`
  checks: `[[:alias | mref] | deadline]`. `:gen.reply/2` answers it as it
  answers `call_tag/1`.
  """
  defmacro call_tag(mref, deadline) do
    quote do: [[:alias | unquote(mref)] | unquote(deadline)]
  end
end
