# polybridge: one image for the bridge and both simulators (`polybridge sim ...`).
# No local broker in the image: in a container, Kafka is a service of its own.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY avro ./avro
COPY bridge ./bridge
COPY polymarket ./polymarket
RUN pip install . && rm -rf /src

# Non-root: the bridge needs no privileges (it only opens outbound connections and the
# metrics port, which is above 1024).
RUN useradd --system --uid 10001 --create-home --home-dir /home/polybridge polybridge
USER polybridge
WORKDIR /home/polybridge

# [metrics] port in deploy/bridge.compose.toml
EXPOSE 9464
ENTRYPOINT ["polybridge"]
CMD ["--help"]
