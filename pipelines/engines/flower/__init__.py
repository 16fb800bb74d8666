"""The Flower engine (`cmi train --engine flower`): the same methods, rounds and run directory as
the local engine, with clients trained by Flower SuperNodes.

``run.py`` is the engine entry, ``server_app.py`` / ``client_app.py`` the Flower apps (bundled by
``app/pyproject.toml``), ``strategy.py`` the round loop on the server, ``protocol.py`` the
messages, ``deployment.py`` the SuperLink/SuperNode processes and the `flwr` CLI.
"""
