"""The command line's commands that work over the HTTP API (``clusters list``, ``backups``,
``settings``, ``backup``, ``restores``, ``history``; identity's ``orgs``, ``accounts``,
``keys``, ``grants``; ``restore start``, ``clusters set-secret`` and ``publish``'s token use the
same client): ``client.py`` finds the API and speaks to it (the one way the command line reaches
it), ``output.py`` prints tables (rich) or JSON, ``commands.py`` declares the daily commands and
``access.py`` identity's. They load neither the settings model nor anything of the services, so
they answer fast."""
