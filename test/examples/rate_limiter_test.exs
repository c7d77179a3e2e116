defmodule GenNative.Examples.RateLimiter do
  @moduledoc """
  A token-bucket rate limiter with one bucket per key. A bucket starts full
  with `:capacity` tokens; each allowed request takes `cost` tokens; every
  `:interval` milliseconds a `:refill` message adds `:refill` tokens to each
  bucket, up to its capacity.

  `interval: :manual` arms no timer: whoever owns the limiter sends it
  `:refill` (tests do this to stay deterministic).
  """
  use GenNative

  ## Client API

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    {args, opts} = Keyword.split(opts, [:capacity, :refill, :interval])
    GenNative.start_link(__MODULE__, args, opts)
  end

  @spec allow(GenServer.server(), term(), pos_integer()) ::
          :ok | {:error, :rate_limited | :cost_exceeds_capacity}
  def allow(server, key, cost \\ 1), do: GenNative.call(server, {:allow, key, cost})

  @spec available(GenServer.server(), term()) :: non_neg_integer()
  def available(server, key), do: GenNative.call(server, {:available, key})

  ## Callbacks

  @impl true
  def init(args) do
    capacity = Keyword.get(args, :capacity, 10)
    refill = Keyword.get(args, :refill, capacity)
    interval = Keyword.get(args, :interval, 1_000)

    cond do
      not pos_integer?(capacity) ->
        {:stop, {:invalid_option, :capacity, capacity}}

      not pos_integer?(refill) ->
        {:stop, {:invalid_option, :refill, refill}}

      not (pos_integer?(interval) or interval == :manual) ->
        {:stop, {:invalid_option, :interval, interval}}

      true ->
        {:ok, schedule(%{capacity: capacity, refill: refill, interval: interval, buckets: %{}})}
    end
  end

  @impl true
  def handle_call({:allow, _key, cost}, _from, %{capacity: capacity} = state)
      when cost > capacity do
    {:reply, {:error, :cost_exceeds_capacity}, state}
  end

  def handle_call({:allow, key, cost}, _from, state) do
    tokens = tokens(state, key)

    if tokens >= cost do
      {:reply, :ok, put_in(state.buckets[key], tokens - cost)}
    else
      {:reply, {:error, :rate_limited}, state}
    end
  end

  def handle_call({:available, key}, _from, state), do: {:reply, tokens(state, key), state}

  @impl true
  def handle_info(:refill, state) do
    # A bucket that is full again is the same as no bucket: drop it, so that
    # keys seen once do not stay in memory for ever.
    buckets =
      for {key, tokens} <- state.buckets,
          tokens = tokens + state.refill,
          tokens < state.capacity,
          into: %{},
          do: {key, tokens}

    {:noreply, schedule(%{state | buckets: buckets})}
  end

  defp tokens(state, key), do: Map.get(state.buckets, key, state.capacity)

  defp schedule(%{interval: :manual} = state), do: state

  defp schedule(state) do
    Process.send_after(self(), :refill, state.interval)
    state
  end

  defp pos_integer?(value), do: is_integer(value) and value > 0
end

defmodule GenNative.Examples.RateLimiterTest do
  use ExUnit.Case, async: true

  import GenNative.TestHelpers

  alias GenNative.Examples.RateLimiter

  setup do
    limiter = start_supervised!({RateLimiter, capacity: 5, refill: 2, interval: :manual})
    %{limiter: limiter}
  end

  defp attempts(limiter, key, n) do
    1..n
    |> Enum.map(fn _ -> RateLimiter.allow(limiter, key) end)
    |> Enum.frequencies()
  end

  defp refill(limiter) do
    send(limiter, :refill)
  end

  describe "allow/3" do
    test "allows a full bucket's worth, then denies", %{limiter: limiter} do
      assert attempts(limiter, "client-a", 8) == %{:ok => 5, {:error, :rate_limited} => 3}
      assert RateLimiter.available(limiter, "client-a") == 0
    end

    test "keeps one bucket per key", %{limiter: limiter} do
      assert attempts(limiter, "client-a", 5) == %{:ok => 5}
      assert RateLimiter.allow(limiter, "client-a") == {:error, :rate_limited}
      assert RateLimiter.allow(limiter, "client-b") == :ok
      assert RateLimiter.available(limiter, "client-b") == 4
    end

    test "takes the cost of a request from the bucket", %{limiter: limiter} do
      assert RateLimiter.allow(limiter, "k", 3) == :ok
      assert RateLimiter.allow(limiter, "k", 3) == {:error, :rate_limited}
      assert RateLimiter.allow(limiter, "k", 2) == :ok
      assert RateLimiter.available(limiter, "k") == 0
    end

    test "refuses a cost no bucket can ever hold", %{limiter: limiter} do
      assert RateLimiter.allow(limiter, "k", 6) == {:error, :cost_exceeds_capacity}
      assert RateLimiter.available(limiter, "k") == 5
    end

    test "allows exactly the capacity to many concurrent clients", %{limiter: limiter} do
      results =
        1..100
        |> Enum.map(fn _ -> Task.async(fn -> RateLimiter.allow(limiter, "shared") end) end)
        |> Task.await_many()
        |> Enum.frequencies()

      assert results == %{:ok => 5, {:error, :rate_limited} => 95}
    end
  end

  describe "refill" do
    test "adds the refill amount to an empty bucket", %{limiter: limiter} do
      attempts(limiter, "k", 5)
      refill(limiter)

      assert attempts(limiter, "k", 4) == %{:ok => 2, {:error, :rate_limited} => 2}
    end

    test "never fills a bucket past its capacity", %{limiter: limiter} do
      :ok = RateLimiter.allow(limiter, "k")
      for _ <- 1..10, do: refill(limiter)

      assert RateLimiter.available(limiter, "k") == 5
      assert attempts(limiter, "k", 6) == %{:ok => 5, {:error, :rate_limited} => 1}
    end

    test "refills every bucket", %{limiter: limiter} do
      attempts(limiter, "a", 5)
      attempts(limiter, "b", 4)
      refill(limiter)

      assert RateLimiter.available(limiter, "a") == 2
      assert RateLimiter.available(limiter, "b") == 3
      assert :sys.get_state(limiter).buckets == %{"a" => 2, "b" => 3}

      refill(limiter)
      refill(limiter)
      # Full buckets are forgotten.
      assert :sys.get_state(limiter).buckets == %{}
    end

    test "is driven by the interval timer unless manual" do
      limiter = start_supervised!({RateLimiter, capacity: 3, refill: 1, interval: 5}, id: :timed)

      # Drain the bucket; the timer may refill it meanwhile, so keep going
      # until a request is denied.
      Stream.repeatedly(fn -> RateLimiter.allow(limiter, "k") end)
      |> Enum.find(&(&1 == {:error, :rate_limited}))

      wait_until(fn -> RateLimiter.available(limiter, "k") > 0 end)
      assert RateLimiter.allow(limiter, "k") == :ok
    end
  end

  describe "start_link/1" do
    test "validates its options" do
      assert GenNative.start(RateLimiter, capacity: 0) ==
               {:error, {:invalid_option, :capacity, 0}}

      assert GenNative.start(RateLimiter, capacity: 1, refill: -1) ==
               {:error, {:invalid_option, :refill, -1}}

      assert GenNative.start(RateLimiter, interval: :never) ==
               {:error, {:invalid_option, :interval, :never}}
    end
  end
end
