"""Notifications to a webhook (Slack-compatible JSON or CloudEvents 1.0) for the moments a team must hear about: a plan
awaiting approval, a run that succeeded, one that failed (and how it was rolled back), drift.

Sent exactly once per event and webhook, across restarts and leader changes, because intent and delivery are kept in
the resource's own status (``status.notifications``, keyed by an id derived from the status itself):

    due.py      which notifications the status makes due, their records, retries with backoff (pure)
    payload.py  the two wire formats of one record (pure)
    send.py     the notifier: records what is due, reads the webhook's Secret, POSTs, records the delivery

This package's __init__ imports nothing: the pure modules sit with the decisions, send.py with the operator.
"""
