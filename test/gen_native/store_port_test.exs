defmodule GenNative.StorePortTest do
  # GenNative.StoreSuite (test/support/store_suite.ex) on the port backend:
  # stores in a gen_native_port program (in memory), started for this module.
  use ExUnit.Case, async: true

  @moduletag :port

  use GenNative.StoreSuite, backend: :port
end
