# One image for every process of the dialer; the command picks which:
#   python -m api --host 0.0.0.0     the API (the default)
#   python -m worker                 a worker (start as many as you like)
#   alembic upgrade head             the database migrations
#   python -m telephony.simulator    the carrier simulator (a fake Twilio)
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Exactly the pinned set `make venv` installs, in a layer of its own so a code change reuses it.
COPY requirements.lock ./
RUN pip install --no-deps -r requirements.lock

# The project runs from its source tree, as under `make dev`: alembic.ini and the migrations live here.
COPY . .

RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin dialer
USER dialer

EXPOSE 8000
CMD ["python", "-m", "api", "--host", "0.0.0.0", "--port", "8000"]
