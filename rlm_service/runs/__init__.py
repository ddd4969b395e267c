"""Runs that outlive their connection: detach grace, WatchRun, CancelRun, GetRun."""
