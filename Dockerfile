# Playbook production image: gunicorn serves the app; the same image runs the Celery worker,
# beat and the release step (see docker-compose.yml and Procfile). Untested here (no Docker).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Run from the source tree: BASE_DIR (templates, static, manage.py) is /app.
    PYTHONPATH=/app \
    PLAYBOOK_ENV=production \
    PLAYBOOK_DATA_DIR=/app/.data \
    PORT=8000

WORKDIR /app

# Dependencies first, so that a code change does not reinstall them.
COPY pyproject.toml ./
COPY config/__init__.py config/__init__.py
RUN pip install --upgrade pip && pip install .

COPY . .
RUN pip install --no-deps . \
    # Static files (WhiteNoise's compressed manifest); settings need placeholder values only.
    && SECRET_KEY=collectstatic-only-placeholder-not-used-at-runtime-0123456789abcdef \
       DATABASE_URL=postgres://build_app@localhost/playbook \
       DATABASE_OWNER_URL=postgres://build_owner@localhost/playbook \
       REDIS_URL=redis://localhost:6379/0 \
       python manage.py collectstatic --noinput \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin playbook \
    && mkdir -p /app/.data && chown playbook /app/.data

USER playbook
EXPOSE 8000

CMD ["sh", "-c", "exec gunicorn config.wsgi --bind 0.0.0.0:${PORT:-8000} --workers ${WEB_CONCURRENCY:-3} --threads ${GUNICORN_THREADS:-4} --timeout ${GUNICORN_TIMEOUT:-60} --graceful-timeout 30 --keep-alive 5 --max-requests 2000 --max-requests-jitter 200 --access-logfile - --error-logfile -"]
