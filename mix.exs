defmodule GenNative.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :gen_native,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:gen_native_make] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: [],
      test_coverage: [ignore_modules: []],
      docs: [main: "GenNative"]
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
