defmodule GenNative.Bench.SVG do
  @moduledoc """
  Plots for the benchmark suites, written as SVG text: no plotting package,
  no display, nothing to install.

  It lives in `bench/` next to the harness and is loaded by
  `mix gen_native.bench`; it is not compiled into the package.

  `plot/1` draws lines, steps or points of several series on linear or
  logarithmic axes; `cdf/1` turns latency samples into the points of an
  empirical cumulative distribution.
  """

  @width 760
  @height 440
  @left 78
  @right 24
  @top 40
  @bottom 56
  @colors ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]
  # A cumulative distribution is drawn through at most this many points.
  @cdf_points 600

  @type series :: %{
          required(:label) => String.t(),
          required(:points) => [{number(), number()}],
          optional(:style) => :line | :step | :points
        }

  @doc """
  The SVG text of a plot. `spec`:

    * `:title`, `:x_label`, `:y_label` - text
    * `:x_scale`, `:y_scale` - `:linear` (default) or `:log`; points with a
      coordinate of 0 or less are left out of a log axis
    * `:series` - a list of `%{label: text, points: [{x, y}], style: style}`,
      style `:line` (default), `:step` (a step function, for a cumulative
      distribution) or `:points`
    * `:note` - optional text under the plot
  """
  @spec plot(map()) :: String.t()
  def plot(spec) do
    xs = Map.get(spec, :x_scale, :linear)
    ys = Map.get(spec, :y_scale, :linear)

    series =
      spec.series
      |> Enum.map(fn s -> %{s | points: Enum.filter(s.points, &drawable?(&1, xs, ys))} end)

    all = Enum.flat_map(series, & &1.points)
    {x0, x1} = range(Enum.map(all, &elem(&1, 0)), xs)
    {y0, y1} = range(Enum.map(all, &elem(&1, 1)), ys)

    fx = scaler(xs, x0, x1, @left, @width - @right)
    fy = scaler(ys, y0, y1, @height - @bottom, @top)

    body = [
      frame(),
      ticks(:x, xs, x0, x1, fx),
      ticks(:y, ys, y0, y1, fy),
      series
      |> Enum.with_index()
      |> Enum.map(fn {s, i} -> draw(s, color(i), fx, fy) end),
      legend(series),
      text(@width / 2, 22, spec.title, "middle", 15, "bold"),
      text(@width / 2, @height - 14, spec.x_label, "middle", 12),
      ~s[<text x="16" y="#{@height / 2}" font-size="12" text-anchor="middle" ] <>
        ~s[transform="rotate(-90 16 #{@height / 2})">#{escape(spec.y_label)}</text>\n],
      note(Map.get(spec, :note))
    ]

    height = @height + extra(spec)

    IO.iodata_to_binary([
      ~s(<svg xmlns="http://www.w3.org/2000/svg" width="#{@width}" height="#{height}" ),
      ~s(viewBox="0 0 #{@width} #{height}" font-family="sans-serif">\n),
      ~s(<rect width="100%" height="100%" fill="white"/>\n),
      body,
      "</svg>\n"
    ])
  end

  @doc """
  The points of the empirical cumulative distribution of `samples` (a
  non-empty list of numbers): `{value, fraction of samples <= value}`, at
  most #{@cdf_points} of them (evenly spaced ranks, the largest sample
  always included).
  """
  @spec cdf([number()]) :: [{number(), float()}]
  def cdf([_ | _] = samples) do
    sorted = samples |> Enum.sort() |> List.to_tuple()
    n = tuple_size(sorted)
    step = max(1, div(n, @cdf_points))

    ranks = Enum.uniq(Enum.to_list(step..n//step) ++ [n])
    [{elem(sorted, 0), 0.0} | Enum.map(ranks, &{elem(sorted, &1 - 1), &1 / n})]
  end

  ## Drawing

  defp extra(spec), do: 16 * length(note_lines(Map.get(spec, :note))) + 4

  # A note is wrapped at about 120 characters a line.
  defp note_lines(nil), do: []

  defp note_lines(text) do
    text
    |> String.split(" ")
    |> Enum.reduce([], fn
      word, [] ->
        [word]

      word, [line | rest] when byte_size(line) + byte_size(word) < 120 ->
        [line <> " " <> word | rest]

      word, lines ->
        [word | lines]
    end)
    |> Enum.reverse()
  end

  defp drawable?({x, y}, xs, ys),
    do: is_number(x) and is_number(y) and (xs == :linear or x > 0) and (ys == :linear or y > 0)

  defp range([], _scale), do: {0.0, 1.0}

  defp range(values, :linear) do
    {lo, hi} = Enum.min_max(values)
    lo = min(lo, 0)
    if hi == lo, do: {lo, lo + 1.0}, else: {lo / 1, hi * 1.05}
  end

  defp range(values, :log) do
    {lo, hi} = Enum.min_max(values)

    {:math.pow(10, Float.floor(:math.log10(lo))),
     :math.pow(10, Float.ceil(:math.log10(hi) + 1.0e-9))}
  end

  defp scaler(:linear, v0, v1, p0, p1), do: fn v -> p0 + (v - v0) / (v1 - v0) * (p1 - p0) end

  defp scaler(:log, v0, v1, p0, p1) do
    {l0, l1} = {:math.log10(v0), :math.log10(v1)}
    fn v -> p0 + (:math.log10(v) - l0) / (l1 - l0) * (p1 - p0) end
  end

  defp frame do
    w = @width - @left - @right
    h = @height - @top - @bottom
    ~s(<rect x="#{@left}" y="#{@top}" width="#{w}" height="#{h}" fill="none" stroke="#444"/>\n)
  end

  defp ticks(axis, scale, v0, v1, f) do
    Enum.map(tick_values(scale, v0, v1), fn v ->
      p = f.(v)

      case axis do
        :x ->
          [
            line(p, @top, p, @height - @bottom, "#ddd"),
            text(p, @height - @bottom + 16, label(v), "middle", 11)
          ]

        :y ->
          [
            line(@left, p, @width - @right, p, "#ddd"),
            text(@left - 6, p + 4, label(v), "end", 11)
          ]
      end
    end)
  end

  defp tick_values(:log, v0, v1) do
    l0 = round(:math.log10(v0))
    l1 = round(:math.log10(v1))
    every = max(1, div(l1 - l0, 8) + 1)
    for l <- l0..l1//every, do: :math.pow(10, l)
  end

  defp tick_values(:linear, v0, v1) do
    raw = (v1 - v0) / 6
    mag = :math.pow(10, Float.floor(:math.log10(raw)))

    step =
      Enum.find([1, 2, 5, 10], &(&1 * mag >= raw))
      |> Kernel.*(mag)

    first = Float.ceil(v0 / step) * step
    Stream.iterate(first, &(&1 + step)) |> Enum.take_while(&(&1 <= v1 + step * 1.0e-9))
  end

  defp draw(%{points: []}, _color, _fx, _fy), do: []

  defp draw(%{points: points} = s, color, fx, fy) do
    pts = Enum.map(points, fn {x, y} -> {fx.(x), fy.(y)} end)

    case Map.get(s, :style, :line) do
      :points ->
        Enum.map(pts, fn {x, y} ->
          ~s(<circle cx="#{f(x)}" cy="#{f(y)}" r="2.5" fill="#{color}" fill-opacity="0.75"/>\n)
        end)

      :line ->
        polyline(pts, color)

      :step ->
        stepped =
          pts
          |> Enum.chunk_every(2, 1, :discard)
          |> Enum.flat_map(fn [{x0, y0}, {x1, _}] -> [{x0, y0}, {x1, y0}] end)

        polyline(stepped ++ [List.last(pts)], color)
    end
  end

  defp polyline(pts, color) do
    coords = Enum.map_join(pts, " ", fn {x, y} -> "#{f(x)},#{f(y)}" end)
    ~s(<polyline points="#{coords}" fill="none" stroke="#{color}" stroke-width="1.8"/>\n)
  end

  defp legend(series) do
    series
    |> Enum.with_index()
    |> Enum.map(fn {s, i} ->
      y = @top + 16 + i * 17
      x = @left + 12
      color = color(i)

      mark =
        if Map.get(s, :style, :line) == :points,
          do: ~s(<circle cx="#{x + 9}" cy="#{y - 4}" r="3.5" fill="#{color}"/>\n),
          else: line(x, y - 4, x + 18, y - 4, color, 2.5)

      [
        ~s(<rect x="#{x - 4}" y="#{y - 13}" width="#{String.length(s.label) * 6.6 + 34}" ) <>
          ~s(height="17" fill="white" fill-opacity="0.85"/>\n),
        mark,
        text(x + 24, y, s.label, "start", 11)
      ]
    end)
  end

  defp note(text) do
    text
    |> note_lines()
    |> Enum.with_index()
    |> Enum.map(fn {line, i} -> text(12, @height + 8 + 16 * i, line, "start", 11) end)
  end

  defp line(x0, y0, x1, y1, color, width \\ 1) do
    ~s(<line x1="#{f(x0)}" y1="#{f(y0)}" x2="#{f(x1)}" y2="#{f(y1)}" ) <>
      ~s(stroke="#{color}" stroke-width="#{width}"/>\n)
  end

  defp text(x, y, content, anchor, size, weight \\ "normal") do
    ~s(<text x="#{f(x)}" y="#{f(y)}" font-size="#{size}" font-weight="#{weight}" ) <>
      ~s(text-anchor="#{anchor}">#{escape(content)}</text>\n)
  end

  defp color(i), do: Enum.at(@colors, rem(i, length(@colors)))

  defp f(v), do: :erlang.float_to_binary(v / 1, decimals: 1)

  # Tick labels: 0.001 .. 100000 as plain numbers, 1e6 and up with a suffix.
  defp label(v) when v >= 1_000_000_000, do: trim(v / 1_000_000_000) <> "G"
  defp label(v) when v >= 1_000_000, do: trim(v / 1_000_000) <> "M"
  defp label(v) when v >= 100_000, do: trim(v / 1000) <> "k"
  defp label(v), do: trim(v)

  defp trim(v) do
    cond do
      v == 0 -> "0"
      v == Float.round(v / 1) and abs(v) >= 1 -> Integer.to_string(round(v))
      true -> v |> :erlang.float_to_binary(decimals: 4) |> String.trim_trailing("0")
    end
  end

  defp escape(text) do
    text
    |> to_string()
    |> String.replace("&", "&amp;")
    |> String.replace("<", "&lt;")
    |> String.replace(">", "&gt;")
  end
end
