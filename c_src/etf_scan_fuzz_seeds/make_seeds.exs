# Writes the snapshot checker's fuzz seeds (`make fuzz-etf`): real
# encodings, one per file, as restore hands them to gn_etf_neutralize (a
# snapshot entry's key or value, each term_to_binary'd on its own).
#   elixir c_src/etf_scan_fuzz_seeds/make_seeds.exs
import Bitwise

x = 42

seeds = [
  atom: :ok,
  atom_utf8: :héllo,
  atom_beyond_latin1: :日本語,
  atom_long: String.to_atom(String.duplicate("a", 255)),
  atom_long_utf8: String.to_atom(String.duplicate("é", 255)),
  small_int: 7,
  int: -123_456,
  small_big: 1 <<< 70,
  large_big: -(1 <<< 2100),
  float: 2.5,
  string: ~c"chars",
  binary: "bin",
  bitstring: <<1::3>>,
  list: [1, :a, "b", 2.0],
  improper: [1, 2 | :tail],
  tuple: {:a, 1, {:b, []}},
  large_tuple: List.to_tuple(Enum.to_list(1..300)),
  map: %{"b" => [:c], {:d} => %{}, a: 1},
  large_map: Map.new(1..40, &{:"k#{&1}", &1}),
  # more unknown atoms than the set first has room for (the stub knows
  # atoms whose first byte is odd: "b" is even)
  many_atoms: Enum.map(1..100, &:"b#{&1}"),
  pid: self(),
  ref: make_ref(),
  port: hd(Port.list()),
  local_fun: fn y -> x + y end,
  export_fun: &Enum.map/2,
  deep: Enum.reduce(1..200, :leaf, &[&1 | &2]),
  # a store entry's key and value, as a snapshot holds them
  entry_key: {:user, 17},
  entry_value: %{name: "Ada", roles: [:admin], seen: {1_700_000_000, :utc}}
]

for {name, term} <- seeds do
  File.write!(Path.join(__DIR__, "#{name}.bin"), :erlang.term_to_binary(term))
end

# Older encodings: Latin-1 atoms (ATOM_EXT, SMALL_ATOM_EXT) and text floats.
File.write!(
  Path.join(__DIR__, "latin1_atoms.bin"),
  :erlang.term_to_binary({:ok, :héllo, [1.5]}, minor_version: 0)
)

# Refused: snapshots never hold a compressed encoding.
File.write!(
  Path.join(__DIR__, "compressed.bin"),
  :erlang.term_to_binary(List.duplicate(:ok, 100), compressed: 9)
)
