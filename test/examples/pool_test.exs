defmodule GenNative.Examples.Pool do
  @moduledoc """
  A pool of `:size` workers under one `Supervisor`.

  The first child is the `Pool.Manager`, registered under the pool's name,
  which hands workers out (`checkout/2`) and takes them back (`checkin/2`).
  The workers follow; each registers with the manager from its `init/1`, so
  a worker restarted by the supervisor rejoins the pool by itself. The
  strategy is `:rest_for_one`: if the manager dies, the workers are restarted
  and register with the new one.
  """
  use Supervisor

  alias GenNative.Examples.Pool.{Manager, Worker}

  @spec start_link(keyword()) :: Supervisor.on_start()
  def start_link(opts) do
    name = Keyword.fetch!(opts, :name)
    size = Keyword.fetch!(opts, :size)
    Supervisor.start_link(__MODULE__, {name, size})
  end

  @impl true
  def init({name, size}) do
    workers =
      for index <- 1..size do
        Supervisor.child_spec({Worker, manager: name, index: index}, id: {Worker, index})
      end

    Supervisor.init([{Manager, name: name} | workers], strategy: :rest_for_one)
  end

  @doc """
  Checks a worker out, runs `fun` with it and checks it back in, also when
  `fun` raises or exits.
  """
  @spec transaction(atom(), (pid() -> result), timeout()) :: result when result: term()
  def transaction(pool, fun, timeout \\ 5_000) do
    worker = Manager.checkout(pool, true, timeout)

    try do
      fun.(worker)
    after
      Manager.checkin(pool, worker)
    end
  end
end

defmodule GenNative.Examples.Pool.Manager do
  @moduledoc """
  Keeps the idle workers, the checked-out workers with the client holding
  each, and the clients waiting for a worker.

  A waiting client's `checkout/3` is answered later with `GenNative.reply/2`.
  The manager monitors workers and clients: a dead worker leaves the pool
  (its supervisor restarts it), and a dead client's worker comes back.
  """
  use GenNative

  ## Client API

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts),
    do: GenNative.start_link(__MODULE__, :ok, name: Keyword.fetch!(opts, :name))

  @doc """
  Returns an idle worker. With `block` true, waits up to `timeout` for one;
  with `block` false, returns `{:error, :full}` at once when none is idle.
  """
  @spec checkout(GenServer.server(), boolean(), timeout()) :: pid() | {:error, :full}
  def checkout(pool, block \\ true, timeout \\ 5_000) do
    ref = make_ref()

    try do
      GenNative.call(pool, {:checkout, ref, block}, timeout)
    catch
      :exit, reason ->
        # The manager may still answer later; make sure it gives nothing to
        # a caller that stopped waiting.
        GenNative.cast(pool, {:cancel, self(), ref})
        exit(reason)
    end
  end

  @spec checkin(GenServer.server(), pid()) :: :ok
  def checkin(pool, worker), do: GenNative.cast(pool, {:checkin, worker})

  @doc "Used by a worker's `init/1`."
  @spec register(GenServer.server(), pid()) :: :ok
  def register(pool, worker), do: GenNative.call(pool, {:register, worker})

  @spec status(GenServer.server()) :: %{
          idle: [pid()],
          busy: [pid()],
          waiting: non_neg_integer()
        }
  def status(pool), do: GenNative.call(pool, :status)

  ## Callbacks

  @impl true
  def init(:ok) do
    # busy: worker => {client, ref, client_monitor}
    # workers: worker => monitor
    {:ok, %{idle: [], busy: %{}, waiting: :queue.new(), workers: %{}}}
  end

  @impl true
  def handle_call({:register, worker}, _from, state) do
    state = put_in(state.workers[worker], Process.monitor(worker))
    {:reply, :ok, release(state, worker)}
  end

  def handle_call({:checkout, ref, block}, {client, _} = from, state) do
    case state.idle do
      [worker | idle] ->
        {:reply, worker, give(%{state | idle: idle}, worker, client, ref)}

      [] when block ->
        monitor = Process.monitor(client)
        {:noreply, %{state | waiting: :queue.in({from, ref, monitor}, state.waiting)}}

      [] ->
        {:reply, {:error, :full}, state}
    end
  end

  def handle_call(:status, _from, state) do
    status = %{
      idle: Enum.sort(state.idle),
      busy: state.busy |> Map.keys() |> Enum.sort(),
      waiting: :queue.len(state.waiting)
    }

    {:reply, status, state}
  end

  @impl true
  def handle_cast({:checkin, worker}, state) do
    case Map.pop(state.busy, worker) do
      {{_client, _ref, monitor}, busy} ->
        Process.demonitor(monitor, [:flush])
        {:noreply, release(%{state | busy: busy}, worker)}

      {nil, _} ->
        {:noreply, state}
    end
  end

  def handle_cast({:cancel, client, ref}, state) do
    waiting =
      :queue.filter(
        fn
          {{^client, _}, ^ref, monitor} -> Process.demonitor(monitor, [:flush]) && false
          _ -> true
        end,
        state.waiting
      )

    # If the worker was handed over just as the client gave up, take it back.
    case Enum.find(state.busy, fn {_w, {c, r, _m}} -> c == client and r == ref end) do
      {worker, _} -> handle_cast({:checkin, worker}, %{state | waiting: waiting})
      nil -> {:noreply, %{state | waiting: waiting}}
    end
  end

  @impl true
  def handle_info({:DOWN, monitor, :process, pid, _reason}, state) do
    cond do
      Map.get(state.workers, pid) == monitor ->
        # Gone for good; the supervisor starts a new worker, which registers.
        {client, busy} = Map.pop(state.busy, pid)

        with {_client, _ref, client_monitor} <- client,
             do: Process.demonitor(client_monitor, [:flush])

        {:noreply,
         %{
           state
           | workers: Map.delete(state.workers, pid),
             idle: List.delete(state.idle, pid),
             busy: busy
         }}

      worker = Enum.find_value(state.busy, fn {w, {_c, _r, m}} -> m == monitor && w end) ->
        # A client died holding a worker.
        {:noreply, release(%{state | busy: Map.delete(state.busy, worker)}, worker)}

      true ->
        waiting = :queue.filter(fn {_from, _ref, m} -> m != monitor end, state.waiting)
        {:noreply, %{state | waiting: waiting}}
    end
  end

  # Hands an idle worker to the next waiting client, or makes it idle.
  defp release(state, worker) do
    case :queue.out(state.waiting) do
      {{:value, {{client, _} = from, ref, monitor}}, waiting} ->
        Process.demonitor(monitor, [:flush])
        GenNative.reply(from, worker)
        give(%{state | waiting: waiting}, worker, client, ref)

      {:empty, _} ->
        %{state | idle: state.idle ++ [worker]}
    end
  end

  defp give(state, worker, client, ref) do
    put_in(state.busy[worker], {client, ref, Process.monitor(client)})
  end
end

defmodule GenNative.Examples.Pool.Worker do
  @moduledoc """
  A pool worker: runs jobs (zero-arity functions) one at a time and counts
  them. It registers with its pool's manager on start.
  """
  use GenNative

  ## Client API

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts), do: GenNative.start_link(__MODULE__, opts)

  @spec run(GenServer.server(), (() -> result), timeout()) :: result when result: term()
  def run(worker, job, timeout \\ 5_000), do: GenNative.call(worker, {:run, job}, timeout)

  @spec info(GenServer.server()) :: %{index: pos_integer(), jobs: non_neg_integer()}
  def info(worker), do: GenNative.call(worker, :info)

  ## Callbacks

  @impl true
  def init(opts) do
    :ok = GenNative.Examples.Pool.Manager.register(Keyword.fetch!(opts, :manager), self())
    {:ok, %{index: Keyword.fetch!(opts, :index), jobs: 0}}
  end

  @impl true
  def handle_call({:run, job}, _from, state) do
    {:reply, job.(), %{state | jobs: state.jobs + 1}}
  end

  def handle_call(:info, _from, state), do: {:reply, state, state}
end

defmodule GenNative.Examples.PoolTest do
  use ExUnit.Case, async: true

  import GenNative.TestHelpers

  alias GenNative.Examples.Pool
  alias GenNative.Examples.Pool.{Manager, Worker}

  @size 3

  setup %{test: test} do
    pool = :"#{inspect(__MODULE__)}.#{test}"
    sup = start_supervised!({Pool, name: pool, size: @size})
    %{pool: pool, sup: sup}
  end

  defp worker_pids(sup) do
    for {{Worker, _}, pid, :worker, _} <- Supervisor.which_children(sup), do: pid
  end

  describe "startup" do
    test "every worker is registered and idle", %{pool: pool, sup: sup} do
      workers = worker_pids(sup)
      assert length(workers) == @size
      assert Manager.status(pool) == %{idle: Enum.sort(workers), busy: [], waiting: 0}

      indexes = for w <- workers, do: Worker.info(w).index
      assert Enum.sort(indexes) == Enum.to_list(1..@size)
    end
  end

  describe "checkout/3 and checkin/2" do
    test "hands out each worker once, then reports the pool full", %{pool: pool, sup: sup} do
      taken = for _ <- 1..@size, do: Manager.checkout(pool)
      assert Enum.sort(taken) == Enum.sort(worker_pids(sup))

      assert Manager.checkout(pool, false) == {:error, :full}
      assert %{idle: [], busy: busy} = Manager.status(pool)
      assert busy == Enum.sort(taken)

      :ok = Manager.checkin(pool, hd(taken))
      assert Manager.checkout(pool, false) == hd(taken)
    end

    test "a blocked checkout is served when a worker comes back", %{pool: pool} do
      taken = for _ <- 1..@size, do: Manager.checkout(pool)
      waiter = Task.async(fn -> Manager.checkout(pool) end)

      wait_until(fn -> Manager.status(pool).waiting == 1 end)
      :ok = Manager.checkin(pool, List.last(taken))

      assert Task.await(waiter) == List.last(taken)
    end

    test "a checkout that times out leaves nothing behind", %{pool: pool} do
      taken = for _ <- 1..@size, do: Manager.checkout(pool)

      assert {:timeout, {GenNative, :call, [^pool, {:checkout, _, true}, 10]}} =
               catch_exit(Manager.checkout(pool, true, 10))

      # The cancel cast went out before the exit, so the manager has seen it.
      assert Manager.status(pool).waiting == 0
      :ok = Manager.checkin(pool, hd(taken))
      assert %{idle: [_]} = Manager.status(pool)
    end

    test "the worker of a client that dies comes back", %{pool: pool} do
      test = self()

      client =
        spawn(fn ->
          send(test, {:holding, Manager.checkout(pool)})
          Process.sleep(:infinity)
        end)

      assert_receive {:holding, worker}
      Process.exit(client, :kill)

      wait_until(fn -> worker in Manager.status(pool).idle end)
    end
  end

  describe "supervision" do
    test "a crashed worker is restarted and rejoins the pool", %{pool: pool, sup: sup} do
      [victim | _] = worker_pids(sup)
      ref = Process.monitor(victim)

      Process.exit(victim, :kill)
      assert_receive {:DOWN, ^ref, :process, ^victim, :killed}

      wait_until(fn ->
        %{idle: idle} = Manager.status(pool)
        length(idle) == @size and victim not in idle
      end)

      assert Enum.sort(worker_pids(sup)) == Manager.status(pool).idle
    end

    @tag :capture_log
    test "a job that raises crashes its worker, which is replaced", %{pool: pool, sup: sup} do
      worker = Manager.checkout(pool)
      ref = Process.monitor(worker)

      assert {{%RuntimeError{message: "bad job"}, _}, {GenNative, :call, _}} =
               catch_exit(Worker.run(worker, fn -> raise "bad job" end))

      assert_receive {:DOWN, ^ref, :process, ^worker, {%RuntimeError{}, _}}

      wait_until(fn -> length(Manager.status(pool).idle) == @size end)
      refute worker in worker_pids(sup)
    end

    test "the workers re-register with a restarted manager", %{pool: pool, sup: sup} do
      old_manager = GenNative.whereis(pool)
      old_workers = worker_pids(sup)
      ref = Process.monitor(old_manager)

      Process.exit(old_manager, :kill)
      assert_receive {:DOWN, ^ref, :process, _, :killed}

      wait_until(fn ->
        manager = GenNative.whereis(pool)

        manager not in [nil, old_manager] and
          length(Manager.status(pool).idle) == @size
      end)

      new_workers = worker_pids(sup)
      assert Manager.status(pool).idle == Enum.sort(new_workers)
      assert MapSet.disjoint?(MapSet.new(old_workers), MapSet.new(new_workers))
    end
  end

  describe "transaction/3" do
    test "spreads concurrent jobs over all the workers", %{pool: pool, sup: sup} do
      test = self()

      # Each job blocks until released, so @size concurrent jobs must each
      # hold a different worker.
      tasks =
        for n <- 1..@size do
          Task.async(fn ->
            Pool.transaction(pool, fn worker ->
              Worker.run(worker, fn ->
                send(test, {:running, n, self()})

                receive do
                  :go -> {n, self()}
                end
              end)
            end)
          end)
        end

      running =
        for _ <- 1..@size do
          assert_receive {:running, _n, worker}
          worker
        end

      assert Enum.sort(running) == Enum.sort(worker_pids(sup))
      for worker <- running, do: send(worker, :go)

      results = Task.await_many(tasks)
      assert Enum.map(results, &elem(&1, 0)) == Enum.to_list(1..@size)
      assert Enum.sort(Enum.map(results, &elem(&1, 1))) == Enum.sort(running)

      wait_until(fn -> length(Manager.status(pool).idle) == @size end)
      assert Enum.map(worker_pids(sup), &Worker.info(&1).jobs) == List.duplicate(1, @size)
    end

    test "many more jobs than workers all complete", %{pool: pool, sup: sup} do
      results =
        1..200
        |> Task.async_stream(fn n -> Pool.transaction(pool, &Worker.run(&1, fn -> n * n end)) end,
          max_concurrency: 20
        )
        |> Enum.map(fn {:ok, square} -> square end)

      assert results == Enum.map(1..200, &(&1 * &1))

      wait_until(fn -> length(Manager.status(pool).idle) == @size end)
      total = worker_pids(sup) |> Enum.map(&Worker.info(&1).jobs) |> Enum.sum()
      assert total == 200
    end

    test "checks the worker back in when the job raises", %{pool: pool} do
      assert_raise ArgumentError, fn ->
        Pool.transaction(pool, fn _worker -> raise ArgumentError end)
      end

      wait_until(fn -> length(Manager.status(pool).idle) == @size end)
    end
  end
end
