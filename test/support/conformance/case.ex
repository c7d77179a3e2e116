defmodule Conformance.Case do
  @moduledoc false
  # `use Conformance.Case, async: true` in every conformance test module.
  use ExUnit.CaseTemplate

  using do
    quote do
      import Conformance
      alias Conformance.{Defaults, Recorder, Scripted}
    end
  end
end
