# Writes the fuzz target's seed inputs: frame streams of real requests.
#   elixir c_src/port/fuzz_seeds/make_seeds.exs
import Bitwise

frame = fn term ->
  bin = :erlang.term_to_binary(term)
  <<byte_size(bin)::32, bin::binary>>
end

keys = [1, 1.0, -5, 1 <<< 70, :a, "bin", <<1::3>>, {1, :x}, [1, 2 | 3], %{a: 1}, self(), make_ref()]
snap = <<"GNS2", 1, 1::64, 2::32, 131, 97, 1, 2::32, 131, 97, 2, 0::64>>
snap = snap <> <<:erlang.crc32(snap)::32>>

seeds = %{
  "ordered" => [
    {1, :open, :s, :ordered_set, 10},
    {2, :put, :s, :k, "v", 0},
    {3, :put, :s, 2.5, [1], 1000},
    {4, :get, :s, :k},
    {5, :step, :s, :next, :a},
    {6, :range, :s, 0, :z, :infinity},
    {7, :rank, :s, :k},
    {8, :at, :s, -1},
    {9, :slice, :s, 0, 5},
    {10, :snapshot, :s},
    {11, :update_counter, :s, :n, 1, 0},
    {12, :take, :s, :k},
    {13, :to_list, :s},
    {14, :info, :s},
    {15, :delete, :s}
  ],
  "set" => [
    {1, :open, :t, :set, :infinity},
    {2, :put_many, :t, Enum.map(keys, &{&1, &1})},
    {3, :put_new, :t, 1, 2, 0},
    {4, :delete_key, :t, 1.0},
    {5, :clear, :t},
    {6, :size, :t},
    {7, :restore, :r, snap, :infinity},
    {8, :stores, nil},
    {9, :encode_key, nil, {keys}, :eq},
    {10, :encode_key, nil, keys, :exact}
  ]
}

for {name, reqs} <- seeds do
  File.write!(Path.join(__DIR__, name <> ".bin"), Enum.map(reqs, frame))
end
