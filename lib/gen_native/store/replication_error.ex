defmodule GenNative.Store.ReplicationError do
  @moduledoc """
  Raised by a read (`get/3`, `fetch/2`, `size/1`, `to_list/1`, ...) on a
  store of a replicated `GenNative.Port` when the member cannot serve it
  (writes return `{:error, {reason, detail}}` instead):

    * `reason: :not_leader` - with linearizable reads (the default), only
      the leader serves reads; `detail` is the leader as `{id, address}`,
      or `nil` when this member does not know one (an election is under
      way, or it is cut off from the majority).
    * `reason: :leadership_lost` - the member lost the leadership while the
      read waited; `detail` as above.
    * `reason: :raft` - libraft refused the request; `detail` says why.
    * `reason: :removed_member` - the member was removed from its group
      (writes return `{:error, :removed_member}`).

  See guides/replication.md.
  """
  defexception [:reason, :detail, :store]

  @impl true
  def message(%{reason: reason, detail: detail, store: store}) do
    "#{inspect(store)}: the member cannot serve this read (#{reason}, #{inspect(detail)})"
  end
end
