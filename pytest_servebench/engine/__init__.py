"""The request engine: cases' requests go out to endpoints up to each model's max concurrency,
and finished predictions come back (and are saved in the work dir's store).

`protocol.py` is the seam: the `Engine` protocol both engines implement (`local.ThreadEngine`
in a thread of pytest's process, `process.ProcessEngine` driving `child.py` in its own process
with `wire.py` messages), a task going in as a `TaskSpec` and each case coming back as a
`CaseResult`. `jobs.py` is what both sides speak of; `client.py` and `connection.py` the HTTP
side. Knows HTTP, retries and the store; knows nothing of scoring or pytest."""
