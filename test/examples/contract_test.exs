defmodule GenNative.Examples.Contract do
  @moduledoc """
  A contract as a state machine: `:draft -> :signed -> :executed`, with
  `:draft -> :cancelled` as the way out. Every party must sign before the
  contract is `:signed`. Contracts are found by id through a `Registry`.

  An executed or cancelled contract has nothing left to do, so the server
  replies and stops with `:normal`; `restart: :transient` keeps a supervisor
  from bringing it back.
  """
  use GenNative, restart: :transient

  defstruct [:id, :parties, status: :draft, signatures: [], history: []]

  @type status :: :draft | :signed | :executed | :cancelled

  ## Client API

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    registry = Keyword.fetch!(opts, :registry)
    id = Keyword.fetch!(opts, :id)
    parties = Keyword.fetch!(opts, :parties)
    GenNative.start_link(__MODULE__, {id, parties}, name: via(registry, id))
  end

  @spec via(atom(), term()) :: {:via, Registry, {atom(), term()}}
  def via(registry, id), do: {:via, Registry, {registry, id}}

  @spec status(atom(), term()) :: status()
  def status(registry, id), do: GenNative.call(via(registry, id), :status)

  @spec sign(atom(), term(), term()) :: {:ok, status()} | {:error, term()}
  def sign(registry, id, party), do: GenNative.call(via(registry, id), {:sign, party})

  @spec execute(atom(), term()) :: :ok | {:error, term()}
  def execute(registry, id), do: GenNative.call(via(registry, id), :execute)

  @spec cancel(atom(), term()) :: :ok | {:error, term()}
  def cancel(registry, id), do: GenNative.call(via(registry, id), :cancel)

  @spec history(atom(), term()) :: [{status(), status()}]
  def history(registry, id), do: GenNative.call(via(registry, id), :history)

  ## Callbacks

  @impl true
  def init({id, [_ | _] = parties}) do
    {:ok, %__MODULE__{id: id, parties: parties}}
  end

  def init({_id, parties}), do: {:stop, {:invalid_parties, parties}}

  @impl true
  def handle_call(:status, _from, contract), do: {:reply, contract.status, contract}

  def handle_call(:history, _from, contract),
    do: {:reply, Enum.reverse(contract.history), contract}

  def handle_call({:sign, party}, _from, %{status: :draft} = contract) do
    cond do
      party not in contract.parties ->
        {:reply, {:error, {:unknown_party, party}}, contract}

      party in contract.signatures ->
        {:reply, {:error, {:already_signed, party}}, contract}

      true ->
        contract = %{contract | signatures: [party | contract.signatures]}

        contract =
          if Enum.all?(contract.parties, &(&1 in contract.signatures)),
            do: transition(contract, :signed),
            else: contract

        {:reply, {:ok, contract.status}, contract}
    end
  end

  def handle_call(:execute, _from, %{status: :signed} = contract) do
    {:stop, :normal, :ok, transition(contract, :executed)}
  end

  def handle_call(:cancel, _from, %{status: :draft} = contract) do
    {:stop, :normal, :ok, transition(contract, :cancelled)}
  end

  def handle_call({:sign, _party}, _from, contract), do: invalid(:sign, contract)
  def handle_call(:execute, _from, contract), do: invalid(:execute, contract)
  def handle_call(:cancel, _from, contract), do: invalid(:cancel, contract)

  defp transition(contract, to) do
    %{contract | status: to, history: [{contract.status, to} | contract.history]}
  end

  defp invalid(event, contract) do
    {:reply, {:error, {:invalid_transition, contract.status, event}}, contract}
  end
end

defmodule GenNative.Examples.ContractTest do
  use ExUnit.Case, async: true

  alias GenNative.Examples.Contract

  setup %{test: test} do
    registry = :"#{inspect(__MODULE__)}.#{test}"
    start_supervised!({Registry, keys: :unique, name: registry})
    %{registry: registry}
  end

  defp start_contract(registry, id, parties \\ [:alice, :bob]) do
    start_supervised!({Contract, registry: registry, id: id, parties: parties}, id: id)
  end

  describe "registration through Registry" do
    test "the contract is found by id", %{registry: registry} do
      pid = start_contract(registry, "c-1")

      assert Registry.lookup(registry, "c-1") == [{pid, nil}]
      assert GenNative.whereis(Contract.via(registry, "c-1")) == pid
      assert Contract.status(registry, "c-1") == :draft
    end

    test "a second contract with the same id is refused", %{registry: registry} do
      pid = start_contract(registry, "c-1")

      assert Contract.start_link(registry: registry, id: "c-1", parties: [:carol]) ==
               {:error, {:already_started, pid}}
    end

    test "contracts with different ids are independent", %{registry: registry} do
      start_contract(registry, "c-1")
      start_contract(registry, "c-2")

      assert {:ok, :draft} = Contract.sign(registry, "c-1", :alice)
      assert {:ok, :signed} = Contract.sign(registry, "c-1", :bob)

      assert Contract.status(registry, "c-1") == :signed
      assert Contract.status(registry, "c-2") == :draft
    end

    test "an unknown id exits with :noproc", %{registry: registry} do
      via = Contract.via(registry, "missing")

      assert catch_exit(Contract.status(registry, "missing")) ==
               {:noproc, {GenNative, :call, [via, :status, 5000]}}
    end

    test "the name is released when the contract stops", %{registry: registry} do
      pid = start_contract(registry, "c-1")
      ref = Process.monitor(pid)

      assert Contract.cancel(registry, "c-1") == :ok
      assert_receive {:DOWN, ^ref, :process, ^pid, :normal}

      # Registry drops the entry when it sees the exit, which may be after we
      # did, but resolving the name already skips the dead process.
      assert GenNative.whereis(Contract.via(registry, "c-1")) == nil

      assert catch_exit(Contract.status(registry, "c-1")) ==
               {:noproc, {GenNative, :call, [Contract.via(registry, "c-1"), :status, 5000]}}
    end
  end

  describe "valid transitions" do
    test "draft -> signed -> executed", %{registry: registry} do
      pid = start_contract(registry, "c-1")
      ref = Process.monitor(pid)

      assert Contract.sign(registry, "c-1", :alice) == {:ok, :draft}
      assert Contract.sign(registry, "c-1", :bob) == {:ok, :signed}
      assert Contract.history(registry, "c-1") == [{:draft, :signed}]

      assert Contract.execute(registry, "c-1") == :ok
      assert_receive {:DOWN, ^ref, :process, ^pid, :normal}
    end

    test "a draft can be cancelled", %{registry: registry} do
      pid = start_contract(registry, "c-1")
      ref = Process.monitor(pid)

      assert Contract.sign(registry, "c-1", :alice) == {:ok, :draft}
      assert Contract.cancel(registry, "c-1") == :ok
      assert_receive {:DOWN, ^ref, :process, ^pid, :normal}
    end

    test "a finished contract is not restarted by its supervisor", %{registry: registry} do
      pid = start_contract(registry, "c-1")
      ref = Process.monitor(pid)

      :ok = Contract.cancel(registry, "c-1")
      assert_receive {:DOWN, ^ref, :process, ^pid, :normal}

      {:ok, sup} = ExUnit.fetch_test_supervisor()
      assert {"c-1", :undefined, :worker, [Contract]} in Supervisor.which_children(sup)
    end
  end

  describe "invalid transitions" do
    test "a draft cannot be executed", %{registry: registry} do
      start_contract(registry, "c-1")

      assert Contract.execute(registry, "c-1") ==
               {:error, {:invalid_transition, :draft, :execute}}

      assert Contract.status(registry, "c-1") == :draft
    end

    test "a signed contract can be neither signed again nor cancelled", %{registry: registry} do
      start_contract(registry, "c-1", [:alice])
      assert Contract.sign(registry, "c-1", :alice) == {:ok, :signed}

      assert Contract.sign(registry, "c-1", :alice) ==
               {:error, {:invalid_transition, :signed, :sign}}

      assert Contract.cancel(registry, "c-1") ==
               {:error, {:invalid_transition, :signed, :cancel}}

      assert Contract.status(registry, "c-1") == :signed
    end

    test "only the named parties sign, each once", %{registry: registry} do
      start_contract(registry, "c-1")

      assert Contract.sign(registry, "c-1", :mallory) == {:error, {:unknown_party, :mallory}}
      assert Contract.sign(registry, "c-1", :alice) == {:ok, :draft}
      assert Contract.sign(registry, "c-1", :alice) == {:error, {:already_signed, :alice}}
      assert Contract.status(registry, "c-1") == :draft
    end

    test "a contract needs at least one party", %{registry: registry} do
      assert {:error, {:invalid_parties, []}} =
               GenNative.start(Contract, {"c-1", []}, name: Contract.via(registry, "c-1"))

      assert GenNative.whereis(Contract.via(registry, "c-1")) == nil
    end
  end
end
