"""Offline-first evals and demos for rlm-service: task generators with exact gold answers
(``niah``, ``oolong``, ``pairs``), the paper's scorers, a runner against a live service,
reports, the ``make demo`` script and cassette tools. See docs/evals.md."""
