"""Running model-written programs (code datasets) so that they cannot harm the machine: the
sandbox found at run time (bubblewrap namespaces, or an explicitly accepted plain process), the
limits of one run (time, memory, processes, output), a bounded pool sized to the machine and a
cache of outcomes by program hash in the work dir. Knows processes; nothing of datasets."""
