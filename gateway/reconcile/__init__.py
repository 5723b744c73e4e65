"""Reconciliation: the ledger held against the engines' own token counters.

``sampler``: which readings of each engine's counters to persist (the store counts each token
once, ``gateway/store/counters.py``); ``allocation``: how a period's residual becomes adjustment
rows; ``settler``: the background round that settles periods and publishes the drift; ``report``:
per engine and hour, engine against ledger (``gateway usage reconcile``, ``/admin/usage/reconcile``).
"""
