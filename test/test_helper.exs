# Slow or special runs are tagged and excluded by default; include them with
#   bin/test --include slow
ExUnit.start(exclude: [:slow])
