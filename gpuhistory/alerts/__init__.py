"""Alert delivery by webhooks (docs/alerts.md): signed event JSON, alerts for Alertmanager's
v2 API (:mod:`~gpuhistory.alerts.alertmanager`) or chat messages
(:mod:`~gpuhistory.alerts.chat`), as each webhook's ``format`` says.

Webhooks are configured as a list (``[[webhooks]]`` in the TOML file or
``GPUHISTORY_WEBHOOKS``; :mod:`gpuhistory.alerts.config`). The sampler process's
:class:`~gpuhistory.alerts.deliverer.WebhookDeliverer` reads the persisted event log after
each webhook's cursor and POSTs the matching events, signed, in order, at least once, with
retries and backoff on its own threads — never on the sampling path. Each webhook's cursor
and retry state and every attempt are rows in the database
(:mod:`gpuhistory.alerts.store`), so a restart resumes where it stopped and the API
(:mod:`gpuhistory.api.alerts`) shows them.
"""
