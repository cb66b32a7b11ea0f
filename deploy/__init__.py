"""Running the bundle: the local stack (``stack``), the VM install (``install``), and what
both share: the environment file, rendering of airflow.cfg and the systemd units,
PostgreSQL set-up, and starting processes exactly as the units would.

Standard library only: ``make deploy`` runs it with the system's python3 before any
virtualenv exists.
"""
