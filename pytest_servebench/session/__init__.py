"""The pytest glue on top of everything: options, the hooks, task collectors and case items,
one run as seen by one pytest process, and the lean run protocol."""
