"""managed-backups: open, self-hostable managed backups for PostgreSQL-compatible clusters.

The distribution installs one top-level package, ``managed_backups``, so its parts cannot collide
with other packages named ``contracts``, ``shared`` or ``services``. In the repository the three
parts stay top-level folders (``contracts/`` wire contracts, ``shared/`` the common package,
``services/`` one package per service); ``managed_backups/`` holds relative links to them, so the
source tree, the editable install, the wheel, mypy and the tests all see the same module names.
"""
