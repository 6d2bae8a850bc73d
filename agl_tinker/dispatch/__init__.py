"""Dispatch: task groups into the store, finished rollouts back out as processed outcomes.

``batch`` (one batch, a barrier at its end) and ``continuous`` (groups in flight across steps)
share one reader (``reader``: read, dedupe, process, release), the completion sources
(``completion``) and the store calls (``store_calls``); ``types`` holds their results and errors.
"""
