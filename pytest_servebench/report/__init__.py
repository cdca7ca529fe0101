"""What a run shows and writes: the summary table and files, the html report and its charts,
CI gates, run-to-run comparison, service figures, terminal output, the live progress view and
the debug log follower. Reads results; sends nothing, judges nothing."""
