"""Distributed mode: executions queued in Redis and run by every daemon of the fleet.

The producer is :class:`sandbox_client.QueueClient`; the consumer is
:class:`sandboxd.queue.worker.QueueWorker`. Both speak the layout in
:mod:`sandbox_client.redisqueue.keys` through the atomic scripts in
:mod:`sandbox_client.redisqueue.lua`. docs/queue.md has the design and costs.

One execution's life::

    enqueue ──▶ job hash (request, tenant, attempts; TTL)
            ──▶ its tenant's list (the tenant joins the ring) ── or ──▶ delayed zset (run at)
    worker  ──▶ take: the ring rotates, one execution per tenant per turn; a claim deadline in
                the claims zset, a new delivery number and attempts += 1 (once per delivery)
                in the job; the request comes with the reply (or from BEGIN when large)
            ──▶ executor.run(plan) ──▶ events stream (what arrives during an append goes next)
            ──▶ finish: last events + release the claim, atomically
               or retry: back to the delayed zset with exponential backoff (kinds.retryable)
               or dead: dead-letter stream, after the configured number of attempts

At least once: an execution stays claimed until its final event is stored. A worker renews its
claims while it runs; one that dies stops renewing, and after the visibility timeout another
worker's TAKE takes the execution over (the claims zset is ordered by deadline) and runs it again
with the next attempt number. Only the holder of the current delivery may append events or
finish, so a worker that lost its claim stops writing.

The layout and scripts live in the client distribution (`sandbox_client.redisqueue`), so a
producer needs nothing of the daemon.
"""
