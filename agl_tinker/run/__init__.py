"""One run per log path: the lock a run holds on its ``log_path``, the identity it records there, and
what a run tells its user about itself (backend, outputs, failures)."""
