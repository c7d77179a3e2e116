# Slow or special runs are tagged and excluded by default; include them with
#   bin/test --include slow
#
# assert_receive waits up to 1 s by default (ExUnit's default is 100 ms): on
# a loaded 2-core machine, or under bin/sanitize, a message 100 ms late is
# not a failure. It only makes a failing test fail later. (5 s under
# bin/sanitize: see GenNative.TestHelpers.wait_ms/1.)
ExUnit.start(exclude: [:slow], assert_receive_timeout: GenNative.TestHelpers.wait_ms(1_000))
