"""Where configs and data come from: typed model and dataset configs, finding them by name
across suite folders, dataset readers (records become cases) and the pinned downloads.

Below the engine and scoring: knows files and YAML, nothing of HTTP, pytest or verdicts."""
