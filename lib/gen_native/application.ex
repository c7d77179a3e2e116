defmodule GenNative.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    children = [GenNative.Janitor, GenNative.Store.Sweeper]
    Supervisor.start_link(children, strategy: :one_for_one, name: GenNative.Supervisor)
  end
end
