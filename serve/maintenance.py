"""The periodic work every ingress replica does; safe on any number of replicas at once (each step is an
atomic script, or idempotent).

* the tokens file: re-read when it changed, and the tenants' own caps published to the store, where the
  queue's scripts read them;
* the reaper: jobs whose lease expired go back to the queue (or fail, or end cancelled), runs past their
  maximum run time fail ``time_limit``;
* retention: finished jobs past it lose their stored objects, then their record (a tombstone stays for 410);
  expired uploads leave their tenant's quota; what no record names any more is swept by age.
"""

from __future__ import annotations

import contextlib
import logging
import time

from serve.auth import Authenticator
from serve.jobs.store import JobStore
from serve.storage import ObjectStore, upload_key

logger = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, store: JobStore, storage: ObjectStore, authenticator: Authenticator) -> None:
        self._store = store
        self._storage = storage
        self._authenticator = authenticator
        self._limits_published = False

    def run_once(self) -> None:
        if self._authenticator.refresh() or not self._limits_published:
            self._store.set_tenant_limits(self._authenticator.limits)
            self._limits_published = True
        self._store.reap()
        self._expire_results()
        self._expire_uploads()
        policy = self._store.policy
        # Against the objects' modification times, which this host's clock wrote: not the store's clock.
        self._storage.delete_older_than(time.time() - policy.retention_seconds - policy.lease_seconds)

    def _expire_results(self) -> None:
        for request_id in self._store.expired_results():
            record = self._store.get(request_id)
            if record is not None:
                keys = [staged.key for staged in record.inputs.values()]
                keys += [record.output_key] if record.output_key else []
                for key in keys:
                    self._storage.delete(key)
            self._store.delete(request_id)

    def _expire_uploads(self) -> None:
        for tenant, file_id in self._store.expired_uploads():
            with contextlib.suppress(ValueError):  # a malformed entry: forget it all the same
                self._storage.delete(upload_key(tenant, file_id))
            self._store.forget_upload(tenant, file_id)
