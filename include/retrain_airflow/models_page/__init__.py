"""The Models page in the Airflow UI: ``app`` (routes), ``catalog`` (what it reads),
``plots`` (matplotlib, cached) and ``security`` (login, permissions, CSRF).

Imported by the api-server on the page's first request (see plugins/models_page.py),
never by a task or at DAG-parse time.
"""
