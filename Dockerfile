FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1
# CPU build of torch first, so sentence-transformers does not pull a CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md alembic.ini ./
COPY batchroute ./batchroute
COPY workers ./workers
COPY migrations ./migrations
RUN pip install -e .
CMD ["batchroute", "--help"]
