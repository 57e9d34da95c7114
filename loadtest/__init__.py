"""Load testing and reliability batteries of the job API (docs/reliability.md).

``locustfile`` (Locust users and load shape), ``run`` (headless run + job accounting), ``faults`` (fault
injection), ``stack`` (a private local stack for batteries and e2e tests), ``client`` (a small API client),
``hostile_media`` (generated hostile files).
"""
