defmodule GenNative.StoreNifTest do
  # GenNative.StoreSuite (test/support/store_suite.ex) on the :nif backend:
  # stores in the VM.
  use ExUnit.Case, async: true
  use GenNative.StoreSuite, backend: :nif
end
