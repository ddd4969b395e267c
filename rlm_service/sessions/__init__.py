"""Sessions: requests that share one REPL, root history and contexts."""
