defmodule GenNative.PropCheck do
  @moduledoc """
  Runs a PropEr property inside an ExUnit test: PropEr's progress dots stay
  quiet, its failure report goes to the console, and a failure flunks the
  test with the shrunk counterexample.
  """

  @doc """
  Runs `property`. Options: `:numtests`, `:max_size`, and `:format`, a
  function that renders the counterexample (default `inspect/2`).
  """
  def check(property, opts) do
    result =
      :proper.quickcheck(property, [
        {:numtests, Keyword.fetch!(opts, :numtests)},
        {:max_size, Keyword.fetch!(opts, :max_size)},
        {:on_output, &output/2}
      ])

    if result != true do
      format = Keyword.get(opts, :format, &inspect(&1, pretty: true, limit: :infinity))

      ExUnit.Assertions.flunk("""
      property failed; shrunk counterexample:
      #{format.(:proper.counterexample())}
      """)
    end
  end

  defp output(~c".", _args), do: :ok
  defp output(format, args), do: IO.write(:io_lib.format(format, args))
end
