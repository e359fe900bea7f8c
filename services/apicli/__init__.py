"""The command line's commands that work over the HTTP API (``clusters list``, ``backups``,
``settings``, ``backup``, ``restores``, ``history``; ``restore start`` uses the same client):
``client.py`` finds the API and speaks to it, ``output.py`` prints tables (rich) or JSON,
``commands.py`` declares the commands. They load neither the settings model nor anything of the
services, so they answer fast."""
