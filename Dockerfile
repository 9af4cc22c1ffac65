# Multi-stage build: wheels in a builder, a slim non-root runtime that runs `ledgerbridge serve`.
FROM python:3.11-slim AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends gcc libxml2-dev libxslt1-dev && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY api ./api
COPY connectors ./connectors
COPY models ./models
COPY sandbox ./sandbox
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 ledgerbridge
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
USER ledgerbridge
WORKDIR /home/ledgerbridge
ENV LEDGERBRIDGE_ENV=production \
    LEDGERBRIDGE_DATABASE_URL=sqlite:////home/ledgerbridge/ledgerbridge.db
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["ledgerbridge", "serve", "--host", "0.0.0.0", "--port", "8000"]
