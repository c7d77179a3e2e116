defmodule GenNative.Examples.Leaderboard do
  @moduledoc """
  A leaderboard: a GenNative server that owns its state in two
  `GenNative.Store`s and answers reads without a message.

    * `board.ranks`, an `:ordered_set` keyed `{-score, player}`: the best
      score first, ties in player order; `GenNative.Store.rank/2` and
      `GenNative.Store.slice/3` give positions in O(log n);
    * `board.scores`, a `:set` of `player => score`, to find a player's key.

  Only the server writes (both stores are `:protected`), in its callbacks,
  so updates are serialised. Clients call `rank/2`, `top/2`, `around/3` and
  `score/2`, which read the stores directly: they never queue behind the
  server's mailbox and never copy its state.

  Each store is consistent on its own, but an update is three writes: the
  new `{-score, player}` key, the new score, then the removal of the old
  key. A reader racing it may find the player under both keys, which
  `top/2` and `around/3` fold into one, and a reader holding a score read
  just before the update finds its key gone, so `rank/2` reads the score
  again. A reader never finds a player missing.
  """
  use GenNative
  alias GenNative.Store

  @type board :: atom()
  @type player :: term()

  ## Client API

  @doc "Starts a leaderboard registered as `name`, with its stores named after it."
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    name = Keyword.fetch!(opts, :name)
    GenNative.start_link(__MODULE__, name, name: name)
  end

  @doc "Sets `player`'s score, replacing any earlier one."
  @spec submit(board(), player(), integer()) :: :ok
  def submit(board, player, score) when is_integer(score),
    do: GenNative.call(board, {:submit, player, score})

  @doc "Adds `points` to `player`'s score (from 0 for a new player), asynchronously."
  @spec add(board(), player(), integer()) :: :ok
  def add(board, player, points) when is_integer(points),
    do: GenNative.cast(board, {:add, player, points})

  @doc "Removes `player` from the board."
  @spec remove(board(), player()) :: :ok
  def remove(board, player), do: GenNative.call(board, {:remove, player})

  @doc "`player`'s score, read from the store: `{:ok, score}` or `:error`."
  @spec score(board(), player()) :: {:ok, integer()} | :error
  def score(board, player), do: Store.fetch(scores(board), player)

  @doc "`player`'s position, 1 for the best score: `{:ok, position}` or `:error`."
  @spec rank(board(), player()) :: {:ok, pos_integer()} | :error
  def rank(board, player) do
    case index(board, player) do
      {:ok, i} -> {:ok, i + 1}
      :error -> :error
    end
  end

  @doc "The best `n` players as `{player, score}`, best first."
  @spec top(board(), non_neg_integer()) :: [{player(), integer()}]
  def top(board, n) when is_integer(n) and n >= 0, do: entries(board, 0, n)

  @doc """
  `player` with up to `k` players above and `k` below, as `{player, score}`,
  best first; `[]` if `player` is not on the board.
  """
  @spec around(board(), player(), non_neg_integer()) :: [{player(), integer()}]
  def around(board, player, k) when is_integer(k) and k >= 0 do
    case index(board, player) do
      {:ok, i} ->
        from = max(i - k, 0)
        entries(board, from, i - from + k + 1)

      :error ->
        []
    end
  end

  @doc "How many players are on the board."
  @spec size(board()) :: non_neg_integer()
  def size(board), do: Store.size(scores(board))

  # A score read, then the rank of its key: an update between the two
  # removes that key, and the score is read again.
  defp index(board, player, tries \\ 100) do
    with {:ok, score} <- score(board, player) do
      case Store.rank(ranks(board), {-score, player}) do
        {:ok, i} ->
          {:ok, i}

        :error when tries > 1 ->
          :erlang.yield()
          index(board, player, tries - 1)

        :error ->
          :error
      end
    end
  end

  # `count` entries from position `from`: one more is read, in case an
  # update in flight (the server makes one at a time) lists a player twice.
  defp entries(board, from, count) do
    board
    |> ranks()
    |> Store.slice(from, count + 1)
    |> Enum.map(fn {{neg_score, player}, nil} -> {player, -neg_score} end)
    |> Enum.uniq_by(fn {player, _} -> player end)
    |> Enum.take(count)
  end

  defp ranks(board), do: store!(board, :ranks)
  defp scores(board), do: store!(board, :scores)

  defp store!(board, kind) do
    Store.whereis(store_name(board, kind)) ||
      raise ArgumentError, "no leaderboard named #{inspect(board)} is running"
  end

  defp store_name(board, kind), do: :"#{board}.#{kind}"

  ## Callbacks

  @impl true
  def init(name) do
    {:ok, ranks} = Store.new(:ordered_set, name: store_name(name, :ranks))
    {:ok, scores} = Store.new(:set, name: store_name(name, :scores))
    {:ok, %{ranks: ranks, scores: scores}}
  end

  @impl true
  def handle_call({:submit, player, score}, _from, state) do
    {:reply, set_score(state, player, score), state}
  end

  def handle_call({:remove, player}, _from, state) do
    case Store.take(state.scores, player) do
      {:ok, old} -> Store.delete(state.ranks, {-old, player})
      :error -> :ok
    end

    {:reply, :ok, state}
  end

  @impl true
  def handle_cast({:add, player, points}, state) do
    set_score(state, player, Store.get(state.scores, player, 0) + points)
    {:noreply, state}
  end

  # The new key is written before the old one goes, so that a reader
  # always finds the player (see the moduledoc).
  defp set_score(state, player, score) do
    old = Store.fetch(state.scores, player)
    :ok = Store.put(state.ranks, {-score, player}, nil)
    :ok = Store.put(state.scores, player, score)

    case old do
      {:ok, ^score} -> :ok
      {:ok, old} -> Store.delete(state.ranks, {-old, player})
      :error -> :ok
    end
  end
end

defmodule GenNative.Examples.LeaderboardTest do
  use ExUnit.Case, async: true

  alias GenNative.Examples.Leaderboard

  setup %{test: test} do
    board = :"leaderboard #{System.unique_integer([:positive])} #{test}"
    pid = start_supervised!({Leaderboard, name: board})
    %{board: board, pid: pid}
  end

  defp submit_all(board, scores) do
    Enum.each(scores, fn {player, score} -> :ok = Leaderboard.submit(board, player, score) end)
  end

  # The model: players sorted by score, best first, ties by player.
  defp model(scores) do
    scores
    |> Map.new()
    |> Enum.sort_by(fn {player, score} -> {-score, player} end)
  end

  describe "rank/2" do
    test "positions follow the scores, 1 for the best", %{board: board} do
      submit_all(board, [{"ana", 30}, {"bo", 50}, {"cy", 10}])

      assert Leaderboard.rank(board, "bo") == {:ok, 1}
      assert Leaderboard.rank(board, "ana") == {:ok, 2}
      assert Leaderboard.rank(board, "cy") == {:ok, 3}
      assert Leaderboard.rank(board, "nobody") == :error
    end

    test "changes after score updates, by call and by cast", %{board: board} do
      submit_all(board, [{"ana", 30}, {"bo", 50}, {"cy", 10}])

      :ok = Leaderboard.submit(board, "cy", 60)
      assert Leaderboard.rank(board, "cy") == {:ok, 1}
      assert Leaderboard.rank(board, "bo") == {:ok, 2}
      assert Leaderboard.rank(board, "ana") == {:ok, 3}

      :ok = Leaderboard.add(board, "ana", 35)
      # A call after the cast: the server has handled the cast by then.
      :ok = Leaderboard.submit(board, "dee", 0)
      assert Leaderboard.score(board, "ana") == {:ok, 65}
      assert Leaderboard.rank(board, "ana") == {:ok, 1}
      assert Leaderboard.rank(board, "dee") == {:ok, 4}
      assert Leaderboard.size(board) == 4

      :ok = Leaderboard.remove(board, "ana")
      assert Leaderboard.rank(board, "ana") == :error
      assert Leaderboard.rank(board, "cy") == {:ok, 1}
      assert Leaderboard.size(board) == 3
    end

    test "ties are ordered by player", %{board: board} do
      submit_all(board, [{"zed", 40}, {"amy", 40}, {"max", 40}, {"top", 41}])

      assert Leaderboard.rank(board, "top") == {:ok, 1}
      assert Leaderboard.rank(board, "amy") == {:ok, 2}
      assert Leaderboard.rank(board, "max") == {:ok, 3}
      assert Leaderboard.rank(board, "zed") == {:ok, 4}
    end

    test "reads the store without a message: answers while the server is suspended",
         %{board: board, pid: pid} do
      submit_all(board, [{"ana", 30}, {"bo", 50}])
      :ok = :sys.suspend(pid)

      try do
        assert Leaderboard.rank(board, "ana") == {:ok, 2}
        assert Leaderboard.top(board, 1) == [{"bo", 50}]
        assert Leaderboard.around(board, "bo", 1) == [{"bo", 50}, {"ana", 30}]
      after
        :sys.resume(pid)
      end
    end

    test "other processes cannot write the board's stores", %{board: board} do
      ranks = GenNative.Store.whereis(:"#{board}.ranks")

      assert_raise ArgumentError, ~r/not the owner/, fn ->
        GenNative.Store.put(ranks, {0, "x"}, nil)
      end
    end
  end

  describe "top/2" do
    test "the best n, best first, with their scores", %{board: board} do
      submit_all(board, [{"ana", 30}, {"bo", 50}, {"cy", 10}, {"dee", 50}])

      assert Leaderboard.top(board, 0) == []
      assert Leaderboard.top(board, 1) == [{"bo", 50}]
      assert Leaderboard.top(board, 3) == [{"bo", 50}, {"dee", 50}, {"ana", 30}]
      assert Leaderboard.top(board, 10) == [{"bo", 50}, {"dee", 50}, {"ana", 30}, {"cy", 10}]
    end

    test "an empty board", %{board: board} do
      assert Leaderboard.top(board, 5) == []
      assert Leaderboard.around(board, "ana", 2) == []
      assert Leaderboard.size(board) == 0
    end

    test "matches a sorted model after random updates", %{board: board} do
      :rand.seed(:exsss, {1, 2, 3})
      players = for i <- 1..50, do: "p#{i}"

      scores =
        Enum.reduce(1..500, %{}, fn _, scores ->
          player = Enum.random(players)

          if :rand.uniform(10) == 1 do
            :ok = Leaderboard.remove(board, player)
            Map.delete(scores, player)
          else
            score = :rand.uniform(100) - 50
            :ok = Leaderboard.submit(board, player, score)
            Map.put(scores, player, score)
          end
        end)

      expected = model(scores)
      assert Leaderboard.top(board, map_size(scores)) == expected
      assert Leaderboard.size(board) == map_size(scores)

      for {{player, _}, i} <- Enum.with_index(expected, 1) do
        assert Leaderboard.rank(board, player) == {:ok, i}
      end
    end
  end

  describe "around/3" do
    setup %{board: board} do
      scores = for i <- 1..10, do: {"p#{String.pad_leading("#{i}", 2, "0")}", 100 - i}
      submit_all(board, scores)
      %{expected: model(scores)}
    end

    test "k above and k below", %{board: board, expected: expected} do
      assert Leaderboard.around(board, "p05", 2) == Enum.slice(expected, 2, 5)
      assert Leaderboard.around(board, "p05", 0) == [{"p05", 95}]
    end

    test "clipped at the top and the bottom", %{board: board, expected: expected} do
      assert Leaderboard.around(board, "p01", 3) == Enum.slice(expected, 0, 4)
      assert Leaderboard.around(board, "p10", 3) == Enum.slice(expected, 6, 4)
      assert Leaderboard.around(board, "p02", 20) == expected
    end

    test "an unknown player", %{board: board} do
      assert Leaderboard.around(board, "nobody", 2) == []
    end
  end

  test "concurrent readers see every player exactly once while scores change", %{board: board} do
    players = for i <- 1..20, do: "p#{i}"
    submit_all(board, Enum.map(players, &{&1, 0}))

    readers =
      for _ <- 1..4 do
        Task.async(fn ->
          for _ <- 1..300 do
            top = Leaderboard.top(board, 100)
            names = Enum.map(top, &elem(&1, 0))
            # Every player, exactly once, even while being moved.
            assert length(names) == 20
            assert names == Enum.uniq(names)
            assert top == Enum.sort_by(top, fn {p, s} -> {-s, p} end)
            assert {:ok, _} = Leaderboard.rank(board, Enum.random(players))
          end
        end)
      end

    for round <- 1..200, do: Leaderboard.add(board, Enum.at(players, rem(round, 20)), round)
    Task.await_many(readers, 30_000)
  end
end
