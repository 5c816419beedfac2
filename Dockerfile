# One image, four processes. Pick the process with the command:
#   config API  python -m main   (API_HOST=0.0.0.0)
#   ingestion   python -m runtime.ingestion.main
#   compute     python -m runtime.compute.main
#   serving     python -m runtime.serving.main
#   standalone  python -m standalone
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /srv
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY app ./app
COPY runtime ./runtime
COPY main.py standalone.py ./

RUN useradd --system --uid 10001 dps && mkdir -p /srv/data && chown dps /srv/data
USER dps

EXPOSE 8000 8001 8002 9100
ENV API_HOST=0.0.0.0
CMD ["python", "-m", "main"]
