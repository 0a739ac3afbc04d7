"""The Redis side of distributed mode, shared by producers and workers: the keys (`keys`), the
atomic scripts (`lua`), the calls that run them (`store`) and the reconnect backoff (`backoff`).

It lives in the client distribution because both sides speak it: `sandbox_client.QueueClient`
enqueues and reads events through it, and the daemon's `sandboxd.queue.worker` takes and
finishes executions through it (docs/queue.md). It needs the `queue` extra (redis).
"""
