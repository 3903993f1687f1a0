# kvstore: one image for journal nodes and etcd-compatible members.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY kvstore ./kvstore
COPY journal ./journal
COPY proto ./proto
COPY bench ./bench
RUN pip install --no-cache-dir .
ENTRYPOINT ["kvstore"]
