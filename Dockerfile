# The stillflow image: every service (streams, trainer, router, sim) from one image, `stillflow` as
# the entrypoint (docker-compose.yml sets the sub-command). CPU torch; for GPU trainer nodes build
# from a CUDA base or install the CUDA torch wheel instead (see README, "Running on a real cluster").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, pinned, from the CPU index: the `all` extra then finds it installed and pulls no CUDA wheels
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /src
COPY pyproject.toml README.md ./
COPY stillflow ./stillflow
COPY streams ./streams
COPY trainer ./trainer
COPY router ./router
COPY sim ./sim
RUN pip install ".[all]" && rm -rf /src/build

# an unprivileged user; /models is the registry volume (trainer writes, router reads), so it is
# created here owned by that user and a fresh named volume inherits the ownership
RUN useradd --create-home --uid 10001 stillflow \
    && mkdir -p /models /home/stillflow/.stillflow/streams \
    && chown -R stillflow:stillflow /models /home/stillflow
USER stillflow
WORKDIR /home/stillflow

# streams web/metrics, trainer metrics, router, sim teacher
EXPOSE 6066 9108 8200 8100

ENTRYPOINT ["stillflow"]
CMD ["--help"]
