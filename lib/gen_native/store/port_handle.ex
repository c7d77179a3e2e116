defmodule GenNative.Store.PortHandle do
  @moduledoc """
  The handle of a store held by a port program (see `GenNative.Port`):
  the name of the `GenNative.Port` and the store's name. Made by
  `GenNative.Store.new/2` and `GenNative.Store.restore/2` with
  `backend: {:port, port_name}`; any process may use it, and a copy (even
  one that went through `:erlang.term_to_binary/1`) names the same store.
  """
  @enforce_keys [:port, :name]
  defstruct [:port, :name]

  @type t :: %__MODULE__{port: atom(), name: atom()}
end
