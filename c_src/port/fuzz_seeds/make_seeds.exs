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

# What a replicated program decodes (fuzz.c: inputs behind "GNRF"): a log
# entry carrying two puts, one under a request id, and a snapshot (request ids,
# then an image: an OPEN and a MANY record, each length | CRC | body).
request = :erlang.term_to_binary({1, :put, :kv, :k, "v", 0})
body = <<1::64, 42::64, 3::64, byte_size(request)::32>> <> request
body = body <> <<2::64, 0::64, 0::64, byte_size(request)::32>> <> request
entry = <<"GNR1", ?Q, 1_700_000_000_000::64, 7::64, 0::64, byte_size(body)::32>> <> body
entry = entry <> :binary.copy(<<0>>, rem(8 - rem(byte_size(entry), 8), 8))
File.write!(Path.join(__DIR__, "raft_entry"), "GNRF" <> entry)

record = fn body -> <<byte_size(body)::32, :erlang.crc32(body)::32>> <> body end
key = :erlang.term_to_binary(1)
val = :erlang.term_to_binary(2)
open_rec = <<?O, 2::16, "kv", 1, 0::64>>
many = <<?M, 2::16, "kv", 1::32, byte_size(key)::32>> <> key <> <<byte_size(val)::32>> <> val <> <<0::64>>
reply = :erlang.term_to_binary(:ok)
ids = <<1::64, 9::64, 1::64, 1_700_000_000_000::64, byte_size(reply)::32>> <> reply
snapshot = <<"GNI1", 1_700_000_000_000::64>> <> ids <> record.(open_rec) <> record.(many)
File.write!(Path.join(__DIR__, "raft_snapshot"), "GNRF" <> snapshot)
