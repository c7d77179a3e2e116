defmodule Conformance.Case do
  @moduledoc false
  # `use Conformance.Case, async: true` in every conformance test module.
  use ExUnit.CaseTemplate

  using do
    quote do
      import Conformance
      alias Conformance.{Defaults, Recorder, Scripted}

      # a node name that is never up
      @absent :"conf_absent@127.0.0.1"
    end
  end
end
