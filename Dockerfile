FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY common ./common
COPY producer ./producer
COPY worker ./worker
COPY sessionq ./sessionq
RUN pip install --no-cache-dir .
# Workers are stateless: scale them with `docker compose up --scale worker=N`.
ENTRYPOINT ["sessionq"]
CMD ["worker", "--allow-commands", "--import", "sessionq.worker.demo"]
