"""Simulated upstreams (Sage Business Cloud Accounting v3.1, Sage Intacct).

Independent ASGI apps used by the tests, the benchmarks and ``ledgerbridge sandbox``. They import
nothing of the gateway: they are upstreams, and must behave like the real services as documented in
``../shared/docs/*-wire.md`` (each behaviour cites its section).
"""
