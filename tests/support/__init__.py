"""Shared test helpers: one settings builder, one server fixture, one process scanner.

* ``settings``: ``make_settings`` and the fixed names and key the fakes expect.
* ``servers``: the in-process server (``start_server``, ``server``, ``stub`` fixtures,
  ``running_server``), always stopped in a ``finally``.
* ``subprocess_server``: ``rlm-server`` as a real subprocess (``server_proc`` fixture).
* ``procs``: /proc scans (sandbox pids, process trees, leak checks).
* ``events``: reading a run's event stream.
* ``scrape``: Prometheus exposition parsing.
* ``watchdog``: a pytest plugin that ends a run which hangs after its session.
* ``memory_repl``: an in-memory REPL with the sandboxed one's interface (tests/run).

``tests/conftest.py`` loads the fixture modules as plugins and re-exports the names
tests import from it.
"""
