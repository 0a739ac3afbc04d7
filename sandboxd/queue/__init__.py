"""Distributed mode: executions queued in Redis Streams and run by every daemon of the fleet.

The producer is :class:`sandbox_client.QueueClient`; the consumer is
:class:`sandboxd.queue.worker.QueueWorker`. Both speak the layout in :mod:`sandboxd.queue.keys`
through the atomic scripts in :mod:`sandboxd.queue.scripts`.

One execution's life::

    enqueue ──▶ job hash (request, tenant, attempts; TTL)
            ──▶ tenant stream (entry = execution id) ── or ──▶ delayed zset (run at)
    worker  ──▶ take: round-robin over active tenants, one entry per tenant per pass
            ──▶ begin (attempts += 1) ──▶ executor.run(plan) ──▶ events stream (one entry per event)
            ──▶ finish: last event + ack + delete entry, atomically
               or retry: back to the delayed zset with exponential backoff (CRASHED, UNAVAILABLE)
               or dead: dead-letter stream, after the configured number of attempts

At least once: an entry stays pending until its final event is stored. A worker renews its claim
while it runs; one that dies stops renewing, and after the visibility timeout another worker takes
the entry over (XAUTOCLAIM) and runs it again with the next attempt number. Only the claim holder
may append events or finish, so a worker that lost its claim stops writing.

This package's __init__ imports nothing, so the client can use the layout without the daemon.
"""
