defmodule GenNative.Examples.Session do
  @moduledoc """
  A user session that ends itself after `:idle_timeout` milliseconds without
  a request: every callback returns the timeout, and `handle_info(:timeout, _)`
  stops the server with `:normal`.
  """
  use GenNative, restart: :transient

  ## Client API

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    {args, opts} = Keyword.split(opts, [:user, :idle_timeout])
    GenNative.start_link(__MODULE__, args, opts)
  end

  @spec put(GenServer.server(), term(), term()) :: :ok
  def put(server, key, value), do: GenNative.call(server, {:put, key, value})

  @spec get(GenServer.server(), term()) :: term()
  def get(server, key), do: GenNative.call(server, {:get, key})

  @spec touch(GenServer.server()) :: :ok
  def touch(server), do: GenNative.cast(server, :touch)

  ## Callbacks

  @impl true
  def init(args) do
    state = %{
      user: Keyword.fetch!(args, :user),
      idle_timeout: Keyword.fetch!(args, :idle_timeout),
      data: %{}
    }

    {:ok, state, state.idle_timeout}
  end

  @impl true
  def handle_call({:put, key, value}, _from, state) do
    {:reply, :ok, put_in(state.data[key], value), state.idle_timeout}
  end

  def handle_call({:get, key}, _from, state) do
    {:reply, Map.get(state.data, key), state, state.idle_timeout}
  end

  @impl true
  def handle_cast(:touch, state), do: {:noreply, state, state.idle_timeout}

  @impl true
  def handle_info(:timeout, state), do: {:stop, :normal, state}
end

defmodule GenNative.Examples.Catalog do
  @moduledoc """
  A rarely used, read-mostly lookup table. After each request it hibernates,
  so between requests it holds no more memory than its state needs.
  """
  use GenNative

  ## Client API

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    {entries, opts} = Keyword.pop(opts, :entries, %{})
    GenNative.start_link(__MODULE__, entries, opts)
  end

  @spec lookup(GenServer.server(), term()) :: {:ok, term()} | :error
  def lookup(server, key), do: GenNative.call(server, {:lookup, key})

  @spec put(GenServer.server(), term(), term()) :: :ok
  def put(server, key, value), do: GenNative.cast(server, {:put, key, value})

  ## Callbacks

  @impl true
  def init(entries), do: {:ok, Map.new(entries), :hibernate}

  @impl true
  def handle_call({:lookup, key}, _from, entries) do
    {:reply, Map.fetch(entries, key), entries, :hibernate}
  end

  @impl true
  def handle_cast({:put, key, value}, entries) do
    {:noreply, Map.put(entries, key, value), :hibernate}
  end
end

defmodule GenNative.Examples.IdleAndHibernateTest do
  use ExUnit.Case, async: true

  alias GenNative.Examples.{Catalog, Session}

  @hibernating {:current_function, {:erlang, :hibernate, 3}}

  # The server replies first and hibernates after, so the caller has to wait
  # for it to get there.
  defp wait_until_hibernating(pid) do
    case Process.info(pid, :current_function) do
      @hibernating ->
        :ok

      _ ->
        Process.sleep(1)
        wait_until_hibernating(pid)
    end
  end

  describe "Session idle timeout" do
    test "a session stops itself with :normal once idle" do
      {:ok, pid} = Session.start_link(user: "ada", idle_timeout: 20)
      ref = Process.monitor(pid)

      :ok = Session.put(pid, :cart, [:book])
      assert Session.get(pid, :cart) == [:book]

      assert_receive {:DOWN, ^ref, :process, ^pid, :normal}, 1_000
    end

    test "requests keep an active session alive" do
      # A timeout this long never fires during the test; only the requests
      # below decide whether the session is still there.
      {:ok, pid} = Session.start_link(user: "ada", idle_timeout: 60_000)

      for n <- 1..50 do
        Session.touch(pid)
        :ok = Session.put(pid, :n, n)
      end

      assert Session.get(pid, :n) == 50
      assert Process.alive?(pid)
    end

    test "is not restarted by its supervisor after an idle stop" do
      pid = start_supervised!({Session, user: "ada", idle_timeout: 10})
      ref = Process.monitor(pid)

      assert_receive {:DOWN, ^ref, :process, ^pid, :normal}, 1_000
      {:ok, sup} = ExUnit.fetch_test_supervisor()
      assert [{Session, :undefined, :worker, [Session]}] = Supervisor.which_children(sup)
    end
  end

  describe "Catalog hibernation" do
    test "hibernates right after init/1" do
      {:ok, pid} = Catalog.start_link(entries: %{a: 1})
      wait_until_hibernating(pid)
      assert Process.info(pid, :current_function) == @hibernating
    end

    test "hibernates after every request and keeps its state" do
      {:ok, pid} = Catalog.start_link(entries: %{a: 1})

      assert Catalog.lookup(pid, :a) == {:ok, 1}
      wait_until_hibernating(pid)
      assert Process.info(pid, :current_function) == @hibernating

      :ok = Catalog.put(pid, :b, 2)
      assert Catalog.lookup(pid, :b) == {:ok, 2}
      assert Catalog.lookup(pid, :c) == :error
      wait_until_hibernating(pid)
      assert Process.info(pid, :current_function) == @hibernating
      assert :sys.get_state(pid) == %{a: 1, b: 2}
    end

    test "a cast wakes a hibernating server, which goes back to sleep" do
      {:ok, pid} = Catalog.start_link(entries: %{})
      wait_until_hibernating(pid)

      :ok = Catalog.put(pid, :k, :v)
      assert Catalog.lookup(pid, :k) == {:ok, :v}
      wait_until_hibernating(pid)
    end
  end

  describe "hibernate_after start option" do
    test "an idle server that never asks to hibernate is hibernated" do
      {:ok, pid} =
        GenNative.start_link(Session, [user: "ada", idle_timeout: :infinity], hibernate_after: 10)

      :ok = Session.put(pid, :k, :v)
      wait_until_hibernating(pid)
      assert Process.info(pid, :current_function) == @hibernating
      assert Session.get(pid, :k) == :v
    end
  end
end
