"""Helpers for the tests (fixtures stay in ``tests/conftest.py``). One small module each:

- ``paths``: where the repository, the examples and the ``forgather`` command are;
- ``env``: the environment a child process gets (``base_env``);
- ``ports``: ``free_port``;
- ``waiting``: ``wait_for``, polling a condition instead of sleeping;
- ``records``: reading a job's JSON records;
- ``processes``: ``Procs``/``Proc``, which start real processes and leave none behind;
- ``cli``: ``run_cli``, the ``forgather`` command line as a subprocess;
- ``torchrun``: real two-rank jobs under torchrun and the client calls that drive them;
- ``launcher``: real ``forgather launch`` jobs;
- ``hf_trainer``, ``lightning_trainer``: a real HF or Lightning Trainer in the test's process,
  driven by commands at chosen steps (imported by the test when it runs: torch loads late);
- ``ray_cluster``: a throw-away Ray cluster on this machine;
- ``services``: clusters a test needs (skip locally, fail under CI);
- ``tiers``: what makes a test ``slow``, and the guard that keeps the quick tier quick.

Tests import them as ``from support.waiting import wait_for``: pytest puts ``tests/`` on
``sys.path`` (rootdir conftest), so this package is found in every xdist worker too.
"""
