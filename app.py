"""Entry point: `flask --app app …` and `gunicorn app:app`."""

from stampweb import create_app

app = create_app()
