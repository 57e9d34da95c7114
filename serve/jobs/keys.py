"""Where the job store keeps what, in Redis. Every key of a namespace starts with ``{namespace}:``, a Redis
Cluster hash tag, so one namespace lives in one slot and the multi-key Lua scripts stay legal on a cluster.

    job:<id>          hash: the record (``JobRecord.to_redis_hash``) plus ``_seq``, ``_releases``, ``_idem``
    events:<id>       stream: one entry per change of the job's state (its status fields), for SSE
    wh:<id>:<event>   hash: a webhook delivery (job, event type, stream entry, attempts so far)
    wh_due            zset delivery -> time of its next attempt (or the end of a dispatcher's lease)
    webhook_secrets   hash tenant -> its signing secrets (``serve.webhooks.WebhookSecrets`` JSON)
    tq:<tenant>       zset id -> submit sequence: a tenant's queued jobs, in order
    rotation          zset tenant -> turn: tenants with queued jobs, the one served longest ago first
    turn, seq         counters of the rotation and of submits
    leases            zset id -> lease expiry: running jobs (the reaper reads the expired ones)
    deadlines         zset id -> run deadline: running jobs under a maximum run time
    expiry            zset id -> expires_at: finished jobs, for the retention sweep
    counts            hash status -> jobs (metrics, the autoscaler)
    usage:<tenant>    hash queued, running, upload_bytes: what a tenant holds (its caps)
    limits            hash tenant -> "max queued,max running,max upload bytes" (-1: the default)
    uploads           zset "<tenant>/<file id>" -> expiry of an uploaded file; upload-sizes its bytes
    idem:<t>:<digest> hash request_id, body_hash (expires): an idempotency key of a tenant
    gone:<id>         string tenant (expires): a tombstone, so the API answers 410 after deletion
    wake              list: one entry per job that became runnable (workers block on it)
    draining          string: seconds of Retry-After while the app refuses new jobs
    metrics:...       counters and histograms of ``serve.metrics`` (the scripts count submits and endings)
"""

from __future__ import annotations

import hashlib


class Keys:
    def __init__(self, namespace: str) -> None:
        if not namespace or any(char in namespace for char in "{}"):
            raise ValueError(f"namespace must be non-empty and free of braces, got {namespace!r}")
        self.namespace = namespace
        self.prefix = f"{{{namespace}}}:"
        self.counts = self.prefix + "counts"
        self.limits = self.prefix + "limits"
        self.wake = self.prefix + "wake"
        self.draining = self.prefix + "draining"
        self.expiry = self.prefix + "expiry"
        self.uploads = self.prefix + "uploads"
        self.webhook_secrets = self.prefix + "webhook_secrets"
        self.webhook_due = self.prefix + "wh_due"

    def metric_counter(self, name: str) -> str:
        return f"{self.prefix}metrics:counter:{name}"

    def metric_histogram(self, name: str) -> str:
        return f"{self.prefix}metrics:hist:{name}"

    def job(self, request_id: str) -> str:
        return f"{self.prefix}job:{request_id}"

    def events(self, request_id: str) -> str:
        return f"{self.prefix}events:{request_id}"

    def gone(self, request_id: str) -> str:
        return f"{self.prefix}gone:{request_id}"

    def usage(self, tenant: str) -> str:
        return f"{self.prefix}usage:{tenant}"

    @staticmethod
    def idempotency_suffix(tenant: str, key: str) -> str:
        """The part after ``idem:``: per tenant, the key hashed (a client's key may be any header text)."""
        return f"{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"

    def idempotency(self, tenant: str, key: str) -> str:
        return f"{self.prefix}idem:{self.idempotency_suffix(tenant, key)}"
